"""scikit-learn estimators: a nanoae autoencoder as a transformer (the ``sklearn`` extra).

    from sklearn.pipeline import make_pipeline
    from sklearn.linear_model import LogisticRegression
    from nanoae.sklearn import AutoencoderTransformer

    pipe = make_pipeline(AutoencoderTransformer(layers=(128, 32), random_state=0), LogisticRegression())
    pipe.fit(x_train, y_train).score(x_test, y_test)

:class:`AutoencoderTransformer` follows scikit-learn's conventions: the constructor
only stores its parameters, ``fit`` builds and trains a fresh
:class:`~nanoae.models.Autoencoder` (``model_``), ``transform`` gives its codes,
``inverse_transform`` decodes codes, and ``score`` is the negative reconstruction MSE
(so ``GridSearchCV`` with no ``scoring`` picks the best reconstruction).

This module imports scikit-learn, an optional dependency, so ``import nanoae`` does
not import it: import ``nanoae.sklearn`` yourself (``pip install 'nanoae[sklearn]'``).
It relies on the public API of scikit-learn 1.6 and later (``validate_data``, tags).
"""

from __future__ import annotations

import json
import math
import numbers

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin, clone
from sklearn.utils import check_array, check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from nanoae.activations import ACTIVATIONS
from nanoae.callbacks import Callback
from nanoae.layers import Dense
from nanoae.models import Autoencoder, Sequential
from nanoae.module import clone_module, module_from_config
from nanoae.optim import OPTIMIZERS, get_optimizer

__all__ = ["AutoencoderTransformer"]

_LOSSES = ("mse", "bce")
_DTYPES = {"float32": np.float32, "float64": np.float64}
_CHUNK_ROWS = 4096  # rows per forward pass in transform/score: bounds the activations' memory
_SEED_BOUND = 2**31 - 1
_DEFAULT_STEPS = 1000  # when neither max_steps nor epochs is given


class AutoencoderTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """A dense autoencoder as a scikit-learn transformer: X (n, features) -> codes (n, layers[-1]).

    The network: encoder ``n_features -> layers[0] -> ... -> layers[-1]`` with
    ``activation`` after every layer but the last (the code is linear, as PCA's is);
    decoder the mirror image ``layers[-1] -> ... -> layers[0] -> n_features`` with
    ``activation`` inside and ``output_activation`` at the end. Weights are
    Glorot-uniform, biases zero. Training minimises ``loss`` over mini-batches.

    Parameters
    ----------
    layers : tuple of int, or int
        The encoder's widths after the input; the last is the code size. Default (128, 32).
    activation : str
        "relu" (default), "leaky_relu", "tanh", "sigmoid" or "identity", inside both halves.
    output_activation : str
        The decoder's last activation. "auto" (default): "sigmoid" when every value of
        the training X lies in [0, 1] (pixels, MinMaxScaler output), else "identity"
        (standardised or raw data); the choice is kept in ``output_activation_``.
    loss : str
        "mse" (default): mean over rows and features of (x - x_hat)^2. "bce": binary
        cross-entropy, for X in [0, 1]; it is computed on the decoder's logits (stable),
        and reconstructions are sigmoid(logits).
    optimizer : str
        "adam" (default), "adamw", "rmsprop" or "sgd", with ``learning_rate``.
    learning_rate : float
        Default 0.001.
    batch_size : int
        Rows per step (default 256); clipped to the number of training rows.
    max_steps : int or None
        The most steps to train. Default None.
    epochs : float or None
        Passes over the training data: ceil(epochs * n / batch_size) steps. Default None.
        The training length: both None, 1000 steps; one given, that one alone; both
        given, whichever ends first (the fewer steps). ``n_steps_`` records it.
    random_state : int, RandomState or None
        Seeds the initial weights and the batch order; an int is nanoae's seed itself.
        None: a seed drawn from NumPy's global generator.
    backend : str
        "numpy" (default: the CPU, reproducible), "cupy" or "auto" (a GPU when usable).
    dtype : str
        "float32" (default) or "float64": the model's numbers. Training runs in this
        dtype (``fit`` casts X to it).
    verbose : int
        0 (default) quiet; 1 prints the loss ten times per fit.

    Precision of transform, inverse_transform and score: that of their input.
    float64 input is evaluated in float64, with a float64 copy of the trained weights
    (made once per fit, refreshed when ``model_``'s weights have changed since), and gives
    float64 output. Any other input is cast to ``dtype`` and runs ``model_`` itself, with
    no copy: with the float32 default, float32 X gives ``model_.encode`` of each block of
    4096 rows exactly, in float32, at float32's speed. Either way a matrix product may round a row differently
    with the rows around it (BLAS treats full tiles and leftover rows with different
    kernels): a row's output may change in its last bits with the batch it comes in,
    a few times 1e-16 relative in float64, 1e-7 in float32.

    Attributes
    ----------
    model_ : nanoae.Autoencoder
        The trained network (``model_.encode``, ``model_.reconstruct``, checkpoints...).
    loss_curve_ : list of float
        The training loss of every step, in order.
    n_steps_ : int
        Steps trained.
    output_activation_ : str
        The decoder's last activation, "auto" resolved.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when X had column names (a DataFrame).
    """

    def __init__(
        self,
        layers=(128, 32),
        activation="relu",
        output_activation="auto",
        loss="mse",
        optimizer="adam",
        learning_rate=0.001,
        batch_size=256,
        max_steps=None,
        epochs=None,
        random_state=None,
        backend="numpy",
        dtype="float32",
        verbose=0,
    ) -> None:
        self.layers = layers
        self.activation = activation
        self.output_activation = output_activation
        self.loss = loss
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_steps = max_steps
        self.epochs = epochs
        self.random_state = random_state
        self.backend = backend
        self.dtype = dtype
        self.verbose = verbose

    # ---- fitting -------------------------------------------------------------------
    def fit(self, X, y=None):
        """Train a fresh autoencoder on X: (n_samples, n_features). y is ignored. Returns self.

        Everything is checked, built and trained before the first fitted attribute is
        set, so a fit that fails leaves the previous fit (or none) whole.
        """
        # validate_data records n_features_in_ and feature_names_in_ on the estimator it
        # is given: a parameter copy takes them, and they move here only on success.
        record = clone(self)
        with np.errstate(over="ignore"):  # as in _validated
            X = validate_data(record, X, dtype=self._checked_dtype(), reset=True)
        widths = self._checked_layers()
        steps = self._steps(X.shape[0])
        batch_size = min(self._checked_batch_size(), X.shape[0])
        output_activation = self._resolved_output_activation(X)
        model = self._new_model(X.shape[1], widths, output_activation)
        callbacks = [_LossPrinter(steps)] if self.verbose else []
        history = model.fit(X, steps=steps, batch_size=batch_size, log_every=1, callbacks=callbacks)
        float64_copy = _float64_copy(model)

        self.n_features_in_ = record.n_features_in_
        if hasattr(record, "feature_names_in_"):
            self.feature_names_in_ = record.feature_names_in_
        else:
            self.__dict__.pop("feature_names_in_", None)
        self.model_ = model
        self._float64_twin = (model, float64_copy)  # (the model_ it copies, the copy)
        self.output_activation_ = output_activation
        self.loss_curve_ = [float(value) for value in history]
        self.n_steps_ = int(model.steps_trained)
        return self

    def _new_model(self, n_features: int, widths: tuple, output_activation: str) -> Autoencoder:
        activation = _checked_choice(self.activation, "activation", tuple(ACTIVATIONS))
        encoder_widths = (n_features, *widths)
        decoder_widths = encoder_widths[::-1]
        bce = self.loss == "bce"
        last = "identity" if bce else output_activation  # BCE trains on logits; reconstructions get the sigmoid
        encoder = _dense_stack(encoder_widths, activation, "identity")
        decoder = _dense_stack(decoder_widths, activation, last)
        optimizer = get_optimizer(
            _checked_choice(self.optimizer, "optimizer", tuple(OPTIMIZERS)), lr=_checked_rate(self.learning_rate)
        )
        return Autoencoder(
            encoder,
            decoder,
            loss="bce_logits" if bce else "mse",
            optimizer=optimizer,
            backend=self.backend,
            dtype=self.dtype,
            seed=self._seed(),
        )

    def _seed(self) -> int:
        if isinstance(self.random_state, numbers.Integral) and not isinstance(self.random_state, bool):
            if self.random_state < 0:
                raise ValueError(f"random_state must be >= 0, got {self.random_state}; pass 0 or a larger int")
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(_SEED_BOUND))

    # ---- using the trained model ---------------------------------------------------
    def transform(self, X):
        """Codes of X: (n_samples, n_features) -> (n_samples, layers[-1]); float64 for
        float64 X, else the model's dtype (see the class docstring)."""
        check_is_fitted(self)
        X = self._validated(X)
        return self._in_chunks(self._model_for(X).encode, X)

    def inverse_transform(self, X):
        """Reconstructions from codes: (n_samples, layers[-1]) -> (n_samples, n_features);
        float64 for float64 codes, else the model's dtype.

        With a sigmoid output (or loss "bce") they lie in [0, 1].
        """
        check_is_fitted(self)
        with np.errstate(over="ignore"):  # as in _validated
            codes = check_array(X, dtype=self._evaluation_dtypes())
        if codes.shape[1] != self.model_.code_size:
            raise ValueError(
                f"inverse_transform takes codes of {self.model_.code_size} features (what transform gives), "
                f"got {codes.shape[1]}; pass the output of transform"
            )
        return self._in_chunks(self._model_for(codes).decode, codes)

    def score(self, X, y=None) -> float:
        """-mean((X - inverse_transform(transform(X)))^2) over every row and feature.

        Higher is better (0 is a perfect reconstruction), as scikit-learn's model
        selection expects; y is ignored. Reconstructions in X's precision (float64 for
        float64 X, else the model's dtype); the sum is taken in float64.
        """
        check_is_fitted(self)
        X = self._validated(X)
        model, total = self._model_for(X), 0.0
        for start in range(0, X.shape[0], _CHUNK_ROWS):
            chunk = X[start : start + _CHUNK_ROWS]
            difference = self._host(model.reconstruct(chunk)) - chunk
            total += float(np.sum(difference * difference, dtype=np.float64))
        return -total / X.size

    @property
    def _n_features_out(self) -> int:
        """The code size (what get_feature_names_out counts); AttributeError before fit."""
        return self.model_.code_size

    def _model_for(self, x):
        """The network that evaluates x: model_ itself, unless x is float64 and model_
        is not; then its float64 twin, made at fit and brought up to date here if
        model_'s weights were changed since (trained on, or set by hand).

        Why a float64 twin for float64 input: float64 data asks for float64 results, and
        scikit-learn's checks compare a row's output across batches and orders to 1e-7
        relative, which float32 rounding (1.2e-7) does not always meet and float64 does.
        """
        model = self.model_
        if x.dtype != np.float64 or model.backend.dtype == np.float64:
            return model
        source_of_twin, twin = getattr(self, "_float64_twin", (None, None))
        if source_of_twin is not model:  # model_ was replaced by another network
            return _float64_copy(model)
        source, xp = model.parameters(), model.backend.xp
        for name, view in twin.parameters().items():
            if not bool(xp.array_equal(view, source[name])):  # float32 -> float64 is exact, so equal means current
                view[...] = source[name]
        return twin

    def _evaluation_dtypes(self) -> list:
        """What input transform, inverse_transform and score keep as it is: float64 and
        the model's dtype; anything else is cast to the model's dtype (the first)."""
        return [self.model_.backend.dtype, np.float64]

    def _in_chunks(self, method, x) -> np.ndarray:
        """method on row chunks of x, on the host, in x's dtype."""
        parts = [self._host(method(x[start : start + _CHUNK_ROWS])).astype(x.dtype, copy=False) for start in range(0, x.shape[0], _CHUNK_ROWS)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _host(self, array) -> np.ndarray:
        return self.model_.backend.to_host(array)

    def _validated(self, X) -> np.ndarray:
        """X for transform and score: a finite 2-D array of the fitted width, float64 kept
        as it is and anything else cast to the model's dtype (scikit-learn's checks and
        messages)."""
        # A value beyond float32's range becomes inf when narrowed; the finiteness check
        # right after names it, so NumPy's overflow warning would only repeat it.
        with np.errstate(over="ignore"):
            return validate_data(self, X, dtype=self._evaluation_dtypes(), reset=False)

    # ---- parameters, checked when fit uses them --------------------------------------
    def _checked_dtype(self):
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        return _DTYPES[self.dtype]

    def _checked_layers(self) -> tuple:
        layers = (self.layers,) if isinstance(self.layers, numbers.Integral) else self.layers
        if isinstance(layers, str) or not hasattr(layers, "__iter__"):
            raise ValueError(f"layers must be a tuple of widths such as (128, 32), got {self.layers!r}")
        layers = tuple(layers)
        if not layers or not all(isinstance(w, numbers.Integral) and not isinstance(w, bool) and w >= 1 for w in layers):
            raise ValueError(
                f"layers must be one or more positive integer widths such as (128, 32) (the last is the code size), "
                f"got {self.layers!r}"
            )
        return tuple(int(width) for width in layers)

    def _checked_batch_size(self) -> int:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, numbers.Integral) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        return int(self.batch_size)

    def _steps(self, n_samples: int) -> int:
        """max_steps, or the steps of ``epochs`` passes, whichever is fewer; 1000 with neither."""
        limits = []
        if self.max_steps is not None:
            if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, numbers.Integral) or self.max_steps < 1:
                raise ValueError(f"max_steps must be an integer >= 1 or None, got {self.max_steps!r}")
            limits.append(int(self.max_steps))
        if self.epochs is not None:
            if isinstance(self.epochs, bool) or not isinstance(self.epochs, numbers.Real) or not 0 < self.epochs < math.inf:
                raise ValueError(f"epochs must be a number > 0 or None, got {self.epochs!r}")
            limits.append(max(1, math.ceil(self.epochs * n_samples / min(self._checked_batch_size(), n_samples))))
        return min(limits) if limits else _DEFAULT_STEPS

    def _resolved_output_activation(self, X) -> str:
        loss = _checked_choice(self.loss, "loss", _LOSSES)
        in_unit_range = bool(X.min() >= 0 and X.max() <= 1)
        if loss == "bce":
            if self.output_activation not in ("auto", "sigmoid"):
                raise ValueError(
                    f"loss='bce' scores a sigmoid output, so output_activation must be 'auto' or 'sigmoid', "
                    f"not {self.output_activation!r}; or use loss='mse'"
                )
            if not in_unit_range:
                raise ValueError(
                    "loss='bce' needs every value of X in [0, 1]; scale X first (e.g. with MinMaxScaler) or use loss='mse'"
                )
            return "sigmoid"
        if self.output_activation == "auto":
            return "sigmoid" if in_unit_range else "identity"
        return _checked_choice(self.output_activation, "output_activation", ("auto", *ACTIVATIONS))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # float64 input gives float64 output; other input gives the model's dtype.
        tags.transformer_tags.preserves_dtype = ["float64"] if self.dtype == "float64" else ["float64", "float32"]
        return tags

    # ---- pickling: nanoae's own config and the parameter arrays, nothing else --------
    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())  # a copy: object's own may be the live __dict__
        state.pop("_float64_twin", None)  # remade from model_ when unpickled
        model = state.pop("model_", None)
        if model is not None:
            host = model.backend.to_host
            state["_model_state"] = {
                "config": json.dumps(model.config()),
                "parameters": {name: np.array(host(view)) for name, view in model.parameters().items()},
                "steps_trained": int(model.steps_trained),
            }
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        saved = state.pop("_model_state", None)
        super().__setstate__(state)
        if saved is not None:
            self.model_ = self._rebuilt_model(saved)
            self._float64_twin = (self.model_, _float64_copy(self.model_))

    def _rebuilt_model(self, saved: dict) -> Autoencoder:
        """The pickled model: rebuilt from its config, then given the saved parameters.

        The optimizer's state is not kept: a pickled estimator transforms exactly as
        before, and fit starts over anyway.
        """
        model = module_from_config(json.loads(saved["config"]), backend=self.backend, dtype=self.dtype, seed=0)
        for name, view in model.parameters().items():
            view[...] = model.backend.asarray(saved["parameters"][name], dtype=view.dtype)
        model.steps_trained = saved["steps_trained"]
        return model


def _float64_copy(model):
    """A float64 copy of a float32 model (its weights widened exactly); None for a
    float64 model, which evaluates float64 input itself."""
    if model.backend.dtype == np.float64:
        return None
    return clone_module(model, dtype="float64")


def _dense_stack(widths: tuple, activation: str, last_activation: str) -> Sequential:
    """Dense layers through ``widths``: ``activation`` after each but the last."""
    pairs = list(zip(widths, widths[1:]))
    return Sequential(
        [Dense(n_in, n_out, last_activation if index == len(pairs) - 1 else activation) for index, (n_in, n_out) in enumerate(pairs)]
    )


def _checked_choice(value, name: str, options) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def _checked_rate(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
        raise ValueError(f"learning_rate must be a number > 0, got {value!r}; e.g. 0.001")
    return float(value)


class _LossPrinter(Callback):
    """verbose=1: the loss at ten evenly spaced steps, on stdout."""

    def __init__(self, total_steps: int) -> None:
        self.total_steps = total_steps
        self.every = max(1, total_steps // 10)

    def on_log(self, state) -> None:
        if state.step % self.every == 0 or state.step == state.total_steps:
            print(f"AutoencoderTransformer: step {state.step}/{state.total_steps}, loss {state.loss:.6g}", flush=True)
