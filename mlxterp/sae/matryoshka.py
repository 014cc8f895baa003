"""Matryoshka BatchTopK (Bussmann et al. 2025): nested prefixes of the dictionary, each trained to
reconstruct the input on its own.

The codes are BatchTopK's over the whole dictionary; level j decodes only the first
prefixes[j] latents of them, and the loss is the mean of the levels' FVUs. The first latents thus
serve every level and learn the general features; later ones refine.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

from ..errors import SAEError

# Default levels, as fractions of d_hidden (each 4x the last, as in the paper); then the whole.
DEFAULT_FRACTIONS = (1 / 16, 1 / 4)


def resolve_prefixes(prefixes: tuple[int, ...], d_hidden: int, k: int) -> tuple[int, ...]:
    """The levels' widths, ending at d_hidden: `prefixes` (config.matryoshka_prefixes), or when
    empty d_hidden/16 and d_hidden/4 (those of at least k latents); bad sizes raise SAEError."""
    if not prefixes:
        prefixes = tuple(w for w in (int(d_hidden * f) for f in DEFAULT_FRACTIONS) if w >= k)
    if prefixes and prefixes[-1] > d_hidden:
        raise SAEError(f"matryoshka_prefixes {list(prefixes)} go beyond the dictionary's {d_hidden} latents "
                       f"(expansion_factor x d_model): use prefix sizes below {d_hidden}, or raise expansion_factor")
    if any(b <= a for a, b in zip(prefixes, prefixes[1:])) or (prefixes and prefixes[0] < 1):
        raise SAEError(f"matryoshka_prefixes must be positive and strictly increasing, got {list(prefixes)}")
    return tuple(prefixes) if prefixes and prefixes[-1] == d_hidden else tuple(prefixes) + (d_hidden,)


def nested_decode(acts: mx.array, W_dec: mx.array, target: mx.array, prefixes: tuple[int, ...]):
    """(reconstruction of the whole dictionary (n, d), squared error of each level (levels,)).

    `acts` (n, d_hidden) dense codes, `target` what they reconstruct (normalized input - b_dec).
    Each level adds its slice of latents to the last one's sum: one decode in all.
    """
    recon = mx.zeros_like(target)
    errors = []
    for start, stop in zip((0,) + prefixes[:-1], prefixes):
        recon = recon + acts[:, start:stop] @ W_dec[start:stop]
        errors.append(mx.sum(mx.square(target - recon)))
    return recon, mx.stack(errors)


def prefix_fvu(sae: Any, activations: Any, prefixes: tuple[int, ...] | None = None) -> dict[int, float]:
    """FVU of raw `activations` (n, d_model) reconstructed from each prefix of `sae`'s dictionary
    (its inference codes, first latents only): {prefix width: FVU}.

    `prefixes` defaults to those the SAE trained with (metadata "matryoshka_prefixes").
    """
    prefixes = tuple(prefixes or sae.metadata.get("matryoshka_prefixes") or (sae.d_hidden,))
    prefixes = resolve_prefixes(prefixes, sae.d_hidden, 1)
    x = mx.array(activations).reshape(-1, sae.d_model).astype(mx.float32)
    codes, token_norm = sae.encode(x), sae.token_norm(x)
    total = float(mx.sum(mx.square(x - mx.mean(x, axis=0))))
    out = {}
    for width in prefixes:
        recon = sae.decode(mx.where(mx.arange(sae.d_hidden) < width, codes, 0.0), token_norm)
        out[width] = float(mx.sum(mx.square(x - recon))) / total
    return out
