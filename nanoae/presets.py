"""Named model configurations.

``tutorial`` is the exact model of the TensorFlow 1 tutorial nanoae grows out of
(see ``DESIGN.md``):

=========  ==================================================================
encoder    Dense 784->784, Dense 784->256, Dense 256->128, ReLU after each
decoder    Dense 128->128, Dense 128->256, Dense 256->784, ReLU after each
init       xavier_initializer for weights *and* biases: U(+-sqrt(6/(in+out)))
           for a weight, U(+-sqrt(3/n)) for a bias of length n
loss       mean over batch and features of (x - x_hat)^2
optimizer  tf.train.RMSPropOptimizer(0.001): rho 0.9, eps 1e-10 inside the
           root, mean square starting at ones
training   batch 256, 1000 steps (the training loop, not the model)
=========  ==================================================================
"""

from __future__ import annotations

from nanoae.layers import Dense
from nanoae.models import Autoencoder, Sequential
from nanoae.optim import RMSProp

TUTORIAL_ENCODER_WIDTHS = (784, 784, 256, 128)
TUTORIAL_DECODER_WIDTHS = (128, 128, 256, 784)
TUTORIAL_TRAINING = {"steps": 1000, "batch_size": 256, "log_every": 1}


def _stack(widths, activation, output_activation, init, alpha=None):
    layers = []
    pairs = list(zip(widths, widths[1:]))
    for index, (fan_in, fan_out) in enumerate(pairs):
        act = output_activation if index == len(pairs) - 1 else activation
        layers.append(
            Dense(fan_in, fan_out, act, init=init, bias_init=init, alpha=alpha if act == "leaky_relu" else None)
        )
    return Sequential(layers)


def tutorial(seed=None, backend=None, dtype=None, output_activation: str = "relu", lr: float = 0.001, fast=None) -> Autoencoder:
    """The tutorial's autoencoder with its RMSProp (tf1 flavour), ready to train.

    output_activation: "relu" as in the tutorial; "sigmoid", "identity" or
    "leaky_relu" avoid output pixels stuck at zero (a known defect of the original).
    """
    encoder = _stack(TUTORIAL_ENCODER_WIDTHS, "relu", "relu", "glorot_uniform")
    decoder = _stack(TUTORIAL_DECODER_WIDTHS, "relu", output_activation, "glorot_uniform")
    return Autoencoder(
        encoder,
        decoder,
        loss="mse",
        optimizer=RMSProp(lr, flavor="tf1"),
        backend=backend,
        dtype=dtype,
        seed=seed,
        fast=fast,
    )


PRESETS = {"tutorial": tutorial}


def get_preset(name: str):
    """The factory function of a named preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
