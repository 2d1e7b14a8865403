"""A run's figures: reconstructions of image data in its own shape, a 2-D map of the codes
of other data, and the loss curve; drawn by ``nanoae train`` at the end and by ``nanoae plot``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nanoae.pca import PCA
from nanoae.plot import plot_code_map, plot_image_grid, plot_loss, plot_reconstructions, read_metrics


def _display_range(originals: np.ndarray, reconstructions: np.ndarray):
    """Both arrays mapped to [0, 1] for display by the originals' own min and max."""
    low, high = float(originals.min()), float(originals.max())
    span = high - low if high > low else 1.0
    return (originals - low) / span, (reconstructions - low) / span


def code_map(model, x: np.ndarray) -> tuple[np.ndarray, tuple[str, str]]:
    """2-D coordinates of the codes of x: (n, 2) and the axes' names. A 2-wide code is
    its own map; a wider one is projected on its first two principal components; a
    1-wide one is drawn against zero."""
    codes = np.asarray(model.backend.to_host(model.encode(x)), dtype=np.float64)
    if codes.shape[1] == 2:
        return codes, ("code 1", "code 2")
    if codes.shape[1] == 1:
        return np.column_stack([codes[:, 0], np.zeros(len(codes))]), ("code", "")
    if len(codes) < 2:
        return codes[:, :2], ("code 1", "code 2")
    return PCA(2).fit(codes).transform(codes), ("principal component 1 of the codes", "principal component 2")


def draw_figures(model, rows, out_dir: Path, metrics_path: Path | None, title: str = "") -> list[Path]:
    """A run's figures; returns the paths. rows: the Rows to show (cli.data).

    Images (rows.image_shape known): reconstructions.png, 16 of them beside the model's
    output (shown in [0, 1]: as they are for [0, 1] data, else by the originals' range in
    the data's units); a VAE adds samples.png (64 draws from the prior). Other data:
    codes.png, the codes of up to 5,000 rows in 2-D, coloured by label where there are
    labels. Both: loss.png when the metrics file has rows (:func:`draw_loss`; the
    held-out points are "validation" for own data, "test" for a built-in dataset).
    """
    written = []
    if rows.image_shape is not None:
        shown = min(16, len(rows))
        grid = (4, 4) if shown == 16 else (1, shown)
        x = rows.scaled(0, shown)
        reconstructions = np.asarray(model.backend.to_host(model.reconstruct(x)), dtype=np.float32)
        if rows.scaler is not None and rows.scaler.output_range != "unit":
            x, reconstructions = _display_range(rows.unscale(x), rows.unscale(reconstructions))
        written.append(
            plot_reconstructions(x, reconstructions, out_dir / "reconstructions.png", rows=grid[0], cols=grid[1], title=title, image_shape=rows.image_shape)
        )
        if hasattr(model, "sample"):  # a VAE: new digits from the prior
            samples = model.backend.to_host(model.sample(64))
            written.append(plot_image_grid(samples, out_dir / "samples.png", rows=8, cols=8, title=f"{title}: samples from N(0, I)"))
    else:
        count = min(5000, len(rows))
        points, axis_names = code_map(model, rows.scaled(0, count))
        labels = None if rows.labels is None else rows.labels[:count]
        written.append(plot_code_map(points, out_dir / "codes.png", labels, title=f"{title}: codes of {count} rows", axis_names=axis_names))
    held_out = "test" if rows.dataset else "validation"
    return written + draw_loss(metrics_path, out_dir, title, held_out)


def draw_loss(metrics_path: Path | None, out_dir: Path, title: str, held_out: str) -> list[Path]:
    """[loss.png] drawn from the run's metrics file, or [] when it has no rows; the
    held-out points are labelled ``held_out`` ("test" or "validation") reconstruction MSE."""
    if metrics_path is None or not metrics_path.exists():
        return []
    metrics = read_metrics(metrics_path)
    if not len(metrics["step"]):
        return []
    path = plot_loss(
        metrics["step"], metrics["train_loss"], out_dir / "loss.png", metrics["test_step"], metrics["test_mse"], title=title,
        test_label=f"{held_out} reconstruction MSE",
    )  # fmt: skip
    return [path]
