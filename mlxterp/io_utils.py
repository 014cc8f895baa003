"""Atomic file writing: a file is either the old good one or the complete new one."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows: stale temporaries are recognised by age alone
    fcntl = None

# A temporary younger than this is never removed, even when unlocked: it may belong to a writer
# that has created it and not yet locked it (or, without fcntl, one that is still writing).
STALE_TEMP_AGE_S = 300


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    The temporary (`.<name>.XXXXXXXX.tmp`) is locked while its writer lives; temporaries of the
    same target left by killed writers (unlocked and older than STALE_TEMP_AGE_S) are removed
    first.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield Path(tmp)
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        if os.path.isfile(tmp):
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)


def remove_stale_temporaries(target: Path, max_age_s: float = STALE_TEMP_AGE_S) -> list[Path]:
    """Remove the temporaries of `target` that no live writer holds (see `atomic_path`)."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.[A-Za-z0-9_]{{8}}\.tmp")
    removed = []
    now = time.time()
    try:
        candidates = [p for p in target.parent.iterdir() if pattern.fullmatch(p.name)]
    except OSError:
        return removed
    for tmp in candidates:
        try:
            if not tmp.is_file() or now - tmp.stat().st_mtime < max_age_s:
                continue
            with open(tmp, "rb") as handle:
                if fcntl is not None:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while its writer lives
                tmp.unlink()
            removed.append(tmp)
        except OSError:  # locked (BlockingIOError), gone already, or not ours to remove
            continue
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
