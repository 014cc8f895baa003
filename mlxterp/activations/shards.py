"""Sharded capture and cache identity: which documents a rank captures, and refusing a cache
directory written for other activations.

Under `mlx.launch` each rank captures the activations of its own share of the training documents
into its own cache directory; the validation documents are split off before, so they are the
same set whatever the number of ranks.
"""

from __future__ import annotations

import heapq
import json
from pathlib import Path
from typing import Any, Sequence

from ..errors import DataError

# Manifest entries that say which activations a cache holds; a cache is read only if all match.
CACHE_IDENTITY = ("model", "model_fingerprint", "hook", "contexts", "seed", "d_model")


def document_share(texts: Sequence[str], rank: int, ranks: int) -> list[str]:
    """The documents rank `rank` of `ranks` captures, in their order in `texts`.

    Deterministic, by document: longest first, each goes to the rank holding the fewest
    characters so far (ties to the lower rank), so the shares hold about as many tokens.
    One rank gets every document.
    """
    if ranks == 1:
        return list(texts)
    if len(texts) < ranks:
        raise DataError(f"{len(texts)} training documents cannot be shared among {ranks} ranks (each "
                        "rank captures whole documents): add documents or run fewer ranks")
    loads = [(0, r) for r in range(ranks)]
    owner = [0] * len(texts)
    for i in sorted(range(len(texts)), key=lambda i: (-len(texts[i]), i)):
        load, r = heapq.heappop(loads)
        owner[i] = r
        heapq.heappush(loads, (load + len(texts[i]), r))
    return [text for text, r in zip(texts, owner) if r == rank]


def check_cache_identity(manifest: dict[str, Any], expected: dict[str, Any], cache_dir: Path) -> None:
    """Refuse a cache whose manifest names other activations than `expected` (never mix them)."""
    expected = json.loads(json.dumps(expected))  # compare as the manifest spells it (lists, not tuples)
    differ = [key for key in CACHE_IDENTITY if manifest.get(key) != expected.get(key)]
    if differ:
        details = "; ".join(f"{key} {manifest.get(key)!r} (this run: {expected.get(key)!r})" for key in differ)
        raise DataError(f"the activation cache {cache_dir} was written for other activations: {details}. "
                        "Pass another cache_dir, or delete that folder to capture these activations afresh")
