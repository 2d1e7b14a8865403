"""Figures: reconstructions, loss curves, image grids and strips, latent maps (matplotlib, optional).

Install with ``pip install 'nanoae[viz]'``. Everything renders off-screen (Agg) to PNG.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from nanoae.version import __version__


class PlotUnavailable(ImportError):
    """matplotlib is not installed."""


def require_matplotlib():
    """Return matplotlib.pyplot on the off-screen Agg backend, or explain how to get it."""
    try:
        import matplotlib  # noqa: PLC0415 (optional dependency)
    except ImportError as exc:
        raise PlotUnavailable(
            "figures need matplotlib: pip install 'nanoae[viz]' (or pip install matplotlib)"
        ) from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def tile_images(images: np.ndarray, rows: int, cols: int, side: int | None = None, gap: int = 2, image_shape=None) -> np.ndarray:
    """Arrange rows*cols flat images into one canvas with gaps (white, 1.0).

    images: (rows * cols, h*w[*c]) values in [0, 1]; image_shape (h, w) or (h, w, c),
    default square grey (side x side) -> (rows*(h+gap)-gap, cols*(w+gap)-gap[, c])
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 2 or images.shape[0] < rows * cols:
        raise ValueError(f"need {rows * cols} flat images, got an array of shape {images.shape}")
    if image_shape is None:
        side = side or int(round(math.sqrt(images.shape[1])))
        if side * side != images.shape[1]:
            raise ValueError(f"images of {images.shape[1]} pixels are not square; pass side= or image_shape=")
        image_shape = (side, side)
    image_shape = tuple(int(size) for size in image_shape)
    if math.prod(image_shape) != images.shape[1]:
        raise ValueError(f"image_shape {image_shape} holds {math.prod(image_shape)} values, but each image has {images.shape[1]}")
    height, width, channels = image_shape[0], image_shape[1], image_shape[2:]
    canvas = np.ones((rows * (height + gap) - gap, cols * (width + gap) - gap, *channels), dtype=np.float32)
    for index in range(rows * cols):
        row, col = divmod(index, cols)
        top, left = row * (height + gap), col * (width + gap)
        canvas[top : top + height, left : left + width] = images[index].reshape(image_shape)
    return canvas


_SOFTWARE = f"nanoae {__version__}"  # in every PNG's metadata: how nanoae knows its own figures


def _save(figure, path, plt, tight_layout: bool = True, **savefig_options) -> Path:
    """Lay out (unless told not to), write the PNG, free the figure; return the path."""
    if tight_layout:
        figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110, metadata={"Software": _SOFTWARE}, **savefig_options)
    plt.close(figure)
    return path


def written_by_nanoae(path) -> bool:
    """True when ``path`` is a PNG whose "Software" text chunk names nanoae (every figure
    this module saves has one). Reads the chunks before the image data, nothing more."""
    try:
        with open(path, "rb") as handle:
            if handle.read(8) != b"\x89PNG\r\n\x1a\n":
                return False
            for _ in range(64):  # the text chunks come early; a PNG is no place to wander
                head = handle.read(8)
                if len(head) < 8:
                    return False
                length, kind = int.from_bytes(head[:4], "big"), head[4:]
                if kind == b"IDAT" or length > 1 << 20:
                    return False
                body = handle.read(length + 4)[:length]  # the chunk and its CRC
                if kind == b"tEXt" and body.startswith(b"Software\x00nanoae "):
                    return True
    except OSError:
        return False
    return False


def plot_reconstructions(originals, reconstructions, path, rows: int = 4, cols: int = 4, title: str | None = None, image_shape=None) -> Path:
    """The tutorial's figure, done right: a grid of test digits beside the model's output.

    originals, reconstructions: (n >= rows*cols, h*w[*c]) host arrays in [0, 1]
    (reconstructions are clipped to [0, 1] for display only); image_shape (h, w) or
    (h, w, 3) for RGB, default 28 x 28 grey.
    """
    plt = require_matplotlib()
    left = tile_images(originals, rows, cols, image_shape=image_shape)
    right = tile_images(np.clip(np.asarray(reconstructions, dtype=np.float32), 0.0, 1.0), rows, cols, image_shape=image_shape)
    figure, axes = plt.subplots(1, 2, figsize=(8.4, 4.6))
    for axis, canvas, label in zip(axes, (left, right), ("Original images", "Reconstructed images")):
        axis.imshow(canvas, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        axis.set_title(label)
        axis.set_axis_off()
    if title:
        figure.suptitle(title)
    return _save(figure, path, plt)


def read_metrics(path) -> dict:
    """Read a run's metrics.csv into arrays: step, train_loss and (test_step, test_mse)."""
    steps, losses, test_steps, test_values = [], [], [], []
    with open(path, newline="", errors="replace") as handle:
        for row in csv.DictReader(handle):
            try:  # a damaged or foreign row is left out of the plot, not a crash
                step = int(row["step"])
                loss = float(row["train_loss"]) if row.get("train_loss") else None
                test = float(row["test_mse"]) if row.get("test_mse") else None
            except (KeyError, TypeError, ValueError):
                continue
            if loss is not None:
                steps.append(step)
                losses.append(loss)
            if test is not None:
                test_steps.append(step)
                test_values.append(test)
    return {
        "step": np.asarray(steps),
        "train_loss": np.asarray(losses),
        "test_step": np.asarray(test_steps),
        "test_mse": np.asarray(test_values),
    }


def plot_loss(steps, losses, path, test_steps=(), test_values=(), title: str | None = None, log_scale: bool = True,
              test_label: str = "test reconstruction MSE") -> Path:
    """Training loss per step (and held-out MSE points, named ``test_label``) on one axis, log scale by default."""
    plt = require_matplotlib()
    figure, axis = plt.subplots(figsize=(7.0, 4.2))
    axis.plot(steps, losses, linewidth=1.0, label="training loss (batch)")
    if len(test_steps):
        axis.plot(test_steps, test_values, "o", markersize=4, label=test_label)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    if log_scale and len(losses) and np.all(np.asarray(losses) > 0):
        axis.set_yscale("log")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    if title:
        axis.set_title(title)
    return _save(figure, path, plt)


def plot_image_grid(images, path, rows: int = 8, cols: int = 8, title: str | None = None) -> Path:
    """rows*cols flat images (n >= rows*cols, 784) in one grid (values clipped to [0, 1])."""
    plt = require_matplotlib()
    canvas = tile_images(np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0), rows, cols)
    figure, axis = plt.subplots(figsize=(0.55 * cols + 0.4, 0.55 * rows + (0.6 if title else 0.2)))
    axis.imshow(canvas, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    axis.set_axis_off()
    if title:
        axis.set_title(title)
    return _save(figure, path, plt)


def plot_image_rows(rows, path, title: str | None = None) -> Path:
    """Labeled strips of images, one strip per row: rows = [(label, images (n, 784)), ...].

    For side-by-side comparisons (originals / model A / model B) and interpolation strips.
    Every row shows the same number of images (the first row's).
    """
    plt = require_matplotlib()
    count = len(rows[0][1])
    figure, axes = plt.subplots(len(rows), 1, figsize=(0.62 * count + 1.8, 0.75 * len(rows) + (0.5 if title else 0.1)))
    axes = np.atleast_1d(axes)
    for axis, (label, images) in zip(axes, rows):
        strip = tile_images(np.clip(np.asarray(images, dtype=np.float32)[:count], 0.0, 1.0), 1, count)
        axis.imshow(strip, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        axis.set_xticks([])
        axis.set_yticks([])
        for spine in axis.spines.values():
            spine.set_visible(False)
        axis.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        figure.suptitle(title)
    return _save(figure, path, plt)


def plot_latent_maps(panels, path, title: str | None = None) -> Path:
    """Scatter plots of 2-D codes colored by label, side by side.

    panels: [(panel title, codes (n, 2), labels (n,) integers 0..9), ...]
    """
    plt = require_matplotlib()
    figure, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 4.6))
    axes = np.atleast_1d(axes)
    scatter = None
    for axis, (label, codes, classes) in zip(axes, panels):
        codes = np.asarray(codes)
        scatter = axis.scatter(codes[:, 0], codes[:, 1], c=np.asarray(classes), cmap="tab10", vmin=-0.5, vmax=9.5, s=2, alpha=0.7, linewidths=0)
        axis.set_title(label, fontsize=10)
        axis.set_xlabel("code 1")
        axis.set_ylabel("code 2")
    colorbar = figure.colorbar(scatter, ax=list(axes), ticks=range(10), fraction=0.025, pad=0.02)
    colorbar.set_label("digit")
    if title:
        figure.suptitle(title)
    return _save(figure, path, plt, tight_layout=False, bbox_inches="tight")  # a colorbar beside the axes


def plot_code_map(codes, path, labels=None, title: str | None = None, axis_names=("code 1", "code 2")) -> Path:
    """One scatter plot of 2-D codes (n, 2), coloured by label when labels (n,) are given:
    ten or fewer whole-number labels in discrete colours, any others on a colour scale."""
    plt = require_matplotlib()
    codes = np.asarray(codes, dtype=np.float64)
    figure, axis = plt.subplots(figsize=(5.6, 4.8))
    if labels is None:
        axis.scatter(codes[:, 0], codes[:, 1], s=4, alpha=0.7, linewidths=0)
    else:
        labels = np.asarray(labels, dtype=np.float64)
        classes = np.unique(labels)
        discrete = len(classes) <= 10 and np.all(classes == np.round(classes))
        if discrete:
            index = np.searchsorted(classes, labels)
            scatter = axis.scatter(codes[:, 0], codes[:, 1], c=index, cmap="tab10", vmin=-0.5, vmax=9.5, s=4, alpha=0.7, linewidths=0)
            colorbar = figure.colorbar(scatter, ax=axis, ticks=range(len(classes)))
            colorbar.ax.set_yticklabels([f"{value:g}" for value in classes])
        else:
            scatter = axis.scatter(codes[:, 0], codes[:, 1], c=labels, cmap="viridis", s=4, alpha=0.7, linewidths=0)
            colorbar = figure.colorbar(scatter, ax=axis)
        colorbar.set_label("label")
    axis.set_xlabel(axis_names[0])
    axis.set_ylabel(axis_names[1])
    if title:
        axis.set_title(title, fontsize=10)
    return _save(figure, path, plt)


def plot_curves(x, curves, path, xlabel: str, ylabel: str, title: str | None = None, log_x: bool = True, log_y: bool = True) -> Path:
    """One line per entry of curves = {name: y values over x}, with markers."""
    plt = require_matplotlib()
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for name, values in curves.items():
        axis.plot(x, values, "o-", label=name)
    if log_x:
        axis.set_xscale("log", base=2)
        axis.set_xticks(list(x))
        axis.set_xticklabels([str(v) for v in x])
    if log_y:
        axis.set_yscale("log")
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    if title:
        axis.set_title(title)
    return _save(figure, path, plt)
