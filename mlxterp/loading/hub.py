"""Load mlx-lm models from a Hugging Face repo id or a local mlx-lm folder, via `mlx_lm.load`."""

from __future__ import annotations

from pathlib import Path

import mlx.nn as nn
from mlx_lm.tokenizer_utils import TokenizerWrapper

from ..errors import ModelLoadError


def is_mlx_lm_folder(path: str | Path) -> bool:
    """True when `path` is a folder with the `config.json` every mlx-lm/HF model folder has."""
    return (Path(path) / "config.json").is_file()


def load_hub(path_or_repo: str | Path) -> tuple[nn.Module, TokenizerWrapper]:
    """Load `(model, tokenizer)` from a local mlx-lm folder or a Hugging Face repo id.

    Repo ids are downloaded into (or read from) the Hugging Face cache. Custom model code is
    never run (`trust_remote_code` stays off).

    Raises:
        ModelLoadError: the folder is incomplete, the repo cannot be reached or found, or
            mlx-lm does not support the model type.
    """
    import mlx_lm

    spec = str(path_or_repo)
    try:
        return mlx_lm.load(spec)
    except (OSError, ValueError) as e:
        raise ModelLoadError(_failure_message(spec, e)) from e


def _failure_message(spec: str, error: Exception) -> str:
    if Path(spec).exists():
        return (
            f"Could not load the mlx-lm model folder {spec}: {error}. The folder needs "
            "config.json, *.safetensors weights and tokenizer files, of a model type mlx-lm "
            "supports; convert Hugging Face checkpoints with `mlx_lm.convert`."
        )
    return (
        f"Could not load {spec!r} from the Hugging Face hub: {error}. Check the repo id and "
        "your connection (or run once online to fill the cache, then set HF_HUB_OFFLINE=1); "
        "offline, pass a local mlx-lm folder, a .gguf file or 'default' instead."
    )
