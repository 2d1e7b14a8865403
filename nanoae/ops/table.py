"""OpsTable: the calling convention every ops table shares, and the reference table.

Layers, losses, regularizers and optimizers call ``backend.ops.<function>(...)``. The
table they call is an :class:`OpsTable`: the plain base class *is* the reference table
(name "reference"), and the fast tables (:class:`nanoae.ops.cpu.CpuOps`,
:class:`nanoae.ops.gpu.GpuOps`) subclass it and override only what they make fast;
every method they leave alone runs the reference math.

The table's calling convention differs from :mod:`nanoae.ops.reference` in one way:
the functions that fill or return arrays on a training step's path take a last argument
``workspace``, a dict a fast table may fill with buffers it reuses from call to call
(the caller owns it; one per layer, loss or optimizer). The methods below accept it and
ignore it. ``softmax`` and the functions that return only a loss or a penalty
(``mse_loss``, ``bce_loss``, ``l2_penalty``, ...) take none.

Two hooks are not math and so are not in the reference: :meth:`OpsTable.gather_rows`
(the rows of a mini-batch) and :meth:`OpsTable.compile_train_step` (a whole training
step as one callable, which the GPU table replays as a CUDA graph).
"""

from __future__ import annotations

from nanoae.ops import reference

#: Names every ops table must define (checked by the tests).
OPS_API = (
    "ACTIVATIONS",
    "activation_forward",
    "activation_backward",
    "dense_forward",
    "dense_backward",
    "mse_loss",
    "mse_loss_and_grad",
    "bce_loss",
    "bce_loss_and_grad",
    "bce_logits_loss",
    "bce_logits_loss_and_grad",
    "softmax",
    "softmax_cross_entropy_loss",
    "softmax_cross_entropy_loss_and_grad",
    "gaussian_sample",
    "gaussian_sample_backward",
    "gaussian_kl_loss",
    "gaussian_kl_loss_and_grad",
    "l2_penalty",
    "l2_penalty_grad",
    "l1_penalty_and_grad",
    "gaussian_corruption",
    "masking_corruption",
    "step_is_finite",
    "gather_rows",
    "compile_train_step",
    "rmsprop_update",
    "sgd_update",
    "adam_update",
)

#: The two table functions that are not math and so have no reference function.
HOOKS = ("gather_rows", "compile_train_step")


def is_row_source(data) -> bool:
    """True for a row source: data that gathers its rows itself (``gather(indices, out=None)``)
    rather than an array indexed by ``data[indices]``."""
    return callable(getattr(type(data), "gather", None)) and not hasattr(data, "__array__")


class OpsTable:
    """The reference math in the table calling convention; base of every fast table.

    Each method hands its arguments, less ``workspace``, to the function of the same
    name in :mod:`nanoae.ops.reference` (see there for the math and the shapes).
    """

    name = "reference"
    ACTIVATIONS = reference.ACTIVATIONS

    def __repr__(self) -> str:
        return f"<nanoae ops {self.name}>"

    # ---- activations and the dense layer ---------------------------------------------
    def activation_forward(self, z, activation: str, alpha: float = 0.0, workspace=None):
        return reference.activation_forward(z, activation, alpha)

    def activation_backward(self, grad_output, y, activation: str, alpha: float = 0.0, workspace=None):
        return reference.activation_backward(grad_output, y, activation, alpha)

    def dense_forward(self, x, weights, bias, activation: str, alpha: float = 0.0, workspace=None):
        return reference.dense_forward(x, weights, bias, activation, alpha)

    def dense_backward(
        self, grad_output, x, y, weights, activation: str, alpha: float, grad_weights, grad_bias,
        need_input_grad: bool = True, workspace=None,
    ):  # fmt: skip
        return reference.dense_backward(grad_output, x, y, weights, activation, alpha, grad_weights, grad_bias, need_input_grad)

    #: Whether :class:`~nanoae.models.Sequential` should run its chains of Dense layers
    #: through :meth:`dense_backward_chain` (a table that fuses a ReLU's slope into the
    #: matmul above it says True; the reference and CPU tables gain nothing from it).
    fuses_input_slope = False

    def dense_backward_chain(
        self, grad_output, x, y, weights, activation: str, alpha: float, grad_weights, grad_bias,
        need_input_grad: bool, workspace, grad_is_slope: bool, below=None,
    ):  # fmt: skip
        """dense_backward for a Dense layer in a chain of Dense layers, where the ReLU's
        slope of the layer below moves into this layer's backward.

        grad_is_slope: ``grad_output`` is already ``dz = f'(y) dy`` (the layer above
        applied this layer's slope), so only the matmuls and the bias gradient remain.
        below: None, or ``(output, workspace)`` of the ReLU Dense layer whose output is
        ``x``; the returned ``dx`` is then ``relu'(x) * (dz W^T)``, that layer's ``dz``.
        A fast table may do that product in one kernel; here it is two steps, with the
        same operations as the unchained layers, so the results are the same bits.
        """
        slope_activation = "identity" if grad_is_slope else activation
        grad_input = self.dense_backward(
            grad_output, x, y, weights, slope_activation, alpha, grad_weights, grad_bias, need_input_grad, workspace
        )
        if grad_input is None or below is None:
            return grad_input
        return self.activation_backward(grad_input, x, "relu", 0.0)

    # ---- losses ----------------------------------------------------------------------
    def mse_loss(self, prediction, target):
        return reference.mse_loss(prediction, target)

    def mse_loss_and_grad(self, prediction, target, workspace=None):
        return reference.mse_loss_and_grad(prediction, target)

    def bce_loss(self, probability, target, eps: float = 1e-7):
        return reference.bce_loss(probability, target, eps)

    def bce_loss_and_grad(self, probability, target, eps: float = 1e-7, workspace=None):
        return reference.bce_loss_and_grad(probability, target, eps)

    def bce_logits_loss(self, logits, target):
        return reference.bce_logits_loss(logits, target)

    def bce_logits_loss_and_grad(self, logits, target, workspace=None):
        return reference.bce_logits_loss_and_grad(logits, target)

    def softmax(self, logits):
        return reference.softmax(logits)

    def softmax_cross_entropy_loss(self, logits, labels):
        return reference.softmax_cross_entropy_loss(logits, labels)

    def softmax_cross_entropy_loss_and_grad(self, logits, labels, workspace=None):
        return reference.softmax_cross_entropy_loss_and_grad(logits, labels)

    # ---- variational autoencoder -----------------------------------------------------
    def gaussian_sample(self, mean, log_variance, noise, workspace=None):
        return reference.gaussian_sample(mean, log_variance, noise)

    def gaussian_sample_backward(self, grad_z, log_variance, noise, workspace=None):
        return reference.gaussian_sample_backward(grad_z, log_variance, noise)

    def gaussian_kl_loss(self, mean, log_variance):
        return reference.gaussian_kl_loss(mean, log_variance)

    def gaussian_kl_loss_and_grad(self, mean, log_variance, workspace=None):
        return reference.gaussian_kl_loss_and_grad(mean, log_variance)

    # ---- regularizers and corruptions ------------------------------------------------
    def l2_penalty(self, weights, strength: float):
        return reference.l2_penalty(weights, strength)

    def l2_penalty_grad(self, weights, grad_weights, strength: float, workspace=None):
        return reference.l2_penalty_grad(weights, grad_weights, strength)

    def l1_penalty_and_grad(self, activations, strength: float, workspace=None):
        return reference.l1_penalty_and_grad(activations, strength)

    def gaussian_corruption(self, x, noise, std: float, workspace=None):
        return reference.gaussian_corruption(x, noise, std)

    def masking_corruption(self, x, keep, workspace=None):
        return reference.masking_corruption(x, keep)

    # ---- the guard between backward and the update -----------------------------------
    def step_is_finite(self, loss, grads, workspace=None) -> bool:
        """True when the loss and every gradient are finite; the model applies the update
        only then. A fast table checks without allocating; the GPU table may answer True
        without looking while a CUDA graph is being captured (see :mod:`nanoae.ops.gpu`)."""
        return reference.step_is_finite(loss, grads)

    # ---- optimizer updates -----------------------------------------------------------
    def rmsprop_update(self, params, grads, mean_square, momentum_buffer, lr, rho, eps, momentum, flavor, workspace=None):
        return reference.rmsprop_update(params, grads, mean_square, momentum_buffer, lr, rho, eps, momentum, flavor)

    def sgd_update(self, params, grads, velocity, lr, momentum, nesterov, weight_decay, workspace=None):
        return reference.sgd_update(params, grads, velocity, lr, momentum, nesterov, weight_decay)

    def adam_update(
        self, params, grads, first_moment, second_moment, lr, beta1, beta2, eps, step, weight_decay, decoupled, flavor, workspace=None
    ):
        return reference.adam_update(
            params, grads, first_moment, second_moment, lr, beta1, beta2, eps, step, weight_decay, decoupled, flavor
        )

    # ---- hooks: the mini-batch and the whole training step ---------------------------
    def gather_rows(self, data, indices, workspace=None):
        """data[indices]: the rows of one mini-batch. data: (n, features), indices: (batch,).

        data may also be a row source (an object with ``gather(indices, out=None)``, as
        :class:`nanoae.data.rows.ScaledRows`): its ``gather(indices)``, float32 rows read
        and scaled for this batch only. An index outside [-n, n) raises IndexError (on
        NumPy arrays and row sources)."""
        if is_row_source(data):
            return data.gather(indices)
        return data[indices]

    def compile_train_step(self, model, data, target=None, workspace=None):
        """A function ``run(indices) -> loss`` doing one training step on rows of data.

        data: (n, in_features); target: (n, out_features), or None when the model
        reconstructs its input; indices: (batch,) row numbers. It gathers the rows
        (through :meth:`gather_rows`, with ``workspace`` for its buffers) and runs the
        model's training step on them; the GPU table replays the step as a CUDA graph.
        """
        buffers = workspace if workspace is not None else {}

        def run(indices):
            batch = self.gather_rows(data, indices, buffers)
            return model._train_step(batch, batch if target is None else self.gather_rows(target, indices, buffers))

        return run
