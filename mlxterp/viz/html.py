"""Self-contained HTML pages for one feature record (inline CSS/JS, no network, works from file://)."""

from __future__ import annotations

import functools
import html
import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from ..errors import MlxterpError
from ..io_utils import atomic_write_text

RECORD_KEYS = (
    "index", "label", "frequency", "mean_activation", "max_activation", "histogram",
    "top_examples", "quantile_examples", "logit_lens", "similar",
)
META_KEYS = ("model", "layer", "component", "d_model", "d_hidden", "n_tokens")
_MARKER = re.compile(r"\{\{(\w+)\}\}")
# Inside a <script>, "</script>" or "<!--" in a string would end or confuse the element; these
# characters only occur inside JSON strings, where their \u escapes mean the same.
_SCRIPT_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"))


class VizError(MlxterpError, ValueError):
    """Dashboard data or a feature record is malformed, or the dashboard cannot be served."""


@functools.lru_cache(maxsize=None)
def read_template(name: str) -> str:
    """The text of `mlxterp/viz/templates/<name>`."""
    return resources.files("mlxterp.viz").joinpath("templates", name).read_text(encoding="utf-8")


def fill_template(template: str, **parts: str) -> str:
    """Replace each `{{name}}` marker in one pass, so text put in is never searched for markers."""
    return _MARKER.sub(lambda m: parts[m.group(1)], template)


def _jsonable(value: Any) -> Any:
    """numpy/mlx scalars and arrays as plain Python values (json's `default` hook)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def script_json(value: Any) -> str:
    """`value` as an ASCII JavaScript literal that is safe inside an HTML <script> element."""
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=_jsonable)
    for char, escape in _SCRIPT_ESCAPES:  # str.replace is much faster than str.translate on large text
        text = text.replace(char, escape)
    return text


def validate_record(record: Mapping[str, Any]) -> None:
    """Raise VizError unless `record` has every key of the feature-record contract."""
    if not isinstance(record, Mapping):
        raise VizError(
            f"a feature record must be a dict, got {type(record).__name__}; build records with "
            "mlxterp.features.report.collect_dashboard_data(...)"
        )
    missing = [key for key in RECORD_KEYS if key not in record]
    if missing:
        raise VizError(
            f"feature record {record.get('index', '?')} lacks {', '.join(missing)}; records must follow the "
            "'Feature records' contract in docs/architecture.md (see collect_dashboard_data)"
        )


def _page_title(record: Mapping[str, Any]) -> str:
    """'Feature 12 · label · mlxterp' (plain text)."""
    label = f" · {record['label']}" if record.get("label") else ""
    return f"Feature {record['index']}{label} · mlxterp"


def render_feature_page(record: dict, meta: dict) -> str:
    """The HTML page of one feature record; `meta` gives model/layer/component (other keys are ignored)."""
    validate_record(record)
    meta_part = {key: meta[key] for key in META_KEYS if key in (meta or {})}
    return fill_template(
        read_template("page.html"),
        title=html.escape(_page_title(record)),
        css=read_template("style.css"),
        data=script_json({"record": record, "meta": meta_part}),
        feature_js=read_template("feature.js"),
    )


def write_feature_page(record: dict, meta: dict, path: str | os.PathLike) -> Path:
    """Write `render_feature_page(record, meta)` to `path` atomically; returns the path."""
    target = Path(path)
    atomic_write_text(target, render_feature_page(record, meta))
    return target
