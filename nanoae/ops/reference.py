"""The reference math: every forward and backward pass of nanoae, written plainly.

This is the module to read when studying backprop. It reads top to bottom: the
activations, the dense layer, the losses, the variational autoencoder's sampler and
KL term, the regularizers, each as a forward pass and its backward pass with shapes;
then the optimizer updates that use those gradients. Each function is a few lines of
array code that runs unchanged on NumPy or CuPy (the array module is taken from the
inputs). Nothing is fused and fresh arrays are allocated freely; the fast tables
(:mod:`nanoae.ops.cpu`, :mod:`nanoae.ops.gpu`) are tested to compute the same functions.

The file stands alone: it imports only NumPy and the standard library, so it can be
copied out and used by itself.

Conventions
-----------
* Shapes: ``batch`` rows of ``features`` columns. A dense layer computes
  ``y = act(x @ W + b)`` with ``x: (batch, in)``, ``W: (in, out)``, ``b: (out,)``.
* Activations are differentiated from their *output* ``y`` (all five here can be),
  so a layer keeps only ``x`` and ``y`` for its backward pass.
* ReLU's derivative at 0 is 0, as in TensorFlow.
* Gradients are *written* into the given buffers (``grad_weights[...] = ...``), not
  added, so there is nothing to zero between steps.
* Hyper-parameters arrive as Python floats, which NumPy treats as "weak" scalars:
  ``lr * grad`` stays float32 for a float32 ``grad``. No float64 creeps in.
"""

from __future__ import annotations

import sys
from types import ModuleType

import numpy as np

ACTIVATIONS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh")


def array_module(array) -> ModuleType:
    """numpy, or cupy for a CuPy array: the module that owns ``array``.

    An array from CuPy means CuPy is already imported, so it is looked up among the
    loaded modules rather than imported here (this file needs no CuPy to load).
    """
    owner = type(array).__module__.partition(".")[0]
    if owner == "cupy":
        return sys.modules[owner]
    return np


# --------------------------------------------------------------------------------------
# Activations: y = f(z), and dz = f'(z) * dy expressed through y.
# --------------------------------------------------------------------------------------
def sigmoid(z):
    """Logistic function 1 / (1 + e^-z), stable for large |z|.

    For z >= 0 use 1 / (1 + e^-z); for z < 0 use e^z / (1 + e^z). Both forms only
    ever exponentiate -|z| <= 0, so nothing overflows.
    """
    xp = array_module(z)
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1 / (1 + e), e / (1 + e))


def activation_forward(z, activation: str, alpha: float = 0.0):
    """y = f(z) elementwise. z: (batch, features) -> y: same shape.

    identity: y = z;  relu: y = max(z, 0);  leaky_relu: y = z if z > 0 else alpha * z;
    sigmoid: y = 1 / (1 + e^-z);  tanh: y = tanh(z).
    """
    xp = array_module(z)
    if activation == "identity":
        return z
    if activation == "relu":
        return xp.maximum(z, 0)
    if activation == "leaky_relu":
        return xp.where(z > 0, z, alpha * z)
    if activation == "sigmoid":
        return sigmoid(z)
    if activation == "tanh":
        return xp.tanh(z)
    raise ValueError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")


def activation_backward(grad_output, y, activation: str, alpha: float = 0.0):
    """dz = f'(z) * dy, with f' written in terms of the output y.

    relu:       f' = 1 where y > 0, else 0 (so 0 at z = 0)
    leaky_relu: f' = 1 where y > 0, else alpha (for alpha > 0, y > 0 exactly when z > 0)
    sigmoid:    f' = y (1 - y)
    tanh:       f' = 1 - y^2
    identity:   f' = 1
    grad_output, y: (batch, features) -> dz: same shape.
    """
    xp = array_module(y)
    if activation == "identity":
        return grad_output
    if activation == "relu":
        return grad_output * (y > 0)  # a boolean mask keeps the float dtype
    if activation == "leaky_relu":
        return xp.where(y > 0, grad_output, alpha * grad_output)
    if activation == "sigmoid":
        return grad_output * y * (1 - y)
    if activation == "tanh":
        return grad_output * (1 - y * y)
    raise ValueError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")


# --------------------------------------------------------------------------------------
# Dense layer.
# --------------------------------------------------------------------------------------
def dense_forward(x, weights, bias, activation: str, alpha: float = 0.0):
    """y = act(x @ W + b).

    x: (batch, in), weights: (in, out), bias: (out,) -> y: (batch, out).
    """
    z = x @ weights + bias
    return activation_forward(z, activation, alpha)


def dense_backward(
    grad_output,
    x,
    y,
    weights,
    activation: str,
    alpha: float,
    grad_weights,
    grad_bias,
    need_input_grad: bool = True,
):
    """Backward pass of y = act(x @ W + b).

    With dz = act'(z) * dy (from the kept output y):
        dW = x^T @ dz            (in, out)   written into grad_weights
        db = sum over batch dz   (out,)      written into grad_bias
        dx = dz @ W^T            (batch, in) returned, or None when not needed
    grad_output, y: (batch, out); x: (batch, in).
    """
    grad_pre_activation = activation_backward(grad_output, y, activation, alpha)
    grad_weights[...] = x.T @ grad_pre_activation
    grad_bias[...] = grad_pre_activation.sum(axis=0)
    if not need_input_grad:
        return None
    return grad_pre_activation @ weights.T


# --------------------------------------------------------------------------------------
# Losses. Each "mean" is over every element: batch times features.
# --------------------------------------------------------------------------------------
def mse_loss(prediction, target):
    """L = mean((prediction - target)^2). Both (batch, features) -> 0-d array."""
    difference = prediction - target
    return (difference * difference).mean()


def mse_loss_and_grad(prediction, target):
    """L as in :func:`mse_loss` and dL/dprediction = 2 (prediction - target) / N."""
    difference = prediction - target
    loss = (difference * difference).mean()
    grad = difference * (2.0 / difference.size)
    return loss, grad


def bce_loss(probability, target, eps: float = 1e-7):
    """Binary cross-entropy on probabilities, clipped to [eps, 1 - eps].

    p = clip(probability, eps, 1 - eps)
    L = -mean(t log p + (1 - t) log(1 - p))
    Clipping keeps log finite at p = 0 or 1 (the same rule and eps as Keras).
    """
    xp = array_module(probability)
    p = xp.clip(probability, eps, 1 - eps)
    return -(target * xp.log(p) + (1 - target) * xp.log(1 - p)).mean()


def bce_loss_and_grad(probability, target, eps: float = 1e-7):
    """L as in :func:`bce_loss` and its gradient.

    dL/dp = (p - t) / (p (1 - p)) / N inside the clip range; where the probability was
    clipped the loss does not depend on it, so the gradient there is 0.
    """
    xp = array_module(probability)
    p = xp.clip(probability, eps, 1 - eps)
    loss = -(target * xp.log(p) + (1 - target) * xp.log(1 - p)).mean()
    inside = (probability >= eps) & (probability <= 1 - eps)
    grad = (p - target) / (p * (1 - p)) * (1.0 / p.size) * inside
    return loss, grad


def bce_logits_loss(logits, target):
    """Binary cross-entropy on logits z (probability sigmoid(z)), without overflow.

    L = mean(max(z, 0) - z t + log(1 + e^-|z|)), which equals
    -mean(t log s + (1 - t) log(1 - s)) with s = sigmoid(z) for every finite z.
    """
    xp = array_module(logits)
    return (xp.maximum(logits, 0) - logits * target + xp.log1p(xp.exp(-xp.abs(logits)))).mean()


def bce_logits_loss_and_grad(logits, target):
    """L as in :func:`bce_logits_loss` and dL/dz = (sigmoid(z) - t) / N."""
    loss = bce_logits_loss(logits, target)
    grad = (sigmoid(logits) - target) * (1.0 / logits.size)
    return loss, grad


# --------------------------------------------------------------------------------------
# Classification: softmax cross-entropy on logits, integer labels.
# --------------------------------------------------------------------------------------
def softmax(logits):
    """p_bk = e^(z_bk - m_b) / sum_j e^(z_bj - m_b), with m_b = max_j z_bj.

    Subtracting each row's maximum changes nothing mathematically and keeps every
    exponent <= 0, so nothing overflows. logits: (batch, classes) -> same shape.
    """
    xp = array_module(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = xp.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def softmax_cross_entropy_loss(logits, labels):
    """L = mean over the batch of -log softmax(z)_b[label_b], via log-sum-exp.

    -log p_b,y = logsumexp_j(z_bj) - z_b,y. With m the row maximum,
        logsumexp = m + log(sum_j e^(z_bj - m)) = m + log1p(r),
    where r sums e^(z_bj - m) over every entry but one maximum (each term <= 1, so
    nothing overflows). Hence
        -log p_b,y = (m - z_b,y) + log1p(r),
    which keeps full relative precision even for a confident, correct prediction
    (a loss of 1e-9 is not lost in the rounding of 1 + 1e-9).
    logits: (batch, classes); labels: (batch,) integers in [0, classes) -> 0-d array.
    """
    xp = array_module(logits)
    row_max = logits.max(axis=1, keepdims=True)
    shifted = logits - row_max  # <= 0, and exactly 0 at the maxima
    below = xp.where(shifted < 0, xp.exp(shifted), 0).sum(axis=1)
    extra_maxima = (shifted == 0).sum(axis=1, dtype=logits.dtype) - 1
    picked = xp.take_along_axis(shifted, labels[:, None], axis=1)[:, 0]  # z_b,y - m
    return (xp.log1p(below + extra_maxima) - picked).mean()


def softmax_cross_entropy_loss_and_grad(logits, labels):
    """L as in :func:`softmax_cross_entropy_loss` and dL/dz = (softmax(z) - onehot(y)) / batch.

    The label's entry p_y - 1 is computed as -(sum of the other p_j): the same number,
    without the cancellation of 1 - 1e-12 that would cost a confident, correct
    prediction most of its gradient's digits.
    """
    xp = array_module(logits)
    loss = softmax_cross_entropy_loss(logits, labels)
    grad = softmax(logits)
    rows = xp.arange(logits.shape[0])
    grad[rows, labels] = 0
    grad[rows, labels] = -grad.sum(axis=1)
    return loss, grad * (1.0 / logits.shape[0])


# --------------------------------------------------------------------------------------
# Variational autoencoder: the reparameterization z = mu + sigma * eps and the KL term.
# --------------------------------------------------------------------------------------
def gaussian_sample(mean, log_variance, noise):
    """z = mu + sigma * eps with sigma = exp(log_variance / 2).

    mean, log_variance, noise: (batch, latent) -> z: (batch, latent). The noise eps
    ~ N(0, 1) is an input: the randomness stays outside the differentiable function.
    """
    xp = array_module(mean)
    return mean + xp.exp(0.5 * log_variance) * noise


def gaussian_sample_backward(grad_z, log_variance, noise):
    """Gradients of z = mu + exp(lv / 2) * eps through the sample (eps held fixed).

        dz/dmu = 1                         -> dmu = dz
        dz/dlv = eps * exp(lv / 2) / 2     -> dlv = dz * eps * sigma / 2
    grad_z, log_variance, noise: (batch, latent) -> (dmu, dlv), each (batch, latent).
    """
    xp = array_module(grad_z)
    return grad_z, grad_z * noise * (0.5 * xp.exp(0.5 * log_variance))


def gaussian_kl_loss(mean, log_variance):
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent units, averaged over the batch.

        KL = mean_b sum_j -1/2 (1 + lv_bj - mu_bj^2 - e^lv_bj)
    mean, log_variance: (batch, latent) -> 0-d array.
    """
    xp = array_module(mean)
    per_unit = -0.5 * (1 + log_variance - mean * mean - xp.exp(log_variance))
    return per_unit.sum() * (1.0 / mean.shape[0])


def gaussian_kl_loss_and_grad(mean, log_variance):
    """KL as in :func:`gaussian_kl_loss` and its gradients (each divided by the batch B):

        dKL/dmu = mu / B
        dKL/dlv = (e^lv - 1) / (2 B)
    Returns (kl: 0-d, dmu: (batch, latent), dlv: (batch, latent)).
    """
    xp = array_module(mean)
    variance = xp.exp(log_variance)
    scale = 1.0 / mean.shape[0]
    kl = (-0.5 * (1 + log_variance - mean * mean - variance)).sum() * scale
    return kl, mean * scale, (variance - 1) * (0.5 * scale)


# --------------------------------------------------------------------------------------
# Regularizers: L2 weight decay, L1 on activations, input corruption.
# --------------------------------------------------------------------------------------
def l2_penalty(weights, strength: float):
    """R = strength / 2 * sum(W^2) (TensorFlow's l2_loss times strength). -> 0-d array."""
    return (weights * weights).sum() * (0.5 * strength)


def l2_penalty_grad(weights, grad_weights, strength: float):
    """Add dR/dW = strength * W to grad_weights, in place (a term added to the loss's
    gradient, so it accumulates instead of overwriting). weights, grad_weights: same shape."""
    grad_weights += strength * weights


def l1_penalty_and_grad(activations, strength: float):
    """R = strength * mean(|h|) over batch and units, and dR/dh = strength * sign(h) / N.

    sign(0) = 0, so an exactly-zero unit (a ReLU's) gets no push either way.
    activations: (batch, units) -> (0-d array, (batch, units)).
    """
    xp = array_module(activations)
    penalty = xp.abs(activations).mean() * strength
    grad = xp.sign(activations) * (strength / activations.size)
    return penalty, grad


def gaussian_corruption(x, noise, std: float):
    """x~ = clip(x + std * eps, 0, 1): additive Gaussian noise, kept in the pixel range.

    x, noise (eps ~ N(0, 1)): (batch, features) -> same shape.
    """
    xp = array_module(x)
    return xp.clip(x + std * noise, 0.0, 1.0)


def masking_corruption(x, keep):
    """x~ = x * keep: masking noise, each pixel zeroed where keep is False.

    x: (batch, features) floats; keep: (batch, features) booleans -> same shape as x.
    (A boolean mask keeps x's dtype; an integer mask would promote float32 to float64.)
    """
    return x * keep


# --------------------------------------------------------------------------------------
# The guard between backward and the update: is this step safe to apply?
# --------------------------------------------------------------------------------------
def step_is_finite(loss, grads) -> bool:
    """True when the loss and every gradient are finite (no NaN, no infinity).

    loss: a scalar or 0-d array (the step's objective); grads: the flat gradient arena
    (any shape). A step that fails this is not applied: an update from a NaN or
    infinite gradient would make every parameter it touches NaN.
    """
    xp = array_module(grads)
    return bool(xp.isfinite(xp.asarray(loss)).all()) and bool(xp.isfinite(grads).all())


# --------------------------------------------------------------------------------------
# Optimizer updates, in place over flat arrays (the parameter arena and its state).
# --------------------------------------------------------------------------------------
def flush_subnormals(state) -> None:
    """Set every entry of an optimizer state buffer with |x| below the dtype's smallest
    normal number (1.18e-38 in float32) to +0, in place.

    Why: a running average fed a zero gradient (a dead ReLU unit, an always-blank pixel)
    decays into subnormal numbers and, in float32, sticks there (0.1 x a few times the
    smallest subnormal rounds to 0, so the decay stops); on the AVX-512 EPYC the
    tutorial's update alone took 2.2x as long with half its state subnormal. Every
    optimizer flushes its state as it is written, on every CPU path, so they stay equal
    bit for bit. The parameters never notice: a subnormal mean square
    vanishes beside eps in the root, and a subnormal momentum or first moment moves a
    weight by less than its last bit unless the weight itself is below about 1e-30.
    TensorFlow's CPU kernels run with flush-to-zero for the same reason.
    """
    xp = array_module(state)
    state[xp.abs(state) < xp.finfo(state.dtype).tiny] = 0


def rmsprop_update(
    params,
    grads,
    mean_square,
    momentum_buffer,
    lr: float,
    rho: float,
    eps: float,
    momentum: float,
    flavor: str,
):
    """One RMSProp step, in place. All arrays are flat and the same shape.

    flavor "tf1" (tf.compat.v1.train.RMSPropOptimizer; mean_square starts at ones):
        ms  <- ms + (g^2 - ms)(1 - rho)
        mom <- momentum * mom + lr * g / sqrt(ms + eps)
        w   <- w - mom
    flavor "keras" (tf.keras.optimizers.RMSprop; mean_square starts at zeros):
        ms  <- rho * ms + (1 - rho) g^2
        inc <- lr * g / sqrt(ms + eps)
        w   <- w - inc, or with momentum: mom <- momentum * mom + inc; w <- w - mom
    flavor "torch" (torch.optim.RMSprop; mean_square starts at zeros, eps outside the root):
        ms  <- rho * ms + (1 - rho) g^2
        d   <- g / (sqrt(ms) + eps)
        w   <- w - lr * d, or with momentum: mom <- momentum * mom + d; w <- w - lr * mom
    momentum_buffer may be None when momentum == 0.
    Each state buffer is flushed (:func:`flush_subnormals`) as soon as it is written.
    """
    xp = array_module(params)
    if flavor == "tf1":
        mean_square += (grads * grads - mean_square) * (1 - rho)
        flush_subnormals(mean_square)
        increment = lr * grads / xp.sqrt(mean_square + eps)
    elif flavor == "keras":
        mean_square *= rho
        mean_square += (1 - rho) * (grads * grads)
        flush_subnormals(mean_square)
        increment = lr * grads / xp.sqrt(mean_square + eps)
    elif flavor == "torch":
        mean_square *= rho
        mean_square += (1 - rho) * (grads * grads)
        flush_subnormals(mean_square)
        direction = grads / (xp.sqrt(mean_square) + eps)
        if momentum:
            momentum_buffer *= momentum
            momentum_buffer += direction
            flush_subnormals(momentum_buffer)
            params -= lr * momentum_buffer
        else:
            params -= lr * direction
        return
    else:
        raise ValueError(f"unknown RMSProp flavor {flavor!r}; use 'tf1', 'keras' or 'torch'")
    if momentum:
        momentum_buffer *= momentum
        momentum_buffer += increment
        flush_subnormals(momentum_buffer)
        params -= momentum_buffer
    else:
        params -= increment


def sgd_update(
    params,
    grads,
    velocity,
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
):
    """One SGD step, in place (torch.optim.SGD's rule, dampening 0).

        g <- g + weight_decay * w                    (when weight_decay > 0)
        v <- momentum * v + g                        (when momentum > 0; v starts at 0)
        d <- g + momentum * v if nesterov else v     (d = g without momentum)
        w <- w - lr * d
    velocity may be None when momentum == 0.
    Each state buffer is flushed (:func:`flush_subnormals`) as soon as it is written.
    """
    if weight_decay:
        grads = grads + weight_decay * params
    if momentum:
        velocity *= momentum
        velocity += grads
        flush_subnormals(velocity)
        direction = grads + momentum * velocity if nesterov else velocity
    else:
        direction = grads
    params -= lr * direction


def adam_update(
    params,
    grads,
    first_moment,
    second_moment,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    step: int,
    weight_decay: float,
    decoupled: bool,
    flavor: str,
):
    """One Adam (or AdamW) step, in place; ``step`` counts from 1.

    Weight decay: decoupled (AdamW) shrinks the weights first, w <- w - lr * wd * w;
    otherwise (Adam with L2) it is added to the gradient, g <- g + wd * w.

    flavor "torch" (torch.optim.Adam / AdamW):
        m <- m + (1 - beta1)(g - m);  v <- beta2 v + (1 - beta2) g^2
        w <- w - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
    flavor "keras" (tf.keras.optimizers.Adam / AdamW):
        m <- m + (g - m)(1 - beta1);  v <- v + (g^2 - v)(1 - beta2)
        w <- w - [lr sqrt(1 - beta2^t) / (1 - beta1^t)] * m / (sqrt(v) + eps)
    The two differ only in where eps sits relative to the bias correction.
    Each state buffer is flushed (:func:`flush_subnormals`) as soon as it is written.
    """
    xp = array_module(params)
    if weight_decay and decoupled:
        params *= 1 - lr * weight_decay
    elif weight_decay:
        grads = grads + weight_decay * params
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    if flavor == "torch":
        first_moment += (1 - beta1) * (grads - first_moment)  # torch's lerp
        second_moment *= beta2
        second_moment += (1 - beta2) * (grads * grads)
        flush_subnormals(first_moment)
        flush_subnormals(second_moment)
        denominator = xp.sqrt(second_moment) / bias_correction2**0.5 + eps
        params -= (lr / bias_correction1) * first_moment / denominator
    elif flavor == "keras":
        first_moment += (grads - first_moment) * (1 - beta1)
        second_moment += (grads * grads - second_moment) * (1 - beta2)
        flush_subnormals(first_moment)
        flush_subnormals(second_moment)
        step_size = lr * bias_correction2**0.5 / bias_correction1
        params -= step_size * first_moment / (xp.sqrt(second_moment) + eps)
    else:
        raise ValueError(f"unknown Adam flavor {flavor!r}; use 'torch' or 'keras'")
