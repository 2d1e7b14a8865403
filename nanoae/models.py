"""Models: trainable stacks of modules with one parameter arena.

* :class:`Model`       the training machinery: loss, optimizer, ``train_step``, ``fit``
* :class:`Sequential`  layers applied in order (a container, and a model when given a loss)
* :class:`Autoencoder` ``encoder`` then ``decoder``, trained to reproduce its input

A model owns one :class:`~nanoae.params.ParameterArena` (all parameters contiguous),
one optimizer bound to it, and one seeded generator that draws the initial weights
and the seed of the training batches' sampler.
"""

from __future__ import annotations

import math

from nanoae.errors import NonFiniteStepError
from nanoae.layers import Dense
from nanoae.losses import BCEWithLogits, get_loss, loss_from_config
from nanoae.module import Module, module_from_config
from nanoae.optim import RMSProp, get_optimizer, optimizer_from_config
from nanoae.params import ParamSpec
from nanoae.regularizers import get_corruption
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
        self._guard_workspace: dict = {}  # the finiteness check's buffers (ops.step_is_finite)
        # Called between backward and the finiteness check, objective -> objective; set
        # by a data-parallel train() to combine the ranks' gradients, else None.
        self._gradient_hook = None

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
        self._guard_workspace = {}
        return self

    def _ensure_built(self) -> None:
        if self.arena is None and not self.built:
            self.build()

    # ---- inference -----------------------------------------------------------------
    def evaluate(self, x, target=None, batch_size: int = 1024) -> float:
        """Mean loss over a dataset (a float), computed in batches."""
        self._require_training_parts(need_optimizer=False)
        x = as_batch(x, self.in_features, self.backend, "x")
        target = self._training_target(x, target)
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

    def _training_target(self, x, target):
        """The checked target for x (see :meth:`_target_for`), and one the loss can score
        (BCE: values in [0, 1]). Called once per dataset or batch a user hands in."""
        target = self._target_for(x, target)
        if self.loss is not None:
            self.loss.check_target(target)
        return target

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
        (``float(loss)`` reads it; on a GPU that waits for the device). The array is the
        caller's own: no later step writes into it.
        Raises :class:`~nanoae.errors.NonFiniteStepError` (a ``FloatingPointError``)
        when the loss or a gradient is NaN or infinite: the update is then not applied,
        and parameters, optimizer state and ``steps_trained`` are unchanged.
        """
        self._require_training_parts()
        x = as_batch(x, self.in_features, self.backend, "x")
        target = self._training_target(x, target)
        objective = self._train_step(x, target)
        # An ops table may hand back a loss buffer that its next step writes again (the GPU
        # table's fused MSE keeps one 0-d device array, read by the graph it captures):
        # a loss kept from this step must not change under the caller. One 0-d copy.
        return objective.copy()

    def _train_step(self, x, target):
        """train_step on arrays already checked and on the device.

        The objective is loss(output, target) + penalty() (regularization terms such as
        L2 weight decay, an L1 on the code or a VAE's KL; 0.0 without any), and that is
        what is returned. Between backward and the update, the ops table's
        ``step_is_finite`` looks at the objective and the whole gradient arena; when
        either holds a NaN or an infinity the update is skipped and
        :class:`~nanoae.errors.NonFiniteStepError` raised, so parameters, optimizer
        state and step count stay as they were (on a GPU's captured graph the check
        cannot run: see :meth:`nanoae.ops.gpu.GpuOps.step_is_finite`).
        """
        output = self.forward(x)
        loss, grad_output = self.loss.loss_and_grad(output, target)
        self.backward(grad_output, need_input_grad=False)  # nobody needs dL/dx
        penalty = self.penalty()  # before the update: the terms at the weights used
        objective = loss if type(penalty) is float and penalty == 0.0 else loss + penalty
        if self._gradient_hook is not None:  # data-parallel: every rank then holds the global batch's gradient
            objective = self._gradient_hook(objective)
        if not self.backend.ops.step_is_finite(objective, self.arena.grads, self._guard_workspace):
            raise self._diverged(objective)
        self.optimizer.step()
        self.steps_trained += 1
        return objective

    def _diverged(self, objective) -> NonFiniteStepError:
        """The error for a step that was not applied (off the hot path: may allocate)."""
        value = float(objective)
        return NonFiniteStepError(self.steps_trained + 1, value, "loss" if not math.isfinite(value) else "gradient")

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
        comm=None,
    ):
        """Train on shuffled mini-batches; return the logged losses (a :class:`~nanoae.train.History`).

        x: (n, in_features); target: (n, out_features), or None where the model has
        its own (an autoencoder's target is its input).
        steps or epochs: how many more steps (epochs may be fractional).
        Batches are drawn like TF1's ``next_batch``: shuffled each epoch by a batch
        sampler seeded from the model's generator, continuing across epoch boundaries
        and across fit calls. With the default
        log_every=1 the history holds every step's loss. See :func:`nanoae.train.train`
        for callbacks (progress bar, CSV metrics, checkpoints, evaluation), and for
        comm (a :class:`~nanoae.distributed.Communicator`: data-parallel training).
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
            comm=comm,
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

    @staticmethod
    def _loss_and_optimizer_from(config: dict):
        """(loss, optimizer) rebuilt from a model config; None for each one it lacks."""
        loss, optimizer = config.get("loss"), config.get("optimizer")
        return (
            loss_from_config(loss) if loss is not None else None,
            optimizer_from_config(optimizer) if optimizer is not None else None,
        )


def _is_plain_dense(layer) -> bool:
    """A Dense layer whose forward and backward are Dense's own (a subclass that overrides
    either keeps the plain per-layer backward)."""
    return isinstance(layer, Dense) and type(layer).forward is Dense.forward and type(layer).backward is Dense.backward


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
        """Reverse pass; returns dL/dx, or None when need_input_grad is False.

        After each layer's backward, ``_gradients_ready(layer)`` when set (see
        :class:`~nanoae.module.Module`): that layer's gradients are final.
        """
        return self._backward_in_chains(grad_output, need_input_grad)

    def _backward_in_chains(self, grad_output, need_input_grad: bool, grad_is_slope: bool = False, under=None):
        """The layers' backward, top first. On a table that fuses a ReLU's slope into the
        matmul above it (``ops.fuses_input_slope``), where a plain Dense layer sits right
        on top of a plain ReLU Dense layer, the upper one's input gradient comes back
        already multiplied by the lower one's ReLU slope, and the lower one is told so:
        the same operations, moved. On any other table, and for anything else in the
        stack, each layer's own backward.

        grad_is_slope: grad_output is already the top layer's dz (a model above this one
        applied its slope). under: the layer outside this Sequential whose output is its
        input (an autoencoder's code layer under its decoder), or None.
        """
        last = len(self.layers) - 1
        ready = self._gradients_ready
        fuses = self.backend.ops.fuses_input_slope
        for position, layer in enumerate(reversed(self.layers)):
            index = last - position
            below = self.layers[index - 1] if index > 0 else under
            feeds_relu = fuses and _is_plain_dense(layer) and _is_plain_dense(below) and below.activation.name == "relu"
            need = need_input_grad or position < last
            if grad_is_slope or feeds_relu:
                grad_output = layer.backward_in_chain(grad_output, need, grad_is_slope, below if feeds_relu else None)
            else:
                grad_output = layer.backward(grad_output, need)
            grad_is_slope = feeds_relu
            if ready is not None:
                ready(layer)
        return grad_output

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index):
        return self.layers[index]

    def __iter__(self):
        return iter(self.layers)

    def config(self) -> dict:
        return {**super().config(), "layers": [layer.config() for layer in self.layers]}

    @classmethod
    def from_config(cls, config: dict, **build_options) -> "Sequential":
        loss, optimizer = cls._loss_and_optimizer_from(config)
        layers = [module_from_config(layer) for layer in config["layers"]]
        return cls(layers, loss=loss, optimizer=optimizer, **build_options)

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
        """grad_output: (batch, in_features), dL/d(reconstruction) -> dL/dx: (batch,
        in_features), or None when need_input_grad is False.

        Through the decoder, then the encoder; when ``_gradients_ready`` is set, it is
        called with the decoder once the decoder's gradients are final, then with the
        encoder (a data-parallel run starts those layers' allreduce buckets there).
        """
        ready = self._gradients_ready
        code_layer = self._chained_code_layer()
        if code_layer is not None:  # the code layer's ReLU slope goes into the decoder's first product
            grad_code = self.decoder._backward_in_chains(grad_output, True, under=code_layer)
        else:
            grad_code = self.decoder.backward(grad_output, True)
        if ready is not None:  # a decoder that is one layer, not a Sequential, says nothing itself
            ready(self.decoder)
        if code_layer is not None:
            grad_input = self.encoder._backward_in_chains(grad_code, need_input_grad, grad_is_slope=True)
        else:
            grad_input = self.encoder.backward(grad_code, need_input_grad)
        if ready is not None:
            ready(self.encoder)
        return grad_input

    def _chained_code_layer(self):
        """The encoder's last layer when the backward chain may cross from the decoder into
        it (a table that fuses ReLU slopes, two Sequentials, a plain ReLU Dense code layer
        right under a plain Dense): else None."""
        if not self.backend.ops.fuses_input_slope:
            return None
        if not (isinstance(self.encoder, Sequential) and isinstance(self.decoder, Sequential)):
            return None
        if not (self.encoder.layers and self.decoder.layers):
            return None
        code_layer, first = self.encoder.layers[-1], self.decoder.layers[0]
        if _is_plain_dense(code_layer) and code_layer.activation.name == "relu" and _is_plain_dense(first):
            return code_layer
        return None

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

    @classmethod
    def from_config(cls, config: dict, **build_options) -> "Autoencoder":
        loss, optimizer = cls._loss_and_optimizer_from(config)
        return cls(
            module_from_config(config["encoder"]),
            module_from_config(config["decoder"]),
            loss=loss or "mse",
            optimizer=optimizer,
            corruption=config.get("corruption"),
            **build_options,
        )
