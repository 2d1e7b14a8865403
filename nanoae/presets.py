"""Named model configurations.

``tutorial`` is the exact model of the TensorFlow 1 tutorial nanoae grows out of
(see ``docs/architecture.md``):

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

The other presets keep the tutorial's widths and optimizer and change one thing each:
``vae`` (a variational autoencoder, 2-D code by default), ``denoising`` and
``denoising-mask`` (trained on corrupted inputs), ``sparse`` (L1 on the code) and
``weight-decay`` (an L2 term on the weights). Those take ``code_size`` to replace the
128-wide code and use a sigmoid output (or logits, for the VAE).
"""

from __future__ import annotations

from nanoae.layers import Dense
from nanoae.models import Autoencoder, Sequential
from nanoae.optim import Adam, RMSProp
from nanoae.regularizers import ActivityL1, get_corruption, set_weight_decay
from nanoae.vae import VariationalAutoencoder

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


def tutorial_encoder(code_size: int = 128) -> Sequential:
    """The tutorial's encoder alone (784 -> 784 -> 256 -> code, ReLU after each), unbuilt."""
    return _stack((*TUTORIAL_ENCODER_WIDTHS[:-1], code_size), "relu", "relu", "glorot_uniform")


def tutorial(seed=None, backend=None, dtype=None, output_activation: str = "relu", lr: float = 0.001, fast=None) -> Autoencoder:
    """The tutorial's autoencoder with its RMSProp (tf1 flavor), ready to train.

    output_activation: "relu" as in the tutorial; "sigmoid", "identity" or
    "leaky_relu" avoid output pixels stuck at zero (a known defect of the original).
    """
    encoder = tutorial_encoder(TUTORIAL_ENCODER_WIDTHS[-1])
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


# ---- past the tutorial: the same widths, one change each ---------------------------------
def _widths(code_size: int):
    """The tutorial's encoder and decoder widths with the 128-wide code replaced."""
    encoder = (*TUTORIAL_ENCODER_WIDTHS[:-1], code_size)
    decoder = (code_size, *TUTORIAL_DECODER_WIDTHS[1:])
    return encoder, decoder


def _variant(seed, backend, dtype, output_activation, lr, fast, code_size, **options) -> Autoencoder:
    encoder = tutorial_encoder(code_size)
    decoder = _stack(_widths(code_size)[1], "relu", output_activation, "glorot_uniform")
    regularizer = options.pop("code_regularizer", None)
    if regularizer is not None:
        encoder = Sequential([*encoder.layers, regularizer])
    return Autoencoder(
        encoder, decoder, loss="mse", optimizer=RMSProp(lr, flavor="tf1"), backend=backend, dtype=dtype, seed=seed, fast=fast, **options
    )


def denoising(seed=None, backend=None, dtype=None, output_activation: str = "sigmoid", lr: float = 0.001, fast=None,
              code_size: int = 128, noise: str = "gaussian", level: float = 0.5) -> Autoencoder:
    """The tutorial's model trained to undo input noise: each step feeds corrupted
    digits and scores the output against the clean ones.

    noise: "gaussian" (x + level * eps, clipped to [0, 1]; default level 0.5) or "mask"
    (each pixel zeroed with probability level). The output is sigmoid by default: a
    ReLU output with dead pixels cannot paint strokes back in.
    """
    corruption = get_corruption(f"{noise}:{level}")
    return _variant(seed, backend, dtype, output_activation, lr, fast, code_size, corruption=corruption)


def denoising_mask(seed=None, backend=None, dtype=None, output_activation: str = "sigmoid", lr: float = 0.001, fast=None,
                   code_size: int = 128) -> Autoencoder:
    """:func:`denoising` with masking noise: half of the pixels of each input zeroed."""
    return denoising(seed, backend, dtype, output_activation, lr, fast, code_size, noise="mask", level=0.5)


def sparse(seed=None, backend=None, dtype=None, output_activation: str = "sigmoid", lr: float = 0.001, fast=None,
           code_size: int = 128, strength: float = 0.01) -> Autoencoder:
    """The tutorial's model with an L1 penalty strength * mean(|code|) on its ReLU code,
    which drives most code units to exactly 0 for any one digit."""
    return _variant(seed, backend, dtype, output_activation, lr, fast, code_size, code_regularizer=ActivityL1(strength))


def weight_decay(seed=None, backend=None, dtype=None, output_activation: str = "sigmoid", lr: float = 0.001, fast=None,
                 code_size: int = 128, strength: float = 1e-5) -> Autoencoder:
    """The tutorial's model with its "regularization term": strength/2 * sum(W^2) over
    every weight matrix (biases excluded) added to the MSE."""
    model = _variant(seed, backend, dtype, output_activation, lr, fast, code_size)
    set_weight_decay(model, strength)
    return model


def vae(seed=None, backend=None, dtype=None, output_activation: str = "identity", lr: float = 0.001, fast=None,
        code_size: int = 2, beta: float = 1.0):
    """A variational autoencoder shaped like the tutorial's model.

    encoder 784 -> 784 -> 256 -> 2 x code_size (ReLU, ReLU, linear: mu and log sigma^2);
    decoder code_size -> 128 -> 256 -> 784 (ReLU, ReLU, linear logits); BCE on logits;
    the tutorial's RMSProp. code_size defaults to 2, so the code itself is a map.
    """
    if output_activation not in (None, "identity"):
        raise ValueError(f"the vae preset's decoder outputs logits (BCE on logits); --output-activation {output_activation} does not apply")
    encoder_widths, decoder_widths = _widths(code_size)
    encoder = _stack((*encoder_widths[:-1], 2 * code_size), "relu", "identity", "glorot_uniform")
    decoder = _stack(decoder_widths, "relu", "identity", "glorot_uniform")
    return VariationalAutoencoder(
        encoder, decoder, loss="bce_logits", beta=beta, optimizer=RMSProp(lr, flavor="tf1"), backend=backend, dtype=dtype, seed=seed, fast=fast
    )


PRESETS = {
    "tutorial": tutorial,
    "vae": vae,
    "denoising": denoising,
    "denoising-mask": denoising_mask,
    "sparse": sparse,
    "weight-decay": weight_decay,
}


def get_preset(name: str):
    """The factory function of a named preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


# ---- any width: a model for the user's own data ------------------------------------------
def autoencoder_from_widths(in_features: int, widths, activation: str = "relu", output_activation: str = "sigmoid",
                            seed=None, backend=None, optimizer=None, fast=None, dtype=None) -> Autoencoder:
    """A plain Dense autoencoder of any width, for data that is not 784-wide MNIST.

    widths: the encoder's widths after the input, e.g. (512, 128, 32): the encoder maps
    in_features -> 512 -> 128 -> 32 (the last width is the code), the decoder mirrors it
    32 -> 128 -> 512 -> in_features. The hidden layers take ``activation``; the code layer
    is linear (no unit can die there, and a 2-wide code is a map as it is); the decoder's
    last layer takes ``output_activation``.
    Weights Glorot-uniform, biases zero; loss MSE; ``optimizer`` default Adam(0.001);
    ``dtype`` "float32" (default) or "float64".
    """
    widths = tuple(int(width) for width in widths)
    if not widths or any(width < 1 for width in widths):
        raise ValueError(f"widths must be one or more whole numbers >= 1, got {list(widths)}")
    encoder_widths = (int(in_features), *widths)
    decoder_widths = encoder_widths[::-1]

    def dense_stack(sizes, last_activation):
        pairs = list(zip(sizes, sizes[1:]))
        return Sequential([Dense(a, b, last_activation if k == len(pairs) - 1 else activation) for k, (a, b) in enumerate(pairs)])

    encoder = dense_stack(encoder_widths, "identity")
    decoder = dense_stack(decoder_widths, output_activation)
    return Autoencoder(encoder, decoder, loss="mse", optimizer=optimizer if optimizer is not None else Adam(0.001),
                       backend=backend, dtype=dtype, seed=seed, fast=fast)
