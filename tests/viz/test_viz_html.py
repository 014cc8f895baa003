"""Feature pages: escaping of hostile token text, embedded data, validation, atomic writing."""

import json
import re

import numpy as np
import pytest

from mlxterp.errors import MlxterpError
from mlxterp.viz import VizError, render_feature_page, write_feature_page
from mlxterp.viz.html import META_KEYS, read_template, script_json
from viz_factory import TRICKY_TOKENS, make_dashboard_data

DATA = make_dashboard_data(20)
RECORD = DATA["features"][3]


def embedded(page, name):
    """The JSON value assigned to window.<name> in the page."""
    literal = re.search(rf"<script>window\.{name} = (.*?);</script>", page, re.S).group(1)
    return json.loads(literal)


def test_no_token_text_reaches_the_html_unescaped():
    page = render_feature_page(RECORD, DATA)
    template = read_template("page.html")
    for tag in ("<script", "</script", "<!--", "<img", "<b>"):
        assert page.lower().count(tag) == template.lower().count(tag), tag


def test_title_is_html_escaped():
    page = render_feature_page(RECORD, DATA)
    assert "<title>Feature 3 · feature &lt;b&gt;3&lt;/b&gt; &amp; &quot;friends&quot; · mlxterp</title>" in page


def test_embedded_record_round_trips_and_meta_is_trimmed():
    payload = embedded(render_feature_page(RECORD, DATA), "MLXTERP_FEATURE")
    assert payload["record"] == json.loads(json.dumps(RECORD))
    assert set(payload["meta"]) == set(META_KEYS)
    tokens = {t for ex in payload["record"]["top_examples"] for t in ex["tokens"]}
    assert tokens & set(TRICKY_TOKENS)


def test_template_markers_in_data_are_not_expanded():
    record = dict(RECORD, label="{{css}} {{feature_js}}")
    page = render_feature_page(record, {})
    assert page.count(":root {") == 1
    assert embedded(page, "MLXTERP_FEATURE")["record"]["label"] == "{{css}} {{feature_js}}"


def test_script_json_escapes_markup_and_accepts_numpy():
    text = script_json({"t": "</script><!--&\u2028", "v": np.float32(1.5), "a": np.arange(3)})
    assert text.isascii() and "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"t": "</script><!--&\u2028", "v": 1.5, "a": [0, 1, 2]}


def test_missing_keys_are_named():
    record = {k: v for k, v in RECORD.items() if k not in ("logit_lens", "similar")}
    with pytest.raises(VizError, match="lacks logit_lens, similar") as info:
        render_feature_page(record, DATA)
    assert isinstance(info.value, MlxterpError) and isinstance(info.value, ValueError)
    with pytest.raises(VizError, match="must be a dict"):
        render_feature_page([1, 2], DATA)


def test_write_feature_page_is_atomic(tmp_path):
    path = write_feature_page(RECORD, DATA, tmp_path / "pages" / "feature_3.html")
    assert path.read_text(encoding="utf-8") == render_feature_page(RECORD, DATA)
    assert sorted(p.name for p in path.parent.iterdir()) == ["feature_3.html"]
