"""PNG plots: training curves, feature strengths, density histogram; a clear error without matplotlib."""

import importlib.util
import sys

import numpy as np
import pytest

from mlxterp.errors import MlxterpError
from mlxterp.viz import PlotDependencyError, plot_density_histogram, plot_feature_strengths, plot_training_curves

PNG = b"\x89PNG\r\n\x1a\n"
needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="matplotlib is not installed (pip install matplotlib)"
)


def png_size(path):
    """(width, height) from a PNG's IHDR chunk."""
    header = path.read_bytes()[:24]
    assert header[:8] == PNG
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


@needs_matplotlib
def test_training_curves_from_columns_and_from_rows(tmp_path):
    steps = list(range(0, 1000, 50))
    columns = {
        "step": steps,
        "loss": [1 / (1 + s / 100) for s in steps],
        "l0": [40 - s / 50 for s in steps],
        "dead_fraction": [s / 5000 for s in steps],
        "lr": [3e-4] * len(steps),
    }
    tall = png_size(plot_training_curves(columns, tmp_path / "columns.png"))  # 4 panels: two rows
    rows = [{"step": s, "loss": 1.0, "l0": 30.0} | ({"lr": 1e-3} if s % 100 == 0 else {}) for s in steps]
    assert png_size(plot_training_curves(rows, tmp_path / "rows.png"))[1] < tall[1]  # 3 panels: one row


@needs_matplotlib
def test_feature_strengths_vector_and_matrix(tmp_path):
    rng = np.random.default_rng(0)
    plot_feature_strengths(rng.gamma(2.0, size=1000), tmp_path / "vector.png")
    plot_feature_strengths(rng.random((16, 256)), tmp_path / "matrix.png")
    assert all(png_size(tmp_path / name)[0] > 500 for name in ("vector.png", "matrix.png"))
    with pytest.raises(ValueError, match="non-empty"):
        plot_feature_strengths(np.zeros((2, 2, 2)), tmp_path / "cube.png")


@needs_matplotlib
def test_density_histogram_counts_dead_features(tmp_path):
    freqs = np.concatenate([10 ** np.random.default_rng(1).uniform(-6, -1, 500), np.zeros(20)])
    png_size(plot_density_histogram(freqs, tmp_path / "density.png"))
    png_size(plot_density_histogram(np.zeros(4), tmp_path / "all_dead.png"))
    with pytest.raises(ValueError, match="empty"):
        plot_density_histogram([], tmp_path / "none.png")


@needs_matplotlib
def test_empty_history_is_refused(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_training_curves([], tmp_path / "empty.png")


def test_without_matplotlib_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(PlotDependencyError, match=r"pip install 'mlxterp\[plot\]'") as info:
        plot_density_histogram([0.1, 0.2], tmp_path / "density.png")
    assert isinstance(info.value, MlxterpError) and isinstance(info.value, ImportError)
    assert not (tmp_path / "density.png").exists()
