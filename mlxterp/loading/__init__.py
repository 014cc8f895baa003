"""Model loading: turn a model spec (repo id, folder, GGUF file, pair, default) into a LoadedModel.

Examples:
    load_model(None)                                # embedded SmolLM2-135M-Instruct
    load_model("mlx-community/SmolLM2-135M-Instruct")  # Hugging Face hub, via mlx_lm.load
    load_model("path/to/mlx_model_folder")
    load_model("path/to/model.Q4_1.gguf")
    load_model((model, tokenizer))                  # already loaded mlx-lm model
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import mlx.nn as nn
from mlx_lm.tokenizer_utils import TokenizerWrapper

from ..errors import ModelLoadError
from .default import DEFAULT_MODEL_NAME, default_model_path
from .gguf import is_gguf_file, load_gguf
from .hub import is_mlx_lm_folder, load_hub

ModelSpec = Union[None, str, os.PathLike, tuple]

__all__ = ["LoadedModel", "ModelSpec", "load_model", "default_model_path", "load_gguf"]


@dataclass(frozen=True)
class LoadedModel:
    """A loaded language model.

    Attributes:
        model: the mlx-lm `nn.Module` (called on token ids `(batch, seq)`, returns logits
            `(batch, seq, vocab)`).
        tokenizer: the mlx-lm TokenizerWrapper (forwards to the Hugging Face tokenizer).
        name: a readable name: repo id, folder name, GGUF `general.name` or file stem.
    """

    model: nn.Module
    tokenizer: TokenizerWrapper
    name: str


def load_model(spec: ModelSpec = None, *, name: str | None = None) -> LoadedModel:
    """Load the model `spec` names.

    Args:
        spec: None or "default" (the embedded default model), a `(model, tokenizer)` pair, a
            path to a `.gguf` file, a local mlx-lm model folder, or a Hugging Face repo id.
        name: overrides the name inferred from `spec`.

    Raises:
        ModelLoadError: the spec names nothing loadable; the message says what to pass instead.
    """
    if spec is None or (isinstance(spec, str) and spec == "default"):
        loaded = _load_default()
    elif isinstance(spec, (tuple, list)):
        loaded = _from_pair(spec)
    elif isinstance(spec, (str, os.PathLike)):
        loaded = _load_path_or_repo(spec)
    else:
        raise ModelLoadError(
            f"Cannot load a model from a {type(spec).__name__}. Pass None/'default', a "
            "(model, tokenizer) pair, a .gguf path, an mlx-lm folder or a Hugging Face repo id."
        )
    if name is not None:
        loaded = LoadedModel(loaded.model, loaded.tokenizer, name)
    return loaded


def _load_default() -> LoadedModel:
    model, tokenizer = load_gguf(default_model_path())
    return LoadedModel(model, tokenizer, DEFAULT_MODEL_NAME)


def _from_pair(pair: tuple) -> LoadedModel:
    if len(pair) != 2 or not isinstance(pair[0], nn.Module):
        raise ModelLoadError(
            "A model pair must be (model, tokenizer) with an mlx.nn.Module model, e.g. the "
            "result of mlx_lm.load(...)."
        )
    model, tokenizer = pair
    return LoadedModel(model, _wrap_tokenizer(tokenizer), _module_name(model))


def _wrap_tokenizer(tokenizer: Any) -> TokenizerWrapper:
    if isinstance(tokenizer, TokenizerWrapper):
        return tokenizer
    if not (hasattr(tokenizer, "encode") and hasattr(tokenizer, "decode")):
        raise ModelLoadError(
            f"The tokenizer of a (model, tokenizer) pair must be an mlx-lm TokenizerWrapper or "
            f"a Hugging Face tokenizer, not {type(tokenizer).__name__}."
        )
    return TokenizerWrapper(tokenizer)


def _module_name(model: nn.Module) -> str:
    return str(getattr(model, "model_type", None) or type(model).__name__)


def _load_path_or_repo(spec: str | os.PathLike) -> LoadedModel:
    path = Path(spec).expanduser()
    if is_gguf_file(path):
        model, tokenizer, metadata = load_gguf(path, return_metadata=True)
        return LoadedModel(model, tokenizer, metadata.get("general.name") or path.stem)
    if path.is_dir() and is_mlx_lm_folder(path):
        model, tokenizer = load_hub(path)
        return LoadedModel(model, tokenizer, path.resolve().name)
    if path.exists():
        raise ModelLoadError(_not_loadable_message(path))
    if path.suffix == ".gguf":
        raise ModelLoadError(f"GGUF file {path} does not exist; check the path.")
    model, tokenizer = load_hub(str(spec))
    return LoadedModel(model, tokenizer, str(spec))


def _not_loadable_message(path: Path) -> str:
    if path.is_file():
        return (
            f"{path} is neither a GGUF file (no GGUF magic bytes) nor an mlx-lm model folder. "
            "Pass a llama.cpp .gguf file, a folder with config.json and *.safetensors, or a "
            "Hugging Face repo id."
        )
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    hint = f" It holds {', '.join(ggufs)}: pass that file's path." if ggufs else ""
    return (
        f"Folder {path} is not an mlx-lm model folder (it has no config.json).{hint} Pass a "
        "folder with config.json, *.safetensors and tokenizer files, a .gguf file or a repo id."
    )
