"""Feature statistics from the streaming pass equal numpy over the full code matrix."""

import numpy as np
import pytest

from mlxterp.features import FeatureSet, feature_stats, top_activating_examples
from mlxterp.features.scan import CodeBatch
from mlxterp.features.stats import StatsCollector
from test_examples import SCAN, all_codes


@pytest.fixture(scope="module")
def measured(tiny, tiny_sae):
    from conftest import TEXTS

    stats = feature_stats(tiny_sae, tiny, TEXTS, n_bins=16, **SCAN)
    contexts = top_activating_examples(tiny_sae, tiny, TEXTS, top_k=1, bands=(), **SCAN).contexts
    codes = all_codes(tiny_sae, tiny, contexts, SCAN["contexts_per_forward"])[contexts.keep.ravel()]
    return stats, codes


def test_frequency_mean_and_max_equal_numpy_over_the_codes(measured, tiny_sae):
    stats, codes = measured
    active = codes > 0
    assert stats.n_tokens == len(codes)
    np.testing.assert_array_equal(stats.counts, active.sum(0))
    np.testing.assert_allclose(stats.frequency, active.mean(0), rtol=1e-12)
    np.testing.assert_array_equal(stats.max_activation, codes.max(0))
    mean = np.where(active.any(0), codes.sum(0) / np.maximum(active.sum(0), 1), 0)
    np.testing.assert_allclose(stats.mean_activation, mean, rtol=1e-5)
    np.testing.assert_array_equal(stats.dead, np.flatnonzero(~active.any(0)))
    assert 0 < len(stats.dead) < tiny_sae.d_hidden
    assert f"{len(stats.dead)} dead" in str(stats)


def test_histograms_equal_numpy_histogram_of_each_features_activations(measured):
    stats, codes = measured
    for feature in np.flatnonzero((codes > 0).any(0)):
        values = codes[codes[:, feature] > 0, feature]
        edges, counts = stats.histogram(int(feature))
        top = stats.hist_top[stats.row(int(feature))]
        assert top / 2 < values.max() <= top  # the range is the smallest power of two covering the max
        expected, _ = np.histogram(values, bins=16, range=(0, top))
        n = len(counts)
        np.testing.assert_array_equal(counts, expected[:n])
        assert expected[n:].sum() == 0 and counts[-1] > 0
        np.testing.assert_allclose(edges, np.linspace(0, top, 17)[: n + 1])


def test_histogram_range_grows_without_losing_counts():
    collector = StatsCollector(1, n_bins=8)
    values = [0.3, 0.9, 3.0, 0.1, 37.0, 5.5, 0.2]
    for i, v in enumerate(values):
        codes = np.array([[v]], dtype=np.float32)
        collector.update(CodeBatch(codes, i, 1, np.array([0]), np.array([0]), codes[0], 1))
    stats = collector.result(np.array([0]))
    assert stats.hist_top[0] == 64.0
    expected, _ = np.histogram(values, bins=8, range=(0, 64))
    np.testing.assert_array_equal(stats.hist_counts[0], expected)


def test_density_histogram_counts_live_features_by_log_frequency(measured):
    stats, codes = measured
    edges, counts = stats.density_histogram(n_bins=10)
    live = codes.astype(bool).mean(0)
    live = live[live > 0]
    assert counts.sum() == len(live)
    np.testing.assert_allclose(edges[[0, -1]], np.log10([live.min(), live.max()]), rtol=1e-6)


def test_feature_set_takes_scan_stats_and_subsets_leave_nan(measured, tiny, tiny_sae, texts):
    stats, _ = measured
    fs = FeatureSet.from_sae(tiny_sae, stats)
    np.testing.assert_array_equal(fs.stats["frequency"], stats.frequency.astype(np.float32))
    assert fs.metadata["stats_n_tokens"] == stats.n_tokens
    subset = tiny_sae.feature_stats(dataset=texts, feature_indices=[3, 9], **SCAN)
    np.testing.assert_array_equal(subset.counts, stats.counts[[3, 9]])
    partial = FeatureSet.from_sae(tiny_sae, subset)
    assert partial[9].stats["max_activation"] == stats.max_activation[9]
    assert np.isnan(partial[4].stats["frequency"])
