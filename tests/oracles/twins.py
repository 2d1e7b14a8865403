"""The same network in nanoae, TensorFlow and PyTorch, and the error measure they share.

Weights follow nanoae's layout: ``"<i>.weights"`` is (in, out) as TensorFlow's kernel
(``y = x @ W + b``); PyTorch's ``Linear.weight`` is its transpose (out, in).

Error measure (docs/fidelity.md): for a tensor ``a`` from nanoae and ``b`` from a
framework, ``relative_error(a, b) = max|a - b| / max|b|``, the largest difference as
a fraction of the tensor's largest entry; when ``b`` is all zeros, ``max|a - b|``.
"""

from __future__ import annotations

import numpy as np

ACTIVATIONS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh")
LOSSES = ("mse", "bce", "bce_logits")

# TensorFlow's LeakyRelu op keeps alpha in a float32 attribute, even for float64 data.
# The oracle tests use a slope that float32 holds exactly, so both sides use the same
# number in both dtypes (tests/oracles/test_gradients.py shows the 0.2 case on its own).
LEAKY_ALPHA = 0.25


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected|, in float64 (see the module doc)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"shapes differ: {actual.shape} vs {expected.shape}"
    if expected.size == 0:
        return 0.0
    difference = float(np.max(np.abs(actual - expected)))
    scale = float(np.max(np.abs(expected)))
    return difference / scale if scale > 0 else difference


def worst(errors: dict) -> tuple[str, float]:
    """(name, value) of the largest error in a {name: error} dict."""
    name = max(errors, key=errors.get)
    return name, errors[name]


# ---- TensorFlow ----------------------------------------------------------------------
def tf_activation(tf, name: str, z, alpha: float = LEAKY_ALPHA):
    if name == "identity":
        return z
    if name == "relu":
        return tf.nn.relu(z)
    if name == "leaky_relu":
        return tf.nn.leaky_relu(z, alpha=alpha)
    if name == "sigmoid":
        return tf.sigmoid(z)
    if name == "tanh":
        return tf.tanh(z)
    raise ValueError(name)


def tf_loss(tf, name: str, prediction, target):
    """The framework's own loss functions, mean over batch and features."""
    import keras  # noqa: PLC0415 (Keras 3, installed with TensorFlow)

    if name == "mse":
        return tf.reduce_mean(tf.square(prediction - target))
    if name == "bce":
        # Keras clips p to [1e-7, 1 - 1e-7] as nanoae does; a mean over features, then over rows.
        return tf.reduce_mean(keras.losses.binary_crossentropy(target, prediction))
    if name == "bce_logits":
        return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=prediction))
    raise ValueError(name)


def tf_forward_and_gradients(tf, params: dict, activations, loss: str, x, target, alpha: float = LEAKY_ALPHA):
    """Forward, loss and gradients with tf.GradientTape.

    Returns (output, loss, {"dx", "<i>.weights", "<i>.bias": gradient}) as NumPy arrays.
    """
    depth = len(activations)
    variables = {}
    for i in range(depth):
        variables[f"{i}.weights"] = tf.Variable(params[f"{i}.weights"])
        variables[f"{i}.bias"] = tf.Variable(params[f"{i}.bias"])
    inputs = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        hidden = inputs
        for i, name in enumerate(activations):
            hidden = tf_activation(tf, name, tf.matmul(hidden, variables[f"{i}.weights"]) + variables[f"{i}.bias"], alpha)
        value = tf_loss(tf, loss, hidden, tf.constant(target))
    names = list(variables)
    gradients = tape.gradient(value, [inputs] + [variables[n] for n in names])
    result = {"dx": gradients[0].numpy()}
    result.update({n: g.numpy() for n, g in zip(names, gradients[1:])})
    return hidden.numpy(), float(value.numpy()), result


# ---- PyTorch -------------------------------------------------------------------------
def torch_activation(torch, name: str, z, alpha: float = LEAKY_ALPHA):
    functional = torch.nn.functional
    if name == "identity":
        return z
    if name == "relu":
        return torch.relu(z)
    if name == "leaky_relu":
        return functional.leaky_relu(z, alpha)
    if name == "sigmoid":
        return torch.sigmoid(z)
    if name == "tanh":
        return torch.tanh(z)
    raise ValueError(name)


def torch_loss(torch, name: str, prediction, target):
    functional = torch.nn.functional
    if name == "mse":
        return functional.mse_loss(prediction, target)
    if name == "bce":
        return functional.binary_cross_entropy(prediction, target)
    if name == "bce_logits":
        return functional.binary_cross_entropy_with_logits(prediction, target)
    raise ValueError(name)


def torch_linears(torch, params: dict, depth: int):
    """torch.nn.Linear layers holding nanoae's parameters (weight = W.T)."""
    layers = []
    for i in range(depth):
        weights = params[f"{i}.weights"]
        layer = torch.nn.Linear(weights.shape[0], weights.shape[1], dtype=torch.from_numpy(weights).dtype)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(weights.T)))
            layer.bias.copy_(torch.from_numpy(params[f"{i}.bias"]))
        layers.append(layer)
    return layers


def torch_forward_and_gradients(torch, params: dict, activations, loss: str, x, target, alpha: float = LEAKY_ALPHA):
    """Forward, loss and gradients with autograd, gradients in nanoae's layout (dW as (in, out))."""
    layers = torch_linears(torch, params, len(activations))
    inputs = torch.from_numpy(np.array(x)).requires_grad_(True)
    hidden = inputs
    for layer, name in zip(layers, activations):
        hidden = torch_activation(torch, name, layer(hidden), alpha)
    value = torch_loss(torch, loss, hidden, torch.from_numpy(np.array(target)))
    value.backward()
    result = {"dx": inputs.grad.numpy()}
    for i, layer in enumerate(layers):
        result[f"{i}.weights"] = layer.weight.grad.numpy().T
        result[f"{i}.bias"] = layer.bias.grad.numpy()
    return hidden.detach().numpy(), float(value.item()), result
