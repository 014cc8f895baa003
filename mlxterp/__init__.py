"""mlxterp: interpretability for MLX language models (tracing, SAEs, features, steering)."""

from .platform import warn_if_slow_blas

warn_if_slow_blas()

from .model import InterpretableModel  # noqa: E402

__version__ = "0.1.0"
__all__ = ["InterpretableModel", "__version__"]
