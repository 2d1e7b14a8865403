"""Elementwise kernels of the fast CPU path, in vectorized NumPy (no Numba needed).

Each kernel writes into buffers it is given (``out=`` everywhere) and allocates
nothing but, where a formula needs one, into a caller-owned scratch array. Scalars
arrive already cast to the arrays' dtype, so no operation widens to float64, and
every formula evaluates in the same order as :mod:`nanoae.ops.reference`, which
makes most results bit-identical to it (the tests say which).

Activations arrive as the codes of :mod:`nanoae.ops.codes`.
"""

from __future__ import annotations

import numpy as np

from nanoae.ops.codes import IDENTITY, LEAKY_RELU, RELU, SIGMOID, TANH

NAME = "numpy"


def _sigmoid_into(z, out, scratch, mask, one):
    """out = sigmoid(z) without overflow; z and out may be the same array."""
    np.abs(z, out=scratch)
    np.negative(scratch, out=scratch)
    np.exp(scratch, out=scratch)  # e = exp(-|z|) in (0, 1]
    np.greater_equal(z, 0, out=mask)
    np.add(scratch, one, out=out)  # 1 + e (z is not read after this)
    np.copyto(scratch, one, where=mask)  # numerator: 1 where z >= 0, else e
    np.divide(scratch, out, out=out)


def activation(z, out, code, alpha, one, scratch, mask):
    """out = f(z) for activation ``code``; z and out may be the same array."""
    if code == IDENTITY:
        if out is not z:
            np.copyto(out, z)
    elif code == RELU:
        np.maximum(z, 0, out=out)
    elif code == LEAKY_RELU:
        np.multiply(z, alpha, out=scratch)
        np.greater(z, 0, out=mask)
        np.logical_not(mask, out=mask)
        if out is not z:
            np.copyto(out, z)
        np.copyto(out, scratch, where=mask)
    elif code == SIGMOID:
        _sigmoid_into(z, out, scratch, mask, one)
    elif code == TANH:
        np.tanh(z, out=out)


def bias_activation(y, bias, code, alpha, one, scratch, mask):
    """y <- f(y + bias), in place. y: (batch, out), bias: (out,)."""
    np.add(y, bias, out=y)
    activation(y, y, code, alpha, one, scratch, mask)


def activation_grad(grad_output, y, code, alpha, one, out, scratch, mask):
    """out = f'(z) * grad_output written through y = f(z) (same order as the reference)."""
    if code == IDENTITY:
        np.copyto(out, grad_output)
    elif code == RELU:
        np.greater(y, 0, out=mask)
        np.multiply(grad_output, mask, out=out)
    elif code == LEAKY_RELU:
        np.multiply(grad_output, alpha, out=out)
        np.greater(y, 0, out=mask)
        np.copyto(out, grad_output, where=mask)
    elif code == SIGMOID:
        np.subtract(one, y, out=scratch)
        np.multiply(grad_output, y, out=out)
        np.multiply(out, scratch, out=out)
    elif code == TANH:
        np.multiply(y, y, out=scratch)
        np.subtract(one, scratch, out=scratch)
        np.multiply(grad_output, scratch, out=out)


def activation_grad_bias(grad_output, y, code, alpha, one, out, grad_bias, scratch, mask):
    """out = f'(z) * grad_output and grad_bias = column sums of out."""
    activation_grad(grad_output, y, code, alpha, one, out, scratch, mask)
    np.sum(out, axis=0, out=grad_bias)


def mse(prediction, target, grad, scale, column_sums):
    """grad = (prediction - target) * scale; returns sum((prediction - target)^2) as a float.

    column_sums is the Numba kernel's float64 scratch; BLAS's dot needs none."""
    np.subtract(prediction, target, out=grad)
    total = float(np.dot(grad.ravel(), grad.ravel()))
    np.multiply(grad, scale, out=grad)
    return total


def all_finite(values, mask):
    """True when every element of ``values`` is finite; ``mask`` is a boolean buffer of
    the same shape that np.isfinite writes into (no allocation but a scalar)."""
    np.isfinite(values, out=mask)
    return bool(mask.all())


def rmsprop_tf1(params, grads, mean_square, momentum_buffer, lr, decay_complement, eps, momentum, use_momentum, tiny, scratch):
    """ms += (g^2 - ms)(1 - rho); then the inside-the-root increment (see reference)."""
    first, second, _, mask = scratch
    np.multiply(grads, grads, out=first)
    np.subtract(first, mean_square, out=first)
    np.multiply(first, decay_complement, out=first)
    np.add(mean_square, first, out=mean_square)
    _flush(mean_square, tiny, first, mask)
    _increment_inside_root(params, grads, mean_square, momentum_buffer, lr, eps, momentum, use_momentum, tiny, first, second, mask)


def rmsprop_keras(params, grads, mean_square, momentum_buffer, lr, rho, decay_complement, eps, momentum, use_momentum, tiny, scratch):
    """ms = rho ms + (1 - rho) g^2; then the inside-the-root increment."""
    first, second, _, mask = scratch
    np.multiply(mean_square, rho, out=mean_square)
    np.multiply(grads, grads, out=first)
    np.multiply(first, decay_complement, out=first)
    np.add(mean_square, first, out=mean_square)
    _flush(mean_square, tiny, first, mask)
    _increment_inside_root(params, grads, mean_square, momentum_buffer, lr, eps, momentum, use_momentum, tiny, first, second, mask)


def _flush(state, tiny, magnitude, mask):
    """state[|state| < tiny] = 0 through kept buffers (reference.flush_subnormals)."""
    np.abs(state, out=magnitude)
    np.less(magnitude, tiny, out=mask)
    np.copyto(state, 0, where=mask)


def _increment_inside_root(params, grads, mean_square, momentum_buffer, lr, eps, momentum, use_momentum, tiny, first, second, mask):
    """increment = (lr g) / sqrt(ms + eps); w -= increment (or through momentum)."""
    np.multiply(grads, lr, out=second)
    np.add(mean_square, eps, out=first)
    np.sqrt(first, out=first)
    np.divide(second, first, out=first)
    if use_momentum:
        np.multiply(momentum_buffer, momentum, out=momentum_buffer)
        np.add(momentum_buffer, first, out=momentum_buffer)
        _flush(momentum_buffer, tiny, first, mask)
        np.subtract(params, momentum_buffer, out=params)
    else:
        np.subtract(params, first, out=params)


def rmsprop_torch(params, grads, mean_square, momentum_buffer, lr, rho, decay_complement, eps, momentum, use_momentum, tiny, scratch):
    """ms = rho ms + (1 - rho) g^2; d = g / (sqrt(ms) + eps); w -= lr d (or lr mom)."""
    first, _, _, mask = scratch
    np.multiply(mean_square, rho, out=mean_square)
    np.multiply(grads, grads, out=first)
    np.multiply(first, decay_complement, out=first)
    np.add(mean_square, first, out=mean_square)
    _flush(mean_square, tiny, first, mask)
    np.sqrt(mean_square, out=first)
    np.add(first, eps, out=first)
    np.divide(grads, first, out=first)
    if use_momentum:
        np.multiply(momentum_buffer, momentum, out=momentum_buffer)
        np.add(momentum_buffer, first, out=momentum_buffer)
        _flush(momentum_buffer, tiny, first, mask)
        np.multiply(momentum_buffer, lr, out=first)
    else:
        np.multiply(first, lr, out=first)
    np.subtract(params, first, out=params)


def sgd(params, grads, velocity, lr, momentum, nesterov, weight_decay, use_momentum, use_decay, tiny, scratch):
    """torch.optim.SGD's rule (see reference), through scratch buffers."""
    first, second, _, mask = scratch
    if use_decay:
        np.multiply(params, weight_decay, out=second)
        np.add(grads, second, out=second)
        grads = second
    if use_momentum:
        np.multiply(velocity, momentum, out=velocity)
        np.add(velocity, grads, out=velocity)
        _flush(velocity, tiny, first, mask)
        if nesterov:
            np.multiply(velocity, momentum, out=first)
            np.add(grads, first, out=first)
            direction = first
        else:
            direction = velocity
    else:
        direction = grads
    np.multiply(direction, lr, out=first)
    np.subtract(params, first, out=params)


def adam(params, grads, first_moment, second_moment, lr_hat, beta1_complement, beta2, beta2_complement, eps,
         sqrt_bc2, weight_decay, use_decay, decoupled_factor, decoupled, keras, tiny, scratch):
    """One Adam step (see reference). torch: lr_hat = lr / bc1, sqrt(v) is divided by
    sqrt_bc2 = sqrt(1 - beta2^t); keras: lr_hat = lr sqrt(bc2) / bc1. decoupled (AdamW):
    w *= decoupled_factor (= 1 - lr wd, which may be 0) before the step."""
    first, second, third, mask = scratch
    if decoupled:
        np.multiply(params, decoupled_factor, out=params)
    elif use_decay:
        np.multiply(params, weight_decay, out=third)
        np.add(grads, third, out=third)
        grads = third
    np.subtract(grads, first_moment, out=first)
    if keras:
        np.multiply(first, beta1_complement, out=first)
        np.add(first_moment, first, out=first_moment)
        np.multiply(grads, grads, out=first)
        np.subtract(first, second_moment, out=first)
        np.multiply(first, beta2_complement, out=first)
        np.add(second_moment, first, out=second_moment)
        _flush(first_moment, tiny, first, mask)
        _flush(second_moment, tiny, first, mask)
        np.sqrt(second_moment, out=first)
    else:
        np.multiply(first, beta1_complement, out=first)
        np.add(first_moment, first, out=first_moment)
        np.multiply(second_moment, beta2, out=second_moment)
        np.multiply(grads, grads, out=first)
        np.multiply(first, beta2_complement, out=first)
        np.add(second_moment, first, out=second_moment)
        _flush(first_moment, tiny, first, mask)
        _flush(second_moment, tiny, first, mask)
        np.sqrt(second_moment, out=first)
        np.divide(first, sqrt_bc2, out=first)
    np.add(first, eps, out=first)
    np.multiply(first_moment, lr_hat, out=second)
    np.divide(second, first, out=first)
    np.subtract(params, first, out=params)
