"""Backend checks: fast BLAS on Linux CPU, and which device MLX computes on."""

from __future__ import annotations

import os
import sys
import warnings

import mlx.core as mx

OPENBLAS_PATHS = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
)
INSTALL_HINT = (
    "Install Debian's OpenBLAS (`apt-get install libopenblas0-pthread`) and run through the "
    "`mlxterp` command (or call mlxterp.platform.use_fast_blas() first thing in your script), "
    "or set LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"
)
_REEXEC_GUARD = "MLXTERP_BLAS_REEXEC"


def on_cpu() -> bool:
    """True when MLX computes on the CPU (Linux without CUDA, or a CPU default device)."""
    return mx.default_device() == mx.cpu or not (mx.metal.is_available() or _cuda_available())


def _cuda_available() -> bool:
    cuda = getattr(mx, "cuda", None)
    return bool(cuda and cuda.is_available())


def openblas_path() -> str | None:
    """Path of an installed OpenBLAS that can replace the mlx-cpu wheel's reference BLAS."""
    if not sys.platform.startswith("linux"):
        return None
    return next((p for p in OPENBLAS_PATHS if os.path.exists(p)), None)


def fast_blas_loaded() -> bool:
    """True when Debian's OpenBLAS is mapped into this process (always True off Linux).

    Only the system OpenBLAS counts: numpy's bundled copy (`libscipy_openblas64_`) is mapped
    too once numpy is imported, but MLX never calls it.
    """
    if not sys.platform.startswith("linux"):
        return True
    openblas_dirs = {os.path.dirname(path) for path in OPENBLAS_PATHS}
    try:
        with open("/proc/self/maps") as maps:
            return any(os.path.dirname(line.split()[-1]) in openblas_dirs for line in maps if "/" in line)
    except OSError:
        return False


def reexec_with_fast_blas() -> None:
    """Re-execute this process with OpenBLAS preloaded, when installed and not yet loaded.

    The mlx-cpu wheel links a reference BLAS that runs float32 matmul ~30x slower than the
    hardware allows; preloading OpenBLAS swaps it in.
    """
    path = openblas_path()
    if path is None or fast_blas_loaded() or os.environ.get(_REEXEC_GUARD):
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join(p for p in (path, env.get("LD_PRELOAD", "")) if p)
    env[_REEXEC_GUARD] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(sys.orig_argv), env)


def use_fast_blas() -> None:
    """For entry points (the `mlxterp` command, scripts, examples, benchmarks): on Linux,
    re-execute this process with OpenBLAS preloaded when it is installed and not yet loaded;
    otherwise warn once if MLX is left with the slow reference BLAS. Call it first thing."""
    if sys.platform.startswith("linux") and not fast_blas_loaded():
        reexec_with_fast_blas()
    warn_if_slow_blas()


_WARNED = False


def warn_if_slow_blas() -> None:
    """Warn once per process when MLX on Linux runs on the mlx-cpu wheel's reference BLAS.

    Importing mlxterp has no side effect; a model is created through this check.
    """
    global _WARNED
    if _WARNED or not sys.platform.startswith("linux") or fast_blas_loaded():
        return
    _WARNED = True
    warnings.warn(
        "mlxterp: MLX is using the mlx-cpu wheel's reference BLAS, so float32 matmul runs "
        f"~30x slower than this CPU can. {INSTALL_HINT}.",
        RuntimeWarning,
        stacklevel=3,
    )
