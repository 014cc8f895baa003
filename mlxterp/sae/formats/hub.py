"""SAEs on the Hugging Face hub: a release of releases.json (a packaged table of Gemma Scope
releases, taken from SAELens' pretrained_saes.yaml) with an SAE id, or any "org/repo" with the
subfolder holding the SAE. Downloads only that folder, with huggingface_hub."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from ...errors import SAEError

RELEASES_FILE = Path(__file__).with_name("releases.json")
REPO_NAME = re.compile(r"[\w.-]+/[\w.-]+")
# A missing local file, not a repository ("runs/sae.mlx").
FILE_SUFFIXES = (".mlx", ".safetensors", ".npz", ".json", ".pt", ".bin")


@lru_cache(maxsize=1)
def releases() -> dict[str, dict[str, Any]]:
    return json.loads(RELEASES_FILE.read_text(encoding="utf-8"))["releases"]


def is_hub_name(name: str) -> bool:
    """True when `name` (not a local path) names a release or a hub repository."""
    return name in releases() or (bool(REPO_NAME.fullmatch(name)) and not name.lower().endswith(FILE_SUFFIXES))


def fetch(name: str, sae_id: str | None, subfolder: str | None) -> tuple[Path, dict[str, Any]]:
    """(local folder, source metadata) of the hub SAE `name` (release + sae_id, or repo + subfolder)."""
    table = releases()
    if name in table:
        release = table[name]
        if sae_id is None or sae_id not in release["saes"]:
            ids = sorted(release["saes"])
            raise SAEError(f"release {name!r} has no SAE id {sae_id!r}: pass one of its {len(ids)} ids, e.g. "
                           f"{', '.join(ids[:4])}")
        repo, folder = release["repo_id"], release["saes"][sae_id]
        source = {"release": name, "sae_id": sae_id, "model_name": release["model"]}
    else:
        repo, folder = name, (subfolder or sae_id or "").strip("/")
        source = {"repo_id": name, "subfolder": folder or None}
    try:
        from huggingface_hub import snapshot_download

        root = snapshot_download(repo_id=repo, allow_patterns=[f"{folder}/*"] if folder else None)
    except Exception as exc:
        raise SAEError(
            f"could not fetch {repo}{'/' + folder if folder else ''} from the Hugging Face hub "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}): check the network connection "
            "(and that HF_HUB_OFFLINE is unset), or download the folder yourself and pass its local path"
        ) from None
    local = Path(root) / folder
    if not local.is_dir():
        raise SAEError(f"{repo} has no folder {folder!r}: check the subfolder name on the hub")
    return local, source
