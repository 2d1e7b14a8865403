"""Activation codes: the small integers the fused kernels use to pick an activation.

Kernels (Numba loops, CUDA sources) branch on an int, not a string. The numbers are
part of those kernels' source (``code == 3`` is the sigmoid), so they are fixed here,
once, for the CPU and GPU tables alike. Numba compiles them into its cached machine code
and only notices a change to ``kernels_numba.py`` itself: after changing a number here,
clear Numba's cache (the ``__pycache__`` beside it).
"""

from __future__ import annotations

from nanoae.ops.reference import ACTIVATIONS

IDENTITY = 0
RELU = 1
LEAKY_RELU = 2
SIGMOID = 3
TANH = 4

#: activation name -> code, for every name in :data:`nanoae.ops.reference.ACTIVATIONS`.
ACTIVATION_CODES = {"identity": IDENTITY, "relu": RELU, "leaky_relu": LEAKY_RELU, "sigmoid": SIGMOID, "tanh": TANH}


def activation_code(activation: str) -> int:
    """The kernel code of an activation name; a ValueError naming the known ones otherwise."""
    try:
        return ACTIVATION_CODES[activation]
    except KeyError:
        raise ValueError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}") from None
