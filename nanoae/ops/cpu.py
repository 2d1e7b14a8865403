"""The fast CPU path: the reference math with reused buffers and fused kernels.

:class:`CpuOps` is an :class:`~nanoae.ops.table.OpsTable` that overrides the functions
below and inherits the rest (the reference math). What it overrides is all about
memory traffic:

* workspace-backed (given a ``workspace`` dict; without one they run the reference):
  ``activation_forward``/``activation_backward``, ``dense_forward``/``dense_backward``,
  ``mse_loss_and_grad`` (2-D inputs), ``l2_penalty_grad`` and ``gather_rows``. Their
  outputs and scratch arrays live in the workspace and are reused while the shapes stay
  the same, so after the first step they allocate nothing (``gather_rows`` checks its
  indices first and raises IndexError for one out of range, as the reference does);
* ``l2_penalty`` is one BLAS dot (a scalar, no temporary), and the optimizer updates
  work in place on the parameter arena with scratch kept in their own workspace;
* ``step_is_finite`` (the guard before each update) is one pass over the gradient
  arena's bit patterns (Numba; NumPy: ``isfinite`` into a kept buffer), ending early at
  a NaN or an infinity, allocating nothing;
* matmuls write into those buffers (``np.matmul(..., out=)``), including the weight
  gradients, which go straight into the parameter arena's gradient views;
* bias-add + activation is one pass; activation' + the bias gradient is one pass;
  the MSE loss and its gradient are one pass; each optimizer update is one pass over
  the whole arena, flushing subnormal optimizer state to zero as it writes it (as the
  reference does: :func:`nanoae.ops.reference.flush_subnormals`);
* those passes run as Numba kernels when Numba is installed (``nanoae[fast]``), else
  as vectorized NumPy with ``out=`` (:mod:`nanoae.ops.kernels_numpy`).

Everything else is inherited from the reference table and allocates its results
afresh on every call: ``mse_loss``, the BCE losses, softmax and softmax cross-entropy,
the VAE's sampling and KL, ``l1_penalty_and_grad`` and the corruptions.
``compile_train_step`` is inherited too: it gathers each batch through this table's
``gather_rows``, so into reused buffers. So a steady training
step of a plain autoencoder on MSE (with or without weight decay) allocates nothing
per step beyond small bookkeeping, while models using those ops (BCE, a classifier, a
VAE, an L1 code penalty, denoising) allocate their arrays each step.

Arrays returned by the workspace-backed functions are workspace buffers: the next call
with the same workspace overwrites them. Layers and models own their workspaces and
copy what they hand to users (calling a model, ``reconstruct``, ``encode`` and ``decode``
return fresh arrays).

``CpuOps(kernels)`` builds a table on a given kernel set; ``load("auto")`` picks Numba
when it imports, unless ``NANOAE_NUMBA=0``.
"""

from __future__ import annotations

import math
import os

import numpy as np

from nanoae.ops import kernels_numpy
from nanoae.ops.codes import activation_code
from nanoae.ops.table import OpsTable, is_row_source
from nanoae.params import aligned_empty


def _buffer(workspace: dict, key: str, shape, dtype) -> np.ndarray:
    """The workspace's array for ``key``, (re)allocated only when shape or dtype change.

    Allocated on a 64-byte boundary: these are the matmuls' outputs (y, dx), and OpenBLAS
    writes the small ones (the 128-wide layers at batch 64) up to 1.6x faster there than
    at NumPy's usual 16 bytes past one (benchmarks/matmul_shapes.py)."""
    array = workspace.get(key)
    if array is None or array.shape != tuple(shape) or array.dtype != dtype:
        array = aligned_empty(shape, dtype)
        workspace[key] = array
    return array


class CpuOps(OpsTable):
    """An ops table on one kernel set (a module: kernels_numba or kernels_numpy)."""

    def __init__(self, kernels) -> None:
        self.kernels = kernels
        self.name = f"cpu-{kernels.NAME}"

    def _elementwise_scratch(self, workspace, shape, dtype):
        """A float and a boolean scratch array for the NumPy kernels (Numba needs none)."""
        if self.kernels.NAME == "numba":
            return None, None
        return _buffer(workspace, "scratch", shape, dtype), _buffer(workspace, "mask", shape, np.bool_)

    # ---- activations --------------------------------------------------------------
    def activation_forward(self, z, activation: str, alpha: float = 0.0, workspace=None):
        if workspace is None:
            return super().activation_forward(z, activation, alpha)
        dtype = z.dtype.type
        out = _buffer(workspace, "activation", z.shape, z.dtype)
        scratch, mask = self._elementwise_scratch(workspace, z.shape, z.dtype)
        self.kernels.activation(z, out, activation_code(activation), dtype(alpha), dtype(1), scratch, mask)
        return out

    def activation_backward(self, grad_output, y, activation: str, alpha: float = 0.0, workspace=None):
        if workspace is None:
            return super().activation_backward(grad_output, y, activation, alpha)
        dtype = y.dtype.type
        out = _buffer(workspace, "activation_grad", y.shape, y.dtype)
        scratch, mask = self._elementwise_scratch(workspace, y.shape, y.dtype)
        self.kernels.activation_grad(grad_output, y, activation_code(activation), dtype(alpha), dtype(1), out, scratch, mask)
        return out

    # ---- dense ---------------------------------------------------------------------
    def dense_forward(self, x, weights, bias, activation: str, alpha: float = 0.0, workspace=None):
        """y = act(x @ W + b) into the workspace's "y" buffer (batch, out)."""
        if workspace is None:
            return super().dense_forward(x, weights, bias, activation, alpha)
        dtype = weights.dtype.type
        shape = (x.shape[0], weights.shape[1])
        y = _buffer(workspace, "y", shape, weights.dtype)
        np.matmul(x, weights, out=y)
        scratch, mask = self._elementwise_scratch(workspace, shape, weights.dtype)
        self.kernels.bias_activation(y, bias, activation_code(activation), dtype(alpha), dtype(1), scratch, mask)
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
        """dz = act'(y) dy and db in one pass; dW = x^T dz and dx = dz W^T by BLAS into buffers."""
        if workspace is None:
            return super().dense_backward(
                grad_output, x, y, weights, activation, alpha, grad_weights, grad_bias, need_input_grad
            )
        dtype = weights.dtype.type
        grad_pre_activation = _buffer(workspace, "dz", y.shape, y.dtype)
        scratch, mask = self._elementwise_scratch(workspace, y.shape, y.dtype)
        self.kernels.activation_grad_bias(
            grad_output, y, activation_code(activation), dtype(alpha), dtype(1), grad_pre_activation, grad_bias, scratch, mask
        )
        np.matmul(x.T, grad_pre_activation, out=grad_weights)
        if not need_input_grad:
            return None
        grad_input = _buffer(workspace, "dx", x.shape, y.dtype)
        np.matmul(grad_pre_activation, weights.T, out=grad_input)
        return grad_input

    # ---- losses and regularizers -----------------------------------------------------
    def mse_loss_and_grad(self, prediction, target, workspace=None):
        """Loss (0-d array of the dtype) and 2 (p - t) / N in one pass."""
        if workspace is None or prediction.ndim != 2:
            return super().mse_loss_and_grad(prediction, target)
        dtype = prediction.dtype.type
        grad = _buffer(workspace, "mse_grad", prediction.shape, prediction.dtype)
        column_sums = _buffer(workspace, "mse_column_sums", prediction.shape[1:], np.float64)
        total = self.kernels.mse(prediction, target, grad, dtype(2.0 / prediction.size), column_sums)
        return np.asarray(total / prediction.size, dtype=prediction.dtype), grad

    def l2_penalty(self, weights, strength: float):
        """strength / 2 * sum(W^2) as one BLAS dot of W with itself (no W-sized temporary).

        A scalar of the weights' dtype, as the reference's; the dot sums in another order
        than the reference's pairwise sum, so the two agree to rounding, not bit for bit.
        """
        flat = weights.reshape(-1)  # a view: arena views are contiguous
        return np.dot(flat, flat) * weights.dtype.type(0.5 * strength)

    def l2_penalty_grad(self, weights, grad_weights, strength: float, workspace=None):
        """grad_weights += strength * W without a temporary per call: two passes through a
        scratch buffer kept in ``workspace`` (scratch = strength * W; grad_weights += scratch).
        Without a workspace, the reference (which allocates strength * W)."""
        if workspace is None:
            return super().l2_penalty_grad(weights, grad_weights, strength)
        scratch = _buffer(workspace, "l2", weights.shape, weights.dtype)
        np.multiply(weights, weights.dtype.type(strength), out=scratch)
        np.add(grad_weights, scratch, out=grad_weights)
        return None

    # ---- the guard between backward and the update -----------------------------------
    # float dtype -> (unsigned integer of its width, the exponent bits)
    _EXPONENT_BITS = {
        np.dtype(np.float32): (np.uint32, np.uint32(0x7F80_0000)),
        np.dtype(np.float64): (np.uint64, np.uint64(0x7FF0_0000_0000_0000)),
    }

    def step_is_finite(self, loss, grads, workspace=None) -> bool:
        """The loss and every gradient finite? One pass over the flat gradient arena,
        ending at the first chunk with a NaN or infinity, into nothing allocated per call
        (with a workspace: the integer view or the boolean buffer is kept there).
        Anything else (no workspace, a non-contiguous or non-float array) runs the reference."""
        if not math.isfinite(loss):
            return False
        layout = self._EXPONENT_BITS.get(grads.dtype)
        if workspace is None or layout is None or grads.ndim != 1 or not grads.flags.c_contiguous:
            return super().step_is_finite(loss, grads)
        if self.kernels.NAME == "numba":
            kept = workspace.get("finite_bits")
            if kept is None or kept[0] is not grads:
                kept = workspace["finite_bits"] = (grads, grads.view(layout[0]))
            return self.kernels.all_finite(kept[1], layout[1])
        return self.kernels.all_finite(grads, _buffer(workspace, "finite_mask", grads.shape, np.bool_))

    # ---- data ----------------------------------------------------------------------
    def gather_rows(self, data, indices, workspace=None):
        """data[indices] into a reused (len(indices), features) buffer.

        IndexError for an index outside [-n, n), as the reference raises: checked on the
        (batch,) indices' min and max, because ``np.take(..., mode="raise", out=)``
        gathers into a temporary copy, a batch-sized allocation every step. Once checked,
        "wrap" maps a negative index to its row as indexing does. A row source
        (:class:`nanoae.data.rows.ScaledRows`) gathers and scales into the float32 buffer
        itself, with scratch it keeps: nothing allocated per step either.
        """
        if workspace is None or indices.dtype.kind not in "iu":
            return super().gather_rows(data, indices)
        if is_row_source(data):  # read and scaled into the same reused float32 buffer
            out = _buffer(workspace, f"rows{id(data)}", (indices.shape[0], *data.shape[1:]), np.float32)
            return data.gather(indices, out=out)
        rows = data.shape[0]
        if indices.size:
            lowest, highest = int(indices.min()), int(indices.max())
            if lowest < -rows or highest >= rows:
                bad = lowest if lowest < -rows else highest
                raise IndexError(f"index {bad} is out of bounds for axis 0 with size {rows}")
        out = _buffer(workspace, f"rows{id(data)}", (indices.shape[0], *data.shape[1:]), data.dtype)
        np.take(data, indices, axis=0, out=out, mode="wrap")
        return out

    # ---- optimizers ----------------------------------------------------------------
    # Each update is one kernel pass over the arena. Scalars go in cast to the arena's
    # dtype; the on/off switches (momentum, weight decay, decoupled decay) are decided on
    # the Python values, as the reference decides them: a momentum of 1e-300 rounds to 0
    # in float32 but still routes the step through the momentum buffer there.
    @staticmethod
    def _scratch(workspace, params):
        """Three float buffers and a boolean one (the flush's mask) for the NumPy kernels."""
        if workspace is None:
            workspace = {}
        floats = tuple(_buffer(workspace, f"scratch{k}", params.shape, params.dtype) for k in range(3))
        return (*floats, _buffer(workspace, "scratch_mask", params.shape, np.bool_))

    @staticmethod
    def _smallest_normal(params):
        """The dtype's smallest normal number: state below it is flushed to +0
        (reference.flush_subnormals)."""
        return params.dtype.type(np.finfo(params.dtype).tiny)

    def rmsprop_update(self, params, grads, mean_square, momentum_buffer, lr, rho, eps, momentum, flavor, workspace=None):
        dtype = params.dtype.type
        scratch = () if self.kernels.NAME == "numba" else self._scratch(workspace, params)
        lr, rho, complement, eps, momentum_value = dtype(lr), dtype(rho), dtype(1 - rho), dtype(eps), dtype(momentum)
        state = (params, grads, mean_square, momentum_buffer)
        tiny = self._smallest_normal(params)
        if flavor == "tf1":
            self.kernels.rmsprop_tf1(*state, lr, complement, eps, momentum_value, bool(momentum), tiny, scratch)
        elif flavor == "keras":
            self.kernels.rmsprop_keras(*state, lr, rho, complement, eps, momentum_value, bool(momentum), tiny, scratch)
        elif flavor == "torch":
            self.kernels.rmsprop_torch(*state, lr, rho, complement, eps, momentum_value, bool(momentum), tiny, scratch)
        else:
            raise ValueError(f"unknown RMSProp flavor {flavor!r}; use 'tf1', 'keras' or 'torch'")

    def sgd_update(self, params, grads, velocity, lr, momentum, nesterov, weight_decay, workspace=None):
        dtype = params.dtype.type
        scratch = () if self.kernels.NAME == "numba" else self._scratch(workspace, params)
        self.kernels.sgd(
            params, grads, velocity, dtype(lr), dtype(momentum), bool(nesterov), dtype(weight_decay),
            bool(momentum), bool(weight_decay), self._smallest_normal(params), scratch,
        )  # fmt: skip

    def adam_update(
        self, params, grads, first_moment, second_moment, lr, beta1, beta2, eps, step, weight_decay, decoupled, flavor, workspace=None
    ):
        if flavor not in ("torch", "keras"):
            raise ValueError(f"unknown Adam flavor {flavor!r}; use 'torch' or 'keras'")
        dtype = params.dtype.type
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        keras = flavor == "keras"
        lr_hat = lr * bias_correction2**0.5 / bias_correction1 if keras else lr / bias_correction1
        # Its own flag: a factor of 0 (lr * weight_decay == 1) is a real decay, to zero.
        use_decoupled = bool(decoupled and weight_decay)
        scratch = () if self.kernels.NAME == "numba" else self._scratch(workspace, params)
        self.kernels.adam(
            params,
            grads,
            first_moment,
            second_moment,
            dtype(lr_hat),
            dtype(1 - beta1),
            dtype(beta2),
            dtype(1 - beta2),
            dtype(eps),
            dtype(bias_correction2**0.5),
            dtype(0 if decoupled else weight_decay),
            bool(weight_decay) and not decoupled,
            dtype(1 - lr * weight_decay),
            use_decoupled,
            keras,
            self._smallest_normal(params),
            scratch,
        )


def numba_available() -> tuple[bool, str]:
    """(True, "") when Numba imports here, else (False, why)."""
    if os.environ.get("NANOAE_NUMBA", "1") == "0":
        return False, "disabled by NANOAE_NUMBA=0"
    try:
        import numba  # noqa: F401, PLC0415
    except ImportError as exc:
        return False, f"numba is not installed ({exc}); pip install 'nanoae[fast]'"
    return True, ""


_TABLES: dict[str, CpuOps] = {}


def load(kernels: str = "auto") -> CpuOps:
    """The CPU ops table on ``kernels``: "numba", "numpy", or "auto" (Numba when available)."""
    if kernels == "auto":
        kernels = "numba" if numba_available()[0] else "numpy"
    if kernels not in ("numba", "numpy"):
        raise ValueError(f"unknown kernel set {kernels!r}; use 'numba', 'numpy' or 'auto'")
    if kernels not in _TABLES:
        if kernels == "numba":
            ok, why = numba_available()
            if not ok:
                raise ImportError(f"the Numba kernels cannot load: {why}")
            from nanoae.ops import kernels_numba as module  # noqa: PLC0415 (needs the optional numba)
        else:
            module = kernels_numpy
        _TABLES[kernels] = CpuOps(module)
    return _TABLES[kernels]


def set_num_threads(count: int) -> None:
    """Threads for BLAS (through threadpoolctl, when installed) and for Numba's kernels."""
    try:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415

        threadpool_limits(count)
    except ImportError:
        pass
    if numba_available()[0]:
        import numba  # noqa: PLC0415

        numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
