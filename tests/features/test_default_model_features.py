"""On SmolLM2: train a small SAE at a late layer, find a feature whose logit lens names a word, steer it."""

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterpretableModel, SAEConfig
from mlxterp.features import compare_generations, logit_lens_many, steer

LAYER = 24
PROMPTS = ["The weather today is", "I went to the market and", "Once upon a time there was a", "He opened the door and"]
STRENGTH = 60.0  # code units; the SAE's inputs are scaled to norm ~ sqrt(d_model) = 24

pytestmark = pytest.mark.slow


def word(token: str) -> str:
    return token.strip().lower()


def word_feature(sae):
    """The live feature whose top-10 logit-lens tokens hold the most spellings of one word, and that word."""
    best = (0, None, None)
    for lens in logit_lens_many(sae, range(sae.d_hidden), k=10):
        words = [word(t) for t, _ in lens.top]
        for w in set(words):
            if len(w) >= 2 and w.isalpha() and words.count(w) > best[0]:
                best = (words.count(w), lens, w)
    return best


def concept_probability(model, sae, prompt, strength):
    """Next-token probability mass, at the end of `prompt`, of every vocabulary token spelling the word."""
    with model.trace(prompt):
        if strength:
            steer(sae, model, feature_idx=sae.test_feature, strength=strength)
        logits = model.output.save()
    probs = mx.softmax(logits.value[0, -1].astype(mx.float32))
    return float(mx.sum(probs[mx.array(sae.test_ids)]))


@pytest.fixture(scope="module")
def smollm(default_model_pair):
    return InterpretableModel(default_model_pair.model, default_model_pair.tokenizer, name=default_model_pair.name)


def test_steering_a_word_feature_raises_that_words_probability(smollm, tmp_path_factory):
    config = SAEConfig(expansion_factor=2, k=8, batch_size=256, context_length=128, num_epochs=8,
                       checkpoint_every=None, validation_split=0.0, warmup_steps=10)
    sae = smollm.train_sae(layer=LAYER, component="output", config=config, max_tokens=4000,
                           cache_dir=tmp_path_factory.mktemp("acts"), progress=False)
    count, lens, target = word_feature(sae)
    assert count >= 3, f"no feature's logit lens names one word: best {lens}"
    vocab = [smollm.tokenizer.decode([i]) for i in range(smollm.vocab_size)]
    sae.test_feature = lens.feature
    sae.test_ids = [i for i, t in enumerate(vocab) if word(t) == target]

    before = np.array([concept_probability(smollm, sae, p, 0.0) for p in PROMPTS])
    after = np.array([concept_probability(smollm, sae, p, STRENGTH) for p in PROMPTS])
    print(f"feature {lens.feature} ({target!r}): {lens}\nP(word) before {before.round(4)} after {after.round(4)}")
    assert after.mean() > 20 * before.mean() and (after > before).all()

    # Pushed hard enough (a few times the strength above at most), the generated text fills with
    # the feature's logit-lens tokens; how hard depends on which word feature this SAE learned.
    gains = []
    for strength in (STRENGTH, 2 * STRENGTH, 4 * STRENGTH):
        comparison = compare_generations(smollm, PROMPTS[0], lambda: steer(sae, smollm, feature_idx=lens.feature,
                                                                            strength=strength), max_tokens=20)
        print(strength, comparison)
        hits = [sum(t in lens.top_ids for t in tokens) for tokens in (comparison.baseline_tokens, comparison.edited_tokens)]
        gains.append(hits[1] - hits[0])
        if gains[-1] >= 5:
            break
    assert max(gains) >= 5, f"steering never filled the generation with the feature's tokens: gains {gains}"
