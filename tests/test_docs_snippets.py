"""Every Python snippet of README.md and docs/*.md runs, and every `mlxterp ...` command parses.

Snippets run in order, one namespace per file, on a tiny random model standing in for
`InterpretableModel.default()`: a llama shaped like SmolLM2 where the docs depend on it (30
layers; d_model 192, so the features the docs name exist at 2x) with a byte-level tokenizer.
What a snippet takes from its reader (`texts`, an SAE, arrays to plot) comes from SETUP, run
before the snippet it is keyed by; SKIPPED lists snippets that cannot run here, with why.
Dashboards serve on a free port and `wait()` returns at once instead of blocking; the bundled
corpus (`dataset=None`) is TEXTS, so that no snippet tokenizes Tiny Shakespeare.
"""

import re
import shlex
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from tiny_models import FAMILY_ARGS, byte_tokenizer

ROOT = Path(__file__).parents[1]
DOCS = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))
TEXTS = [f"Document {i}. " + " ".join(
    ["The river runs past the old mill.", "Prices rose again in the spring.",
     "She wrote the letter by candlelight.", "Seven ships left the harbour at dawn."][j % 4]
    for j in range(i % 3, i % 3 + 8)) for i in range(40)]  # about 11k byte tokens
SMALL_CONFIG = ("SAEConfig(expansion_factor=2, k=4, batch_size=256, context_length=64, num_epochs=1, "
                "validation_split=0.0, checkpoint_every=None)")
SETUP = {
    "README.md": {0: "texts = TEXTS"},
    "docs/sae.md": {
        0: "texts = TEXTS",
        2: "import numpy as np\nacts = np.random.default_rng(0).normal(size=(4608, 192)).astype(np.float32)\n"
           "d_model, config = 192, SAEConfig(k=16, batch_size=256)\n"
           "train, val_acts = acts[:4096], acts[4096:]",
        3: "held_out_texts = TEXTS[:6]\nsae = model.load_sae('my_sae.mlx')  # block 0's; block 2 trained on arrays",
    },
    "docs/features.md": {1: "texts = TEXTS[:8]", 9: "text = 'The weather today is'"},
    "docs/distributed.md": {0: "texts = TEXTS"},
    "docs/interop.md": {
        1: "from mlxterp import InterpretableModel, SAEConfig\nmodel = InterpretableModel.default()\n"
           f"sae = model.train_sae(layer=2, dataset=TEXTS, config={SMALL_CONFIG}, progress=False)",
    },
    "docs/dashboard.md": {
        0: "from mlxterp import InterpretableModel, SAEConfig\nmodel = InterpretableModel.default()\n"
           "texts = TEXTS[:8]\n"
           f"sae = model.train_sae(layer=2, dataset=TEXTS, config={SMALL_CONFIG}, progress=False)",
        3: "import numpy as np\nhistory = {'step': [0, 25, 50], 'loss': [1.0, 0.5, 0.3], 'l0': [30.0, 20.0, 16.0]}\n"
           "max_activations = np.random.default_rng(0).random(64)\n"
           "acts = np.random.default_rng(1).random((8, 64))\n"
           "frequencies = np.random.default_rng(2).random(64) * 0.1",
    },
}
SKIPPED = {
    ("docs/interop.md", 0): "downloads Gemma-2-2B and a Gemma Scope SAE from the Hugging Face hub, which "
                            "tests cannot reach (tests/sae/test_foreign.py reads a Gemma Scope fixture)",
    ("docs/interop.md", 2): "runs sae-lens and sparsify under torch; scripts/make_foreign_sae_fixtures.py "
                            "does this round trip in its own environment",
    ("docs/tracing.md", 4): "logit_difference needs ' Mary' and ' John' to be single tokens; the byte-level "
                            "test tokenizer splits them (tests/test_patching.py runs activation_patching)",
}


def python_blocks(path: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / path).read_text(), flags=re.S)


@pytest.fixture
def doc_model(monkeypatch):
    from mlx_lm.models import llama

    from mlxterp import InterpretableModel, data

    args = llama.ModelArgs.from_dict(dict(FAMILY_ARGS["llama"], hidden_size=192, num_hidden_layers=30,
                                          num_attention_heads=3, num_key_value_heads=1))
    mx.random.seed(5)
    network = llama.Model(args)
    network.set_dtype(mx.float32)
    mx.eval(network.parameters())
    model = InterpretableModel((network, byte_tokenizer()), name="doc-llama")
    monkeypatch.setattr(InterpretableModel, "default", classmethod(lambda cls: model))
    monkeypatch.setattr(data, "default_corpus", lambda: list(TEXTS))
    return model


@pytest.fixture
def quiet_dashboards(monkeypatch):
    from mlxterp.viz import dashboard, launch

    real_serve = launch.serve_dashboard
    monkeypatch.setattr(launch, "check_port", lambda *a, **kw: None)
    monkeypatch.setattr(launch, "serve_dashboard", lambda folder, port=0, **kw: real_serve(folder, port=0, **kw))
    monkeypatch.setattr(dashboard.DashboardServer, "wait", lambda self: self.close())


# These train SAEs with the docs' own configs (16x, 4096-token batches): about 30-60 s each.
TRAINING_DOCS = {"README.md", "docs/sae.md", "docs/features.md", "docs/distributed.md"}


@pytest.mark.parametrize("doc", [pytest.param(d, marks=pytest.mark.slow) if d in TRAINING_DOCS else d for d in DOCS])
def test_every_python_snippet_runs(doc, doc_model, quiet_dashboards, tmp_path, monkeypatch, capsys):
    blocks = python_blocks(doc)
    monkeypatch.chdir(tmp_path)
    namespace = {"TEXTS": list(TEXTS), "__name__": "__docs__"}
    ran = 0
    for number, block in enumerate(blocks):
        if (doc, number) in SKIPPED:
            continue
        if number in SETUP.get(doc, {}):
            exec(SETUP[doc][number], namespace)
        exec(compile(block, f"<{doc} python block {number}>", "exec"), namespace)
        ran += 1
    assert ran == len(blocks) - sum(d == doc for d, _ in SKIPPED)
    assert set(SETUP.get(doc, {})) <= set(range(len(blocks))), f"{doc} changed: review SETUP"
    assert all(n < len(blocks) for d, n in SKIPPED if d == doc), f"{doc} changed: review SKIPPED"


COMMAND = re.compile(r"(?:^|`|\$ )(mlxterp (?:run|train|evaluate|dashboard|analyze)\b[^`\n]*)", re.M)


def test_every_mlxterp_command_in_the_docs_parses():
    from mlxterp.cli import build_parser

    commands = [(doc, line) for doc in DOCS for line in COMMAND.findall((ROOT / doc).read_text())]
    assert any("evaluate" in line for _, line in commands)  # docs/sae.md's, at least
    for doc, line in commands:
        try:
            build_parser().parse_args(shlex.split(line)[1:])
        except SystemExit:
            pytest.fail(f"{doc}: `{line}` does not parse with mlxterp.cli.build_parser()")


def test_the_command_check_catches_a_wrong_flag():
    from mlxterp.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(shlex.split("evaluate --sae my_sae.mlx --dataset held_out.txt"))
