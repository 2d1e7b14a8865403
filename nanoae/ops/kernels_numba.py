"""Elementwise kernels of the fast CPU path, compiled with Numba: one pass each.

Same functions and signatures as :mod:`nanoae.ops.kernels_numpy`; each fuses what
NumPy does in several passes (bias + activation; activation' + bias gradient; a whole
optimizer update) into one loop over memory.

Choices that matter for speed and for equality with the reference path:

* ``error_model="numpy"``: Python's error model inserts a zero-division check in
  every division, which blocks SIMD (an RMSProp update went from 1.2 ms to 0.11 ms).
* no ``fastmath``: LLVM may then not reassociate or fuse multiply-adds, so every
  formula rounds exactly as the reference's NumPy expression does; scalars arrive
  already cast to the arrays' dtype so nothing widens to float64. The optimizer and
  most activation kernels are therefore bit-identical to the reference path; only
  exp/tanh (sigmoid, tanh) may differ in the last bit from NumPy's own versions.
* the optimizer kernels run on one thread (``NANOAE_PARALLEL_OPTIMIZER=1`` before
  import compiles them for Numba's threads instead). On the 2-core AVX-512 EPYC, alone
  on cache-hot arrays, the tutorial's update took 0.19 ms serial against 0.27-0.41 ms
  on two threads; inside the step, in one process with the variants taking turns
  (benchmarks/cpu_ablation.py, three runs), the serial step was 1.03-1.07x the parallel
  one at batch 64, 1.01-1.03x at 256, 1.00-1.01x at 1024: waking the threads costs about
  what the second core returns on 1.1 M elements. Should they run in parallel, Numba
  is told to use its ``workqueue`` threading layer, whose idle threads sleep instead
  of spinning against OpenBLAS's (an OpenMP layer next to BLAS halved throughput).
"""

from __future__ import annotations

import math
import os

import numba
from numba import njit, prange

from nanoae.ops.codes import LEAKY_RELU, RELU, SIGMOID, TANH

NAME = "numba"

# Idle workqueue threads sleep; OpenMP's spin and steal the cores BLAS needs.
if os.environ.get("NUMBA_THREADING_LAYER") is None:
    numba.config.THREADING_LAYER = "workqueue"

_OPTIONS = {"cache": True, "error_model": "numpy", "nogil": True}
PARALLEL_OPTIMIZER = os.environ.get("NANOAE_PARALLEL_OPTIMIZER", "0") == "1"
_OPTIMIZER_OPTIONS = {**_OPTIONS, "parallel": PARALLEL_OPTIMIZER}


@njit(**_OPTIONS)
def _apply(z, code, alpha, one):
    if code == RELU:
        if z < 0:  # NaN stays NaN, as with np.maximum
            z = z - z
    elif code == LEAKY_RELU:
        if not z > 0:
            z = alpha * z
    elif code == SIGMOID:
        e = math.exp(-abs(z))
        if z >= 0:
            z = one / (one + e)
        else:
            z = e / (one + e)
    elif code == TANH:
        z = math.tanh(z)
    return z


@njit(**_OPTIONS)
def activation(z, out, code, alpha, one, scratch, mask):
    rows, cols = z.shape
    for i in range(rows):
        for j in range(cols):
            out[i, j] = _apply(z[i, j], code, alpha, one)


@njit(**_OPTIONS)
def bias_activation(y, bias, code, alpha, one, scratch, mask):
    rows, cols = y.shape
    for i in range(rows):
        for j in range(cols):
            y[i, j] = _apply(y[i, j] + bias[j], code, alpha, one)


@njit(**_OPTIONS)
def _slope(grad, y, code, alpha, one):
    if code == RELU:
        return grad if y > 0 else grad - grad
    if code == LEAKY_RELU:
        return grad if y > 0 else alpha * grad
    if code == SIGMOID:
        return grad * y * (one - y)
    if code == TANH:
        return grad * (one - y * y)
    return grad


@njit(**_OPTIONS)
def activation_grad(grad_output, y, code, alpha, one, out, scratch, mask):
    rows, cols = y.shape
    for i in range(rows):
        for j in range(cols):
            out[i, j] = _slope(grad_output[i, j], y[i, j], code, alpha, one)


@njit(**_OPTIONS)
def activation_grad_bias(grad_output, y, code, alpha, one, out, grad_bias, scratch, mask):
    rows, cols = y.shape
    for j in range(cols):
        grad_bias[j] = 0
    for i in range(rows):  # row by row, as NumPy's sum over axis 0 adds them
        for j in range(cols):
            value = _slope(grad_output[i, j], y[i, j], code, alpha, one)
            out[i, j] = value
            grad_bias[j] += value


@njit(**_OPTIONS)
def mse(prediction, target, grad, scale, column_sums):
    # One float64 running sum per column (column_sums: (cols,) float64): the inner loop
    # then has no loop-carried dependency and vectorizes without fastmath, where a
    # single accumulator would serialize on the add latency (0.20 ms at 256x784).
    rows, cols = prediction.shape
    for j in range(cols):
        column_sums[j] = 0.0
    for i in range(rows):
        for j in range(cols):
            difference = prediction[i, j] - target[i, j]
            column_sums[j] += difference * difference
            grad[i, j] = difference * scale
    total = 0.0
    for j in range(cols):
        total += column_sums[j]
    return total


FINITE_CHUNK = 16384  # elements checked between early exits: 64 KB of float32, inside L2


@njit(**_OPTIONS)
def all_finite(bits, exponent_mask):
    """True when no element of a flat float array, seen as unsigned integers of its
    width (``bits``), has every exponent bit set (that pattern is +-inf or NaN).

    A running integer max of ``bits & exponent_mask`` vectorizes without fastmath (a
    float test with an early exit per element would not); it reaches exponent_mask
    exactly when some element is not finite. Checked once per chunk, so a bad value
    ends the pass early. Each chunk is a slice indexed from 0: indexing ``bits[i]`` for
    i in range(start, stop) makes Numba guard against negative indices, which stops
    SIMD (measured: 9x slower on the tutorial's 1.1M-element arena).
    """
    for start in range(0, bits.shape[0], FINITE_CHUNK):
        chunk = bits[start : start + FINITE_CHUNK]
        worst = chunk[0] & exponent_mask
        for i in range(chunk.shape[0]):
            worst = max(worst, chunk[i] & exponent_mask)
        if worst == exponent_mask:
            return False
    return True


@njit(**_OPTIONS)
def _flushed(value, tiny):
    """+0 for |value| below the smallest normal number ``tiny``, else value (see
    reference.flush_subnormals); value - value is +0 in the value's own dtype."""
    return value - value if abs(value) < tiny else value


@njit(**_OPTIMIZER_OPTIONS)
def _rmsprop_tf1(params, grads, mean_square, momentum_buffer, lr, decay_complement, eps, momentum, use_momentum, tiny):
    for k in prange(params.shape[0]):
        g = grads[k]
        ms = _flushed(mean_square[k] + (g * g - mean_square[k]) * decay_complement, tiny)
        mean_square[k] = ms
        increment = lr * g / math.sqrt(ms + eps)
        if use_momentum:
            increment = _flushed(momentum_buffer[k] * momentum + increment, tiny)
            momentum_buffer[k] = increment
        params[k] = params[k] - increment


@njit(**_OPTIMIZER_OPTIONS)
def _rmsprop_keras(params, grads, mean_square, momentum_buffer, lr, rho, decay_complement, eps, momentum, use_momentum, tiny):
    for k in prange(params.shape[0]):
        g = grads[k]
        ms = _flushed(mean_square[k] * rho + decay_complement * (g * g), tiny)
        mean_square[k] = ms
        increment = lr * g / math.sqrt(ms + eps)
        if use_momentum:
            increment = _flushed(momentum_buffer[k] * momentum + increment, tiny)
            momentum_buffer[k] = increment
        params[k] = params[k] - increment


@njit(**_OPTIMIZER_OPTIONS)
def _rmsprop_torch(params, grads, mean_square, momentum_buffer, lr, rho, decay_complement, eps, momentum, use_momentum, tiny):
    for k in prange(params.shape[0]):
        g = grads[k]
        ms = _flushed(mean_square[k] * rho + decay_complement * (g * g), tiny)
        mean_square[k] = ms
        direction = g / (math.sqrt(ms) + eps)
        if use_momentum:
            direction = _flushed(momentum_buffer[k] * momentum + direction, tiny)
            momentum_buffer[k] = direction
        params[k] = params[k] - lr * direction


def rmsprop_tf1(params, grads, mean_square, momentum_buffer, lr, decay_complement, eps, momentum, use_momentum, tiny, scratch):
    buffer = momentum_buffer if momentum_buffer is not None else mean_square
    _rmsprop_tf1(params, grads, mean_square, buffer, lr, decay_complement, eps, momentum, use_momentum, tiny)


def rmsprop_keras(params, grads, mean_square, momentum_buffer, lr, rho, decay_complement, eps, momentum, use_momentum, tiny, scratch):
    buffer = momentum_buffer if momentum_buffer is not None else mean_square
    _rmsprop_keras(params, grads, mean_square, buffer, lr, rho, decay_complement, eps, momentum, use_momentum, tiny)


def rmsprop_torch(params, grads, mean_square, momentum_buffer, lr, rho, decay_complement, eps, momentum, use_momentum, tiny, scratch):
    buffer = momentum_buffer if momentum_buffer is not None else mean_square
    _rmsprop_torch(params, grads, mean_square, buffer, lr, rho, decay_complement, eps, momentum, use_momentum, tiny)


@njit(**_OPTIMIZER_OPTIONS)
def _sgd(params, grads, velocity, lr, momentum, nesterov, weight_decay, use_momentum, use_decay, tiny):
    for k in prange(params.shape[0]):
        g = grads[k]
        if use_decay:
            g = g + weight_decay * params[k]
        direction = g
        if use_momentum:
            v = _flushed(velocity[k] * momentum + g, tiny)
            velocity[k] = v
            direction = g + momentum * v if nesterov else v
        params[k] = params[k] - lr * direction


def sgd(params, grads, velocity, lr, momentum, nesterov, weight_decay, use_momentum, use_decay, tiny, scratch):
    buffer = velocity if velocity is not None else params
    _sgd(params, grads, buffer, lr, momentum, nesterov, weight_decay, use_momentum, use_decay, tiny)


@njit(**_OPTIMIZER_OPTIONS)
def _adam(params, grads, first_moment, second_moment, lr_hat, beta1_complement, beta2, beta2_complement, eps,
          sqrt_bc2, weight_decay, decoupled_factor, keras, use_decay, decoupled, tiny):
    for k in prange(params.shape[0]):
        w = params[k]
        g = grads[k]
        if decoupled:
            w = w * decoupled_factor
        elif use_decay:
            g = g + weight_decay * w
        m = _flushed(first_moment[k] + (g - first_moment[k]) * beta1_complement, tiny)
        first_moment[k] = m
        if keras:
            v = _flushed(second_moment[k] + (g * g - second_moment[k]) * beta2_complement, tiny)
            denominator = math.sqrt(v) + eps
        else:
            v = _flushed(second_moment[k] * beta2 + beta2_complement * (g * g), tiny)
            denominator = math.sqrt(v) / sqrt_bc2 + eps
        second_moment[k] = v
        params[k] = w - lr_hat * m / denominator


def adam(params, grads, first_moment, second_moment, lr_hat, beta1_complement, beta2, beta2_complement, eps,
         sqrt_bc2, weight_decay, use_decay, decoupled_factor, decoupled, keras, tiny, scratch):
    _adam(params, grads, first_moment, second_moment, lr_hat, beta1_complement, beta2, beta2_complement, eps,
          sqrt_bc2, weight_decay, decoupled_factor, keras, use_decay, decoupled, tiny)
