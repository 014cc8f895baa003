"""Attention patterns, queries/keys and per-head outputs, recomputed for every supported family."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlxterp import InterpretableModel
from mlxterp.errors import TraceError
from tiny_models import FAMILY_ARGS, byte_tokenizer, tiny_model

# The first text runs past gemma3_text's sliding window (32 tokens); the second is padded.
TEXTS = ["a text longer than the sliding window of thirty-two tokens!", "short one"]


def attn(model, layer):
    return model.module(model.hook_point(layer, "attn").path)


def by_hand(q, k, family, layer):
    """softmax(q k^T / sqrt(d) + mask) in float64 numpy, from the saved queries and keys."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    k = np.repeat(k, q.shape[1] // k.shape[1], axis=1)  # grouped KV heads
    scores = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1])
    if family == "gemma2":
        scores = 50.0 * np.tanh(scores / 50.0)  # mlx-lm's default attn_logit_softcapping
    i, j = np.arange(q.shape[2])[:, None], np.arange(k.shape[2])[None]
    allowed = j <= i
    if family == "gemma3_text" and (layer + 1) % FAMILY_ARGS[family]["sliding_window_pattern"]:
        allowed &= i - j < FAMILY_ARGS[family]["sliding_window"]
    scores = np.where(allowed, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    return probs / probs.sum(-1, keepdims=True)


@pytest.mark.parametrize("family", list(FAMILY_ARGS))
def test_patterns_are_softmax_of_the_saved_queries_and_keys(family):
    model = InterpretableModel((tiny_model(family), byte_tokenizer()))
    with model.trace(TEXTS) as trace:
        saved = [(attn(model, l).queries.save(), attn(model, l).keys.save(), attn(model, l).pattern.save())
                 for l in range(model.n_layers)]
        logits = model.output.save()
    with model.trace(TEXTS):
        fused = model.output.save()
    # The forward that computed the patterns gives the fused forward's logits.
    np.testing.assert_allclose(np.asarray(logits), np.asarray(fused), rtol=1e-5, atol=1e-5)

    mask = np.asarray(trace.mask).astype(bool)
    real = mask[:, None, :, None] & mask[:, None, None, :]
    for layer, (q, k, pattern) in enumerate(saved):
        pattern = np.asarray(pattern)
        assert pattern.shape == (2, q.shape[1], mask.shape[1], mask.shape[1])
        pads = ~np.broadcast_to(real, pattern.shape)
        expected = np.where(pads, 0.0, by_hand(q, k, family, layer))
        np.testing.assert_allclose(pattern, expected, atol=2e-6, err_msg=f"{family} layer {layer}")
        rows = pattern.sum(-1)  # (batch, heads, query)
        np.testing.assert_allclose(rows[np.broadcast_to(mask[:, None, :], rows.shape)], 1.0, atol=1e-5)
        assert np.all(pattern[pads] == 0.0)  # pads: no row, no column


def test_sliding_window_layers_see_only_the_window():
    model = InterpretableModel((tiny_model("gemma3_text"), byte_tokenizer()))
    with model.trace(TEXTS[0]):
        local, global_ = attn(model, 0).pattern.save(), attn(model, 1).pattern.save()
    last = len(model.encode(TEXTS[0])) - 1
    window = FAMILY_ARGS["gemma3_text"]["sliding_window"]
    assert np.all(np.asarray(local)[0, :, last, : last - window + 1] == 0)
    assert np.all(np.asarray(global_)[0, :, last, : last - window + 1] > 0)


def test_saved_queries_are_the_rotated_projections():
    model = InterpretableModel((tiny_model("llama"), byte_tokenizer()))
    with model.trace("rotary positions"):
        x = model.layers[1].self_attn.input.save()
        q = model.layers[1].self_attn.queries.save()
    module = model.layers[1].self_attn.module
    heads = module.q_proj(x.value).reshape(1, x.shape[1], module.n_heads, -1).transpose(0, 2, 1, 3)
    rotated = nn.RoPE(heads.shape[-1], base=FAMILY_ARGS["llama"]["rope_theta"])(heads)
    np.testing.assert_allclose(np.asarray(q), np.asarray(rotated), atol=1e-5)


@pytest.fixture(scope="module")
def model():
    return InterpretableModel((tiny_model("llama", seed=2), byte_tokenizer()))


def test_heads_are_the_output_projections_input(model):
    with model.trace(TEXTS) as trace:
        heads = model.layers[2].self_attn.heads.save()
        head1 = model.layers[2].self_attn.heads[1].save()
        out = model.layers[2].self_attn.output.save()
    z = heads.value
    assert z.shape == (2, trace.mask.shape[1], 4, 16)  # (batch, seq, heads, head_dim)
    projected = model.layers[2].self_attn.module.o_proj(z.reshape(*z.shape[:2], -1))
    np.testing.assert_allclose(np.asarray(projected), np.asarray(out), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(head1), np.asarray(z[:, :, 1]))


def test_head_edits_touch_one_head_at_the_given_positions(model):
    with model.trace("edit one head"):
        clean = model.layers[1].self_attn.heads.save()
        clean_logits = model.output.save()
    with model.trace("edit one head"):
        model.layers[1].self_attn.heads[2].zero(positions=[-1])
        model.layers[1].self_attn.heads[0].scale(0.5)
        edited = model.layers[1].self_attn.heads.save()
        logits = model.output.save()
    a, b = np.asarray(clean), np.asarray(edited)
    assert np.all(b[:, -1, 2] == 0) and np.any(a[:, -1, 2] != 0)
    np.testing.assert_array_equal(b[:, :-1, 2], a[:, :-1, 2])
    np.testing.assert_allclose(b[:, :, 0], 0.5 * a[:, :, 0], rtol=1e-6)
    np.testing.assert_array_equal(b[:, :, [1, 3]], a[:, :, [1, 3]])
    assert not np.allclose(np.asarray(logits), np.asarray(clean_logits))


def test_patching_every_head_equals_patching_the_attention_output(model):
    with model.trace("abcd"):
        heads = model.layers[1].self_attn.heads.save()
        out = model.layers[1].self_attn.output.save()
    with model.trace("abxd"):
        for h in range(4):
            model.layers[1].self_attn.heads[h].set(heads.value[:, :, h])
        by_heads = model.output.save()
    with model.trace("abxd"):
        model.layers[1].self_attn.output.set(out.value)
        by_output = model.output.save()
    np.testing.assert_allclose(np.asarray(by_heads), np.asarray(by_output), atol=1e-5)


def test_head_edits_in_generation_match_the_uncached_forward(model):
    def ablate(m):
        m.layers[1].self_attn.heads[3].zero()

    with model.generate("hello", max_tokens=5, stop_at_eos=False) as gen:
        ablate(model)
        cached = model.layers[2].self_attn.heads.save()
    ids = model.encode("hello") + gen.tokens[:-1]
    with model.trace(ids):
        ablate(model)
        uncached = model.layers[2].self_attn.heads.save()
    with model.trace(ids):
        plain = model.layers[2].self_attn.heads.save()
    # The KV-cached steps (with explicit attention) compute what one forward over the text does.
    np.testing.assert_allclose(np.asarray(cached), np.asarray(uncached), atol=1e-5)
    assert not np.allclose(np.asarray(uncached), np.asarray(plain), atol=1e-3)


def test_bad_requests_are_refused_with_the_fix(model):
    with pytest.raises(TraceError, match=r"head 4 is out of range: .* has 4 heads \(valid: 0..3"):
        with model.trace("x"):
            model.layers[0].self_attn.heads[4].zero()
    with pytest.raises(TraceError, match="head -5 is out of range"):
        with model.trace("x"):
            model.layers[0].self_attn.heads[-5].save()
    with pytest.raises(TraceError, match="one head number"):
        with model.trace("x"):
            model.layers[0].self_attn.heads["1"].save()
    with pytest.raises(TraceError, match=r"can be saved, not edited: .*model.layers\[0\].self_attn.heads\[0\].zero\(\)"):
        with model.trace("x"):
            model.layers[0].self_attn.pattern.zero()
    with pytest.raises(TraceError, match="belongs to attention modules.*model.layers.0.mlp"):
        with model.trace("x"):
            model.layers[0].mlp.pattern.save()
    with pytest.raises(TraceError, match="not during generation"):
        with model.generate("x", max_tokens=2) as gen:
            model.layers[0].self_attn.pattern.save()
        gen.text
    with pytest.raises(TraceError, match="only available inside"):
        model.layers[0].self_attn.pattern.save()


class ForeignAttention(nn.Module):
    """An attention module mlxterp does not know how to recompute."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def __call__(self, x, mask=None, cache=None):
        return self.inner(x, mask, cache)


def test_an_unsupported_attention_family_names_the_supported_ones():
    network = tiny_model("llama")
    network.model.layers[0].self_attn = ForeignAttention(network.model.layers[0].self_attn)
    model = InterpretableModel((network, byte_tokenizer()))
    with pytest.raises(TraceError, match=r"not available for 'model.layers.0.self_attn' \(ForeignAttention.*"
                                         r"llama, mistral, qwen2, .*gpt_neox"):
        with model.trace("x"):
            model.layers[0].self_attn.pattern.save()
    with model.trace("x"):  # its other layers are still llama's
        assert model.layers[1].self_attn.pattern.save() is not None
