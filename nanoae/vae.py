"""The variational autoencoder: a Gaussian code, sampled by reparameterization.

Architecture::

    x --encoder--> h = [mu, log sigma^2]   (batch, 2d)
      --GaussianSample--> z = mu + exp(log sigma^2 / 2) * eps,  eps ~ N(0, I)   (batch, d)
      --decoder--> logits (loss "bce_logits") or pixels (loss "mse")           (batch, D)

The objective, and how its two terms are normalized
---------------------------------------------------
nanoae's reconstruction losses are means over batch *and* pixels. The KL term of the
VAE is a sum over the d latent units, averaged over the batch. They are put on the
same per-pixel footing by dividing the KL by the number of pixels D::

    objective = R + beta * KL / D
    R  = mean over b, i of loss(x_hat_bi, x_bi)          (BCE on logits, or MSE)
    KL = mean over b of sum_j -1/2 (1 + lv_bj - mu_bj^2 - e^lv_bj)

Times D this is, per example, sum_i BCE_i + beta * KL: with BCE and beta = 1 exactly
the negative evidence lower bound (ELBO) of a Bernoulli decoder, averaged over the
batch. (With MSE and beta = 1 it is the ELBO of a Gaussian decoder of variance 1/2;
pixels in [0, 1] want a much smaller beta.) beta weights the KL as in the beta-VAE.

Backward through the sample (eps held fixed), in :mod:`nanoae.ops.reference`::

    dmu = dz + (beta / D) * mu / B
    dlv = dz * eps * sigma / 2 + (beta / D) * (e^lv - 1) / (2 B)

The noise eps comes from the model's seeded generator (drawn on the host in float32,
copied to the device). ``with vae.hold_noise(batch):`` draws it once and reuses it,
so the network is a deterministic function, as a gradient check needs
(:func:`nanoae.gradcheck` does this by itself for a VAE).
"""

from __future__ import annotations

import contextlib

import numpy as np

from nanoae.models import Model, as_module
from nanoae.module import Module, module_from_config
from nanoae.optim import Adam
from nanoae.params import ParamSpec
from nanoae.validation import as_batch, non_negative_float, positive_int


class GaussianSample(Module):
    """(batch, 2d) -> (batch, d): split h into mu and log-variance, return
    z = mu + exp(lv / 2) * eps, and add kl_weight * KL(N(mu, sigma^2) || N(0, I)) to
    the objective (KL summed over units, averaged over the batch; see the module doc).

    latent_size: d.  kl_weight: the KL's weight in the objective (a VAE sets beta / D).
    """

    def __init__(self, latent_size: int, kl_weight: float = 1.0) -> None:
        super().__init__()
        self.latent_size = positive_int(latent_size, "latent_size")
        self.in_features = 2 * self.latent_size
        self.out_features = self.latent_size
        self.kl_weight = non_negative_float(kl_weight, "kl_weight")
        self.held_noise = None  # (batch, d) host or device array, or None: fresh noise every pass
        self.noise_owner: Module | None = None  # whose generator to draw from (the VAE); default self
        self._cache = None

    @property
    def noise_is_held(self) -> bool:
        return self.held_noise is not None

    @contextlib.contextmanager
    def hold_noise(self, batch: int | None = None, noise=None, rng=None):
        """Within the block every forward pass uses the same eps: ``noise`` (batch, d), or
        one float32 draw for ``batch`` rows from ``rng`` (default: the owner's generator).
        Yields the noise."""
        if noise is None:
            if batch is None:
                raise ValueError("hold_noise needs batch= (rows) or noise= (an array of shape (batch, latent_size))")
            if rng is None:
                owner = self.noise_owner if self.noise_owner is not None else self
                rng = owner.rng
            noise = rng.standard_normal((positive_int(batch, "batch"), self.latent_size), dtype=np.float32)
        elif tuple(noise.shape)[1:] != (self.latent_size,) or len(noise.shape) != 2:
            raise ValueError(f"noise must have shape (batch, {self.latent_size}), got {tuple(noise.shape)}")
        previous = self.held_noise
        self.held_noise = noise
        try:
            yield noise
        finally:
            self.held_noise = previous

    def _noise(self, like):
        xp = self.backend.xp
        if self.held_noise is not None:
            if tuple(self.held_noise.shape) != tuple(like.shape):
                raise ValueError(f"the held noise has shape {tuple(self.held_noise.shape)} but this batch needs {tuple(like.shape)}")
            return xp.asarray(self.held_noise, dtype=like.dtype)
        owner = self.noise_owner if self.noise_owner is not None else self
        if owner.rng is None:
            raise RuntimeError("GaussianSample has no generator: build it (or its VAE) first")
        return self.backend.asarray(owner.rng.standard_normal(like.shape, dtype=np.float32), dtype=like.dtype)

    def forward(self, h):
        """h: (batch, 2d) = [mu, log sigma^2] -> z: (batch, d); keeps what backward needs."""
        d = self.latent_size
        ops = self.backend.ops
        mean, log_variance = h[:, :d], h[:, d:]
        noise = self._noise(mean)
        z = ops.gaussian_sample(mean, log_variance, noise)
        kl, grad_mean_kl, grad_log_variance_kl = ops.gaussian_kl_loss_and_grad(mean, log_variance)
        self._cache = (log_variance, noise, kl, grad_mean_kl, grad_log_variance_kl)
        return z

    def backward(self, grad_output, need_input_grad: bool = True):
        """dz: (batch, d) -> dh: (batch, 2d) = [dmu, dlv], the KL's gradient included."""
        if self._cache is None:
            raise RuntimeError("GaussianSample.backward called before forward")
        if not need_input_grad:
            return None
        log_variance, noise, _, grad_mean_kl, grad_log_variance_kl = self._cache
        grad_mean, grad_log_variance = self.backend.ops.gaussian_sample_backward(grad_output, log_variance, noise)
        weight = self.kl_weight
        return self.backend.xp.concatenate(
            [grad_mean + weight * grad_mean_kl, grad_log_variance + weight * grad_log_variance_kl], axis=1
        )

    def penalty(self):
        """kl_weight * KL of the last forward pass (0.0 before any)."""
        if self._cache is None or not self.kl_weight:
            return 0.0
        return self._cache[2] * self.kl_weight

    def __call__(self, h):
        self._ensure_built()
        return self.forward(as_batch(h, self.in_features, self.backend, "h"))

    def config(self) -> dict:
        return {"type": type(self).__name__, "latent_size": self.latent_size, "kl_weight": self.kl_weight}

    @classmethod
    def from_config(cls, config: dict, **build_options) -> "GaussianSample":
        return cls(config["latent_size"], kl_weight=config.get("kl_weight", 1.0))

    def __repr__(self) -> str:
        return f"GaussianSample({self.latent_size}, kl_weight={self.kl_weight:g})"


class VariationalAutoencoder(Model):
    """A VAE: encoder -> (mu, log sigma^2) -> z = mu + sigma * eps -> decoder.

    encoder: Sequential (or list of layers) from D inputs to 2d outputs, the first d
             read as mu and the last d as log sigma^2 (end it with a linear layer)
    decoder: Sequential (or list of layers) from d back to D; with loss "bce_logits"
             (default) it ends in a linear layer giving logits; with "mse" it gives pixels
    beta:    weight of the KL term (1: the true ELBO; see the module doc for the scale)
    optimizer: default Adam(0.001)
    Builds at once, one arena: "encoder.<i>.*", "decoder.<i>.*" (the sampling layer has none).

    Training passes a *sampled* z through the decoder. ``encode`` returns mu,
    ``reconstruct`` decodes mu (no noise), ``decode`` and ``sample`` return images.
    """

    def __init__(
        self,
        encoder,
        decoder,
        loss="bce_logits",
        beta: float = 1.0,
        optimizer=None,
        backend=None,
        dtype=None,
        seed=None,
        fast=None,
    ) -> None:
        super().__init__(loss, optimizer if optimizer is not None else Adam(0.001), backend, dtype, seed, fast)
        self.encoder = as_module(encoder)
        self.decoder = as_module(decoder)
        latent = self.decoder.in_features
        if self.encoder.out_features != 2 * latent:
            raise ValueError(
                f"the encoder outputs {self.encoder.out_features} features but a VAE with a {latent}-unit code "
                f"(the decoder's input) needs 2 x {latent} = {2 * latent}: mu then log sigma^2"
            )
        if self.decoder.out_features != self.encoder.in_features:
            raise ValueError(
                f"the decoder outputs {self.decoder.out_features} features but the VAE must reproduce its "
                f"{self.encoder.in_features} input features"
            )
        self.in_features = self.encoder.in_features
        self.out_features = self.decoder.out_features
        self.latent_size = self.code_size = latent
        self.sampling = GaussianSample(latent)
        self.beta = beta  # sets the sampling layer's kl_weight = beta / D
        self.sampling.noise_owner = self
        self.build()

    @property
    def beta(self) -> float:
        """The KL's weight; the sampling layer adds beta / D * KL (the per-feature scale)."""
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        self._beta = non_negative_float(value, "beta")
        self.sampling.kl_weight = self._beta / self.in_features

    # ---- structure -------------------------------------------------------------------
    def children(self, prefix: str = "") -> list[tuple[str, Module]]:
        return [(prefix + "encoder.", self.encoder), (prefix + "sampling.", self.sampling), (prefix + "decoder.", self.decoder)]

    def parameter_specs(self, prefix: str = "") -> list[ParamSpec]:
        return self.encoder.parameter_specs(prefix + "encoder.") + self.decoder.parameter_specs(prefix + "decoder.")

    # ---- training pass -------------------------------------------------------------------
    def forward(self, x):
        """x: (batch, D) -> decoder output for a sampled z: (batch, D) (logits for bce_logits)."""
        return self.decoder.forward(self.sampling.forward(self.encoder.forward(x)))

    def backward(self, grad_output, need_input_grad: bool = True):
        grad_z = self.decoder.backward(grad_output, True)
        return self.encoder.backward(self.sampling.backward(grad_z, True), need_input_grad)

    @property
    def noise_is_held(self) -> bool:
        return self.sampling.noise_is_held

    @property
    def static_train_step(self) -> bool:
        """False: each step draws fresh noise on the host (unless it is held)."""
        return self.noise_is_held

    def hold_noise(self, batch: int | None = None, noise=None, rng=None):
        """Context manager: within it every forward pass uses the same eps, either
        ``noise`` (batch, d) or one draw for ``batch`` rows from ``rng`` (default: the
        model's generator). Yields the noise. See :meth:`GaussianSample.hold_noise`."""
        return self.sampling.hold_noise(batch, noise, rng)

    # ---- inference -----------------------------------------------------------------------
    def _distribution(self, x):
        h = self.encoder.forward(x)
        return h[:, : self.latent_size], h[:, self.latent_size :]

    def inference(self, x):
        """Reconstruction from the mean code, in data space: decode(mu(x)). No noise."""
        return self._to_data_space(self.decoder.forward(self._distribution(x)[0]))

    def encode(self, x):
        """x: (batch, D) -> mu: (batch, d), the mean of q(z | x)."""
        return self._distribution(as_batch(x, self.in_features, self.backend, "x"))[0].copy()

    def encode_distribution(self, x):
        """x: (batch, D) -> (mu, log sigma^2), each (batch, d)."""
        mean, log_variance = self._distribution(as_batch(x, self.in_features, self.backend, "x"))
        return mean.copy(), log_variance.copy()

    def decode(self, z):
        """z: (batch, d) -> images (batch, D) (sigmoid of the logits for bce_logits)."""
        return self._handed_out(self._to_data_space(self.decoder.forward(as_batch(z, self.latent_size, self.backend, "z"))))

    def reconstruct(self, x):
        """decode(mu(x)): (batch, D) -> (batch, D)."""
        return self._handed_out(self.inference(as_batch(x, self.in_features, self.backend, "x")))

    def __call__(self, x):
        return self.reconstruct(x)

    def sample(self, n: int):
        """n new images: z ~ N(0, I) from the model's generator, decoded. -> (n, D)."""
        z = self.rng.standard_normal((positive_int(n, "n"), self.latent_size), dtype=np.float32)
        return self.decode(z)

    def loss_terms(self, x, batch_size: int = 1000) -> dict:
        """Dataset means, deterministic (z = mu, no sampling, the generator untouched):
        {"reconstruction": R, "kl": KL per example (nats), "loss": R + beta KL / D}."""
        self._require_training_parts(need_optimizer=False)
        x = as_batch(x, self.in_features, self.backend, "x")
        reconstruction = kl = 0.0
        for start in range(0, x.shape[0], batch_size):
            chunk = x[start : start + batch_size]
            mean, log_variance = self._distribution(chunk)
            reconstruction += float(self.loss(self.decoder.forward(mean), chunk)) * chunk.shape[0]
            kl += float(self.backend.ops.gaussian_kl_loss(mean, log_variance)) * chunk.shape[0]
        reconstruction, kl = reconstruction / x.shape[0], kl / x.shape[0]
        return {"reconstruction": reconstruction, "kl": kl, "loss": reconstruction + self.sampling.kl_weight * kl}

    def evaluate(self, x, target=None, batch_size: int = 1000) -> float:
        """The objective on a dataset at the mean code: R + beta * KL / D (see loss_terms)."""
        if target is not None:
            raise ValueError("a VAE reconstructs its input; evaluate(x) takes no target")
        return self.loss_terms(x, batch_size)["loss"]

    def _target_for(self, x, target):
        return x if target is None else super()._target_for(x, target)

    def config(self) -> dict:
        return {**super().config(), "beta": self.beta, "encoder": self.encoder.config(), "decoder": self.decoder.config()}

    @classmethod
    def from_config(cls, config: dict, **build_options) -> "VariationalAutoencoder":
        loss, optimizer = cls._loss_and_optimizer_from(config)
        return cls(
            module_from_config(config["encoder"]),
            module_from_config(config["decoder"]),
            loss=loss or "bce_logits",
            beta=config.get("beta", 1.0),
            optimizer=optimizer,
            **build_options,
        )
