"""The tutorial's autoencoder against a variational autoencoder of the same shape.

The budget (full mode), equal for both: the tutorial's own, 1,000 steps of batch 256 of
the tutorial's RMSProp (TF1 flavor, lr 0.001), seed 0, float32, MNIST training images.

* autoencoder: the ``tutorial`` preset exactly (784-784-256-128 / 128-128-256-784, ReLU
  everywhere including the output, MSE);
* VAE: the ``vae`` preset (784-784-256-2x2 / 2-128-256-784, linear mu and log sigma^2,
  logits out, BCE on logits + KL at beta = 1): a 2-D code, so its code *is* a map.

Shows: test reconstruction errors, reconstructions side by side, 64 VAE samples (and,
for contrast, the autoencoder decoding random codes from a Gaussian fitted to its
training codes), both codes of the test set in 2-D colored by digit (the autoencoder's
128-D code through PCA), and interpolation strips between test digits.

    python examples/vae_vs_autoencoder.py --data ../shared/data/mnist      # ~1.5 min on 2 cores
    python examples/vae_vs_autoencoder.py --quick
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _study  # noqa: E402

from nanoae import presets  # noqa: E402
from nanoae.module import count_parameters  # noqa: E402
from nanoae.pca import PCA  # noqa: E402
from nanoae.evaluation import reconstruction_errors  # noqa: E402

FULL = {"steps": 1000, "batch_size": 256}
QUICK = {"steps": 10, "batch_size": 64}
PAIRS = ((4, 9), (3, 8), (1, 7))  # digits to interpolate between


def interpolate(model, a, b, steps: int = 10) -> np.ndarray:
    """Decode the straight line between the codes (a VAE: the means) of images a and b."""
    codes = model.encode(np.stack([a, b]))
    weights = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    return model.decode((1 - weights) * codes[0] + weights * codes[1])


def main(argv=None) -> int:
    args = _study.parse_args(__doc__.splitlines()[0], argv)
    budget = QUICK if args.quick else FULL
    train_x, _, test_x, test_y = _study.load_mnist(args)
    clock = _study.Stopwatch()
    models = {"autoencoder (tutorial)": presets.tutorial(seed=args.seed), "VAE (2-D code)": presets.vae(seed=args.seed)}
    numbers = {"budget": budget, "models": {}}
    for name, model in models.items():
        start = clock()
        history = model.fit(train_x, steps=budget["steps"], batch_size=budget["batch_size"], log_every=max(1, budget["steps"] // 10))
        errors = reconstruction_errors(model, test_x)
        entry = {"test_mse": errors["mse"], "test_bce": errors["bce"], "final_train_loss": history[-1], "train_s": clock() - start,
                 "parameters": count_parameters(model), "code_size": model.code_size}
        if hasattr(model, "loss_terms"):
            entry["test_kl"] = model.loss_terms(test_x)["kl"]
        numbers["models"][name] = entry
        _study.say(f"{name}: test MSE {errors['mse']:.5f}, BCE {errors['bce']:.4f} in {entry['train_s']:.0f} s")

    rows = [
        [name, entry["code_size"], f"{entry['parameters']:,}", f"{entry['test_mse']:.5f}", f"{entry['test_bce']:.4f}",
         f"{entry['test_kl']:.2f}" if "test_kl" in entry else "-", f"{entry['train_s']:.0f} s"]
        for name, entry in numbers["models"].items()
    ]
    text = "\n".join([
        f"Budget: {budget['steps']:,} steps of batch {budget['batch_size']}, the tutorial's RMSProp (TF1, lr 0.001), seed {args.seed}, "
        f"{train_x.shape[0]:,} training images; errors over {test_x.shape[0]:,} test images (the VAE decodes its mean code).",
        "",
        _study.table(["model", "code", "parameters", "test MSE", "test BCE", "KL (nats)", "training"], rows),
        "",
        f"Machine: {_study.machine()}; total {clock():.0f} s.",
    ])
    _study.write_fragment(args, "vae_vs_autoencoder", text, numbers)
    figures(args, models, train_x, test_x, test_y)
    return 0


def figures(args, models, train_x, test_x, test_y) -> None:
    from nanoae import plot  # noqa: PLC0415

    try:
        plot.require_matplotlib()
    except ImportError as exc:
        _study.say(f"no figures: {exc}")
        return
    ae, vae = models["autoencoder (tutorial)"], models["VAE (2-D code)"]
    digits = test_x[_study.pick_digits(test_y)]
    plot.plot_image_rows(
        [("original", digits), ("autoencoder", ae.reconstruct(digits)), ("VAE", vae.reconstruct(digits))],
        args.out / "vae_vs_autoencoder_reconstructions.png",
        title="Test digits, the tutorial's autoencoder (128-D code) and the VAE (2-D code)",
    )
    plot.plot_image_grid(vae.sample(64), args.out / "vae_samples.png", title="VAE: decoded z ~ N(0, I)")
    rng = np.random.default_rng(args.seed)
    codes = ae.encode(train_x[:10000]).astype(np.float64)
    random_codes = rng.multivariate_normal(codes.mean(axis=0), np.cov(codes, rowvar=False), size=64).astype(np.float32)
    plot.plot_image_grid(ae.decode(random_codes), args.out / "autoencoder_random_codes.png",
                         title="Autoencoder: decoded codes ~ Gaussian fit to its codes")
    ae_codes = ae.encode(test_x)
    panels = [
        ("tutorial autoencoder: 128-D code, first 2 principal components", PCA(2).fit(ae_codes).transform(ae_codes), test_y),
        ("VAE: mean of the 2-D code", vae.encode(test_x), test_y),
    ]
    plot.plot_latent_maps(panels, args.out / "latent_maps_vae_vs_autoencoder.png", title="MNIST test set, colored by digit")
    rows = []
    for first, second in PAIRS:
        a = test_x[np.flatnonzero(test_y == first)[0]]
        b = test_x[np.flatnonzero(test_y == second)[0]]
        rows.append((f"AE {first}->{second}", interpolate(ae, a, b)))
        rows.append((f"VAE {first}->{second}", interpolate(vae, a, b)))
    plot.plot_image_rows(rows, args.out / "interpolation.png", title="Straight lines in code space between two test digits")
    _study.say(f"figures in {args.out}")


if __name__ == "__main__":
    sys.exit(main())
