"""scikit-learn pipelines on MNIST: 32 codes from nanoae's autoencoder or from PCA, each into a logistic regression.

Every row is an ordinary scikit-learn ``Pipeline``, fitted on the 60,000 training images
and scored (accuracy) on the 10,000 test images:

* autoencoder, 1000 steps: ``AutoencoderTransformer(random_state=seed)``, every
  other parameter at its default (layers (128, 32): a 784-128-32 encoder, ReLU inside,
  a linear code, the mirrored decoder with a sigmoid output since pixels lie in [0, 1];
  MSE; Adam lr 0.001; 1000 steps of batch 256 = 4.3 epochs; float32; NumPy backend);
* autoencoder, 20 epochs: the same with ``epochs=20`` (4,688 steps);
* PCA: ``sklearn.decomposition.PCA(32)`` (exact, no training budget);
* then, in each: ``StandardScaler()`` and ``LogisticRegression(max_iter=1000)``;
* for reference, the same classifier on the 784 raw pixels (no codes).

The fit time is the whole pipeline's (transformer and classifier). The reconstruction
MSE is the mean over test images and pixels of (x - x_hat)^2 from the codes
(``-score`` for the autoencoder, ``inverse_transform`` for PCA). Prints the Markdown
table and writes it as ``sklearn_pipeline.md`` / ``.json``.

    python examples/sklearn_pipeline.py --data ../shared/data/mnist      # about 1.5 min on 2 cores
    python examples/sklearn_pipeline.py --quick                          # 5-10 s

``--quick`` (2,000 training and 500 test images, 20 steps and 2 epochs) runs BLAS on
one thread: on matrices this small a second thread gains nothing, and on a busy machine
its waiting burns the time. On 2 cores kept busy by two other processes, --quick took
44 s (29 s CPU, most of it in the logistic regressions) with two BLAS threads, 11 s
(3 s CPU) with one; about 5 s on idle cores, most of it importing scikit-learn and
reading MNIST.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _study  # noqa: E402

from sklearn.decomposition import PCA  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402  (a dependency of scikit-learn)

from nanoae.sklearn import AutoencoderTransformer  # noqa: E402

import numpy as np  # noqa: E402

CODE_SIZE = 32


def pipelines(args) -> dict:
    """name -> (an unfitted Pipeline, the width of what its classifier sees)."""
    default_steps, long_epochs = (20, 2) if args.quick else (1000, 20)
    transformers = {
        f"nanoae autoencoder, {default_steps} steps": AutoencoderTransformer(max_steps=default_steps, random_state=args.seed),
        f"nanoae autoencoder, {long_epochs} epochs": AutoencoderTransformer(epochs=long_epochs, random_state=args.seed),
        "PCA (scikit-learn)": PCA(CODE_SIZE, random_state=args.seed),
        "raw pixels, no codes": None,
    }
    made = {}
    for name, transformer in transformers.items():
        head = [] if transformer is None else [("codes", transformer)]
        pipeline = Pipeline([*head, ("scale", StandardScaler()), ("classify", LogisticRegression(max_iter=1000))])
        made[name] = (pipeline, 784 if transformer is None else CODE_SIZE)
    return made


def reconstruction_mse(pipeline, test_x) -> float | None:
    """Mean (x - x_hat)^2 over test images and pixels, from the pipeline's codes; None without codes."""
    if "codes" not in pipeline.named_steps:
        return None
    codes = pipeline.named_steps["codes"]
    reconstructions = codes.inverse_transform(codes.transform(test_x))
    return float(np.mean((reconstructions.astype(np.float64) - test_x) ** 2))


def main(argv=None) -> int:
    args = _study.parse_args(__doc__.splitlines()[0], argv)
    with threadpool_limits(limits=1, user_api="blas") if args.quick else contextlib.nullcontext():
        numbers = measure(args)
    write(args, numbers)
    return 0


def measure(args) -> dict:
    """Fit and score every pipeline: the numbers of the table."""
    train_x, train_y, test_x, test_y = _study.load_mnist(args)
    numbers = {"train_rows": int(train_x.shape[0]), "test_rows": int(test_x.shape[0]), "methods": {}}
    for name, (pipeline, width) in pipelines(args).items():
        clock = _study.Stopwatch()
        pipeline.fit(train_x, train_y)
        fit_seconds = clock()
        accuracy = float(pipeline.score(test_x, test_y))
        mse = reconstruction_mse(pipeline, test_x)
        numbers["methods"][name] = {
            "code_size": width, "test_accuracy": accuracy, "test_reconstruction_mse": mse, "fit_s": fit_seconds, "pipeline": repr(pipeline),
        }
        _study.say(f"{name}: test accuracy {accuracy:.4f}, fit in {fit_seconds:.1f} s")
    return numbers


def write(args, numbers: dict) -> None:
    """Print the Markdown table and write it with the numbers."""
    rows = [
        [name, row["code_size"], f"{row['test_accuracy']:.4f}", "-" if row["test_reconstruction_mse"] is None else f"{row['test_reconstruction_mse']:.5f}", f"{row['fit_s']:.1f}"]
        for name, row in numbers["methods"].items()
    ]
    table = _study.table(["method", "code size", "test accuracy", "test reconstruction MSE", "fit seconds"], rows)
    print(table)
    text = (
        f"Codes into StandardScaler + LogisticRegression(max_iter=1000), fitted on {numbers['train_rows']:,} "
        f"training images, accuracy on {numbers['test_rows']:,} test images.\n\n{table}\n\nMachine: {_study.machine()}\n"
    )
    _study.write_fragment(args, "sklearn_pipeline", text, numbers)


if __name__ == "__main__":
    sys.exit(main())
