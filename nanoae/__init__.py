"""nanoae: a from-scratch autoencoder learner with hand-written backprop.

    import nanoae
    model = nanoae.presets.tutorial(seed=0)          # the TF1 tutorial's autoencoder
    losses = model.fit(x_train, steps=1000, batch_size=256)
    x_hat = model.reconstruct(x_test)

NumPy is the only hard dependency; CuPy (GPU), Numba, matplotlib and tqdm are optional.
"""

# Importing these registers every Module, Loss and Optimizer class nanoae defines, so that
# module_from_config (and so every checkpoint) finds them once nanoae is imported.
from nanoae import checkpoint, data, init, params, plot, presets, train, validation
from nanoae.activations import Identity, LeakyReLU, ReLU, Sigmoid, Tanh
from nanoae.backend import Backend, BackendUnavailable, get_backend
from nanoae.classifier import Classifier
from nanoae.errors import NonFiniteStepError
from nanoae.gradcheck import GradcheckReport, gradcheck
from nanoae.layers import Dense
from nanoae.losses import BCE, MSE, BCEWithLogits, SoftmaxCrossEntropy
from nanoae.models import Autoencoder, Model, Sequential
from nanoae.module import Module
from nanoae.optim import SGD, Adam, AdamW, RMSProp
from nanoae.pca import PCA
from nanoae.regularizers import ActivityL1, GaussianNoise, MaskingNoise
from nanoae.vae import VariationalAutoencoder
from nanoae.version import __version__

__all__ = [
    "ActivityL1",
    "Adam",
    "AdamW",
    "Autoencoder",
    "Classifier",
    "GaussianNoise",
    "MaskingNoise",
    "NonFiniteStepError",
    "PCA",
    "SoftmaxCrossEntropy",
    "VariationalAutoencoder",
    "BCE",
    "BCEWithLogits",
    "Backend",
    "BackendUnavailable",
    "Dense",
    "GradcheckReport",
    "Identity",
    "LeakyReLU",
    "MSE",
    "Model",
    "Module",
    "RMSProp",
    "ReLU",
    "SGD",
    "Sequential",
    "Sigmoid",
    "Tanh",
    "get_backend",
    "gradcheck",
    "presets",
    "__version__",
]
