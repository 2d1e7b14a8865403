"""Models: trainable stacks of modules with one parameter arena.

* :class:`Model`       the training machinery: loss, optimizer, ``train_step``, ``fit``
* :class:`Sequential`  layers applied in order (a container, and a model when given a loss)
* :class:`Autoencoder` ``encoder`` then ``decoder``, trained to reproduce its input

A model owns one :class:`~nanoae.params.ParameterArena` (all parameters contiguous),
one optimizer bound to it, and one seeded generator that draws the initial weights
and the seed of the training batches' sampler.
"""

from __future__ import annotations

import numpy as np

from nanoae.layers import Dense, Module
from nanoae.losses import get_loss
from nanoae.optim import RMSProp, get_optimizer
from nanoae.params import ParamSpec
from nanoae.train import train
from nanoae.validation import as_batch, check_same_shape

_BUILD_OPTIONS = ("backend", "dtype", "seed", "fast")


class Model(Module):
    """A module that can train: forward, loss, backward, optimizer step.

    loss:      "mse", "bce", "bce_logits" or a Loss object (None: cannot train)
    optimizer: an Optimizer object or a name (None: cannot train)
    backend, dtype, seed, fast: used when the model builds (see :meth:`Module.build`)
    """

    def __init__(self, loss=None, optimizer=None, backend=None, dtype=None, seed=None, fast=None) -> None:
        super().__init__()
        self.loss = get_loss(loss) if loss is not None else None
        self.optimizer = get_optimizer(optimizer) if optimizer is not None else None
        self._build_options = {"backend": backend, "dtype": dtype, "seed": seed, "fast": fast}
        self.steps_trained = 0

    # ---- building ------------------------------------------------------------------
    def build(self, backend=None, dtype=None, seed=None, fast=None) -> "Model":
        given = {"backend": backend, "dtype": dtype, "seed": seed, "fast": fast}
        options = {key: given[key] if given[key] is not None else self._build_options[key] for key in _BUILD_OPTIONS}
        super().build(**options)
        if self.loss is not None:
            self.loss.bind(self.backend)
        if self.optimizer is not None:
            self.optimizer.bind(self.arena)
        self.steps_trained = 0
        return self

    def _ensure_built(self) -> None:
        if self.arena is None and not self.built:
            self.build()

    # ---- inference -----------------------------------------------------------------
    def predict(self, x):
        """Validated forward pass. x: (batch, in_features) -> (batch, out_features)."""
        return self(x)

    def evaluate(self, x, target=None, batch_size: int = 1024) -> float:
        """Mean loss over a dataset (a float), computed in batches."""
        self._require_training_parts(need_optimizer=False)
        x = as_batch(x, self.in_features, self.backend, "x")
        target = self._target_for(x, target)
        total, count = 0.0, 0
        for start in range(0, x.shape[0], batch_size):
            stop = min(start + batch_size, x.shape[0])
            value = self.loss(self.forward(x[start:stop]), target[start:stop])
            total += float(value) * (stop - start)
            count += stop - start
        return total / count

    # ---- training ------------------------------------------------------------------
    def _require_training_parts(self, need_optimizer: bool = True) -> None:
        self._ensure_built()
        if self.loss is None:
            raise ValueError(f"{type(self).__name__} has no loss; pass loss='mse' (or another) when creating it")
        if need_optimizer and self.optimizer is None:
            raise ValueError(f"{type(self).__name__} has no optimizer; pass optimizer=RMSProp(...) when creating it")

    def _target_for(self, x, target):
        if target is None:
            raise ValueError("target is required for this model")
        target = as_batch(target, self.out_features, self.backend, "target")
        check_same_shape(target, (x.shape[0], self.out_features))
        return target

    def train_step(self, x, target=None):
        """One step on one batch: forward, loss, backward, optimizer update.

        x: (batch, in_features); target: (batch, out_features).
        Returns the batch loss before the update, as a 0-d array of the model's dtype
        (``float(loss)`` reads it; on a GPU that waits for the device).
        """
        self._require_training_parts()
        x = as_batch(x, self.in_features, self.backend, "x")
        target = self._target_for(x, target)
        return self._train_step(x, target)

    def _train_step(self, x, target):
        """train_step on arrays already checked and on the device.

        The objective is loss(output, target) + penalty() (regularisation terms such as
        L2 weight decay, an L1 on the code or a VAE's KL; 0.0 without any), and that is
        what is returned.
        """
        output = self.forward(x)
        loss, grad_output = self.loss.loss_and_grad(output, target)
        self.backward(grad_output, need_input_grad=False)  # nobody needs dL/dx
        penalty = self.penalty()  # before the update: the terms at the weights used
        self.optimizer.step()
        self.steps_trained += 1
        return loss if type(penalty) is float and penalty == 0.0 else loss + penalty

    @property
    def static_train_step(self) -> bool:
        """True when every training step is the same device work, with no host-side
        randomness (so a fast path may record it once and replay it, e.g. as a CUDA
        graph). False for models that draw noise on the host each step (a VAE, a
        denoising autoencoder)."""
        return True

    def inference(self, x):
        """The output users and evaluations see, on a checked batch on the device.

        Plain models: ``forward(x)``. A model trained on logits or with random noise
        overrides it (an autoencoder with a logits loss returns probabilities; a VAE
        decodes its mean code, with no noise).
        """
        return self.forward(x)

    def _to_data_space(self, output):
        """Model output -> data space: sigmoid when the loss works on logits, else as is."""
        from nanoae.losses import BCEWithLogits  # noqa: PLC0415

        return self.backend.ops.activation_forward(output, "sigmoid") if isinstance(self.loss, BCEWithLogits) else output

    def fit(
        self,
        x,
        target=None,
        *,
        steps: int | None = None,
        epochs: float | None = None,
        batch_size: int = 256,
        log_every: int = 1,
        callbacks=(),
        sampler=None,
    ):
        """Train on shuffled mini-batches; return the logged losses (a :class:`~nanoae.train.History`).

        x: (n, in_features); target: (n, out_features), or None where the model has
        its own (an autoencoder's target is its input).
        steps or epochs: how many more steps (epochs may be fractional).
        Batches are drawn like TF1's ``next_batch``: shuffled each epoch by a batch
        sampler seeded from the model's generator, continuing across epoch boundaries
        and across fit calls. With the default
        log_every=1 the history holds every step's loss. See :func:`nanoae.train.train`
        for callbacks (progress bar, CSV metrics, checkpoints, evaluation).
        """
        if sampler is None:
            # Keep drawing from the same shuffled order across fit calls on data of the
            # same size, so fit(steps=10) twice equals fit(steps=20).
            kept = getattr(self, "_batch_sampler", None)
            rows = x.shape[0] if getattr(x, "ndim", 0) >= 1 else None
            if kept is not None and kept.n == rows and kept.batch_size == batch_size:
                sampler = kept
        history = train(
            self,
            x,
            target,
            steps=steps,
            epochs=epochs,
            batch_size=batch_size,
            log_every=log_every,
            callbacks=callbacks,
            sampler=sampler,
        )
        self._batch_sampler = history.sampler
        return history

    def config(self) -> dict:
        config = {"type": type(self).__name__}
        if self.loss is not None:
            config["loss"] = self.loss.config()
        if self.optimizer is not None:
            config["optimizer"] = self.optimizer.config()
        return config


class Sequential(Model):
    """Layers applied in order: y = layer_n(... layer_1(x)).

    Backward runs them in reverse; the first layer skips dL/dx unless asked for it.
    A Sequential builds lazily (on first use) unless built explicitly or placed in a
    bigger model, which then owns its parameters.
    """

    def __init__(self, layers, loss=None, optimizer=None, backend=None, dtype=None, seed=None, fast=None) -> None:
        super().__init__(loss, optimizer, backend, dtype, seed, fast)
        layers = list(layers)
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for index, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"layer {index} is {type(layer).__name__}, not a nanoae Module (e.g. Dense)")
        widths = [(i, layer) for i, layer in enumerate(layers) if layer.in_features is not None]
        for (i, left), (j, right) in zip(widths, widths[1:]):
            if left.out_features != right.in_features:
                raise ValueError(
                    f"layer {i} outputs {left.out_features} features but layer {j} expects {right.in_features}"
                )
        self.layers = layers
        self.in_features = widths[0][1].in_features if widths else None
        self.out_features = widths[-1][1].out_features if widths else None

    def children(self, prefix: str = "") -> list[tuple[str, Module]]:
        return [(f"{prefix}{index}.", layer) for index, layer in enumerate(self.layers)]

    def parameter_specs(self, prefix: str = "") -> list[ParamSpec]:
        specs = []
        for child_prefix, child in self.children(prefix):
            specs.extend(child.parameter_specs(child_prefix))
        return specs

    def forward(self, x):
        """x: (batch, in_features) -> (batch, out_features)."""
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad_output, need_input_grad: bool = True):
        """Reverse pass; returns dL/dx, or None when need_input_grad is False."""
        last = len(self.layers) - 1
        for position, layer in enumerate(reversed(self.layers)):
            grad_output = layer.backward(grad_output, need_input_grad or position < last)
        return grad_output

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index):
        return self.layers[index]

    def __iter__(self):
        return iter(self.layers)

    def config(self) -> dict:
        return {**super().config(), "layers": [layer.config() for layer in self.layers]}

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential([\n  {inner}\n])"


def as_module(layers) -> Module:
    """A Module as given, or a list of layers wrapped in a :class:`Sequential`."""
    return layers if isinstance(layers, Module) else Sequential(layers)


class Autoencoder(Model):
    """reconstruct(x) = decode(encode(x)), trained to reproduce x.

    encoder: Sequential (or a list of layers) from in_features to the code size
    decoder: Sequential (or a list of layers) from the code size back to in_features
    loss:    default "mse"; optimizer: default RMSProp(0.001, flavor="tf1")
    corruption: None, or input noise for a *denoising* autoencoder: a
             :class:`~nanoae.regularizers.GaussianNoise` / ``MaskingNoise`` (or
             "gaussian:0.5", "mask:0.5"). Each training step then feeds the corrupted
             batch and scores the output against the clean one; evaluation and
             ``reconstruct`` use the input as given.
    The autoencoder builds at once, in one arena spanning encoder and decoder
    (names "encoder.<i>.weights", "decoder.<i>.bias", ...).
    With loss "bce_logits" the decoder outputs logits; ``reconstruct`` and ``decode``
    return sigmoid(logits), the images, and evaluations measure those.
    """

    def __init__(
        self,
        encoder,
        decoder,
        loss="mse",
        optimizer=None,
        backend=None,
        dtype=None,
        seed=None,
        fast=None,
        corruption=None,
    ) -> None:
        from nanoae.regularizers import get_corruption  # noqa: PLC0415 (cycle)

        super().__init__(loss, optimizer if optimizer is not None else RMSProp(), backend, dtype, seed, fast)
        self.corruption = get_corruption(corruption)
        self.encoder = as_module(encoder)
        self.decoder = as_module(decoder)
        if self.encoder.out_features != self.decoder.in_features:
            raise ValueError(
                f"the encoder outputs {self.encoder.out_features} features but the decoder expects "
                f"{self.decoder.in_features}"
            )
        if self.decoder.out_features != self.encoder.in_features:
            raise ValueError(
                f"the decoder outputs {self.decoder.out_features} features but an autoencoder must "
                f"reproduce its {self.encoder.in_features} input features"
            )
        self.in_features = self.encoder.in_features
        self.out_features = self.decoder.out_features
        self.code_size = self.encoder.out_features
        self.build()

    def children(self, prefix: str = "") -> list[tuple[str, Module]]:
        return [(prefix + "encoder.", self.encoder), (prefix + "decoder.", self.decoder)]

    def parameter_specs(self, prefix: str = "") -> list[ParamSpec]:
        return self.encoder.parameter_specs(prefix + "encoder.") + self.decoder.parameter_specs(prefix + "decoder.")

    def forward(self, x):
        """x: (batch, in_features) -> reconstruction: (batch, in_features)."""
        return self.decoder.forward(self.encoder.forward(x))

    def backward(self, grad_output, need_input_grad: bool = True):
        grad_code = self.decoder.backward(grad_output, True)
        return self.encoder.backward(grad_code, need_input_grad)

    @property
    def static_train_step(self) -> bool:
        return self.corruption is None

    def _train_step(self, x, target):
        if self.corruption is not None:
            x = self.corruption.corrupt(x, self.rng, self.backend)  # target stays clean
        return super()._train_step(x, target)

    def inference(self, x):
        """Reconstructions in data space (probabilities for a logits loss)."""
        return self._to_data_space(self.forward(x))

    def encode(self, x):
        """x: (batch, in_features) -> code: (batch, code_size)."""
        return self._handed_out(self.encoder.forward(as_batch(x, self.in_features, self.backend, "x")))

    def decode(self, code):
        """code: (batch, code_size) -> (batch, in_features), in data space."""
        return self._handed_out(self._to_data_space(self.decoder.forward(as_batch(code, self.code_size, self.backend, "code"))))

    def reconstruct(self, x):
        """decode(encode(x)). x: (batch, in_features) -> (batch, in_features)."""
        return self._handed_out(self.inference(as_batch(x, self.in_features, self.backend, "x")))

    def _target_for(self, x, target):
        return x if target is None else super()._target_for(x, target)

    def config(self) -> dict:
        config = {**super().config(), "encoder": self.encoder.config(), "decoder": self.decoder.config()}
        if self.corruption is not None:
            config["corruption"] = self.corruption.config()
        return config


def module_from_config(config: dict, **build_options) -> Module:
    """Rebuild a module from :meth:`Module.config` output.

    build_options (backend, dtype, seed, fast) go to the model: an Autoencoder builds
    at once with them; a Sequential stores them for when it builds.
    """
    from nanoae.activations import ACTIVATIONS, LeakyReLU  # noqa: PLC0415
    from nanoae.losses import LOSSES  # noqa: PLC0415
    from nanoae.optim import OPTIMIZERS  # noqa: PLC0415

    kind = config.get("type")
    if kind == "Dense":
        alpha = config.get("alpha") if config.get("activation") == "leaky_relu" else None
        return Dense(
            config["in_features"],
            config["out_features"],
            config.get("activation", "identity"),
            init=config.get("init", "glorot_uniform"),
            bias_init=config.get("bias_init", "zeros"),
            alpha=alpha,
            weight_decay=config.get("weight_decay", 0.0),
        )
    if kind == "ActivityL1":
        from nanoae.regularizers import ActivityL1  # noqa: PLC0415

        return ActivityL1(config["strength"])
    if kind == "GaussianSample":
        from nanoae.vae import GaussianSample  # noqa: PLC0415

        return GaussianSample(config["latent_size"], kl_weight=config.get("kl_weight", 1.0))
    if kind in {cls.__name__ for cls in ACTIVATIONS.values()}:
        cls = ACTIVATIONS[config["name"]]
        return LeakyReLU(config["alpha"]) if cls is LeakyReLU else cls()

    def loss_of(cfg):
        if cfg is None:
            return None
        options = {k: v for k, v in cfg.items() if k != "name"}
        return LOSSES[cfg["name"]](**options)

    def optimizer_of(cfg):
        if cfg is None:
            return None
        options = {k: v for k, v in cfg.items() if k != "name"}
        return OPTIMIZERS[cfg["name"]](**options)

    if kind == "Sequential":
        layers = [module_from_config(layer) for layer in config["layers"]]
        return Sequential(
            layers, loss=loss_of(config.get("loss")), optimizer=optimizer_of(config.get("optimizer")), **build_options
        )
    if kind == "Autoencoder":
        return Autoencoder(
            module_from_config(config["encoder"]),
            module_from_config(config["decoder"]),
            loss=loss_of(config.get("loss")) or "mse",
            optimizer=optimizer_of(config.get("optimizer")),
            corruption=config.get("corruption"),
            **build_options,
        )
    if kind == "VariationalAutoencoder":
        from nanoae.vae import VariationalAutoencoder  # noqa: PLC0415

        return VariationalAutoencoder(
            module_from_config(config["encoder"]),
            module_from_config(config["decoder"]),
            loss=loss_of(config.get("loss")) or "bce_logits",
            beta=config.get("beta", 1.0),
            optimizer=optimizer_of(config.get("optimizer")),
            **build_options,
        )
    if kind == "Classifier":
        from nanoae.classifier import Classifier  # noqa: PLC0415

        return Classifier(
            module_from_config(config["encoder"]),
            config["n_classes"],
            freeze_encoder=config.get("freeze_encoder", False),
            optimizer=optimizer_of(config.get("optimizer")),
            **build_options,
        )
    raise ValueError(f"cannot rebuild a module of type {kind!r} from its config")


def clone_module(module: Module, **build_options) -> Module:
    """An independent copy of a built module: same config, same parameter values, its
    own arena (so training the copy leaves the original untouched).

    build_options (backend, dtype, seed, fast) default to the original's backend and dtype.
    """
    if not module.built:
        return module_from_config(module.config())
    options = {"backend": module.backend, "dtype": module.backend.dtype, **build_options}
    copy = module_from_config(module.config(), **options)  # models that build at once do so with them
    if not copy.built:
        copy.build(**options)
    source = module.parameters()
    for name, view in copy.parameters().items():
        view[...] = copy.backend.asarray(module.backend.to_host(source[name]), dtype=view.dtype)
    return copy


def count_parameters(module: Module) -> int:
    """Number of trainable numbers in a module."""
    return int(sum(np.prod(spec.shape) for spec in module.parameter_specs()))
