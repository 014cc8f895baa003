"""The residual logit lens: every layer's residual through the final norm and unembedding, drawn."""

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterpretableModel
from mlxterp.errors import TraceError
from mlxterp.lens import residual_logit_lens
from mlxterp.viz import VizError
from mlxterp.viz.lens import plot_logit_lens, render_logit_lens_page, write_logit_lens_page
from tiny_models import byte_tokenizer, tiny_model


@pytest.fixture(scope="module")
def model():
    return InterpretableModel((tiny_model("llama", seed=6), byte_tokenizer()))


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])  # tied, soft-capped, GPT-2's ln_f
def test_the_last_layers_lens_is_the_models_logits(family):
    model = InterpretableModel((tiny_model(family), byte_tokenizer()))
    lens = residual_logit_lens(model, "the lens")
    with model.trace("the lens"):
        logits = model.output.save()
    assert lens.logits.shape == (model.n_layers, 8, model.vocab_size)
    np.testing.assert_allclose(np.asarray(lens.logits[-1]), np.asarray(logits[0]), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(lens.logits[0]), np.asarray(logits[0]), atol=1e-2)


def test_each_layer_is_that_layers_residual_unembedded(model):
    ids = model.encode("hi!")
    lens = residual_logit_lens(model, ids, layers=[1, -3])
    assert lens.layers == [1, 0] and lens.tokens == ["h", "i", "!"]
    with model.trace(ids):
        resid = model.layers[1].output.save()
    norm = model.final_norm(resid.value[0])
    by_hand = norm @ model.embedding.weight.T  # llama ties the unembedding to the embedding
    np.testing.assert_allclose(np.asarray(lens.logits[0]), np.asarray(by_hand), rtol=1e-5, atol=1e-5)


def test_top_tokens_and_ranks(model):
    lens = residual_logit_lens(model, "abcab")
    ids, probs = lens.top(3)
    assert ids.shape == probs.shape == (model.n_layers, 5, 3)
    assert np.all(np.diff(probs, axis=-1) <= 0)
    full = np.asarray(lens.probabilities())
    np.testing.assert_allclose(probs[..., 0], full.max(-1), rtol=1e-6)
    ranks = lens.rank_of_next()
    nxt = np.array(lens.token_ids[1:])
    expected = (full[:, :-1] > full[:, np.arange(4), nxt][..., None]).sum(-1)
    np.testing.assert_array_equal(ranks, expected)
    record = lens.to_record(k=2)
    assert record["tokens"] == list("abcab") and len(record["top"][0][0]) == 2
    assert record["top"][2][4][0][0] == model.tokenizer.decode([int(ids[2, 4, 0])])


def test_lens_errors(model):
    with pytest.raises(TraceError, match="takes one text, got 2"):
        residual_logit_lens(model, ["a", "b"])
    with pytest.raises(TraceError, match="out of range"):
        residual_logit_lens(model, "a", layers=[3])
    with pytest.raises(TraceError, match="layers is empty"):
        residual_logit_lens(model, "a", layers=[])
    with pytest.raises(TraceError, match="positive int"):
        residual_logit_lens(model, "a").top(0)


def test_plot_and_page(model, tmp_path):
    lens = residual_logit_lens(model, "a <b>")
    png = plot_logit_lens(lens, tmp_path / "lens.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = write_logit_lens_page(lens, tmp_path / "lens.html").read_text()
    assert page.count("<script>") == 3 and "Logit lens" in page
    record = lens.to_record()
    record["tokens"][0] = "</script><img src=x onerror=alert(1)>"  # a hostile token reaches no markup
    page = render_logit_lens_page(record)
    assert "<img" not in page and "\\u003c/script\\u003e\\u003cimg" in page
    assert render_logit_lens_page(lens.to_record(3), k=3) == render_logit_lens_page(lens, k=3)


def test_bad_records_are_refused(tmp_path):
    with pytest.raises(VizError, match="needs the keys model, tokens, layers, top"):
        plot_logit_lens({"tokens": []}, tmp_path / "x.png")
    with pytest.raises(VizError, match=r"layers x positions \(1, 2\)"):
        render_logit_lens_page({"model": "m", "tokens": ["a", "b"], "layers": [0], "top": [[[["a", 1.0]]]]})
    assert not (tmp_path / "x.png").exists()
