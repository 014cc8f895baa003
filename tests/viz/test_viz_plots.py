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


@pytest.fixture(scope="module")
def real_history():
    """The history a real (tiny) training run writes, validation included."""
    from mlxterp.sae import SAE, SAEConfig, SAETrainer

    rng = np.random.default_rng(0)
    acts = rng.normal(size=(2048, 8)).astype(np.float32)
    config = SAEConfig(expansion_factor=2, k=2, batch_size=256, log_every=2, validation_split=0.25,
                       checkpoint_every=None, dead_tokens_threshold=300)
    trainer = SAETrainer(SAE.from_config(8, config), config)
    trainer.fit(acts, progress=False)
    return trainer.history


def test_training_curves_draw_the_trainers_own_metrics_first(real_history):
    from mlxterp.sae import TRAINING_METRICS
    from mlxterp.viz.plots import curve_panels

    panels = curve_panels(real_history)
    names = [name for name, _ in panels]
    assert names[: len(TRAINING_METRICS)] == list(TRAINING_METRICS)  # every metric the trainer logs, titled
    assert [title for _, title in panels[: len(TRAINING_METRICS)]] == list(TRAINING_METRICS.values())
    assert "val/fvu" in names[len(TRAINING_METRICS):]  # validation metrics follow under their own names


@needs_matplotlib
def test_training_curves_from_columns_and_from_rows(tmp_path, real_history):
    tall = png_size(plot_training_curves(real_history, tmp_path / "history.png"))
    steps = [row["step"] for row in real_history]
    columns = {"step": steps, "loss": [row["loss"] for row in real_history], "l0": [row["l0"] for row in real_history],
               "dead_fraction": [row["dead_fraction"] for row in real_history],
               "learning_rate": [row["learning_rate"] for row in real_history]}
    four = png_size(plot_training_curves(columns, tmp_path / "columns.png"))  # 4 panels: two rows
    assert four[1] < tall[1]
    rows = [{"step": s, "loss": 1.0, "l0": 30.0} | ({"learning_rate": 1e-3} if i % 2 else {}) for i, s in enumerate(steps)]
    assert png_size(plot_training_curves(rows, tmp_path / "rows.png"))[1] < four[1]  # 3 panels: one row


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
