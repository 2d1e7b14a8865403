"""A classifier on top of an encoder: the tutorial's last step, reusing what was learned.

``Classifier(encoder, n_classes)`` computes logits = head(encoder(x)) with a linear
head ``Dense(code_size, n_classes)`` and trains with softmax cross-entropy
(:class:`nanoae.losses.SoftmaxCrossEntropy`, written by hand in
:mod:`nanoae.ops.reference`). Three ways to start, as compared in ``docs/results.md``:

* **scratch**: the encoder's architecture with fresh random weights;
* **finetune**: a trained autoencoder's encoder, *copied* (the autoencoder stays intact
  and usable), then trained together with the head;
* **probe**: the same copy, frozen: only the head learns (a linear probe on the codes).

How freezing works, and why this way
------------------------------------
A frozen encoder's backward pass is skipped entirely: no dW, no dx, so a probe step
costs little more than the forward pass. Its slice of the gradient arena is zeroed
once and never written again. Every optimizer in nanoae maps a zero gradient to a zero
update *unless* it decays weights (SGD/Adam ``weight_decay``, AdamW), which would
shrink frozen weights; so a frozen classifier refuses such an optimizer with a clear
message (put an L2 term on the head instead: ``Dense(weight_decay=...)``). The
alternative, an optimizer restricted to part of the arena, would change the
optimizer-state layout that checkpoints rely on; the zero gradient keeps one arena,
one optimizer pass and the same checkpoint format.
"""

from __future__ import annotations

import numpy as np

from nanoae.layers import Dense
from nanoae.losses import SoftmaxCrossEntropy
from nanoae.models import Model, as_module
from nanoae.module import Module, clone_module, module_from_config
from nanoae.optim import Adam
from nanoae.params import ParamSpec
from nanoae.validation import as_batch, positive_int

MODES = ("scratch", "finetune", "probe")


class Classifier(Model):
    """logits = head(encoder(x)); softmax cross-entropy on integer labels.

    encoder:        a Module (Sequential, list of layers) from in_features to a code, or an
                    Autoencoder / VariationalAutoencoder whose encoder is taken. A built
                    encoder is copied with its weights; an unbuilt one starts at random.
                    (A VAE's encoder outputs [mu, log sigma^2]: the head sees both.)
    n_classes:      number of classes (>= 2)
    freeze_encoder: True for a linear probe (only the head trains; see the module doc)
    optimizer:      default Adam(0.001)
    """

    def __init__(
        self,
        encoder,
        n_classes: int,
        freeze_encoder: bool = False,
        optimizer=None,
        backend=None,
        dtype=None,
        seed=None,
        fast=None,
    ) -> None:
        super().__init__(SoftmaxCrossEntropy(), optimizer if optimizer is not None else Adam(0.001), backend, dtype, seed, fast)
        if hasattr(encoder, "encoder") and isinstance(getattr(encoder, "encoder"), Module):
            encoder = encoder.encoder  # an autoencoder: use its encoder
        encoder = as_module(encoder)
        self.encoder = clone_module(encoder) if encoder.built else encoder
        self.n_classes = positive_int(n_classes, "n_classes")
        if self.n_classes < 2:
            raise ValueError(f"a classifier needs n_classes >= 2, got {n_classes}")
        if self.encoder.out_features is None:
            raise ValueError("the encoder's output width is unknown; end it with a Dense layer")
        self.head = Dense(self.encoder.out_features, self.n_classes, "identity")
        self.in_features = self.encoder.in_features
        self.out_features = self.n_classes
        self.freeze_encoder = bool(freeze_encoder)
        self.build()

    @classmethod
    def from_autoencoder(cls, model, n_classes: int, mode: str = "finetune", **options) -> "Classifier":
        """A classifier on ``model``'s encoder: mode "scratch" (same architecture, random
        weights), "finetune" (the trained weights, copied, all trained) or "probe"
        (copied and frozen). options: optimizer, backend, dtype, seed, fast."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        encoder = model.encoder if hasattr(model, "encoder") else model
        if mode == "scratch":
            encoder = module_from_config(encoder.config())
        return cls(encoder, n_classes, freeze_encoder=mode == "probe", **options)

    # ---- structure -------------------------------------------------------------------
    def children(self, prefix: str = "") -> list[tuple[str, Module]]:
        return [(prefix + "encoder.", self.encoder), (prefix + "head.", self.head)]

    def parameter_specs(self, prefix: str = "") -> list[ParamSpec]:
        return self.encoder.parameter_specs(prefix + "encoder.") + self.head.parameter_specs(prefix + "head.")

    def build(self, backend=None, dtype=None, seed=None, fast=None) -> "Classifier":
        super().build(backend, dtype, seed, fast)
        if self.freeze_encoder:
            self._zero_encoder_grads()
            self._check_optimizer()
        return self

    @property
    def mode(self) -> str:
        """How it trains: "probe" (the encoder frozen) or "finetune" (every weight trains).
        A "scratch" classifier differs from "finetune" only in its starting weights, so it
        reports "finetune" too."""
        return "probe" if self.freeze_encoder else "finetune"

    def _zero_encoder_grads(self) -> None:
        for view in self.encoder.gradients().values():
            view[...] = 0

    def _check_optimizer(self) -> None:
        if self.freeze_encoder and self.optimizer is not None and getattr(self.optimizer, "weight_decay", 0.0):
            raise ValueError(
                f"{self.optimizer!r} decays every weight, which would move the frozen encoder; "
                "use weight_decay=0 with a frozen encoder (or Dense(weight_decay=...) on the head)"
            )

    # ---- passes --------------------------------------------------------------------------
    def forward(self, x):
        """x: (batch, in_features) -> logits: (batch, n_classes)."""
        return self.head.forward(self.encoder.forward(x))

    def backward(self, grad_output, need_input_grad: bool = True):
        """Head, then the encoder unless it is frozen (a frozen encoder's dW stay 0)."""
        if not self.freeze_encoder:
            return self.encoder.backward(self.head.backward(grad_output, True), need_input_grad)
        if not need_input_grad:
            self.head.backward(grad_output, False)
            return None
        grad_input = self.encoder.backward(self.head.backward(grad_output, True), True)
        self._zero_encoder_grads()  # dx was wanted; the frozen weights still get no gradient
        return grad_input

    def _train_step(self, x, target):
        if self.freeze_encoder:
            self._check_optimizer()  # the optimizer may have been swapped since building
        return super()._train_step(x, target)

    def _target_for(self, x, target):
        if target is None:
            raise ValueError("a classifier needs labels: fit(x, labels) with labels of shape (n,)")
        labels = check_labels(target, x.shape[0], self.n_classes, self.backend)
        return labels

    # ---- predictions ---------------------------------------------------------------------
    def predict_proba(self, x):
        """x: (batch, in_features) -> class probabilities softmax(logits): (batch, n_classes)."""
        x = as_batch(x, self.in_features, self.backend, "x")
        return self.backend.ops.softmax(self.forward(x))

    def predict_classes(self, x, batch_size: int = 2000):
        """x: (n, in_features) -> the most probable class of each row: (n,) int64 on the host."""
        x = as_batch(x, self.in_features, self.backend, "x")
        xp = self.backend.xp
        parts = [self.backend.to_host(xp.argmax(self.forward(x[start : start + batch_size]), axis=1)) for start in range(0, x.shape[0], batch_size)]
        return np.concatenate(parts).astype(np.int64)

    def accuracy(self, x, labels, batch_size: int = 2000) -> float:
        """Fraction of rows whose predicted class equals the label."""
        labels = check_labels(labels, len(x), self.n_classes, None)
        return float(np.mean(self.predict_classes(x, batch_size) == labels))

    def config(self) -> dict:
        return {
            **super().config(),
            "encoder": self.encoder.config(),
            "n_classes": self.n_classes,
            "freeze_encoder": self.freeze_encoder,
        }

    @classmethod
    def from_config(cls, config: dict, **build_options) -> "Classifier":
        _, optimizer = cls._loss_and_optimizer_from(config)  # the loss is always softmax cross-entropy
        return cls(
            module_from_config(config["encoder"]),
            config["n_classes"],
            freeze_encoder=config.get("freeze_encoder", False),
            optimizer=optimizer,
            **build_options,
        )


def check_labels(labels, rows: int, n_classes: int, backend):
    """Integer labels (rows,) in [0, n_classes), as int64 on the backend's device
    (host NumPy when backend is None). Clear errors for anything else."""
    if backend is not None and type(labels).__module__.startswith("cupy"):
        host = backend.to_host(labels)
    else:
        host = np.asarray(labels)
    if host.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers (class indices), got dtype {host.dtype}")
    if host.shape != (rows,):
        raise ValueError(f"labels have shape {host.shape} but there are {rows} rows: pass shape ({rows},)")
    if host.size and (host.min() < 0 or host.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got values from {host.min()} to {host.max()}")
    host = host.astype(np.int64, copy=False)
    return host if backend is None else backend.asarray(host)


def labeled_subset(labels, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of n labeled examples drawn with ``rng``, class-balanced when possible.

    labels: (N,) integers. n == N: every index. Otherwise n // k examples from each of
    the k classes (the remainder from random classes) when every class has that many,
    else a uniform draw without replacement. Returns sorted int64 indices.
    """
    labels = np.asarray(labels)
    total = labels.shape[0]
    n = positive_int(n, "n")
    if n > total:
        raise ValueError(f"asked for {n} labeled examples but there are only {total}")
    if n == total:
        return np.arange(total, dtype=np.int64)
    classes = np.unique(labels)
    per_class, remainder = divmod(n, len(classes))
    pools = [np.flatnonzero(labels == c) for c in classes]
    if per_class + (1 if remainder else 0) > min(len(pool) for pool in pools):
        return np.sort(rng.choice(total, size=n, replace=False)).astype(np.int64)
    extra = set(rng.choice(len(classes), size=remainder, replace=False).tolist())
    picked = [rng.choice(pool, size=per_class + (1 if k in extra else 0), replace=False) for k, pool in enumerate(pools)]
    return np.sort(np.concatenate(picked)).astype(np.int64)
