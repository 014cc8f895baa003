"""PNG plots of SAE training and features (matplotlib, imported lazily; no pyplot, so no global backend)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import MlxterpError
from ..io_utils import atomic_path
from ..sae.metrics import TRAINING_METRICS

# Training-history keys drawn first (the trainer's metric vocabulary), in this order, with their
# titles; any other numeric key (e.g. "val/fvu") follows under its own name.
CURVE_TITLES = TRAINING_METRICS
STEP_KEY = "step"


class PlotDependencyError(MlxterpError, ImportError):
    """matplotlib, needed for PNG plots, is not installed."""


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotDependencyError(
            "plots need matplotlib: pip install 'mlxterp[plot]' (or pip install matplotlib)"
        ) from exc
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save(fig: Any, path: str | os.PathLike) -> Path:
    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    return target


def _series(history: Mapping[str, Sequence[float]] | Sequence[Mapping[str, float]]) -> dict[str, tuple[list, list]]:
    """{name: (steps, values)} from a dict of lists or a list of per-log-step dicts (keys may come and go)."""
    if isinstance(history, Mapping):
        columns = {k: np.asarray(v, dtype=float).ravel().tolist() for k, v in history.items()}
        steps = columns.pop(STEP_KEY, None)
        return {k: (steps if steps and len(steps) == len(v) else list(range(len(v))), v) for k, v in columns.items()}
    series: dict[str, tuple[list, list]] = {}
    for i, row in enumerate(history):
        for key, value in row.items():
            if key != STEP_KEY and isinstance(value, (int, float)) and not isinstance(value, bool):
                steps, values = series.setdefault(key, ([], []))
                steps.append(row.get(STEP_KEY, i))
                values.append(float(value))
    return series


def curve_panels(history: Mapping[str, Sequence[float]] | Sequence[Mapping[str, float]]) -> list[tuple[str, str]]:
    """(metric, title) of each panel `plot_training_curves` draws, in order: the trainer's
    metrics (TRAINING_METRICS) first, then any other key under its own name."""
    series = _series(history)
    names = [k for k in CURVE_TITLES if k in series] + sorted(k for k in series if k not in CURVE_TITLES)
    return [(name, CURVE_TITLES.get(name, name)) for name in names]


def plot_training_curves(
    history: Mapping[str, Sequence[float]] | Sequence[Mapping[str, float]], path: str | os.PathLike
) -> Path:
    """One panel per logged metric (loss, L0, dead fraction, lr, ... vs step) saved as a PNG at `path`."""
    series = _series(history)
    if not series:
        raise ValueError("the training history is empty: nothing to plot; log at least one metric per step")
    names = [name for name, _ in curve_panels(history)]
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = _figure(4.2 * cols, 2.8 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        steps, values = series[name]
        ax.plot(steps, values, color="#e8590c", linewidth=1.4)
        ax.set_title(CURVE_TITLES.get(name, name), fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        finite = np.asarray(values, dtype=float)
        finite = finite[np.isfinite(finite)]
        if ("loss" in name or name in ("fvu", "mse")) and finite.size and np.all(finite > 0):
            ax.set_yscale("log")
    for ax in axes[len(names):]:
        ax.set_visible(False)
    return _save(fig, path)


def plot_feature_strengths(strengths: Any, path: str | os.PathLike) -> Path:
    """Heatmap of feature strengths: a (n_features,) vector is folded into a near-square grid (feature i at
    row i // width, column i % width) beside its sorted curve; an (n_examples, n_features) matrix is drawn as is."""
    values = np.asarray(strengths, dtype=np.float32)
    if values.ndim not in (1, 2) or values.size == 0:
        raise ValueError(
            f"strengths must be a non-empty (n_features,) vector or (n_examples, n_features) matrix, got shape {values.shape}"
        )
    if values.ndim == 2:
        fig = _figure(9, 4.5)
        ax = fig.subplots()
        image = ax.imshow(values, aspect="auto", cmap="magma", interpolation="nearest")
        ax.set(xlabel="feature", ylabel="example", title="feature activation per example")
        fig.colorbar(image, ax=ax, label="activation")
        return _save(fig, path)
    width = math.ceil(math.sqrt(values.size))
    grid = np.full(width * math.ceil(values.size / width), np.nan, dtype=np.float32)
    grid[: values.size] = values
    fig = _figure(11, 4.6)
    heat_ax, curve_ax = fig.subplots(1, 2, width_ratios=[1.1, 1])
    image = heat_ax.imshow(grid.reshape(-1, width), cmap="magma", interpolation="nearest")
    heat_ax.set_title(f"max activation of each feature ({width} per row)", fontsize=10)
    heat_ax.set(xlabel=f"feature index % {width}", ylabel=f"feature index // {width}")
    fig.colorbar(image, ax=heat_ax, shrink=0.85)
    curve_ax.plot(np.sort(values)[::-1], color="#e8590c")
    curve_ax.set(xlabel="feature rank", ylabel="max activation", title="features sorted by strength")
    curve_ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_density_histogram(frequencies: Any, path: str | os.PathLike, bins: int = 50) -> Path:
    """Histogram of log10 firing frequency over features; dead features (frequency 0) are counted in the title."""
    freqs = np.asarray(frequencies, dtype=np.float64).ravel()
    if freqs.size == 0:
        raise ValueError("frequencies is empty: pass one firing frequency per feature")
    alive = freqs[freqs > 0]
    fig = _figure(7, 3.6)
    ax = fig.subplots()
    if alive.size:
        ax.hist(np.log10(alive), bins=bins, color="#e8590c", alpha=0.85)
    ax.set(
        xlabel="log10(fraction of tokens where the feature fires)",
        ylabel="features",
        title=f"feature density ({freqs.size - alive.size} of {freqs.size} features never fired)",
    )
    ax.grid(alpha=0.3)
    return _save(fig, path)
