"""From an SAE to pages a person reads: one feature's page, or the whole dashboard served locally."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..features.report import collect_dashboard_data
from ..sae.checks import check_feature, resolve_model
from .dashboard import DashboardServer, check_port, serve_dashboard, write_dashboard
from .html import write_feature_page

if TYPE_CHECKING:
    from ..model import InterpretableModel
    from ..sae.model import SAE


def visualize_feature(
    sae: "SAE",
    feature_idx: int,
    model: "InterpretableModel | None" = None,
    dataset: Any = None,
    path: str | os.PathLike | None = None,
    **options,
) -> Path:
    """Write feature `feature_idx`'s self-contained HTML page (default `feature_<idx>.html`).

    One scan over `dataset` for this feature only; `options` are `collect_dashboard_data`'s
    (n_tokens, top_k, window, ...). `model` None uses `sae.attached_model`. Returns the path.
    """
    feature = check_feature(sae, feature_idx)
    data = collect_dashboard_data(sae, resolve_model(sae, model), dataset, feature_indices=[feature], **options)
    return write_feature_page(data["features"][0], data, path or f"feature_{feature}.html")


def launch_dashboard(
    sae: "SAE",
    model: "InterpretableModel | None" = None,
    dataset: Any = None,
    out_dir: str | os.PathLike | None = None,
    port: int = 8000,
    block: bool = True,
    host: str = "127.0.0.1",
    open_browser: bool = False,
    **options,
) -> DashboardServer:
    """Scan `dataset`, write the feature dashboard into `out_dir` (None: a new temporary folder)
    and serve it on localhost:`port` (0: any free port; a port in use raises VizError before
    the scan, which may take minutes).

    With `block` it serves until Ctrl-C; otherwise it returns the running DashboardServer
    (`.url`, `.close()`). `options` are `collect_dashboard_data`'s (n_features, n_tokens, ...).
    """
    check_port(port, host)
    data = collect_dashboard_data(sae, resolve_model(sae, model), dataset, **options)
    folder = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="mlxterp-dashboard-"))
    write_dashboard(data, folder)
    server = serve_dashboard(folder, port=port, host=host, open_browser=open_browser)
    print(f"mlxterp dashboard: {server.url}  (files in {folder})")
    if block:
        print("Serving until Ctrl-C.")
        server.wait()
    return server
