"""mlxterp: interpretability for MLX language models (tracing, SAEs, features, steering)."""

from .platform import configure_blas

configure_blas()

from .model import InterpretableModel  # noqa: E402

__version__ = "0.1.0"
__all__ = ["InterpretableModel", "__version__"]
