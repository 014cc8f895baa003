"""Starting `mlx.launch --backend ring -n <ranks>` on localhost for a test: free ports, a timeout,
and no process left behind."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("dist_worker.py")
REPO = Path(__file__).parents[2]


def free_ports(count: int) -> int:
    """A first port such that `count` consecutive ports are free now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        if first + count > 65535:
            continue
        try:
            held = []
            for port in range(first, first + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError("no free consecutive ports")


def launch(args: list[str], ranks: int = 2, timeout: float = 420, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run dist_worker.py `args` on `ranks` local ranks; returns the finished launcher (rc, output)."""
    launcher = Path(sys.executable).with_name("mlx.launch")
    cmd = [str(launcher), "--backend", "ring", "-n", str(ranks), "-p", str(free_ports(ranks)),
           "--", sys.executable, str(WORKER), *args]
    run_env = {**os.environ, "PYTHONPATH": str(REPO), "MLXTERP_SAE_STREAMS": "1", **(env or {})}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=run_env,
                            start_new_session=True, cwd=REPO)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise AssertionError(f"mlx.launch did not finish in {timeout} s:\n{output[-4000:]}") from None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # any rank still alive (the group is ours alone)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(cmd, proc.returncode, output)
