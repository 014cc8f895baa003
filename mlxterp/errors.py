"""Exception types: every message says what was wrong and how to fix it."""


class MlxterpError(Exception):
    """Base class of mlxterp's errors."""


class ModelLoadError(MlxterpError, ValueError):
    """A model or tokenizer could not be loaded (missing, foreign or unsupported file)."""


class TraceError(MlxterpError, ValueError):
    """A trace was asked for something that does not exist or cannot be done."""


class NotSavedError(TraceError, KeyError):
    """`trace.activations[path]` for a module whose value the trace did not keep."""

    __str__ = Exception.__str__  # KeyError would print the message as a quoted repr


class SAEError(MlxterpError, ValueError):
    """An SAE, its config, its training data or its file is invalid."""


class DataError(MlxterpError, ValueError):
    """A dataset is empty, too short, or of a kind mlxterp cannot read."""


class ContextLengthWarning(UserWarning):
    """An input or a generation runs past the model's context length."""


class DistributedError(MlxterpError, RuntimeError):
    """The ranks of a distributed run (mlx.launch) cannot reach each other or disagree."""
