"""The GPU path: the reference math as fused CuPy kernels over reused device buffers.

:class:`GpuOps` is an :class:`~nanoae.ops.table.OpsTable` (same functions, same calling
convention) that overrides ``activation_forward``/``activation_backward``,
``dense_forward``/``dense_backward``, ``mse_loss_and_grad``, ``gather_rows``, the three
optimizer updates, ``step_is_finite`` (not checked while a graph is captured: see there)
and ``compile_train_step``, and inherits the rest: the reference math,
which runs as is on CuPy arrays. Given a ``workspace``, the overridden functions write
into buffers kept there and allocate nothing after their first call. On a GPU the step of the
tutorial model at batch 256 is ~1.4 GFLOP, which an H100 does in a few tens of
microseconds, so what decides the speed is the number of kernel launches and host
round trips, not arithmetic:

* bias-add + activation: one elementwise kernel, in place on the matmul's output;
* activation' and the bias gradient: one kernel (:data:`nanoae.ops.gpu_kernels.RAW_SOURCE`) that
  writes dz and sums its columns in a fixed order (deterministic, no atomics); a big
  batch is cut into row chunks whose partial sums a second, tiny kernel adds;
* the MSE loss and its gradient: one kernel that writes the gradient and per-block
  partial sums, whose last block to finish adds them in a fixed order into a
  preallocated 0-d array (deterministic; no host sync: the loss stays on the device
  until logged); non-contiguous or empty inputs take an elementwise kernel and a
  reduction instead;
* each optimizer step: one elementwise kernel over the whole flat arena (Adam: plus a
  one-thread kernel that advances its bias corrections);
* the mini-batch: one gather kernel from the dataset already on the device;
* float32 matmuls: cuBLASLt (:mod:`nanoae.ops.gpu_cublaslt`), with the bias and a ReLU
  (or no activation) in the forward GEMM's epilogue, the bias gradient in the epilogue
  of ``grad_weights = x^T dz``, and per shape the fastest of the heuristic's algorithms,
  timed at first use; each plan is checked against the plain path below at its first
  call and dropped if it disagrees (:meth:`GpuOps._lt_matmul`; ``NANOAE_GPU_CUBLASLT=0``
  turns cuBLASLt off);
* the plain matmuls: ``cublasGemmEx`` called directly through ctypes (:class:`nanoae.ops.gpu_cublas.Cublas`: its own
  handle and workspace, so that a CUDA graph can capture them; CuPy refuses cuBLAS
  calls during capture) into preallocated outputs, a transposed operand being a cuBLAS
  flag, not a copy; ``cupy.matmul(..., out=)`` when direct cuBLAS is unavailable or
  ``NANOAE_GPU_CUBLAS=cupy``; float32 unless TF32 or bfloat16 tensor cores are asked
  for (``get_backend("cupy", allow_tf32=True)`` or ``allow_bf16=True``);
* a steady step of a model whose functions are all fused here (dense layers, MSE,
  every optimizer) allocates nothing, and :mod:`nanoae.ops.gpu_graph` captures the
  whole training step as one CUDA graph and replays it. What this table inherits from the
  reference (BCE, softmax, the VAE's sampler and KL, the L2 and L1 penalties) allocates
  temporaries each step; the graph's capture-time allocator keeps those blocks alive.

Adam's bias corrections change every step; a captured graph cannot take new scalar
arguments, so they live in a small float64 device array that a one-thread kernel
inside the step advances (see :meth:`GpuOps.adam_update`).

The CUDA sources and their compilation live in :mod:`nanoae.ops.gpu_kernels`, the
ctypes cuBLAS binding in :mod:`nanoae.ops.gpu_cublas`, the graph capture in
:mod:`nanoae.ops.gpu_graph`. Everything here needs a CUDA GPU at run time (the modules
import without CuPy); its tests (``tests/test_gpu.py``) skip without one.

Unlike the CPU table, ``gather_rows`` does not raise for a row number outside [-n, n):
checking would read the indices back to the host every step, which cannot run inside a
captured graph. Given a workspace, its kernel wraps row numbers modulo n, as CuPy's own
indexing (its path without a workspace) does: negative ones count from the end, as in
NumPy, and no row number makes it read outside the data.
"""

from __future__ import annotations

import os
import warnings

import numpy

from nanoae.ops.codes import IDENTITY, RELU, activation_code
from nanoae.ops.gpu_cublas import Cublas
from nanoae.ops.gpu_cublaslt import (
    COMPUTE_32F,
    COMPUTE_32F_FAST_16BF,
    COMPUTE_32F_FAST_TF32,
    EPILOGUE_BGRADA,
    EPILOGUE_BIAS,
    EPILOGUE_DEFAULT,
    EPILOGUE_DRELU,
    EPILOGUE_RELU_AUX_BIAS,
    CublasLt,
)
from nanoae.ops.gpu_graph import CapturedTrainStep
from nanoae.ops.gpu_kernels import GpuKernels
from nanoae.ops.table import OpsTable

MIN_ROWS_PER_CHUNK = 256  # below this many rows a column's sum is one chunk: one kernel
#: How far a cuBLASLt result may stray from the plain path's at its first use, relative
#: to the largest magnitude in the plain result (a wrong layout or epilogue is off by O(1)).
LT_TOLERANCE = {COMPUTE_32F: 1e-4, COMPUTE_32F_FAST_TF32: 2e-2, COMPUTE_32F_FAST_16BF: 5e-2}


def _address(array) -> int:
    """Where a device array's data starts (what marks a ReLU mask as that array's)."""
    return array.data.ptr


class FusedGemmUnavailable(RuntimeWarning):
    """A cuBLASLt plan disagreed with the plain path at its first use; the plain path runs."""


class GpuOps(OpsTable):
    """An ops table of CuPy kernels (see the module docstring for what it overrides)."""

    name = "gpu-cupy"

    def __init__(self, cupy, cublaslt: bool | None = None) -> None:
        """cublaslt: use cuBLASLt where it can (None: unless NANOAE_GPU_CUBLASLT=0)."""
        self.cp = cupy
        self.kernels = GpuKernels(cupy)
        self._sm_count = None
        # Matmuls: libcublas directly (capturable in a CUDA graph), else cupy.matmul
        # (NANOAE_GPU_CUBLAS=cupy forces the latter; the step then runs without a graph).
        self.blas_error = ""
        self._blas = None
        if os.environ.get("NANOAE_GPU_CUBLAS", "direct") != "cupy":
            try:
                self._blas = Cublas(cupy)
            except Exception as exc:  # noqa: BLE001 (no direct cuBLAS: CuPy's matmul, no graphs)
                self.blas_error = f"{type(exc).__name__}: {exc}"
        # float32 matmuls with fused epilogues and a per-shape algorithm: cuBLASLt, each
        # plan checked against the plain path at its first use (NANOAE_GPU_CUBLASLT=0: off).
        self.lt_error = ""
        self._lt = None
        self._lt_verdicts: dict = {}  # plan key -> True (checked, in use) or False (plain path)
        if cublaslt is None:
            cublaslt = os.environ.get("NANOAE_GPU_CUBLASLT", "1") != "0"
        if self._blas is not None and cublaslt:
            try:
                self._lt = CublasLt(cupy)
            except Exception as exc:  # noqa: BLE001 (no cuBLASLt: cuBLAS and nanoae's kernels)
                self.lt_error = f"{type(exc).__name__}: {exc}"

    def _buffer(self, workspace: dict, key: str, shape, dtype):
        array = workspace.get(key)
        if array is None or array.shape != tuple(shape) or array.dtype != dtype:
            array = self.cp.empty(shape, dtype=dtype)
            workspace[key] = array
        return array

    def _multiprocessors(self) -> int:
        if self._sm_count is None:
            device = self.cp.cuda.Device()
            self._sm_count = int(device.attributes.get("MultiProcessorCount", 108))
        return self._sm_count

    def _plain_matmul(self, a, b, out) -> None:
        """out = a @ b through cuBLAS, into the given buffer (a transposed view is a flag)."""
        if self._blas is None or not self._blas.matmul(a, b, out):
            self.cp.matmul(a, b, out=out)

    def _matmul(self, a, b, out) -> None:
        """out = a @ b: cuBLASLt with the algorithm timed fastest for this shape where it
        has been checked, else cuBLAS (:meth:`_plain_matmul`)."""
        self._lt_matmul(a, b, out, EPILOGUE_DEFAULT, None, lambda: self._plain_matmul(a, b, out))

    def _lt_matmul(self, left, right, out, epilogue: int, bias, plain, prologue=None, aux=None) -> bool:
        """out = epilogue(left @ right) through cuBLASLt, or ``plain()`` (which writes the
        same outputs the unfused way) where cuBLASLt cannot or its plan disagreed.
        Returns True when the fused product's results stand (and with them what it wrote
        into ``aux``), False when ``plain()`` ran instead.

        A plan runs only after its first result was checked against ``plain``'s: at a
        plan's first use (always an eager call: the graph captures the second step)
        both run, ``out`` (and, for the bias-gradient epilogue, ``bias``) are compared,
        and the plan is kept or dropped for good; when kept, the fused results are put
        back, so the outputs and ``aux`` come from the same product. ``prologue()`` runs
        before the fused matmul only (work that ``plain`` does itself, e.g. the slope).
        """
        lt = self._lt
        key = lt.key(left, right, out, epilogue, bias, aux) if lt is not None else None
        verdict = self._lt_verdicts.get(key, None) if key is not None else False
        capturing = self._capturing() if key is not None else False
        if verdict is False or (verdict is None and capturing):
            plain()
            return False
        if verdict:
            if prologue is not None:
                prologue()
            if lt.matmul(left, right, out, epilogue, bias, capturing=capturing, aux=aux):
                return True
            plain()
            return False
        # First use, eager: fused, then plain over the same outputs, then compare.
        if prologue is not None:
            prologue()
        if not lt.matmul(left, right, out, epilogue, bias, aux=aux):
            self._lt_verdicts[key] = False
            plain()
            return False
        outputs = (out, bias) if epilogue == EPILOGUE_BGRADA else (out,)
        fused = [array.copy() for array in outputs]
        plain()
        tolerance = LT_TOLERANCE[key[1]]
        cp = self.cp
        agree = all(
            float(cp.abs(mine - theirs).max()) <= tolerance * max(1.0, float(cp.abs(theirs).max())) for mine, theirs in zip(fused, outputs)
        )
        self._lt_verdicts[key] = agree
        if not agree:
            warnings.warn(
                f"cuBLASLt's result for {left.shape} @ {right.shape} (epilogue {epilogue}) disagreed with cuBLAS's; "
                "that product runs unfused from now on",
                FusedGemmUnavailable,
                stacklevel=4,
            )
            return False
        for array, mine in zip(outputs, fused):
            array[...] = mine
        return True

    # ---- activations --------------------------------------------------------------
    def activation_forward(self, z, activation: str, alpha: float = 0.0, workspace=None):
        if workspace is None:
            return super().activation_forward(z, activation, alpha)
        out = self._buffer(workspace, "activation", z.shape, z.dtype)
        self.kernels.activation(z, activation_code(activation), z.dtype.type(alpha), out)
        return out

    def activation_backward(self, grad_output, y, activation: str, alpha: float = 0.0, workspace=None):
        if workspace is None:
            return super().activation_backward(grad_output, y, activation, alpha)
        out = self._buffer(workspace, "activation_grad", y.shape, y.dtype)
        self.kernels.slope(grad_output, y, activation_code(activation), y.dtype.type(alpha), out)
        return out

    # ---- dense ---------------------------------------------------------------------
    def dense_forward(self, x, weights, bias, activation: str, alpha: float = 0.0, workspace=None):
        if workspace is None:
            return super().dense_forward(x, weights, bias, activation, alpha)
        y = self._buffer(workspace, "y", (x.shape[0], weights.shape[1]), weights.dtype)
        code = activation_code(activation)
        scalar_alpha = weights.dtype.type(alpha)

        def plain():
            self._plain_matmul(x, weights, y)
            self.kernels.bias_activation(y, bias, code, scalar_alpha, y)

        if code == RELU and self._lt is not None and y.dtype.char == "f":
            # Bias and ReLU in the epilogue, which also keeps the ReLU's bit mask for the
            # layer above to apply this layer's slope in its own product (see
            # dense_backward_chain); the mask is valid for this output only.
            aux_ld = -(-y.shape[1] // 128) * 128
            aux = self._buffer(workspace, "relu_aux", (aux_ld * y.shape[0] // 8,), numpy.uint8)
            fused = self._lt_matmul(x, weights, y, EPILOGUE_RELU_AUX_BIAS, bias, plain, aux=aux)
            workspace["relu_aux_of"] = (_address(y), y.shape) if fused else None
        elif code == IDENTITY:  # the bias in the GEMM's epilogue
            self._lt_matmul(x, weights, y, EPILOGUE_BIAS, bias, plain)
        else:
            self._matmul(x, weights, y)
            self.kernels.bias_activation(y, bias, code, scalar_alpha, y)
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
            self.kernels.slope(grad_output, y, code, alpha, dz)
            self.kernels.column_sum(dz, axis=0, out=grad_bias)
            return
        tiles = -(-cols // 32)
        # Enough chunks to fill the GPU twice over, but each at least MIN_ROWS_PER_CHUNK rows.
        chunks = max(1, min(-(-rows // MIN_ROWS_PER_CHUNK), -(-2 * self._multiprocessors() // tiles)))
        rows_per_chunk = -(-rows // chunks)
        chunks = -(-rows // rows_per_chunk)
        sums = grad_bias if chunks == 1 else self._buffer(workspace, "bias_partials", (chunks, cols), y.dtype)
        numpy_int = numpy.int32
        self.kernels.raw("nanoae_slope_colsum", y.dtype)(
            (tiles, chunks),
            (32, 32),
            (grad_output, y, dz, sums, numpy_int(rows), numpy_int(cols), numpy_int(rows_per_chunk), numpy_int(code), alpha),
        )
        if chunks > 1:
            self.kernels.raw("nanoae_sum_chunks", y.dtype)(
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
            return super().dense_backward(
                grad_output, x, y, weights, activation, alpha, grad_weights, grad_bias, need_input_grad
            )
        return self.dense_backward_chain(
            grad_output, x, y, weights, activation, alpha, grad_weights, grad_bias, need_input_grad, workspace, False, None
        )

    def _weight_and_bias_grads(self, grad_output, x, y, code: int, alpha, grad_weights, grad_bias, workspace, grad_is_slope: bool):
        """grad_weights = x^T dz with grad_bias (the sums of dz over the batch) in its
        epilogue; dz = f'(y) dy by a slope kernel first, or grad_output itself when it is
        dz already. Returns dz."""
        if grad_is_slope:
            dz = grad_output

            def plain():
                self.kernels.column_sum(dz, axis=0, out=grad_bias)
                self._plain_matmul(x.T, dz, grad_weights)

            self._lt_matmul(x.T, dz, grad_weights, EPILOGUE_BGRADA, grad_bias, plain)
            return dz
        dz = self._buffer(workspace, "dz", y.shape, y.dtype)

        def plain():
            self._slope_and_bias_grad(grad_output, y, code, alpha, dz, grad_bias, workspace)
            self._plain_matmul(x.T, dz, grad_weights)

        def slope():
            self.kernels.slope(grad_output, y, code, alpha, dz)

        self._lt_matmul(x.T, dz, grad_weights, EPILOGUE_BGRADA, grad_bias, plain, prologue=slope)
        return dz

    @property
    def fuses_input_slope(self) -> bool:
        """Chains pay where cuBLASLt can put a ReLU's slope into the product above it."""
        return self._lt is not None

    def dense_backward_chain(
        self, grad_output, x, y, weights, activation: str, alpha: float, grad_weights, grad_bias,
        need_input_grad: bool, workspace, grad_is_slope: bool, below=None,
    ):  # fmt: skip
        """dense_backward inside a chain of Dense layers (the contract:
        :meth:`nanoae.ops.table.OpsTable.dense_backward_chain`).

        grad_is_slope: grad_output is dz already, so ``grad_weights = x^T dz`` with the
        bias gradient in its epilogue is all that is left here. below: the ReLU layer
        under this one; ``dx = relu'(x) * (dz W^T)`` is one cuBLASLt product with the
        DRELU epilogue, reading the bit mask that layer's forward wrote, where that mask
        is there and the plan passed its check; else the product and a slope kernel.
        """
        if workspace is None:
            return super().dense_backward_chain(
                grad_output, x, y, weights, activation, alpha, grad_weights, grad_bias, need_input_grad, workspace, grad_is_slope, below
            )
        code, scalar_alpha = activation_code(activation), y.dtype.type(alpha)
        dz = self._weight_and_bias_grads(grad_output, x, y, code, scalar_alpha, grad_weights, grad_bias, workspace, grad_is_slope)
        if not need_input_grad:
            return None
        dx = self._buffer(workspace, "dx", x.shape, y.dtype)
        if below is None:
            self._matmul(dz, weights.T, dx)
            return dx
        below_output, below_workspace = below
        zero = y.dtype.type(0)

        def plain_dx():
            self._matmul(dz, weights.T, dx)
            self.kernels.slope(dx, below_output, RELU, zero, dx)

        mask_is_current = below_workspace is not None and below_workspace.get("relu_aux_of") == (_address(below_output), below_output.shape)
        if mask_is_current:
            self._lt_matmul(dz, weights.T, dx, EPILOGUE_DRELU, None, plain_dx, aux=below_workspace["relu_aux"])
        else:
            plain_dx()
        return dx

    # ---- losses --------------------------------------------------------------------
    def mse_loss_and_grad(self, prediction, target, workspace=None):
        if workspace is None or prediction.dtype.char not in "fd" or target.dtype != prediction.dtype:
            return super().mse_loss_and_grad(prediction, target)
        dtype = prediction.dtype
        grad = self._buffer(workspace, "mse_grad", prediction.shape, dtype)
        loss = self._buffer(workspace, "mse_loss", (), dtype)
        scale = dtype.type(2.0 / prediction.size)
        if not (prediction.flags.c_contiguous and target.flags.c_contiguous) or prediction.size == 0:
            self.kernels.mse_grad(prediction, target, scale, grad)
            self.kernels.mse_loss(prediction, target, out=loss)
            return loss, grad
        size = prediction.size
        blocks = max(1, min(-(-size // 256), 4 * self._multiprocessors()))
        partial = self._buffer(workspace, "mse_partials", (blocks,), dtype)
        counter = workspace.get("mse_counter")
        if counter is None:  # zero once; the kernel's last block sets it back to 0
            counter = workspace["mse_counter"] = self.cp.zeros((), dtype=self.cp.uint32)
        self.kernels.raw("nanoae_mse_loss_grad", dtype)(
            (blocks,), (256,), (prediction, target, grad, partial, counter, loss, numpy.int64(size), scale)
        )
        return loss, grad

    # ---- data ----------------------------------------------------------------------
    def gather_rows(self, data, indices, workspace=None):
        if workspace is None or data.ndim < 1 or data.size == 0 or not data.flags.c_contiguous or indices.dtype.kind not in "iu":
            return super().gather_rows(data, indices)
        out = self._buffer(workspace, f"rows{id(data)}", (indices.shape[0], *data.shape[1:]), data.dtype)
        width = data.size // data.shape[0]
        self.kernels.gather(data, indices, numpy.int64(width), numpy.int64(data.shape[0]), out)
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
        self.kernels.rmsprop(
            grads, t(lr), t(rho), t(1 - rho), t(eps), t(momentum), flavors[flavor], bool(momentum), params, mean_square, buffer
        )

    def sgd_update(self, params, grads, velocity, lr, momentum, nesterov, weight_decay, workspace=None):
        t = params.dtype.type
        buffer = velocity if velocity is not None else self._spare(workspace, params)
        self.kernels.sgd(grads, t(lr), t(momentum), bool(nesterov), t(weight_decay), bool(momentum), bool(weight_decay), params, buffer)

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
        self.kernels.adam_scalars(
            (1,), (1,), (scalars, numpy.float64(lr), numpy.float64(beta1), numpy.float64(beta2), numpy.int32(flavor == "keras"))
        )
        t = params.dtype.type
        use_decoupled = bool(decoupled and weight_decay)
        self.kernels.adam(
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

    # ---- the guard between backward and the update -----------------------------------
    def _capturing(self) -> bool:
        """Is the current stream recording a CUDA graph? (False where CuPy cannot say:
        the check's host sync then makes the capture fail, and the step runs eagerly.)"""
        is_capturing = getattr(self.cp.cuda.get_current_stream(), "is_capturing", None)
        return bool(is_capturing()) if is_capturing is not None else False

    def step_is_finite(self, loss, grads, workspace=None) -> bool:
        """The reference check (a host sync) on an eager step; True, without looking,
        while a CUDA graph is being captured.

        A captured step cannot wait for the host, and a replayed graph has no Python in
        it, so on the graph path a NaN or infinite step *is* applied; the training loop
        then stops at the next log step, where it reads the loss (every step with the
        default log_every=1), and a checkpoint is never written from non-finite
        parameters. Eager steps (the first one, VAEs and denoisers, graphs disabled) are
        checked and not applied, as on the CPU."""
        if self._capturing():
            return True
        return super().step_is_finite(loss, grads)

    # ---- the training step -----------------------------------------------------------
    def compile_train_step(self, model, data, target=None, workspace=None):
        """One training step on rows ``indices`` of data, replayed as a CUDA graph after
        its first (eager) call; see :mod:`nanoae.ops.gpu_graph`."""
        return CapturedTrainStep(self, model, data, target, workspace if workspace is not None else {})


_TABLE = None


def load():
    """The GPU ops table (built once; needs CuPy)."""
    global _TABLE
    if _TABLE is None:
        import cupy  # noqa: PLC0415

        _TABLE = GpuOps(cupy)
    return _TABLE
