"""Static feature dashboard (index.html + data.js, works from file://) and a localhost server for it."""

from __future__ import annotations

import errno
import functools
import html
import os
import socket
import threading
import webbrowser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Mapping

from ..io_utils import atomic_write_text
from .html import VizError, fill_template, read_template, script_json, validate_record

DATA_KEYS = ("features", "density_histogram")


def _validate_data(data: Mapping[str, Any]) -> None:
    if not isinstance(data, Mapping) or any(key not in data for key in DATA_KEYS):
        raise VizError(
            "dashboard data must be a dict with 'features' and 'density_histogram' (plus model, layer, ...); "
            "build it with mlxterp.features.report.collect_dashboard_data(...)"
        )
    for record in data["features"]:
        validate_record(record)


def write_dashboard(data: dict, out_dir: str | os.PathLike) -> Path:
    """Write the dashboard for `data` (see docs/architecture.md) into `out_dir`; returns its index.html.

    The data goes to `data.js` as a global, so the page also works opened straight from disk.
    """
    _validate_data(data)
    out = Path(out_dir)
    atomic_write_text(out / "data.js", f"window.MLXTERP_DASHBOARD = {script_json(data)};\n")
    title = " · ".join(str(part) for part in (data.get("model"), "features · mlxterp") if part)
    index = out / "index.html"
    atomic_write_text(index, fill_template(
        read_template("dashboard.html"),
        title=html.escape(title),
        css=read_template("style.css"),
        feature_js=read_template("feature.js"),
        dashboard_js=read_template("dashboard.js"),
    ))
    return index


class _QuietHandler(SimpleHTTPRequestHandler):
    """Serves one folder without logging each request, and tells browsers not to cache re-written files."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()


class DashboardServer:
    """A running dashboard server (daemon thread). `url`, `port`; `close()` or use as a context manager."""

    def __init__(self, httpd: ThreadingHTTPServer, host: str):
        self.httpd = httpd
        self.host = host
        self.port: int = httpd.server_address[1]
        self.url = f"http://{host}:{self.port}/"
        self.thread = threading.Thread(target=httpd.serve_forever, name=f"mlxterp-dashboard-{self.port}", daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop serving and free the port."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

    def wait(self) -> None:
        """Block until Ctrl-C, then stop the server."""
        try:
            while self.thread.is_alive():
                self.thread.join(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.close()

    def __enter__(self) -> "DashboardServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DashboardServer({self.url!r})"


def check_port(port: int, host: str = "127.0.0.1") -> None:
    """Raise a VizError unless `port` is a valid port number free on `host` (0: any free port)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise VizError(f"port must be a whole number from 0 to 65535 (0 = any free port), got {port!r}")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise VizError(
                f"port {port} on {host} is already in use; pass another port, e.g. port={port + 1}, "
                "or port=0 to let the system pick a free one"
            ) from exc


def serve_dashboard(
    out_dir: str | os.PathLike, port: int = 8000, host: str = "127.0.0.1", open_browser: bool = False
) -> DashboardServer:
    """Serve a folder written by `write_dashboard` on `host:port` in a background thread.

    `port=0` picks any free port (read it from `server.port` / `server.url`).
    """
    folder = Path(out_dir)
    if folder.is_file():
        folder = folder.parent
    if not (folder / "index.html").is_file():
        raise VizError(f"{folder} has no index.html; write the dashboard first with write_dashboard(data, {str(folder)!r})")
    check_port(port, host)
    handler = functools.partial(_QuietHandler, directory=str(folder))
    httpd = ThreadingHTTPServer((host, port), handler)
    server = DashboardServer(httpd, host)
    if open_browser:
        webbrowser.open(server.url)
    return server
