"""The logit-lens page in real headless Chromium: the grid, the hover detail, no injected markup."""

import pytest

from mlxterp.viz.lens import write_logit_lens_page
from viz_cdp import CHROMIUM, Browser

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium); the browser test needs it"
)

HOSTILE = "<img src=x onerror=window.lensPwned=1>"
RECORD = {
    "model": "tiny", "tokens": ["The", " cat", HOSTILE], "layers": [0, 1],
    "top": [[[[" dog", 0.5], [" a", 0.2]], [[HOSTILE, 0.9], [" b", 0.1]], [["!", 0.3], ["?", 0.2]]],
            [[[" cat", 0.8], [" a", 0.1]], [[" sat", 0.4], [" b", 0.3]], [["!", 0.6], ["?", 0.2]]]],
}


def test_the_page_draws_the_grid_and_the_hovered_cells_top_tokens(tmp_path):
    page = write_logit_lens_page(RECORD, tmp_path / "lens.html")
    browser = Browser()
    try:
        browser.goto(page.as_uri())
        browser.wait_for("document.querySelectorAll('table.lens td').length === 6")
        cells = browser.evaluate("[...document.querySelectorAll('table.lens td')].map(td => td.textContent)")
        assert cells == ["·dog", HOSTILE.replace(" ", "·"), "!", "·cat", "·sat", "!"]
        # Cells whose top token is the next input token are framed: layer 0 at " cat", layer 1 at "The".
        hits = browser.evaluate("[...document.querySelectorAll('table.lens td.hit')].map(td => td.textContent)")
        assert hits == [HOSTILE.replace(" ", "·"), "·cat"]
        browser.evaluate("document.querySelectorAll('table.lens td')[4].dispatchEvent(new Event('mouseenter'))")
        detail = browser.evaluate("document.querySelector('.lens-detail').textContent")
        assert "layer 1 · position 1" in detail and "·sat40%·b30%" in detail
        assert browser.evaluate("document.querySelectorAll('main img').length") == 0
        assert browser.evaluate("typeof window.lensPwned") == "undefined"
        assert browser.errors == []
    finally:
        browser.close()
