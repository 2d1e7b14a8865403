"""PCA against the autoencoder and the VAE: test reconstruction MSE at code sizes 2, 8, 32, 128.

The budget (full mode), the same for the autoencoder and the VAE at every code size:

* architecture: the tutorial's widths with the code replaced, encoder 784-784-256-d,
  decoder d-128-256-784, ReLU inside; the code layer is linear (PCA's code is too);
* autoencoder: sigmoid output, MSE (the tutorial's loss);
* VAE: the encoder gives 2d numbers (mu, log sigma^2), the decoder logits, BCE on logits
  with the KL at beta = 1 (its own likelihood); measured at the mean code;
* 1,500 steps of batch 256 (6.4 epochs) of Adam(lr 0.001), seed 0, float32;
* PCA: exact, by ``np.linalg.svd`` of all 60,000 centred training images (no budget).

Everything is measured as the mean over the 10,000 test images and 784 pixels of
(x - x_hat)^2. Writes ``pca_vs_autoencoder.md`` / ``.json`` and three figures.

    python examples/pca_vs_autoencoder.py --data ../shared/data/mnist      # ~7 min on 2 cores
    python examples/pca_vs_autoencoder.py --quick                          # seconds
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _study  # noqa: E402

from nanoae import Adam, Autoencoder  # noqa: E402
from nanoae.pca import PCA  # noqa: E402
from nanoae.presets import _stack  # noqa: E402
from nanoae.evaluation import reconstruction_errors  # noqa: E402
from nanoae.vae import VariationalAutoencoder  # noqa: E402

CODE_SIZES = (2, 8, 32, 128)
FULL = {"steps": 1500, "batch_size": 256, "lr": 0.001}
QUICK = {"steps": 15, "batch_size": 64, "lr": 0.001}


def autoencoder(code_size: int, seed: int) -> Autoencoder:
    encoder = _stack((784, 784, 256, code_size), "relu", "identity", "glorot_uniform")
    decoder = _stack((code_size, 128, 256, 784), "relu", "sigmoid", "glorot_uniform")
    return Autoencoder(encoder, decoder, loss="mse", optimizer=Adam(FULL["lr"]), seed=seed)


def vae(code_size: int, seed: int) -> VariationalAutoencoder:
    encoder = _stack((784, 784, 256, 2 * code_size), "relu", "identity", "glorot_uniform")
    decoder = _stack((code_size, 128, 256, 784), "relu", "identity", "glorot_uniform")
    return VariationalAutoencoder(encoder, decoder, loss="bce_logits", beta=1.0, optimizer=Adam(FULL["lr"]), seed=seed)


def main(argv=None) -> int:
    args = _study.parse_args(__doc__.splitlines()[0], argv)
    budget = QUICK if args.quick else FULL
    train_x, _, test_x, test_y = _study.load_mnist(args)
    clock = _study.Stopwatch()

    _study.say(f"PCA: SVD of {train_x.shape[0]} centred training images")
    pca = PCA(max(CODE_SIZES)).fit(train_x)
    pca_seconds = clock()
    numbers = {"budget": budget, "train_rows": int(train_x.shape[0]), "test_rows": int(test_x.shape[0]), "pca_fit_s": pca_seconds, "sizes": {}}
    models = {}
    for size in CODE_SIZES:
        row = {"pca": pca.truncated(size).reconstruction_mse(test_x)}
        for name, factory in (("autoencoder", autoencoder), ("vae", vae)):
            model = factory(size, args.seed)
            start = clock()
            model.fit(train_x, steps=budget["steps"], batch_size=budget["batch_size"], log_every=budget["steps"])
            errors = reconstruction_errors(model, test_x)
            row[name] = errors["mse"]
            row[f"{name}_bce"] = errors["bce"]
            row[f"{name}_train_s"] = clock() - start
            if name == "vae":
                row["vae_kl"] = model.loss_terms(test_x)["kl"]
            models[(name, size)] = model
            _study.say(f"d={size:>3} {name:<11} test MSE {errors['mse']:.5f} (PCA {row['pca']:.5f}) in {row[f'{name}_train_s']:.0f} s")
        numbers["sizes"][size] = row

    rows = []
    for size in CODE_SIZES:
        row = numbers["sizes"][size]
        rows.append([
            size,
            f"{row['pca']:.5f}",
            f"{row['autoencoder']:.5f}",
            f"{row['vae']:.5f}",
            f"{row['autoencoder'] / row['pca']:.2f}",
            f"{row['vae'] / row['pca']:.2f}",
            f"{row['vae_kl']:.1f}",
        ])
    ae_wins = [s for s in CODE_SIZES if numbers["sizes"][s]["autoencoder"] < numbers["sizes"][s]["pca"]]
    pca_wins = [s for s in CODE_SIZES if s not in ae_wins]
    vae_wins = [s for s in CODE_SIZES if numbers["sizes"][s]["vae"] < numbers["sizes"][s]["pca"]]
    text = "\n".join([
        f"Test reconstruction MSE (mean over {test_x.shape[0]:,} test images and 784 pixels); lower is better.",
        f"Budget: {budget['steps']:,} steps of batch {budget['batch_size']} of Adam(lr {budget['lr']}) for each network, seed {args.seed}; "
        f"PCA exact on {train_x.shape[0]:,} training images ({pca_seconds:.0f} s for the SVD).",
        "",
        _study.table(["code size", "PCA", "autoencoder", "VAE (mean code)", "AE / PCA", "VAE / PCA", "VAE KL (nats)"], rows),
        "",
        f"Measured: the autoencoder beats PCA at code size{'s' if len(ae_wins) != 1 else ''} {', '.join(map(str, ae_wins)) or 'none'}"
        f"; PCA wins at {', '.join(map(str, pca_wins)) or 'none'}. "
        f"The VAE beats PCA at {', '.join(map(str, vae_wins)) or 'none'}.",
        "",
        f"Machine: {_study.machine()}; total {clock():.0f} s.",
    ])
    _study.write_fragment(args, "pca_vs_autoencoder", text, numbers)
    figures(args, pca, models, test_x, test_y, numbers)
    return 0


def figures(args, pca, models, test_x, test_y, numbers) -> None:
    from nanoae import plot  # noqa: PLC0415

    try:
        plot.require_matplotlib()
    except ImportError as exc:
        _study.say(f"no figures: {exc}")
        return
    sizes = list(CODE_SIZES)
    curves = {
        "PCA": [numbers["sizes"][s]["pca"] for s in sizes],
        "autoencoder": [numbers["sizes"][s]["autoencoder"] for s in sizes],
        "VAE (mean code)": [numbers["sizes"][s]["vae"] for s in sizes],
    }
    plot.plot_curves(sizes, curves, args.out / "pca_vs_autoencoder_mse.png", "code size", "test reconstruction MSE",
                     title="PCA vs autoencoder vs VAE on MNIST")
    picked = _study.pick_digits(test_y)
    digits = test_x[picked]
    rows = [("original", digits)]
    for size in (8, 32):
        rows.append((f"PCA {size}", pca.truncated(size).reconstruct(digits)))
        rows.append((f"AE {size}", models[("autoencoder", size)].reconstruct(digits)))
        rows.append((f"VAE {size}", models[("vae", size)].reconstruct(digits)))
    plot.plot_image_rows(rows, args.out / "pca_vs_autoencoder_reconstructions.png", title="Test digits and their reconstructions at code sizes 8 and 32")
    panels = [
        ("PCA, first 2 components", pca.truncated(2).transform(test_x), test_y),
        ("autoencoder, 2-unit code", models[("autoencoder", 2)].encode(test_x), test_y),
        ("VAE, mean of the 2-D code", models[("vae", 2)].encode(test_x), test_y),
    ]
    plot.plot_latent_maps(panels, args.out / "latent_maps_2d.png", title="Test set in 2-D codes, colored by digit")
    _study.say(f"figures in {args.out}")


if __name__ == "__main__":
    sys.exit(main())
