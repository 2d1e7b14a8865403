"""The GPU table's CUDA code: kernel sources, and their compilation through CuPy.

Elementwise kernels (:class:`cupy.ElementwiseKernel`) are a body of C++ that CuPy
wraps in a loop; the raw kernels (:data:`RAW_SOURCE`) are whole CUDA functions,
templated on float and double, for the fused column sums and the deterministic MSE
reduction. :class:`GpuKernels` compiles them all for one CuPy (NVRTC, on first use,
cached on disk) and looks up the raw kernels by name and dtype.

Activations are chosen by the integer codes of :mod:`nanoae.ops.codes` (``code == 3``
is the sigmoid). Everything here needs CuPy; this module itself imports without it.
"""

from __future__ import annotations

import numpy

# y = f(z) for z = x + b, the activation chosen by `code` (the numbers of nanoae.ops.codes).
ACTIVATION_SOURCE = """
    if (code == 1) { y = z > (T)0 ? z : (T)0; if (z != z) y = z; }
    else if (code == 2) { y = z > (T)0 ? z : alpha * z; }
    else if (code == 3) {
        T e = exp(-fabs(z));
        y = z >= (T)0 ? (T)1 / ((T)1 + e) : e / ((T)1 + e);
    }
    else if (code == 4) { y = tanh(z); }
    else { y = z; }
"""

SLOPE_SOURCE = """
    if (code == 1) { dz = y > (T)0 ? dy : dy * (T)0; }
    else if (code == 2) { dz = y > (T)0 ? dy : alpha * dy; }
    else if (code == 3) { dz = dy * y * ((T)1 - y); }
    else if (code == 4) { dz = dy * ((T)1 - y * y); }
    else { dz = dy; }
"""

# nanoae's raw CUDA kernels, each templated on float and double (see KERNEL_NAMES).
# nanoae_slope_colsum: dz = f'(y) * dy for a (rows, cols) C-contiguous block, and the column sums of dz.
# Block (32, 32): threadIdx.x picks a column of a 32-wide tile, threadIdx.y strides over
# the rows of this block's chunk. Each thread adds its rows in order, then the 32 partial
# sums of a column are added by a fixed tree: the result does not depend on timing.
# With one chunk the sums go straight to the bias gradient; with several, each chunk
# writes a row of `partial` and nanoae_sum_chunks adds those rows in order.
RAW_SOURCE = r"""
template<typename T>
__device__ __forceinline__ T nanoae_slope(T dy, T y, int code, T alpha) {
    if (code == 1) return y > (T)0 ? dy : dy * (T)0;
    if (code == 2) return y > (T)0 ? dy : alpha * dy;
    if (code == 3) return dy * y * ((T)1 - y);
    if (code == 4) return dy * ((T)1 - y * y);
    return dy;
}

template<typename T>
__global__ void nanoae_slope_colsum(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dz,
                                    T* __restrict__ sums, const int rows, const int cols,
                                    const int rows_per_chunk, const int code, const T alpha) {
    __shared__ T partial[32][33];
    const int col = blockIdx.x * 32 + threadIdx.x;
    const int first = blockIdx.y * rows_per_chunk;
    const int last = min(rows, first + rows_per_chunk);
    T total = (T)0;
    if (col < cols) {
        for (int row = first + threadIdx.y; row < last; row += 32) {
            const long long at = (long long)row * cols + col;
            const T value = nanoae_slope<T>(dy[at], y[at], code, alpha);
            dz[at] = value;
            total += value;
        }
    }
    partial[threadIdx.y][threadIdx.x] = total;
    __syncthreads();
    for (int stride = 16; stride > 0; stride >>= 1) {
        if (threadIdx.y < stride) {
            partial[threadIdx.y][threadIdx.x] += partial[threadIdx.y + stride][threadIdx.x];
        }
        __syncthreads();
    }
    if (threadIdx.y == 0 && col < cols) {
        sums[(long long)blockIdx.y * cols + col] = partial[0][threadIdx.x];
    }
}

// MSE loss and gradient in one launch: grad = (p - t) * scale, and each block's sum of
// (p - t)^2 (a grid-stride loop over a grid fixed by the size and the GPU, then a fixed
// tree) into partial[block]. The last block to finish (a counter bumped once per block,
// after a fence that makes its partial sum visible) adds the partial sums in a fixed
// order, divides by n, and sets the counter back to 0 for the next launch (so a replayed
// CUDA graph finds it at 0). Which block comes last varies; the order of the final sum
// does not, so the loss is the same number every run.
template<typename T>
__device__ __forceinline__ T nanoae_block_sum(T value, T* shared) {
    shared[threadIdx.x] = value;
    __syncthreads();
    for (int stride = 128; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
        __syncthreads();
    }
    const T total = shared[0];
    __syncthreads();  // shared may be reused at once
    return total;
}

template<typename T>
__global__ void nanoae_mse_loss_grad(const T* __restrict__ p, const T* __restrict__ t, T* __restrict__ grad,
                                     T* partial, unsigned int* counter, T* __restrict__ loss,
                                     const long long n, const T scale) {
    __shared__ T shared[256];
    __shared__ bool last;
    T total = (T)0;
    for (long long i = (long long)blockIdx.x * 256 + threadIdx.x; i < n; i += (long long)gridDim.x * 256) {
        const T d = p[i] - t[i];
        grad[i] = d * scale;
        total += d * d;
    }
    total = nanoae_block_sum<T>(total, shared);
    if (threadIdx.x == 0) {
        partial[blockIdx.x] = total;
        __threadfence();
        last = atomicAdd(counter, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!last) return;
    T sum = (T)0;
    const volatile T* sums = partial;  // written by other blocks: read past the cache
    for (int i = threadIdx.x; i < (int)gridDim.x; i += 256) sum += sums[i];
    sum = nanoae_block_sum<T>(sum, shared);
    if (threadIdx.x == 0) {
        loss[0] = sum / (T)n;
        *counter = 0u;
    }
}

template<typename T>
__global__ void nanoae_sum_chunks(const T* __restrict__ partial, T* __restrict__ out, const int chunks, const int cols) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col < cols) {
        T total = (T)0;
        for (int chunk = 0; chunk < chunks; ++chunk) total += partial[(long long)chunk * cols + col];
        out[col] = total;
    }
}
"""

RMSPROP_SOURCE = """
    T g = grad;
    T ms;
    T step;
    if (flavor == 0) {            // tf1: ms += (g^2 - ms)(1 - rho); inc = lr g / sqrt(ms + eps)
        ms = mean_square + (g * g - mean_square) * decay_complement;
        step = lr * g / sqrt(ms + eps);
        if (use_momentum) { step = mom * momentum + step; mom = step; }
        param = param - step;
    } else if (flavor == 1) {     // keras: ms = rho ms + (1 - rho) g^2; inc = lr g / sqrt(ms + eps)
        ms = mean_square * rho + decay_complement * (g * g);
        step = lr * g / sqrt(ms + eps);
        if (use_momentum) { step = mom * momentum + step; mom = step; }
        param = param - step;
    } else {                      // torch: d = g / (sqrt(ms) + eps); w -= lr d
        ms = mean_square * rho + decay_complement * (g * g);
        step = g / (sqrt(ms) + eps);
        if (use_momentum) { step = mom * momentum + step; mom = step; }
        param = param - lr * step;
    }
    mean_square = ms;
"""

SGD_SOURCE = """
    T g = grad;
    if (use_decay) g = g + weight_decay * param;
    T direction = g;
    if (use_momentum) {
        T v = velocity * momentum + g;
        velocity = v;
        direction = nesterov ? g + momentum * v : v;
    }
    param = param - lr * direction;
"""

# scalars (float64): [0] = step t, [1] = lr_hat, [2] = sqrt(1 - beta2^t); advanced on the device
ADAM_SCALARS_SOURCE = r"""
extern "C" __global__ void nanoae_adam_scalars(double* scalars, const double lr, const double beta1,
                                               const double beta2, const int keras) {
    const double t = scalars[0] + 1.0;
    scalars[0] = t;
    const double bc1 = 1.0 - pow(beta1, t);
    const double bc2 = 1.0 - pow(beta2, t);
    scalars[1] = keras ? lr * sqrt(bc2) / bc1 : lr / bc1;
    scalars[2] = sqrt(bc2);
}
"""

ADAM_SOURCE = """
    T w = param;
    T g = grad;
    T lr_hat = (T)scalars[1];
    T sqrt_bc2 = (T)scalars[2];
    if (decoupled) { w = w * decoupled_factor; }
    else if (use_decay) { g = g + weight_decay * w; }
    T m = first_moment + (g - first_moment) * beta1_complement;
    T v;
    T denominator;
    if (keras) { v = second_moment + (g * g - second_moment) * beta2_complement; denominator = sqrt(v) + eps; }
    else { v = second_moment * beta2 + beta2_complement * (g * g); denominator = sqrt(v) / sqrt_bc2 + eps; }
    first_moment = m;
    second_moment = v;
    param = w - lr_hat * m / denominator;
"""

KERNEL_NAMES = ("nanoae_slope_colsum", "nanoae_sum_chunks", "nanoae_mse_loss_grad")


class GpuKernels:
    """Every CUDA kernel of the GPU table, compiled for ``cupy``."""

    def __init__(self, cupy) -> None:
        ew = cupy.ElementwiseKernel
        self.bias_activation = ew(
            "T x, T b, int32 code, T alpha", "T y", "T z = x + b;" + ACTIVATION_SOURCE, "nanoae_bias_activation"
        )
        self.activation = ew("T z, int32 code, T alpha", "T y", ACTIVATION_SOURCE, "nanoae_activation")
        self.slope = ew("T dy, T y, int32 code, T alpha", "T dz", SLOPE_SOURCE, "nanoae_activation_slope")
        self.column_sum = cupy.ReductionKernel("T x", "T y", "x", "a + b", "y = a", "0", "nanoae_column_sum")
        self.mse_grad = ew("T p, T t, T scale", "T grad", "grad = (p - t) * scale;", "nanoae_mse_grad")
        self.mse_loss = cupy.ReductionKernel(
            "T p, T t", "T loss", "(p - t) * (p - t)", "a + b", "loss = a / (_in_ind.size() / _out_ind.size())", "0", "nanoae_mse_loss"
        )
        self.gather = ew(
            "raw T data, raw I rows, int64 width, int64 n",
            "T out",
            # Row numbers wrap modulo n, as CuPy's own indexing does: never a read outside data.
            "long long row = (long long)rows[i / width] % n; if (row < 0) row += n; out = data[row * width + i % width];",
            "nanoae_gather_rows",
        )
        self.rmsprop = ew(
            "T grad, T lr, T rho, T decay_complement, T eps, T momentum, int32 flavor, bool use_momentum",
            "T param, T mean_square, T mom",
            RMSPROP_SOURCE,
            "nanoae_rmsprop",
        )
        self.sgd = ew(
            "T grad, T lr, T momentum, bool nesterov, T weight_decay, bool use_momentum, bool use_decay",
            "T param, T velocity",
            SGD_SOURCE,
            "nanoae_sgd",
        )
        self.adam = ew(
            "T grad, raw float64 scalars, T beta1_complement, T beta2, T beta2_complement, T eps, "
            "T weight_decay, T decoupled_factor, bool decoupled, bool use_decay, bool keras",
            "T param, T first_moment, T second_moment",
            ADAM_SOURCE,
            "nanoae_adam",
        )
        self.adam_scalars = cupy.RawKernel(ADAM_SCALARS_SOURCE, "nanoae_adam_scalars")
        names = [f"{kernel}<{ctype}>" for kernel in KERNEL_NAMES for ctype in ("float", "double")]
        self._raw_module = cupy.RawModule(code=RAW_SOURCE, name_expressions=names)
        self._raw_kernels: dict = {}

    def raw(self, kernel: str, dtype):
        """The compiled raw kernel ``kernel`` (one of KERNEL_NAMES) for float or double."""
        key = (kernel, numpy.dtype(dtype).char)
        function = self._raw_kernels.get(key)
        if function is None:
            ctype = {"f": "float", "d": "double"}[key[1]]
            function = self._raw_module.get_function(f"{kernel}<{ctype}>")
            self._raw_kernels[key] = function
        return function
