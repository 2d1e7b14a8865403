"""The GPU path: the reference math as fused CuPy kernels over reused device buffers.

Same functions and signatures as :mod:`nanoae.ops.reference`. On a GPU the step of the
tutorial model is ~1.4 GFLOP, which an H100 does in well under 0.1 ms, so what decides
the speed is the number of kernel launches and host round trips, not arithmetic:

* bias-add + activation: one elementwise kernel; activation' : one kernel, then the
  bias gradient as one column reduction into the arena's gradient view;
* the MSE loss and its gradient: one elementwise kernel and one reduction into a
  preallocated scalar (no host sync: the loss stays on the device until it is logged);
* each optimizer step: one elementwise kernel over the whole flat arena;
* matmuls through cuBLAS into preallocated outputs (``cupy.matmul(..., out=)``),
  float32 (TF32 only when asked for: ``get_backend("cupy", allow_tf32=True)``);
* nothing allocates in a steady step, which is what lets :mod:`nanoae.ops.gpu_graph`
  capture the whole training step as one CUDA graph.

Adam's bias corrections change every step; a captured graph cannot take new scalar
arguments, so they are read from a small device array that a kernel inside the
graph advances (see :meth:`GpuOps.adam_update`).

Written against CuPy's public API (ElementwiseKernel, ReductionKernel, matmul/sum
with ``out=``); it needs a CUDA GPU, so its tests skip without one.
"""

from __future__ import annotations

import numpy

from nanoae.ops import reference

ACTIVATIONS = reference.ACTIVATIONS
_CODES = {"identity": 0, "relu": 1, "leaky_relu": 2, "sigmoid": 3, "tanh": 4}

_ACTIVATION_SOURCE = """
    T z = x + b;
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

# scalars[0] = step t (as a float), [1] = lr_hat, [2] = sqrt(1 - beta2^t); advanced on the device
_ADAM_SCALARS_SOURCE = r"""
extern "C" __global__ void nanoae_adam_scalars(float* scalars, const double lr, const double beta1,
                                               const double beta2, const int keras) {
    double t = (double)scalars[0] + 1.0;
    scalars[0] = (float)t;
    double bc1 = 1.0 - pow(beta1, t);
    double bc2 = 1.0 - pow(beta2, t);
    scalars[1] = (float)(keras ? lr * sqrt(bc2) / bc1 : lr / bc1);
    scalars[2] = (float)sqrt(bc2);
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


def _code(activation: str) -> int:
    try:
        return _CODES[activation]
    except KeyError:
        raise ValueError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}") from None


class GpuOps:
    """An ops table (see :mod:`nanoae.ops`) of CuPy kernels."""

    ACTIVATIONS = ACTIVATIONS
    name = "gpu-cupy"

    def __init__(self, cupy) -> None:
        self.cp = cupy
        ew = cupy.ElementwiseKernel
        self._bias_activation = ew(
            "T x, T b, int32 code, T alpha", "T y", _ACTIVATION_SOURCE, "nanoae_bias_activation"
        )
        self._slope = ew("T dy, T y, int32 code, T alpha", "T dz", _SLOPE_SOURCE, "nanoae_activation_slope")
        self._mse_grad = ew(
            "T p, T t, T scale", "T grad, T square", "T d = p - t; grad = d * scale; square = d * d;", "nanoae_mse_grad"
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
            "T grad, raw float32 scalars, T beta1_complement, T beta2, T beta2_complement, T eps, "
            "T weight_decay, T decoupled_factor, bool decoupled, bool use_decay, bool keras",
            "T param, T first_moment, T second_moment",
            _ADAM_SOURCE,
            "nanoae_adam",
        )
        self._adam_scalars = cupy.RawKernel(_ADAM_SCALARS_SOURCE, "nanoae_adam_scalars")

    def __repr__(self) -> str:
        return "<nanoae ops gpu-cupy>"

    def _buffer(self, workspace: dict, key: str, shape, dtype):
        array = workspace.get(key)
        if array is None or array.shape != tuple(shape) or array.dtype != dtype:
            array = self.cp.empty(shape, dtype=dtype)
            workspace[key] = array
        return array

    # ---- activations --------------------------------------------------------------
    def activation_forward(self, z, activation: str, alpha: float = 0.0, workspace=None):
        if workspace is None:
            return reference.activation_forward(z, activation, alpha)
        out = self._buffer(workspace, "activation", z.shape, z.dtype)
        zero = self._buffer(workspace, "zero_bias", (z.shape[1],), z.dtype)
        zero.fill(0)
        self._bias_activation(z, zero, _code(activation), z.dtype.type(alpha), out)
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
        self.cp.matmul(x, weights, out=y)
        self._bias_activation(y, bias, _code(activation), weights.dtype.type(alpha), y)
        return y

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
        self._slope(grad_output, y, _code(activation), y.dtype.type(alpha), dz)
        self.cp.sum(dz, axis=0, out=grad_bias)
        self.cp.matmul(x.T, dz, out=grad_weights)
        if not need_input_grad:
            return None
        dx = self._buffer(workspace, "dx", x.shape, y.dtype)
        self.cp.matmul(dz, weights.T, out=dx)
        return dx

    # ---- losses --------------------------------------------------------------------
    def mse_loss(self, prediction, target):
        return reference.mse_loss(prediction, target)

    def mse_loss_and_grad(self, prediction, target, workspace=None):
        if workspace is None:
            return reference.mse_loss_and_grad(prediction, target)
        dtype = prediction.dtype
        grad = self._buffer(workspace, "mse_grad", prediction.shape, dtype)
        square = self._buffer(workspace, "mse_square", prediction.shape, dtype)
        loss = self._buffer(workspace, "mse_loss", (), dtype)
        self._mse_grad(prediction, target, dtype.type(2.0 / prediction.size), grad, square)
        self.cp.mean(square, out=loss)
        return loss, grad

    def bce_loss(self, probability, target, eps: float = 1e-7):
        return reference.bce_loss(probability, target, eps)

    def bce_loss_and_grad(self, probability, target, eps: float = 1e-7, workspace=None):
        return reference.bce_loss_and_grad(probability, target, eps)

    def bce_logits_loss(self, logits, target):
        return reference.bce_logits_loss(logits, target)

    def bce_logits_loss_and_grad(self, logits, target, workspace=None):
        return reference.bce_logits_loss_and_grad(logits, target)

    # ---- data ----------------------------------------------------------------------
    def gather_rows(self, data, indices, workspace=None):
        if workspace is None:
            return reference.gather_rows(data, indices)
        out = self._buffer(workspace, f"rows{id(data)}", (indices.shape[0], *data.shape[1:]), data.dtype)
        self.cp.take(data, indices, axis=0, out=out)
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
        if scalars is None:
            # The device keeps its own step count, so a captured graph replays correctly.
            scalars = cp.zeros(3, dtype=cp.float32)
            scalars[0] = step - 1
            workspace["adam_scalars"] = scalars
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
