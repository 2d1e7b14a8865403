"""Denoising autoencoders: trained on corrupted digits, asked to give back the clean ones.

The budget (full mode), equal for the three models: the tutorial's, 1,000 steps of batch
256 of the tutorial's RMSProp (TF1, lr 0.001), seed 0, on the 60,000 training images;
the tutorial's widths (784-784-256-128 / 128-128-256-784, ReLU) with a sigmoid output:

* plain: trained on clean inputs (``tutorial`` preset, ``output_activation="sigmoid"``);
* gaussian: inputs x + 0.5 eps, clipped to [0, 1], fresh noise every step (``denoising``);
* masking: half of the pixels of each input set to 0, fresh every step (``denoising-mask``).

Every model is scored on the 10,000 test images, clean and corrupted both ways (noise
drawn once with a fixed seed), by the MSE of its output against the *clean* image.

    python examples/denoising.py --data ../shared/data/mnist      # ~1.5 min on 2 cores
    python examples/denoising.py --quick
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _study  # noqa: E402

from nanoae import presets  # noqa: E402
from nanoae.backend import get_backend  # noqa: E402
from nanoae.regularizers import GaussianNoise, MaskingNoise  # noqa: E402

FULL = {"steps": 1000, "batch_size": 256}
QUICK = {"steps": 10, "batch_size": 64}
TEST_NOISE_SEED = 1234


def mse(model, inputs, clean, batch_size: int = 1000) -> float:
    total = 0.0
    for start in range(0, len(inputs), batch_size):
        difference = model.reconstruct(inputs[start : start + batch_size]).astype(np.float64) - clean[start : start + batch_size]
        total += float((difference * difference).sum())
    return total / clean.size


def main(argv=None) -> int:
    args = _study.parse_args(__doc__.splitlines()[0], argv)
    budget = QUICK if args.quick else FULL
    train_x, _, test_x, test_y = _study.load_mnist(args)
    clock = _study.Stopwatch()
    models = {
        "plain": presets.tutorial(seed=args.seed, output_activation="sigmoid"),
        "gaussian 0.5": presets.denoising(seed=args.seed),
        "masking 0.5": presets.denoising_mask(seed=args.seed),
    }
    train_seconds = {}
    for name, model in models.items():
        start = clock()
        model.fit(train_x, steps=budget["steps"], batch_size=budget["batch_size"], log_every=max(1, budget["steps"] // 10))
        train_seconds[name] = clock() - start
        _study.say(f"{name}: trained in {train_seconds[name]:.0f} s")

    backend = get_backend("numpy")
    rng = np.random.default_rng(TEST_NOISE_SEED)
    inputs = {
        "clean": test_x,
        "gaussian 0.5": GaussianNoise(0.5).corrupt(test_x, rng, backend),
        "masking 0.5": MaskingNoise(0.5).corrupt(test_x, rng, backend),
    }
    numbers = {"budget": budget, "train_s": train_seconds, "mse": {}}
    rows = []
    for input_name, noisy in inputs.items():
        itself = float(np.mean((noisy.astype(np.float64) - test_x) ** 2))
        scores = {name: mse(model, noisy, test_x) for name, model in models.items()}
        numbers["mse"][input_name] = {"input itself": itself, **scores}
        best = min(scores, key=scores.get)
        rows.append([input_name, f"{itself:.5f}", *[f"**{value:.5f}**" if name == best else f"{value:.5f}" for name, value in scores.items()]])
    text = "\n".join([
        f"MSE against the clean test image ({test_x.shape[0]:,} images), lower is better; the best model per row in bold. "
        f"Budget: {budget['steps']:,} steps of batch {budget['batch_size']} of the tutorial's RMSProp for each model, seed {args.seed}.",
        "",
        _study.table(["test input", "the input itself", "plain autoencoder", "denoising (gaussian 0.5)", "denoising (masking 0.5)"], rows),
        "",
        f"Machine: {_study.machine()}; total {clock():.0f} s.",
    ])
    _study.write_fragment(args, "denoising", text, numbers)

    try:
        from nanoae import plot  # noqa: PLC0415

        picked = _study.pick_digits(test_y)
        rows = [("clean", test_x[picked])]
        for input_name, trained in (("gaussian 0.5", "gaussian 0.5"), ("masking 0.5", "masking 0.5")):
            noisy = inputs[input_name][picked]
            rows += [(f"{input_name}", noisy), ("plain AE", models["plain"].reconstruct(noisy)), ("denoising AE", models[trained].reconstruct(noisy))]
        plot.plot_image_rows(rows, args.out / "denoising.png", title="Noisy test digits and what each autoencoder makes of them")
    except ImportError as exc:
        _study.say(f"no figure: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
