"""The ranks of a run under `mlx.launch` (mx.distributed): the group, and the few collectives
mlxterp needs beyond a training step's all_sum.

Outside `mlx.launch` the group has one rank and every function here is a no-op, so a script
runs unchanged on one process. Everything goes through `mx.distributed`; see docs/distributed.md.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, Callable, TypeVar

import mlx.core as mx

from .errors import DistributedError

# Seconds a rank waits for the others to connect before it gives up (ring backend: rank 0
# listens; the ranks that connect give up on their own after MLX's ~30 s of retries).
TIMEOUT_ENV = "MLXTERP_DISTRIBUTED_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0

T = TypeVar("T")
_GROUP: mx.distributed.Group | None = None


def group() -> mx.distributed.Group:
    """The group of this run: every rank under `mlx.launch`, else a group of one.

    Initialized once per process. A rank that cannot reach the others within
    MLXTERP_DISTRIBUTED_TIMEOUT seconds (default 60) raises DistributedError instead of hanging.
    """
    global _GROUP
    if _GROUP is None:
        _GROUP = _init(float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    return _GROUP


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes files, logs and shows progress."""
    return group().rank() == 0


def _init(timeout: float) -> mx.distributed.Group:
    timed_out = []
    alarm = "MLX_RANK" in os.environ and threading.current_thread() is threading.main_thread() and timeout > 0
    if alarm:
        # MLX holds the GIL while it waits in accept(); the signal interrupts that call.
        previous = signal.signal(signal.SIGALRM, lambda *_: timed_out.append(True))
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        return mx.distributed.init()
    except RuntimeError as error:
        rank = os.environ.get("MLX_RANK", "?")
        reason = f"waited {timeout:g} s" if timed_out else str(error)
        raise DistributedError(
            f"rank {rank} could not reach the other ranks of the distributed run ({reason}; hosts: "
            f"{_hosts()}). Start every rank together with mlx.launch (e.g. `mlx.launch --hosts "
            "ip1,ip2 -- mlxterp train ...`), check that the hosts can reach each other on those ports "
            f"(firewall, same network), or give slow starts more time with {TIMEOUT_ENV}=<seconds>"
        ) from None
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def _hosts() -> str:
    path = os.environ.get("MLX_HOSTFILE")
    if not path:
        return "none given"
    try:
        with open(path) as f:
            return " ".join(f.read().split()) or "none given"
    except OSError:
        return f"unreadable hostfile {path}"


def run_on_main(fn: Callable[[], T], what: str) -> T | None:
    """`fn()` on rank 0 (None on the others); if it raises there, every rank raises.

    Without it a failure on rank 0 (a refused checkpoint, a full disk) would leave the other
    ranks waiting for it in their next collective.
    """
    g = group()
    if g.size() == 1:
        return fn()
    result, error = None, None
    if g.rank() == 0:
        try:
            result = fn()
        except Exception as exc:  # re-raised below, after the other ranks learn of it
            error = exc
    failed = mx.distributed.all_sum(mx.array(error is not None, dtype=mx.int32), group=g).item()
    if error is not None:
        raise error
    if failed:
        raise DistributedError(f"rank 0 failed while {what} (its error is in its output); this rank stops too")
    return result


def broadcast(arrays: dict[str, mx.array]) -> dict[str, mx.array]:
    """Rank 0's values of `arrays` (same names, shapes and dtypes on every rank), on every rank."""
    g = group()
    if g.size() == 1:
        return arrays
    main = g.rank() == 0
    out = {name: mx.distributed.all_sum(value if main else mx.zeros_like(value), group=g)
           for name, value in sorted(arrays.items())}
    mx.eval(out)
    return out


def broadcast_value(value: Any) -> Any:
    """Rank 0's float (or None) on every rank."""
    if group().size() == 1:
        return value
    flag_and_value = mx.array([value is not None, 0.0 if value is None else value], dtype=mx.float32)
    known, number = broadcast({"v": flag_and_value})["v"].tolist()
    return number if known else None


def total(count: int) -> int:
    """The sum of an integer over the ranks (e.g. tokens per epoch)."""
    g = group()
    if g.size() == 1:
        return count
    return int(mx.distributed.all_sum(mx.array(count, dtype=mx.int64), group=g).item())
