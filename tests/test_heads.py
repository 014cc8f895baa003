"""Head-level activation patching and induction-head scores."""

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InterpretableModel
from mlxterp.errors import TraceError
from mlxterp.heads import head_patching, induction_scores, repeated_random_tokens, top_heads
from mlxterp.patching import activation_patching, token_log_prob
from tiny_models import byte_tokenizer, tiny_model


@pytest.fixture(scope="module")
def model():
    return InterpretableModel((tiny_model("llama", seed=1), byte_tokenizer()))


def test_head_patching_per_head_and_per_position(model):
    result = head_patching(model, "abcd", "abxd", progress=False)
    assert result.recovery.shape == (model.n_layers, 4)
    assert result.component == "heads"
    per_position = head_patching(model, "abcd", "abxd", layers=[0, 2], per_position=True, progress=False)
    assert per_position.recovery.shape == (2, 4, 4)
    # Before the corrupted token (position 2) the runs agree, so patching a head there does nothing.
    np.testing.assert_allclose(per_position.recovery[:, :, :2], 0.0, atol=1e-4)
    # In the last layer a head's output reaches the metric (last position) only at its own
    # position: patching it everywhere is patching it at the last position.
    np.testing.assert_allclose(per_position.recovery[1, :, 3], result.recovery[2], atol=1e-4)
    assert np.any(np.abs(result.recovery) > 1e-3)


def test_batched_head_patching_equals_patching_one_head_alone(model):
    result = head_patching(model, "abcd", "abxd", layers=[1], per_position=True, progress=False)
    with model.trace("abcd"):
        clean = model.layers[1].self_attn.heads.save()
        clean_logits = model.output.save()
    metric = token_log_prob(int(mx.argmax(clean_logits.value[0, -1]).item()))
    with model.trace("abxd"):
        model.layers[1].self_attn.heads[2].set(clean.value[:, 3:4, 2], positions=3)
        logits = model.output.save()
    alone = (float(metric(logits.value)) - result.corrupted_metric) / (result.clean_metric - result.corrupted_metric)
    assert result.recovery[0, 2, 3] == pytest.approx(alone, abs=1e-4)


def test_with_one_head_head_patching_is_attention_patching():
    from mlx_lm.models import llama

    from tiny_models import FAMILY_ARGS

    args = llama.ModelArgs.from_dict(dict(FAMILY_ARGS["llama"], num_attention_heads=1, num_key_value_heads=1))
    mx.random.seed(4)
    network = llama.Model(args)
    network.set_dtype(mx.float32)
    one_head = InterpretableModel((network, byte_tokenizer()))
    heads = head_patching(one_head, "abcd", "abxd", progress=False)
    attn = activation_patching(one_head, "abcd", "abxd", component="attn")
    assert heads.recovery.shape == (one_head.n_layers, 1)
    np.testing.assert_allclose(heads.recovery[:, 0], attn.recovery, atol=1e-4)


def test_head_patching_errors(model):
    with pytest.raises(TraceError, match="same number of tokens"):
        head_patching(model, "abc", "abcd", progress=False)
    with pytest.raises(TraceError, match="out of range"):
        head_patching(model, "abc", "abd", layers=[7], progress=False)
    with pytest.raises(TraceError, match="undefined"):
        head_patching(model, "abc", "abc", progress=False)


def test_top_heads_orders_by_score():
    scores = np.array([[0.1, 0.9], [0.5, 0.2]])
    assert top_heads(scores, 3) == [(0, 1, 0.9), (1, 0, 0.5), (1, 1, 0.2)]


def test_induction_scores_read_the_pattern_at_the_induction_offset(model):
    result = induction_scores(model, seq_len=6, n_sequences=3, seed=1)
    tokens = result.tokens
    assert tokens.shape == (3, 12)  # the byte tokenizer has no BOS
    np.testing.assert_array_equal(tokens[:, :6], tokens[:, 6:])
    assert result.scores.shape == (model.n_layers, 4)
    with model.trace(mx.array(tokens)):
        pattern = model.layers[1].self_attn.pattern.save()
    p = np.asarray(pattern)
    by_hand = np.mean([p[:, :, q, q - 5] for q in range(6, 12)], axis=0).mean(0)
    np.testing.assert_allclose(result.scores[1], by_hand, atol=1e-6)
    previous = np.mean([p[:, :, q, q - 1] for q in range(2, 12)], axis=0).mean(0)
    np.testing.assert_allclose(result.previous_token[1], previous, atol=1e-6)
    assert result.top(2)[0][2] == result.scores.max()


def test_random_tokens_skip_special_ids_and_start_with_bos():
    class Tok:
        all_special_ids = [0, 1, 2]
        bos_token_id = 1

    class Fake:
        tokenizer, vocab_size = Tok(), 6

    tokens = repeated_random_tokens(Fake(), seq_len=50, n_sequences=4, seed=0)
    assert tokens.shape == (4, 101) and np.all(tokens[:, 0] == 1)
    assert set(np.unique(tokens[:, 1:])) <= {3, 4, 5}


def test_induction_score_arguments_are_checked(model):
    with pytest.raises(TraceError, match="seq_len must be an int >= 2"):
        induction_scores(model, seq_len=1)


@pytest.mark.slow
def test_the_default_models_induction_heads_copy(default_model_pair):
    """SmolLM2's top induction heads (docs/causal.md) do the copying: zeroing them raises the loss
    on the repeated copy of random tokens, not on the first copy; zeroing 5 random heads does not."""
    pair = default_model_pair
    model = InterpretableModel(pair.model, pair.tokenizer, name=pair.name)
    result = induction_scores(model, seq_len=40, n_sequences=4)
    top = [(layer, head) for layer, head, _ in result.top(5)]
    assert result.top(1)[0][2] > 0.5 and result.previous_token.max() > 0.5
    others = [(i // 9, i % 9) for i in range(270) if (i // 9, i % 9) not in top]
    random = [others[i] for i in np.random.default_rng(0).choice(len(others), 5, replace=False)]
    tokens = mx.array(result.tokens)

    def losses(heads):
        """Mean next-token loss over the first and over the second copy, with `heads` zeroed."""
        with model.trace(tokens):
            for layer, head in heads:
                model.layers[layer].self_attn.heads[head].zero()
            logits = model.output.save()
        logp = logits.value[:, :-1].astype(mx.float32)
        nll = -(mx.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0] - mx.logsumexp(logp, axis=-1))
        return float(nll[:, 1:40].mean()), float(nll[:, -39:].mean())

    (first, second), (first_top, second_top), (_, second_random) = losses([]), losses(top), losses(random)
    assert second_top - second > 3.0 and abs(first_top - first) < 0.5
    assert second_random - second < 1.0
