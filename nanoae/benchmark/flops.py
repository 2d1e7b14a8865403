"""Floating-point work of a dense network's step, counted as matmul FLOPs.

A matmul of (m, k) by (k, n) costs 2 m k n FLOPs. A training step of a stack of
dense layers does, per layer with in x out weights and a batch of B:

* forward         y = x W            2 B in out
* weight gradient dW = x^T dz        2 B in out
* input gradient  dx = dz W^T        2 B in out   (not for the first layer)

Elementwise work (bias, activations, loss, optimizer) is O(B (in + out)) and O(params)
and is not counted: it is what a good implementation hides.
"""

from __future__ import annotations

TUTORIAL_WIDTHS = (784, 784, 256, 128, 128, 256, 784)


def layer_shapes(widths=TUTORIAL_WIDTHS) -> list[tuple[int, int]]:
    return list(zip(widths, widths[1:]))


def train_step_flops(batch: int, widths=TUTORIAL_WIDTHS) -> int:
    """FLOPs of forward + backward (no dx for the first layer). Tutorial, batch 256: 1.372e9."""
    total = 0
    for index, (fan_in, fan_out) in enumerate(layer_shapes(widths)):
        per_matmul = 2 * batch * fan_in * fan_out
        total += per_matmul * (2 if index == 0 else 3)
    return total


def inference_flops(batch: int, widths=TUTORIAL_WIDTHS) -> int:
    """FLOPs of one forward pass (encode + decode)."""
    return sum(2 * batch * fan_in * fan_out for fan_in, fan_out in layer_shapes(widths))
