"""The GPU path: the reference math as fused CuPy kernels over reused device buffers.

Same functions and signatures as :mod:`nanoae.ops.reference`. On a GPU the step of the
tutorial model at batch 256 is ~1.4 GFLOP, which an H100 does in a few tens of
microseconds, so what decides the speed is the number of kernel launches and host
round trips, not arithmetic:

* bias-add + activation: one elementwise kernel, in place on the matmul's output;
* activation' and the bias gradient: one kernel (:data:`_RAW_SOURCE`) that
  writes dz and sums its columns in a fixed order (deterministic, no atomics); a big
  batch is cut into row chunks whose partial sums a second, tiny kernel adds;
* the MSE loss and its gradient: one kernel that writes the gradient and per-block
  partial sums, and a second, tiny one that adds them in a fixed order into a
  preallocated 0-d array (deterministic; no host sync: the loss stays on the device
  until logged); non-contiguous or empty inputs take an elementwise kernel and a
  reduction instead;
* each optimizer step: one elementwise kernel over the whole flat arena (Adam: plus a
  one-thread kernel that advances its bias corrections);
* the mini-batch: one gather kernel from the dataset already on the device;
* matmuls: ``cublasGemmEx`` called directly through ctypes (:class:`_Cublas`: its own
  handle and workspace, so that a CUDA graph can capture them; CuPy refuses cuBLAS
  calls during capture) into preallocated outputs, a transposed operand being a cuBLAS
  flag, not a copy; ``cupy.matmul(..., out=)`` when direct cuBLAS is unavailable or
  ``NANOAE_GPU_CUBLAS=cupy``; float32 unless TF32 is asked for
  (``get_backend("cupy", allow_tf32=True)``);
* a steady step of a model whose functions are all fused here (dense layers, MSE,
  every optimizer) allocates nothing, and :mod:`nanoae.ops.gpu_graph` captures the
  whole training step as one CUDA graph and replays it. What this table passes to the
  reference (BCE, softmax, the VAE's sampler and KL, the L2 and L1 penalties) allocates
  temporaries each step; the graph's capture-time allocator keeps those blocks alive.

Adam's bias corrections change every step; a captured graph cannot take new scalar
arguments, so they live in a small float64 device array that a one-thread kernel
inside the step advances (see :meth:`GpuOps.adam_update`).

Kernels are compiled by CuPy (NVRTC) on first use and cached on disk. Everything here
needs a CUDA GPU; its tests (``tests/test_gpu.py``) skip without one.
"""

from __future__ import annotations

import ctypes
import os
import weakref

import numpy

from nanoae.ops import reference

from nanoae.ops.cpu import _code

ACTIVATIONS = reference.ACTIVATIONS

# y = f(z) for z = x + b, the activation chosen by `code` (see nanoae.ops.cpu._CODES).
_ACTIVATION_SOURCE = """
    if (code == 1) { y = z > (T)0 ? z : (T)0; if (z != z) y = z; }
    else if (code == 2) { y = z > (T)0 ? z : alpha * z; }
    else if (code == 3) {
        T e = exp(-fabs(z));
        y = z >= (T)0 ? (T)1 / ((T)1 + e) : e / ((T)1 + e);
    }
    else if (code == 4) { y = tanh(z); }
    else { y = z; }
"""

_SLOPE_SOURCE = """
    if (code == 1) { dz = y > (T)0 ? dy : dy * (T)0; }
    else if (code == 2) { dz = y > (T)0 ? dy : alpha * dy; }
    else if (code == 3) { dz = dy * y * ((T)1 - y); }
    else if (code == 4) { dz = dy * ((T)1 - y * y); }
    else { dz = dy; }
"""

# nanoae's raw CUDA kernels, each templated on float and double (see _KERNEL_NAMES).
# nanoae_slope_colsum: dz = f'(y) * dy for a (rows, cols) C-contiguous block, and the column sums of dz.
# Block (32, 32): threadIdx.x picks a column of a 32-wide tile, threadIdx.y strides over
# the rows of this block's chunk. Each thread adds its rows in order, then the 32 partial
# sums of a column are added by a fixed tree: the result does not depend on timing.
# With one chunk the sums go straight to the bias gradient; with several, each chunk
# writes a row of `partial` and nanoae_sum_chunks adds those rows in order.
_RAW_SOURCE = r"""
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

// MSE loss and gradient in one pass: grad = (p - t) * scale, and each block's sum of
// (p - t)^2 (a grid-stride loop over a grid fixed by the size and the GPU, then a fixed
// tree), so the loss is the same number every run. nanoae_mean_partials adds the
// blocks' sums in order and divides by n.
template<typename T>
__global__ void nanoae_mse_grad_partial(const T* __restrict__ p, const T* __restrict__ t, T* __restrict__ grad,
                                        T* __restrict__ partial, const long long n, const T scale) {
    __shared__ T shared[256];
    T total = (T)0;
    for (long long i = (long long)blockIdx.x * 256 + threadIdx.x; i < n; i += (long long)gridDim.x * 256) {
        const T d = p[i] - t[i];
        grad[i] = d * scale;
        total += d * d;
    }
    shared[threadIdx.x] = total;
    __syncthreads();
    for (int stride = 128; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = shared[0];
}

template<typename T>
__global__ void nanoae_mean_partials(const T* __restrict__ partial, T* __restrict__ out, const int count, const T n) {
    __shared__ T shared[256];
    T total = (T)0;
    for (int i = threadIdx.x; i < count; i += 256) total += partial[i];
    shared[threadIdx.x] = total;
    __syncthreads();
    for (int stride = 128; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = shared[0] / n;
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

_RMSPROP_SOURCE = """
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

_SGD_SOURCE = """
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
_ADAM_SCALARS_SOURCE = r"""
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

_ADAM_SOURCE = """
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

_MIN_ROWS_PER_CHUNK = 256  # below this many rows a column's sum is one chunk: one kernel
_KERNEL_NAMES = ("nanoae_slope_colsum", "nanoae_sum_chunks", "nanoae_mse_grad_partial", "nanoae_mean_partials")

_CUBLAS_OP_N, _CUBLAS_OP_T = 0, 1
_CUDA_R = {"f": 0, "d": 1}  # cudaDataType: CUDA_R_32F, CUDA_R_64F
_CUBLAS_COMPUTE = {"f": 68, "d": 70, "tf32": 77}  # CUBLAS_COMPUTE_32F, _64F, _32F_FAST_TF32
_CUBLAS_GEMM_DEFAULT = -1


def _load_cublas(cupy):
    """The libcublas CuPy itself loaded (found in /proc/self/maps), else one by name."""
    from cupy_backends.cuda.libs import cublas  # noqa: F401, PLC0415 (makes CuPy load libcublas)

    cupy.cuda.device.get_cublas_handle()
    candidates = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and os.path.basename(parts[5].strip()).startswith("libcublas.so"):
                    candidates.append(parts[5].strip())
    except OSError:
        pass
    candidates += ["libcublas.so.13", "libcublas.so.12", "libcublas.so"]
    errors = []
    for candidate in dict.fromkeys(candidates):
        try:
            return ctypes.CDLL(candidate)
        except OSError as exc:
            errors.append(str(exc))
    raise OSError("libcublas not found: " + "; ".join(errors))


def _operand(array):
    """(pointer, leading dimension, transposed) of a 2-D array as a row-major matrix, or
    None when its strides are neither row- nor column-major."""
    if array.ndim != 2:
        return None
    item = array.itemsize
    rows, cols = array.shape
    first, second = array.strides
    if second == item and first % item == 0 and first // item >= max(1, cols):
        return array.data.ptr, first // item, False
    if first == item and second % item == 0 and second // item >= max(1, rows):
        return array.data.ptr, second // item, True
    return None


class _Cublas:
    """cuBLAS GEMMs called through ctypes, on a handle and workspaces of our own.

    CuPy's cuBLAS wrappers refuse to run while a stream is capturing a CUDA graph
    (``cupy_backends.cuda.libs.cublas.setStream`` raises NotImplementedError, CuPy 13
    and 14), although cuBLAS itself supports capture. The training step must be captured
    with its matmuls, so they go to libcublas directly: ``cublasGemmEx`` with the
    coefficients in host memory (captured by value) and a workspace per stream set with
    ``cublasSetWorkspace`` (so cuBLAS never allocates while capturing, and concurrent
    streams never share one). float32 runs CUBLAS_COMPUTE_32F unless CuPy's compute-type
    switch says TF32 (``get_backend("cupy", allow_tf32=True)``); float64 runs _64F.
    """

    WORKSPACE_BYTES = 32 << 20

    def __init__(self, cupy) -> None:
        self.cp = cupy
        lib = _load_cublas(cupy)
        handle_p = ctypes.c_void_p
        lib.cublasCreate_v2.argtypes = [ctypes.POINTER(handle_p)]
        lib.cublasCreate_v2.restype = ctypes.c_int
        lib.cublasSetStream_v2.argtypes = [handle_p, ctypes.c_void_p]
        lib.cublasSetStream_v2.restype = ctypes.c_int
        lib.cublasSetWorkspace_v2.argtypes = [handle_p, ctypes.c_void_p, ctypes.c_size_t]
        lib.cublasSetWorkspace_v2.restype = ctypes.c_int
        c_int, c_void_p = ctypes.c_int, ctypes.c_void_p
        lib.cublasGemmEx.argtypes = [
            handle_p, c_int, c_int, c_int, c_int, c_int, c_void_p,
            c_void_p, c_int, c_int, c_void_p, c_int, c_int, c_void_p,
            c_void_p, c_int, c_int, c_int, c_int,
        ]  # fmt: skip
        lib.cublasGemmEx.restype = c_int
        self.lib = lib
        self._handles: dict = {}  # device id -> handle
        self._bound: dict = {}  # device id -> (stream pointer, workspace) its handle is set to
        self._workspaces = weakref.WeakKeyDictionary()  # stream -> workspace array
        self._null_workspaces: dict = {}  # device id -> workspace of the default stream
        self._one = {"f": ctypes.c_float(1.0), "d": ctypes.c_double(1.0)}
        self._zero = {"f": ctypes.c_float(0.0), "d": ctypes.c_double(0.0)}
        self._one_p = {k: ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for k, v in self._one.items()}
        self._zero_p = {k: ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for k, v in self._zero.items()}
        try:
            from cupy._core import _routines_linalg as linalg  # noqa: PLC0415

            self._compute_type_of = lambda: linalg.get_compute_type(numpy.float32) == linalg.COMPUTE_TYPE_TF32
        except (ImportError, AttributeError):
            self._compute_type_of = lambda: False

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what} failed with cuBLAS status {status}")

    def _handle_for_current_stream(self):
        cp = self.cp
        device = cp.cuda.runtime.getDevice()
        handle = self._handles.get(device)
        if handle is None:
            handle = ctypes.c_void_p()
            self._check(self.lib.cublasCreate_v2(ctypes.byref(handle)), "cublasCreate")
            self._handles[device] = handle
        stream = cp.cuda.get_current_stream()
        if stream.ptr == 0:
            workspace = self._null_workspaces.get(device)
            if workspace is None:
                workspace = self._null_workspaces[device] = cp.empty(self.WORKSPACE_BYTES, dtype=cp.uint8)
        else:
            # Keyed by the stream object (weakly): a new stream that reuses a dead one's
            # pointer gets a new workspace, and the handle is bound again.
            workspace = self._workspaces.get(stream)
            if workspace is None:
                workspace = self._workspaces[stream] = cp.empty(self.WORKSPACE_BYTES, dtype=cp.uint8)
        bound = self._bound.get(device)
        if bound is None or bound[0] != stream.ptr or bound[1] is not workspace:
            # cublasSetStream resets the workspace to cuBLAS's own pool: set ours after it.
            self._check(self.lib.cublasSetStream_v2(handle, ctypes.c_void_p(stream.ptr)), "cublasSetStream")
            self._check(self.lib.cublasSetWorkspace_v2(handle, ctypes.c_void_p(workspace.data.ptr), workspace.nbytes), "cublasSetWorkspace")
            self._bound[device] = (stream.ptr, workspace)  # holds the bound workspace alive
        return handle

    def matmul(self, a, b, out) -> bool:
        """out = a @ b for 2-D arrays of one float dtype; False when the layout is not
        one cuBLAS takes as is (the caller then uses cupy.matmul)."""
        kind = out.dtype.char
        if kind not in "fd" or a.dtype.char != kind or b.dtype.char != kind:
            return False
        left, right, result = _operand(a), _operand(b), _operand(out)
        if left is None or right is None or result is None or result[2]:
            return False
        rows, inner = a.shape
        cols = b.shape[1]
        if b.shape[0] != inner or out.shape != (rows, cols):
            raise ValueError(f"matmul shapes {a.shape} @ {b.shape} -> {out.shape} do not fit")
        if rows == 0 or cols == 0:
            return True
        if inner == 0:
            out.fill(0)
            return True
        handle = self._handle_for_current_stream()
        compute = _CUBLAS_COMPUTE["tf32"] if kind == "f" and self._compute_type_of() else _CUBLAS_COMPUTE[kind]
        data = _CUDA_R[kind]
        # Row-major C = A B is column-major C^T = B^T A^T: B's memory is B^T (op N) unless
        # B is itself a transposed view (op T), and likewise for A.
        status = self.lib.cublasGemmEx(
            handle,
            _CUBLAS_OP_T if right[2] else _CUBLAS_OP_N,
            _CUBLAS_OP_T if left[2] else _CUBLAS_OP_N,
            cols, rows, inner,
            self._one_p[kind],
            right[0], data, right[1],
            left[0], data, left[1],
            self._zero_p[kind],
            result[0], data, result[1],
            compute, _CUBLAS_GEMM_DEFAULT,
        )  # fmt: skip
        self._check(status, "cublasGemmEx")
        return True


class GpuOps:
    """An ops table (see :mod:`nanoae.ops`) of CuPy kernels."""

    ACTIVATIONS = ACTIVATIONS
    name = "gpu-cupy"

    def __init__(self, cupy) -> None:
        self.cp = cupy
        ew = cupy.ElementwiseKernel
        self._bias_activation = ew(
            "T x, T b, int32 code, T alpha", "T y", "T z = x + b;" + _ACTIVATION_SOURCE, "nanoae_bias_activation"
        )
        self._activation = ew("T z, int32 code, T alpha", "T y", _ACTIVATION_SOURCE, "nanoae_activation")
        self._slope = ew("T dy, T y, int32 code, T alpha", "T dz", _SLOPE_SOURCE, "nanoae_activation_slope")
        self._column_sum = cupy.ReductionKernel("T x", "T y", "x", "a + b", "y = a", "0", "nanoae_column_sum")
        self._mse_grad = ew("T p, T t, T scale", "T grad", "grad = (p - t) * scale;", "nanoae_mse_grad")
        self._mse_loss = cupy.ReductionKernel(
            "T p, T t", "T loss", "(p - t) * (p - t)", "a + b", "loss = a / (_in_ind.size() / _out_ind.size())", "0", "nanoae_mse_loss"
        )
        self._gather = ew(
            "raw T data, raw I rows, int64 width", "T out", "out = data[rows[i / width] * width + i % width]", "nanoae_gather_rows"
        )
        self._rmsprop = ew(
            "T grad, T lr, T rho, T decay_complement, T eps, T momentum, int32 flavor, bool use_momentum",
            "T param, T mean_square, T mom",
            _RMSPROP_SOURCE,
            "nanoae_rmsprop",
        )
        self._sgd = ew(
            "T grad, T lr, T momentum, bool nesterov, T weight_decay, bool use_momentum, bool use_decay",
            "T param, T velocity",
            _SGD_SOURCE,
            "nanoae_sgd",
        )
        self._adam = ew(
            "T grad, raw float64 scalars, T beta1_complement, T beta2, T beta2_complement, T eps, "
            "T weight_decay, T decoupled_factor, bool decoupled, bool use_decay, bool keras",
            "T param, T first_moment, T second_moment",
            _ADAM_SOURCE,
            "nanoae_adam",
        )
        self._adam_scalars = cupy.RawKernel(_ADAM_SCALARS_SOURCE, "nanoae_adam_scalars")
        names = [f"{kernel}<{ctype}>" for kernel in _KERNEL_NAMES for ctype in ("float", "double")]
        self._raw_module = cupy.RawModule(code=_RAW_SOURCE, name_expressions=names)
        self._raw_kernels: dict = {}
        self._sm_count = None
        # Matmuls: libcublas directly (capturable in a CUDA graph), else cupy.matmul
        # (NANOAE_GPU_CUBLAS=cupy forces the latter; the step then runs without a graph).
        self.blas_error = ""
        self._blas = None
        if os.environ.get("NANOAE_GPU_CUBLAS", "direct") != "cupy":
            try:
                self._blas = _Cublas(cupy)
            except Exception as exc:  # noqa: BLE001 (no direct cuBLAS: CuPy's matmul, no graphs)
                self.blas_error = f"{type(exc).__name__}: {exc}"

    def __repr__(self) -> str:
        return "<nanoae ops gpu-cupy>"

    def _buffer(self, workspace: dict, key: str, shape, dtype):
        array = workspace.get(key)
        if array is None or array.shape != tuple(shape) or array.dtype != dtype:
            array = self.cp.empty(shape, dtype=dtype)
            workspace[key] = array
        return array

    def _raw_kernel(self, kernel: str, dtype):
        key = (kernel, numpy.dtype(dtype).char)
        function = self._raw_kernels.get(key)
        if function is None:
            ctype = {"f": "float", "d": "double"}[key[1]]
            function = self._raw_module.get_function(f"{kernel}<{ctype}>")
            self._raw_kernels[key] = function
        return function

    def _multiprocessors(self) -> int:
        if self._sm_count is None:
            device = self.cp.cuda.Device()
            self._sm_count = int(device.attributes.get("MultiProcessorCount", 108))
        return self._sm_count

    def _matmul(self, a, b, out) -> None:
        """out = a @ b through cuBLAS, into the given buffer (a transposed view is a flag)."""
        if self._blas is None or not self._blas.matmul(a, b, out):
            self.cp.matmul(a, b, out=out)

    # ---- activations --------------------------------------------------------------
    def activation_forward(self, z, activation: str, alpha: float = 0.0, workspace=None):
        if workspace is None:
            return reference.activation_forward(z, activation, alpha)
        out = self._buffer(workspace, "activation", z.shape, z.dtype)
        self._activation(z, _code(activation), z.dtype.type(alpha), out)
        return out

    def activation_backward(self, grad_output, y, activation: str, alpha: float = 0.0, workspace=None):
        if workspace is None:
            return reference.activation_backward(grad_output, y, activation, alpha)
        out = self._buffer(workspace, "activation_grad", y.shape, y.dtype)
        self._slope(grad_output, y, _code(activation), y.dtype.type(alpha), out)
        return out

    # ---- dense ---------------------------------------------------------------------
    def dense_forward(self, x, weights, bias, activation: str, alpha: float = 0.0, workspace=None):
        if workspace is None:
            return reference.dense_forward(x, weights, bias, activation, alpha)
        y = self._buffer(workspace, "y", (x.shape[0], weights.shape[1]), weights.dtype)
        self._matmul(x, weights, y)
        self._bias_activation(y, bias, _code(activation), weights.dtype.type(alpha), y)
        return y

    def _slope_and_bias_grad(self, grad_output, y, code: int, alpha, dz, grad_bias, workspace) -> None:
        """dz = f'(y) dy and grad_bias = column sums of dz."""
        rows, cols = y.shape
        fusable = (
            y.dtype.char in "fd"
            and grad_output.dtype == y.dtype
            and grad_output.flags.c_contiguous
            and y.flags.c_contiguous
            and grad_bias.flags.c_contiguous
        )
        if not fusable:
            self._slope(grad_output, y, code, alpha, dz)
            self._column_sum(dz, axis=0, out=grad_bias)
            return
        tiles = -(-cols // 32)
        # Enough chunks to fill the GPU twice over, but each at least _MIN_ROWS_PER_CHUNK rows.
        chunks = max(1, min(-(-rows // _MIN_ROWS_PER_CHUNK), -(-2 * self._multiprocessors() // tiles)))
        rows_per_chunk = -(-rows // chunks)
        chunks = -(-rows // rows_per_chunk)
        sums = grad_bias if chunks == 1 else self._buffer(workspace, "bias_partials", (chunks, cols), y.dtype)
        numpy_int = numpy.int32
        self._raw_kernel("nanoae_slope_colsum", y.dtype)(
            (tiles, chunks),
            (32, 32),
            (grad_output, y, dz, sums, numpy_int(rows), numpy_int(cols), numpy_int(rows_per_chunk), numpy_int(code), alpha),
        )
        if chunks > 1:
            self._raw_kernel("nanoae_sum_chunks", y.dtype)(
                (-(-cols // 128),), (128,), (sums, grad_bias, numpy_int(chunks), numpy_int(cols))
            )

    def dense_backward(
        self,
        grad_output,
        x,
        y,
        weights,
        activation: str,
        alpha: float,
        grad_weights,
        grad_bias,
        need_input_grad: bool = True,
        workspace=None,
    ):
        if workspace is None:
            return reference.dense_backward(
                grad_output, x, y, weights, activation, alpha, grad_weights, grad_bias, need_input_grad
            )
        dz = self._buffer(workspace, "dz", y.shape, y.dtype)
        self._slope_and_bias_grad(grad_output, y, _code(activation), y.dtype.type(alpha), dz, grad_bias, workspace)
        self._matmul(x.T, dz, grad_weights)
        if not need_input_grad:
            return None
        dx = self._buffer(workspace, "dx", x.shape, y.dtype)
        self._matmul(dz, weights.T, dx)
        return dx

    # ---- losses --------------------------------------------------------------------
    def mse_loss_and_grad(self, prediction, target, workspace=None):
        if workspace is None or prediction.dtype.char not in "fd" or target.dtype != prediction.dtype:
            return reference.mse_loss_and_grad(prediction, target)
        dtype = prediction.dtype
        grad = self._buffer(workspace, "mse_grad", prediction.shape, dtype)
        loss = self._buffer(workspace, "mse_loss", (), dtype)
        scale = dtype.type(2.0 / prediction.size)
        if not (prediction.flags.c_contiguous and target.flags.c_contiguous) or prediction.size == 0:
            self._mse_grad(prediction, target, scale, grad)
            self._mse_loss(prediction, target, out=loss)
            return loss, grad
        size = prediction.size
        blocks = max(1, min(-(-size // 256), 4 * self._multiprocessors()))
        partial = self._buffer(workspace, "mse_partials", (blocks,), dtype)
        self._raw_kernel("nanoae_mse_grad_partial", dtype)((blocks,), (256,), (prediction, target, grad, partial, numpy.int64(size), scale))
        self._raw_kernel("nanoae_mean_partials", dtype)((1,), (256,), (partial, loss, numpy.int32(blocks), dtype.type(size)))
        return loss, grad

    # ---- data ----------------------------------------------------------------------
    def gather_rows(self, data, indices, workspace=None):
        if workspace is None or data.ndim < 1 or not data.flags.c_contiguous or indices.dtype.kind not in "iu":
            return reference.gather_rows(data, indices)
        out = self._buffer(workspace, f"rows{id(data)}", (indices.shape[0], *data.shape[1:]), data.dtype)
        width = data.size // data.shape[0] if data.shape[0] else 0
        self._gather(data, indices, numpy.int64(width), out)
        return out

    # ---- optimizers ----------------------------------------------------------------
    def _spare(self, workspace, params):
        if workspace is None:
            return self.cp.empty_like(params)
        return self._buffer(workspace, "spare", params.shape, params.dtype)

    def rmsprop_update(self, params, grads, mean_square, momentum_buffer, lr, rho, eps, momentum, flavor, workspace=None):
        flavors = {"tf1": 0, "keras": 1, "torch": 2}
        if flavor not in flavors:
            raise ValueError(f"unknown RMSProp flavor {flavor!r}; use 'tf1', 'keras' or 'torch'")
        t = params.dtype.type
        # Outputs may not alias, so without momentum a spare buffer stands in for it.
        buffer = momentum_buffer if momentum_buffer is not None else self._spare(workspace, params)
        self._rmsprop(
            grads, t(lr), t(rho), t(1 - rho), t(eps), t(momentum), flavors[flavor], bool(momentum), params, mean_square, buffer
        )

    def sgd_update(self, params, grads, velocity, lr, momentum, nesterov, weight_decay, workspace=None):
        t = params.dtype.type
        buffer = velocity if velocity is not None else self._spare(workspace, params)
        self._sgd(grads, t(lr), t(momentum), bool(nesterov), t(weight_decay), bool(momentum), bool(weight_decay), params, buffer)

    def adam_update(
        self, params, grads, first_moment, second_moment, lr, beta1, beta2, eps, step, weight_decay, decoupled, flavor, workspace=None
    ):
        if flavor not in ("torch", "keras"):
            raise ValueError(f"unknown Adam flavor {flavor!r}; use 'torch' or 'keras'")
        cp = self.cp
        if workspace is None:
            workspace = {}
        scalars = workspace.get("adam_scalars")
        if scalars is None or workspace.get("adam_scalars_step") != step - 1:
            # The device keeps its own step count, so a captured graph replays correctly.
            # Set (again) from `step` whenever the host's count and the device's part ways
            # (a first call, a loaded state): the host counts every eager call, and a graph
            # replay advances both.
            scalars = scalars if scalars is not None else cp.zeros(3, dtype=cp.float64)
            scalars[0] = step - 1
            workspace["adam_scalars"] = scalars
        workspace["adam_scalars_step"] = step
        self._adam_scalars(
            (1,), (1,), (scalars, numpy.float64(lr), numpy.float64(beta1), numpy.float64(beta2), numpy.int32(flavor == "keras"))
        )
        t = params.dtype.type
        use_decoupled = bool(decoupled and weight_decay)
        self._adam(
            grads,
            scalars,
            t(1 - beta1),
            t(beta2),
            t(1 - beta2),
            t(eps),
            t(0 if decoupled else weight_decay),
            t(1 - lr * weight_decay),
            use_decoupled,
            bool(weight_decay) and not decoupled,
            flavor == "keras",
            params,
            first_moment,
            second_moment,
        )

    # ---- the training step -----------------------------------------------------------
    def compile_train_step(self, model, data, target=None, workspace=None):
        """One training step on rows ``indices`` of data, replayed as a CUDA graph after
        its first (eager) call; see :mod:`nanoae.ops.gpu_graph`."""
        from nanoae.ops.gpu_graph import CapturedTrainStep  # noqa: PLC0415

        return CapturedTrainStep(self, model, data, target, workspace if workspace is not None else {})


_TABLE = None


def load():
    """The GPU ops table (built once; needs CuPy)."""
    global _TABLE
    if _TABLE is None:
        import cupy  # noqa: PLC0415

        _TABLE = GpuOps(cupy)
    return _TABLE


def _delegate_the_rest() -> None:
    """Ops with no GPU kernel of their own run the reference code (it works on CuPy arrays)."""
    from nanoae.ops import OPS_API  # noqa: PLC0415

    for name in OPS_API:
        if not hasattr(GpuOps, name):
            value = getattr(reference, name)
            setattr(GpuOps, name, staticmethod(value) if callable(value) else value)


_delegate_the_rest()
