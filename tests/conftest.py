"""Shared pytest fixtures: one loaded default model per session, and the shared data folder."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).parents[1] / "../shared/data"


@pytest.fixture(scope="session")
def default_model_pair():
    """The default model (SmolLM2-135M-Instruct) as a LoadedModel, loaded once per session."""
    from mlxterp.loading import load_model

    return load_model("default")


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """`../shared/data` beside the repo (evaluation texts); skips when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA.resolve()} is absent (it is not in the repo)")
    return SHARED_DATA.resolve()
