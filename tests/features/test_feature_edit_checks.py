"""Feature edits and steering refuse strengths and bounds that would silently do the wrong thing."""

import mlx.core as mx
import numpy as np
import pytest

from mlxterp.errors import SAEError
from mlxterp.features import ablate, clamp, scale, set_value, splice_sae, steer

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("make, message", [
    (lambda: scale(5, NAN), r"scale\(5, \.\.\.\): factor=nan is not finite"),
    (lambda: scale(5, -INF), r"factor=-inf is not finite"),
    (lambda: scale(5, "big"), r"factor must be a number, got 'big'"),
    (lambda: set_value([1, 2], NAN), r"set_value\(\[1, 2\], \.\.\.\): value=nan"),
    (lambda: clamp(3, min=2, max=1), r"clamp\(3, min=2, max=1\): min is above max"),
    (lambda: clamp(3, min=NAN), r"min=nan is not finite"),
    (lambda: clamp(3), r"needs min=, max= or both"),
])
def test_bad_feature_edit_values_are_refused(make, message):
    with pytest.raises(SAEError, match=message):
        make()


def test_valid_feature_edits_are_built_as_asked():
    assert scale(5, 2).value == 2.0 and clamp(3, min=1, max=1).low == clamp(3, min=1, max=1).high == 1.0
    assert clamp(3, max=0.5).low is None and ablate(4).value == 0.0


@pytest.mark.parametrize("strength", [NAN, INF, [1.0, NAN]])
def test_steer_refuses_non_finite_strengths(tiny, tiny_sae, strength):
    with tiny.trace("Hello"):
        with pytest.raises(SAEError, match=r"steer at model\.layers\.1 \(features \[1, 2\]\) got strength="):
            steer(tiny_sae, tiny, feature_idx=[1, 2], strength=strength)


def test_splice_and_steer_errors_name_the_edit(tiny, tiny_sae):
    with pytest.raises(Exception, match=r"the edit splice_sae\(\) of model\.layers\.1\.output would do nothing at positions \[40\]"):
        with tiny.trace("Hello"):
            splice_sae(tiny_sae, tiny, ablate(1), positions=[40])
    with pytest.raises(Exception, match=r"the edit steer\(feature_idx=3\) of model\.layers\.1\.output"):
        with tiny.trace("Hello"):
            steer(tiny_sae, tiny, feature_idx=3, positions=[-9])
