"""OpenBLAS handling: entry points re-execute with it preloaded; importing mlxterp does nothing; a model warns once."""

import sys

import pytest

from mlxterp import platform


@pytest.fixture
def slow_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(platform, "fast_blas_loaded", lambda: False)
    monkeypatch.setattr(platform, "openblas_path", lambda: "/usr/lib/libblas-test.so")
    monkeypatch.setattr(platform, "_WARNED", False)
    monkeypatch.delenv("MLXTERP_BLAS_REEXEC", raising=False)
    execs = []
    monkeypatch.setattr(platform.os, "execve", lambda exe, argv, env: execs.append((exe, argv, env)))
    return execs


def test_library_use_warns_once_with_the_fix_and_does_not_reexec(slow_linux):
    with pytest.warns(RuntimeWarning, match="apt-get install libopenblas0-pthread"):
        platform.warn_if_slow_blas()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        platform.warn_if_slow_blas()  # once per process
    assert slow_linux == []


def test_importing_mlxterp_has_no_blas_side_effect():
    """A fresh `import mlxterp` neither re-executes nor warns (entry points and models do that)."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    code = "import mlxterp; print('imported')"
    result = subprocess.run([sys.executable, "-W", "error", "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "imported", result.stderr


def test_entry_points_reexec_with_openblas_preloaded(slow_linux, monkeypatch):
    monkeypatch.setattr(sys, "orig_argv", ["python", "/usr/bin/mlxterp", "train"])
    with pytest.warns(RuntimeWarning):  # execve is stubbed, so the process goes on and warns
        platform.use_fast_blas()
    (exe, argv, env), = slow_linux
    assert argv == ["python", "/usr/bin/mlxterp", "train"]
    assert env["LD_PRELOAD"].startswith("/usr/lib/libblas-test.so")
    assert env["MLXTERP_BLAS_REEXEC"] == "1"  # guards against a re-exec loop


def test_no_reexec_loop(slow_linux, monkeypatch):
    monkeypatch.setenv("MLXTERP_BLAS_REEXEC", "1")
    platform.reexec_with_fast_blas()
    assert slow_linux == []


def test_test_suite_itself_runs_with_fast_blas():
    if platform.openblas_path() is None:
        pytest.skip("OpenBLAS is not installed on this machine")
    assert platform.fast_blas_loaded()


def test_numpy_bundled_openblas_is_not_taken_for_the_fast_one():
    """numpy maps its own OpenBLAS; MLX still uses the reference BLAS unless Debian's is preloaded."""
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux only")
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    code = "import numpy; from mlxterp.platform import fast_blas_loaded; print(fast_blas_loaded())"
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env, capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


AVX512 = {"avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"}


@pytest.mark.parametrize("detected, flags, forced", [
    ("Prescott", AVX512, "SkylakeX"),       # OpenBLAS 0.3.21 on a Xeon newer than it knows
    ("Prescott", {"avx", "avx2", "fma"}, "Haswell"),
    ("Nehalem", {"avx"}, "SandyBridge"),
    ("Zen", AVX512, "SkylakeX"),            # Zen 4 under an OpenBLAS that predates it
    ("Zen", {"avx", "avx2", "fma"}, None),
    ("Cooperlake", AVX512, None),
    ("Haswell", {"avx", "avx2", "fma"}, None),
    ("Prescott", {"sse3"}, None),           # nothing wider to force
    ("SomeFutureCore", AVX512, None),       # unknown targets are left alone
    (None, AVX512, None),
])
def test_wider_openblas_core(detected, flags, forced):
    assert platform.wider_openblas_core(detected, flags) == forced


def test_entry_points_force_the_wider_openblas_target(slow_linux, monkeypatch):
    monkeypatch.setattr(sys, "orig_argv", ["python", "script.py"])
    monkeypatch.setattr(platform, "openblas_core", lambda path: "Prescott")
    monkeypatch.setattr(platform, "cpu_flags", lambda: AVX512)
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    platform.reexec_with_fast_blas()
    (_, _, env), = slow_linux
    assert env["OPENBLAS_CORETYPE"] == "SkylakeX" and env["LD_PRELOAD"].startswith("/usr/lib/libblas-test.so")

    # OpenBLAS already preloaded but narrow: re-exec once with the target only.
    slow_linux.clear()
    monkeypatch.setattr(platform, "fast_blas_loaded", lambda: True)
    monkeypatch.setenv("LD_PRELOAD", "/elsewhere.so")
    platform.reexec_with_fast_blas()
    (_, _, env), = slow_linux
    assert env["OPENBLAS_CORETYPE"] == "SkylakeX" and env["LD_PRELOAD"] == "/elsewhere.so"

    # The user's own OPENBLAS_CORETYPE stands: nothing to redo.
    slow_linux.clear()
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    platform.reexec_with_fast_blas()
    assert slow_linux == []


def test_library_use_warns_about_a_narrow_openblas_target(slow_linux, monkeypatch):
    monkeypatch.setattr(platform, "fast_blas_loaded", lambda: True)
    monkeypatch.setattr(platform, "openblas_core", lambda path: "Prescott")
    monkeypatch.setattr(platform, "cpu_flags", lambda: AVX512)
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    with pytest.warns(RuntimeWarning, match="Prescott kernels.*OPENBLAS_CORETYPE=SkylakeX"):
        platform.warn_if_slow_blas()
    assert slow_linux == []


def test_an_entry_point_runs_the_widest_openblas_target_this_cpu_allows():
    """On this machine, for real: after use_fast_blas() OpenBLAS runs at least as wide a target
    as the CPU's flags allow (Debian's 0.3.21 alone picks SSE3 'Prescott' on recent Xeons)."""
    if platform.openblas_path() is None or not platform.cpu_flags():
        pytest.skip("Linux with Debian's OpenBLAS only")
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "OPENBLAS_CORETYPE", "MLXTERP_BLAS_REEXEC")}
    code = ("from mlxterp import platform as p; p.use_fast_blas(); "
            "print(p.openblas_core(p.openblas_path()))")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    core = result.stdout.strip()
    assert result.returncode == 0 and core, result.stderr
    assert platform.wider_openblas_core(core, platform.cpu_flags()) is None, core
