"""Texts -> token contexts -> activations of a hook point: packing, the norm limit, the store and cache.

With tracing, the only stage that runs the language model to produce data.
"""

from .contexts import ContextSettings, Contexts, keep_mask, pack_texts, special_token_ids
from .norm_limit import norm_limit, within_limit, within_limits
from .store import ActivationStore

__all__ = [
    "ActivationStore",
    "ContextSettings",
    "Contexts",
    "keep_mask",
    "norm_limit",
    "pack_texts",
    "special_token_ids",
    "within_limit",
    "within_limits",
]
