"""The dashboard and a feature page in real headless Chromium: rendering, routing, sorting, search, no script injection."""

import json
from pathlib import Path

import pytest

from mlxterp.viz import serve_dashboard, write_dashboard, write_feature_page
from viz_cdp import CHROMIUM, Browser
from viz_factory import PWNED_CHECK, make_dashboard_data

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium); the browser test needs it"
)

N_FEATURES = 50
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
VISIBLE = {" ": "·", "\n": "↵", "\t": "⇥", "\r": "␍", "\u00a0": "⍽"}
ROWS = "document.querySelectorAll('#feature-list tbody tr[data-index]')"


def visible(token):
    return "".join(VISIBLE.get(ch, ch) for ch in token) or "∅"


@pytest.fixture(scope="module")
def data():
    return make_dashboard_data(N_FEATURES)


@pytest.fixture(scope="module")
def site(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dashboard")
    write_dashboard(data, folder)
    with serve_dashboard(folder, port=0) as server:
        yield folder, server


@pytest.fixture(scope="module")
def browser():
    chrome = Browser()
    yield chrome
    chrome.close()


@pytest.fixture
def page(browser):
    """The browser, with errors cleared before the test and checked after it."""
    browser.errors.clear()
    yield browser
    assert browser.errors == [], f"console errors: {browser.errors}"


def matching(data, query):
    """Indices of the features whose label, logit-lens tokens or example text contain `query` (lower case)."""
    found = []
    for f in data["features"]:
        examples = f["top_examples"] + [ex for band in f["quantile_examples"] for ex in band["examples"]]
        lens = f["logit_lens"]["top"] + f["logit_lens"]["bottom"]
        texts = [f["label"] or ""] + [token for token, _ in lens] + ["".join(ex["tokens"]) for ex in examples]
        if any(query in text.lower() for text in texts):
            found.append(f["index"])
    return found


def search(page, query):
    """Clear the search box, then type `query` into it."""
    page.evaluate("(() => { const s = document.getElementById('search'); s.value = ''; s.dispatchEvent(new Event('input')); })()")
    page.type_text("#search", query)


def assert_nothing_injected(page):
    """No element came from token text, and no injected handler ran (given a moment for an image error to fire)."""
    assert page.evaluate("document.querySelectorAll('main script, main img, #feature-list img').length") == 0
    ran = page.evaluate(f"new Promise(done => setTimeout(() => done(typeof {PWNED_CHECK}), 150))")
    assert ran == "undefined"


def open_feature(page, url, index):
    page.goto(f"{url}#feature={index}")
    page.wait_for(f"document.querySelector('#detail h1')?.textContent === 'Feature {index}'")


def test_list_renders_every_feature_and_the_density_histogram(page, site, data):
    page.goto(site[1].url)
    assert page.wait_for(f"{ROWS}.length === {N_FEATURES}")
    assert page.evaluate(f"[...{ROWS}].map(r => Number(r.dataset.index))") == list(range(N_FEATURES))
    assert page.evaluate("document.getElementById('count').textContent") == f"{N_FEATURES} of {N_FEATURES} features"
    bars = page.evaluate("document.querySelectorAll('#detail .density rect.bar').length")
    assert bars == len(data["density_histogram"]["counts"])


def test_hash_opens_a_feature_with_its_examples_and_no_injected_markup(page, site, data):
    record = data["features"][3]
    open_feature(page, site[1].url, 3)
    examples = page.evaluate("[...document.querySelectorAll('#detail .top-examples .ex-tokens')].map(e => e.textContent)")
    assert examples == ["".join(visible(t) for t in ex["tokens"]) for ex in record["top_examples"]]
    bands = page.evaluate("document.querySelectorAll('#detail .quantiles .example').length")
    assert bands == sum(len(b["examples"]) for b in record["quantile_examples"])
    assert_nothing_injected(page)
    assert page.evaluate("document.querySelector('#detail .flabel').textContent") == record["label"]
    peak = record["top_examples"][0]
    assert page.evaluate("document.querySelector('#detail .top-examples .tok.peak').dataset.act") == f"{peak['max_activation']:.4g}"
    assert page.evaluate("document.querySelector('#feature-list tr.selected').dataset.index") == "3"


def test_clicking_a_row_and_a_similar_feature_opens_them(page, site, data):
    page.goto(site[1].url)
    page.wait_for(f"{ROWS}.length === {N_FEATURES}")
    page.click("#feature-list tbody tr[data-index='7']")
    page.wait_for("document.querySelector('#detail h1')?.textContent === 'Feature 7'")
    assert page.evaluate("location.hash") == "#feature=7"
    target = data["features"][7]["similar"][0][0]
    page.click("#detail .similar a")
    page.wait_for(f"document.querySelector('#detail h1')?.textContent === 'Feature {target}'")


def test_sorting_and_search(page, site, data):
    page.goto(site[1].url)
    page.wait_for(f"{ROWS}.length === {N_FEATURES}")
    page.click("#feature-list th[data-sort='max']")
    by_max = sorted(data["features"], key=lambda f: (-f["max_activation"], f["index"]))
    page.wait_for(f"{ROWS}[0].dataset.index === '{by_max[0]['index']}'")
    assert page.evaluate(f"[...{ROWS}].map(r => Number(r.dataset.index))") == [f["index"] for f in by_max]

    for query, expected in (("#12", [12]), ("FRIENDS", matching(data, "friends")), ("no-such-text", [])):
        search(page, query)
        page.wait_for(f"{ROWS}.length === {len(expected)}")
    query = "<script>window"
    expected = matching(data, query.lower())
    assert 0 < len(expected) < N_FEATURES
    search(page, query)
    page.wait_for(f"{ROWS}.length === {len(expected)}")
    assert page.evaluate(f"[...{ROWS}].map(r => Number(r.dataset.index))") == sorted(expected, key=lambda i: -data["features"][i]["max_activation"])


def test_screenshot_of_a_feature(page, site):
    open_feature(page, site[1].url, 3)
    page.screenshot(ARTIFACTS / "dashboard.png")
    assert (ARTIFACTS / "dashboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dashboard_works_from_a_file_url(page, site):
    open_feature(page, (site[0] / "index.html").as_uri(), 5)
    assert page.evaluate(f"{ROWS}.length") == N_FEATURES


def test_standalone_feature_page_from_a_file_url(page, data, tmp_path):
    record = data["features"][4]
    path = write_feature_page(record, data, tmp_path / "feature.html")
    page.goto(path.as_uri())
    assert page.wait_for("document.querySelector('h1')?.textContent") == "Feature 4"
    assert_nothing_injected(page)
    logits = page.evaluate("[...document.querySelectorAll('.logits.pos .chip')].map(c => c.textContent)")
    assert logits == [visible(t) for t, _ in record["logit_lens"]["top"]]
    assert json.loads(page.evaluate("JSON.stringify(window.MLXTERP_FEATURE.record)")) == json.loads(json.dumps(record))
