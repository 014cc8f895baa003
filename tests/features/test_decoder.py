"""Decoder analysis: logit lens, cosine similarity, nearest and diverse features, random baseline."""

import mlx.core as mx
import numpy as np
import pytest

from mlxterp.errors import SAEError
from mlxterp.features import (
    cosine_similarity,
    diverse_features,
    feature_directions,
    logit_lens,
    logit_lens_many,
    nearest_features,
    random_baseline,
    similar_features,
)


def test_logit_lens_equals_a_manual_unembed_of_the_decoder_row(tiny, tiny_sae):
    lens = logit_lens(tiny_sae, 7, tiny, k=5)
    hidden = tiny.final_norm(tiny_sae.W_dec[7])
    logits = np.array(hidden @ tiny.model.model.embed_tokens.weight.T)  # the tiny llama ties its unembedding
    order = np.argsort(-logits)
    assert lens.top_ids == order[:5].tolist()
    np.testing.assert_allclose([v for _, v in lens.top], logits[order[:5]], rtol=1e-5)
    np.testing.assert_allclose([v for _, v in lens.bottom], logits[order[::-1][:5]], rtol=1e-5)
    assert [t for t, _ in lens.top] == [tiny.tokenizer.decode([int(i)]) for i in order[:5]]
    z = (logits.max() - logits.mean()) / logits.std()
    assert lens.peakiness == pytest.approx(z, rel=1e-4)
    assert lens.to_dict()["top"][0] == [lens.top[0][0], round(lens.top[0][1], 4)]
    assert tiny_sae.logit_lens(7, k=5).top_ids == lens.top_ids  # the SAE method, on the attached model


def test_logit_lens_many_chunks_agree_with_one_at_a_time(tiny, tiny_sae, monkeypatch):
    import mlxterp.features.decoder as decoder

    monkeypatch.setattr(decoder, "CHUNK", 3)
    many = logit_lens_many(tiny_sae, [0, 5, 9, 11, 2], tiny, k=4)
    assert [m.feature for m in many] == [0, 5, 9, 11, 2]
    for m in many:
        assert m.top_ids == logit_lens(tiny_sae, m.feature, tiny, k=4).top_ids


def test_directions_follow_the_input_normalization(tiny, make_sae):
    sae = make_sae(tiny, normalization="standardize")
    sae.norm_stats = {"mean": mx.full((tiny.d_model,), 0.5), "std": mx.linspace(0.5, 2.0, tiny.d_model)}
    direction = feature_directions(sae, [4])[0]
    np.testing.assert_allclose(np.array(direction), np.array(sae.W_dec[4] * sae.norm_stats["std"]), atol=1e-6)
    x = mx.random.normal((3, tiny.d_model), key=mx.random.key(1))
    codes = sae.encode(x)
    bumped = codes + mx.zeros_like(codes).at[:, 4].add(2.5)
    np.testing.assert_allclose(np.array(sae.decode(bumped) - sae.decode(codes)),
                               np.array(mx.broadcast_to(2.5 * direction, (3, tiny.d_model))), atol=1e-5)


def test_cosine_similarity_and_nearest_features(tiny_sae):
    w = np.array(tiny_sae.W_dec)
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    full = cosine_similarity(tiny_sae)
    np.testing.assert_allclose(full, w @ w.T, atol=1e-5)
    np.testing.assert_allclose(cosine_similarity(tiny_sae, [3, 4], [1, 2, 3]), (w @ w.T)[[3, 4]][:, [1, 2, 3]], atol=1e-5)
    near = nearest_features(tiny_sae, 3, n=4)
    expected = [j for j in np.argsort(-(w @ w[3])) if j != 3][:4]
    assert [j for j, _ in near] == expected
    np.testing.assert_allclose([c for _, c in near], (w @ w[3])[expected], atol=1e-5)
    assert similar_features(tiny_sae, [3])[0][:4] == near
    assert tiny_sae.nearest_features(3, n=4) == near


def test_diverse_features_are_pairwise_below_the_threshold(tiny_sae):
    picked = diverse_features(tiny_sae, 10, max_cosine=0.2)
    assert len(picked) == len(set(picked)) == 10
    cos = np.abs(cosine_similarity(tiny_sae, picked, picked))
    assert (cos[~np.eye(10, dtype=bool)] < 0.2).all()
    ordered = diverse_features(tiny_sae, 3, max_cosine=1.01, candidates=[9, 4, 7, 1])
    assert ordered == [9, 4, 7]  # candidates are tried in order
    assert len(diverse_features(tiny_sae, 500, max_cosine=0.05)) < 500  # fewer when no more fit


def test_random_baseline_equals_a_numpy_recomputation(tiny, tiny_sae):
    baseline = random_baseline(tiny_sae, tiny, n=50, seed=3)
    # The same seeded unit directions, read through the final norm and unembedding by hand.
    vectors = np.array(mx.random.normal((50, tiny_sae.d_model), key=mx.random.key(3)), dtype=np.float64)
    vectors /= np.linalg.norm(vectors, axis=-1, keepdims=True)
    logits = np.array(tiny.unembed(mx.array(vectors.astype(np.float32))), dtype=np.float64)
    peakiness = (logits.max(-1) - logits.mean(-1)) / logits.std(-1)
    np.testing.assert_allclose(baseline.peakiness, peakiness, rtol=1e-4)
    decoder = np.array(tiny_sae.W_dec, dtype=np.float64)
    decoder /= np.linalg.norm(decoder, axis=-1, keepdims=True)
    np.testing.assert_allclose(baseline.max_cosine, np.abs(vectors @ decoder.T).max(-1), rtol=1e-4)
    assert f"{peakiness.mean():.2f} ± {peakiness.std():.2f}" in str(baseline)
    assert not np.allclose(random_baseline(tiny_sae, tiny, n=50, seed=4).peakiness, peakiness)


def test_decoder_errors(tiny, tiny_sae, make_sae):
    with pytest.raises(SAEError, match="feature -1 does not exist"):
        logit_lens(tiny_sae, -1, tiny)
    with pytest.raises(SAEError, match="at least 1"):
        random_baseline(tiny_sae, tiny, n=0)
    wrong = make_sae(tiny)
    wrong.metadata["model_name"] = "gpt2"
    with pytest.raises(SAEError, match="trained on 'gpt2', not on 'llama'"):
        logit_lens(wrong, 0, tiny)
