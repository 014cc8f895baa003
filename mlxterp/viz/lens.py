"""The residual logit lens drawn: a PNG heatmap and a self-contained HTML page (same style as the dashboard)."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..io_utils import atomic_write_text
from .html import VizError, fill_template, read_template, script_json
from .plots import _figure, _save

LENS_KEYS = ("model", "tokens", "layers", "top")


def lens_record(lens: Any, k: int = 5) -> Mapping[str, Any]:
    """The record of a `LogitLens` (its `to_record(k)`) or an existing record, checked."""
    record = lens.to_record(k) if hasattr(lens, "to_record") else lens
    if not isinstance(record, Mapping) or any(key not in record for key in LENS_KEYS):
        raise VizError(
            f"a logit-lens record needs the keys {', '.join(LENS_KEYS)}; pass the result of "
            "mlxterp.lens.residual_logit_lens(model, text) (or its .to_record())"
        )
    shape = (len(record["layers"]), len(record["tokens"]))
    if (len(record["top"]), len(record["top"][0]) if record["top"] else 0) != shape:
        raise VizError(f"the record's 'top' must be layers x positions {shape} lists of [token, prob] pairs")
    return record


_MARKS = {" ": "·", "\n": "↵", "\t": "⇥"}


def _display(token: str) -> str:
    """A token as plot text: whitespace as marks, other unprintable characters escaped (no glyph)."""
    return "".join(_MARKS.get(c, c if c.isprintable() else f"\\x{ord(c):02x}") for c in token) or "∅"


def plot_logit_lens(lens: Any, path: str | os.PathLike, annotate: bool = True) -> Path:
    """Heatmap of each (layer, position)'s top-token probability, annotated with that token,
    input tokens along x, layers along y (last layer on top); saved as a PNG at `path`."""
    record = lens_record(lens, k=1)
    probs = np.array([[cell[0][1] for cell in row] for row in record["top"]], dtype=np.float32)
    n_layers, seq = probs.shape
    fig = _figure(min(2.0 + 0.75 * seq, 24), min(1.5 + 0.28 * n_layers, 16))
    ax = fig.subplots()
    image = ax.imshow(probs, aspect="auto", origin="lower", cmap="Oranges", vmin=0.0, vmax=1.0,
                      interpolation="nearest")
    if annotate:
        for i, row in enumerate(record["top"]):
            for j, cell in enumerate(row):
                ax.text(j, i, _display(cell[0][0])[:8], ha="center", va="center", fontsize=6,
                        color="white" if probs[i, j] > 0.6 else "black")
    ax.set_xticks(range(seq), [_display(t)[:10] for t in record["tokens"]], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n_layers), [str(layer) for layer in record["layers"]], fontsize=7)
    ax.set(xlabel="input token (the lens predicts the token after it)", ylabel="layer",
           title=f"residual logit lens · {record['model']}")
    fig.colorbar(image, ax=ax, label="probability of the top token")
    return _save(fig, path)


def render_logit_lens_page(lens: Any, k: int = 5) -> str:
    """A self-contained HTML page of the lens: the grid of top tokens, top-k on hover."""
    record = lens_record(lens, k)
    return fill_template(
        read_template("lens.html"),
        title=html.escape(f"Logit lens · {record['model']} · mlxterp"),
        css=read_template("style.css"),
        lens_css=read_template("lens.css"),
        data=script_json(dict(record)),
        feature_js=read_template("feature.js"),
        lens_js=read_template("lens.js"),
    )


def write_logit_lens_page(lens: Any, path: str | os.PathLike, k: int = 5) -> Path:
    """Write `render_logit_lens_page(lens, k)` to `path` atomically; returns the path."""
    target = Path(path)
    atomic_write_text(target, render_logit_lens_page(lens, k))
    return target
