"""Synthetic dashboard data following the feature-record contract, with hostile token text."""

import numpy as np

# Every feature's examples contain these: markup, entities, quotes, whitespace and a template marker.
TRICKY_TOKENS = [
    "<script>window.__pwned=1</script>",
    "<img src=x onerror=\"window.__pwned=2\">",
    "&amp;",
    "\"quoted\"",
    "'",
    "\n",
    " leading",
    "  ",
    "\t",
    "</script><!--",
    "{{css}}",
    "\u2028",
    "é🙂",
    "",
]
WORDS = [" the", " cat", " sat", " on", " mat", ".", " and", " ran", " away", " fast", " dog", " New", " York"]
PWNED_CHECK = "window.__pwned"


def make_example(rng, max_activation, length=16):
    tokens = list(rng.choice(WORDS, size=length - 4)) + list(rng.choice(TRICKY_TOKENS, size=4, replace=False))
    rng.shuffle(tokens)
    acts = np.where(rng.random(length) < 0.3, rng.random(length) * max_activation, 0.0)
    peak = int(rng.integers(length))
    acts[peak] = max_activation
    return {"tokens": [str(t) for t in tokens], "activations": acts.round(4).tolist(), "peak": peak,
            "max_activation": float(max_activation)}


def make_record(index, rng, n_features):
    max_act = float(round(rng.uniform(1.0, 20.0), 3))
    frequency = 0.0 if index % 17 == 16 else float(10 ** rng.uniform(-5, -1))
    counts, edges = np.histogram(rng.gamma(2.0, max_act / 6, size=200).clip(0, max_act), bins=20)
    fired = frequency > 0
    tops = [max_act] + sorted((round(max_act * f, 3) for f in rng.uniform(0.6, 1.0, size=4)), reverse=True) if fired else []
    return {
        "index": index,
        "label": None if index % 3 else f"feature <b>{index}</b> & \"friends\"",
        "frequency": frequency,
        "mean_activation": round(max_act / 3, 4) if fired else 0.0,
        "max_activation": max_act if fired else 0.0,
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()} if fired else {"edges": [], "counts": []},
        "top_examples": [make_example(rng, a) for a in tops],
        "quantile_examples": [
            {"label": f"{lo:.0%}–{hi:.0%} of max", "examples": [make_example(rng, max_act * (lo + hi) / 2) for _ in range(2)]}
            for lo, hi in ((0.5, 0.75), (0.25, 0.5))
        ] if fired else [],
        "logit_lens": {
            "top": [[str(t), round(float(v), 3)] for t, v in zip(rng.choice(TRICKY_TOKENS + WORDS, 5), sorted(rng.uniform(0.5, 3, 5))[::-1])],
            "bottom": [[str(t), round(float(-v), 3)] for t, v in zip(rng.choice(WORDS, 5), sorted(rng.uniform(0.5, 3, 5))[::-1])],
        },
        "similar": [[int((index + k) % n_features), round(0.9 - 0.1 * k, 2)] for k in (1, 2, 3)],
    }


def make_dashboard_data(n_features=50, seed=0):
    """Dashboard data for `n_features` features; every 17th feature is dead, every 3rd is labelled."""
    rng = np.random.default_rng(seed)
    features = [make_record(i, rng, n_features) for i in range(n_features)]
    log_freqs = np.log10([f["frequency"] for f in features if f["frequency"] > 0])
    counts, edges = np.histogram(log_freqs, bins=12)
    return {
        "model": "tiny-test-model", "layer": 3, "component": "mlp", "d_model": 64, "d_hidden": 512,
        "n_tokens": 12345,
        "density_histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        "features": features,
    }
