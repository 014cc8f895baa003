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
# OpenBLAS x86-64 targets (lower-case OPENBLAS_CORETYPE names) by SIMD width: 3 AVX-512, 2 AVX2,
# 1 AVX, 0 SSE only; and the widest target each width can force, with the CPU flags it needs.
_CORE_WIDTH = {
    **dict.fromkeys(("sapphirerapids", "cooperlake", "skylakex"), 3),
    **dict.fromkeys(("haswell", "zen"), 2),
    **dict.fromkeys(("sandybridge", "bulldozer", "piledriver", "steamroller", "excavator"), 1),
    **dict.fromkeys(("prescott", "core2", "penryn", "dunnington", "nehalem", "atom", "nano",
                     "barcelona", "bobcat", "opteron", "opteron_sse3", "katmai", "coppermine",
                     "northwood", "banias"), 0),
}
_FORCED_CORES = (
    (3, "SkylakeX", {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"}),
    (2, "Haswell", {"avx2", "fma"}),
    (1, "SandyBridge", {"avx"}),
)


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


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def openblas_core(path: str) -> str | None:
    """The target OpenBLAS at `path` picked for this CPU (e.g. "Haswell"), loading it if needed."""
    import ctypes

    try:
        get = ctypes.CDLL(path).openblas_get_corename
    except (OSError, AttributeError):
        return None
    get.restype = ctypes.c_char_p
    name = get()
    return name.decode() if name else None


def wider_openblas_core(detected: str | None, flags: set[str]) -> str | None:
    """The OPENBLAS_CORETYPE to force when OpenBLAS picked a narrower SIMD target than the CPU
    runs, else None.

    An OpenBLAS older than the CPU model falls back to a generic target: Debian 12's 0.3.21 runs
    its SSE3 "Prescott" sgemm on a recent AVX-512 Xeon, ~5x the work of its "SkylakeX" one.
    Unknown target names are left alone.
    """
    width = _CORE_WIDTH.get((detected or "").lower())
    if width is None:
        return None
    for forced_width, name, needs in _FORCED_CORES:
        if needs <= flags:
            return name if forced_width > width else None
    return None


def forced_openblas_core(path: str) -> str | None:
    """The OPENBLAS_CORETYPE this process should run OpenBLAS at `path` with (None: as it is)."""
    if os.environ.get("OPENBLAS_CORETYPE"):
        return None  # the user's choice stands
    return wider_openblas_core(openblas_core(path), cpu_flags())


def reexec_with_fast_blas() -> None:
    """Re-execute this process with OpenBLAS preloaded, when installed and not yet loaded (or
    loaded with a narrower SIMD target than the CPU runs, see `wider_openblas_core`).

    The mlx-cpu wheel links a reference BLAS that runs float32 matmul ~30x slower than the
    hardware allows; preloading OpenBLAS swaps it in.
    """
    path = openblas_path()
    if path is None or os.environ.get(_REEXEC_GUARD):
        return
    loaded = fast_blas_loaded()  # before _forced_core, which loads it
    core = forced_openblas_core(path)
    if loaded and core is None:
        return
    env = dict(os.environ)
    if core is not None:
        env["OPENBLAS_CORETYPE"] = core
    if not loaded:
        env["LD_PRELOAD"] = ":".join(p for p in (path, env.get("LD_PRELOAD", "")) if p)
    env[_REEXEC_GUARD] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(sys.orig_argv), env)


def use_fast_blas() -> None:
    """For entry points (the `mlxterp` command, scripts, examples, benchmarks): on Linux,
    re-execute this process with OpenBLAS preloaded when it is installed and not yet loaded;
    otherwise warn once if MLX is left with the slow reference BLAS. Call it first thing."""
    if sys.platform.startswith("linux"):
        reexec_with_fast_blas()
    warn_if_slow_blas()


_WARNED = False


def warn_if_slow_blas() -> None:
    """Warn once per process when MLX on Linux runs on the mlx-cpu wheel's reference BLAS, or
    on OpenBLAS with a narrower SIMD target than the CPU runs.

    Importing mlxterp has no side effect; a model is created through this check.
    """
    global _WARNED
    if _WARNED or not sys.platform.startswith("linux"):
        return
    if not fast_blas_loaded():
        message = ("MLX is using the mlx-cpu wheel's reference BLAS, so float32 matmul runs ~30x "
                   f"slower than this CPU can. {INSTALL_HINT}")
    else:
        path = openblas_path()
        core = forced_openblas_core(path) if path else None
        if core is None:
            return
        message = (f"OpenBLAS picked its {openblas_core(path)} kernels, narrower than this CPU runs, so "
                   f"float32 matmul does several times the work. Set OPENBLAS_CORETYPE={core} before "
                   "starting Python, or call mlxterp.platform.use_fast_blas() first thing")
    _WARNED = True
    warnings.warn(f"mlxterp: {message}.", RuntimeWarning, stacklevel=3)
