"""atomic_path: temporaries of killed writers are removed by the next write; live writers' are not."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlxterp.io_utils import STALE_TEMP_AGE_S, atomic_path, atomic_write_text

WRITER = """
import sys, time
from mlxterp.io_utils import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("from the slow writer")
    print(tmp, flush=True)
    time.sleep(float(sys.argv[2]))
"""


def start_writer(target: Path, seconds: float) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(seconds)], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))
    tmp = Path(proc.stdout.readline().strip())
    assert tmp.parent == target.parent and tmp.name.startswith(f".{target.name}.") and tmp.exists()
    return proc, tmp


def age(path: Path, seconds: float = STALE_TEMP_AGE_S + 60) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "sae.mlx"
    proc, orphan = start_writer(target, 60)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert orphan.exists() and not target.exists()  # what a kill mid-write leaves
    young = tmp_path / f".{target.name}.abcd1234.tmp"
    young.write_text("just created by another writer")
    other = tmp_path / ".notes.txt.abcd1234.tmp"
    other.write_text("another target's")
    for path in (orphan, other):
        age(path)
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert not orphan.exists()
    assert young.exists() and other.exists()  # too young to judge; not this target's
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["sae.mlx", young.name, other.name])


def test_a_live_writers_temporary_survives_a_concurrent_write(tmp_path):
    target = tmp_path / "sae.mlx"
    proc, live = start_writer(target, 3)
    age(live)  # old, but locked by its writer
    atomic_write_text(target, "the quick writer")
    assert live.exists() and target.read_text() == "the quick writer"
    assert proc.wait(timeout=30) == 0
    assert target.read_text() == "from the slow writer" and not live.exists()  # last one wins, whole


def test_a_failed_write_still_leaves_nothing(tmp_path):
    target = tmp_path / "x.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
