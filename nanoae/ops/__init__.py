"""The math of nanoae, as interchangeable tables of functions.

Every ops module offers the same functions with the same signatures:

* ``reference`` -- plain array code that reads like a textbook; runs on NumPy or CuPy.
* fast paths (added beside it) compute the same functions with fused kernels and
  reused buffers, and are tested against the reference.

A :class:`nanoae.backend.Backend` holds one table; layers call only that table, so no
layer, model or training loop ever branches on the array library.
"""

from __future__ import annotations

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
    "gather_rows",
    "compile_train_step",
    "rmsprop_update",
    "sgd_update",
    "adam_update",
)


def load_ops(library: str, fast: bool | None, kernels: str = "auto"):
    """Return (ops table, its name) for ``library`` ("numpy" or "cupy").

    fast=False: the reference table. fast=None or True: the library's fast table
    (for CuPy, :mod:`nanoae.ops.gpu`; for NumPy, :mod:`nanoae.ops.cpu` on Numba kernels when Numba is installed, else
    on NumPy kernels; ``$NANOAE_NUMBA=0`` or kernels="numpy" forces the latter).
    """
    from nanoae.ops import reference  # noqa: PLC0415

    if fast is False:
        return reference, "reference"
    if library == "cupy":
        from nanoae.ops import gpu  # noqa: PLC0415

        table = gpu.load()
        return table, table.name
    from nanoae.ops import cpu  # noqa: PLC0415

    table = cpu.load(kernels)
    return table, table.name
