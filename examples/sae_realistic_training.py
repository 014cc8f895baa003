"""Seed 003's realistic training: an SAE on a Hugging Face text dataset, then an honest evaluation.

    python examples/sae_realistic_training.py [--model ID] [--layer N] [--max-texts 20000]

Loads WikiText-103 through `datasets` (pip install "mlxterp[datasets]") as the guide does. Where
the hub cannot be reached (offline, or `datasets` missing), it says so and falls back to
WikiText-2 from ../shared/data when this checkout has it, else to the bundled corpus, so the
script always runs. On a 2-core CPU with the default SmolLM2-135M it takes ~10 minutes; on a Mac,
pass --model mlx-community/Llama-3.2-1B-Instruct --layer 10 and drop --max-tokens.
"""

import argparse
from pathlib import Path

from mlxterp.platform import use_fast_blas  # noqa: E402

use_fast_blas()  # on Linux, re-executes with OpenBLAS preloaded

from mlxterp import InterpretableModel, SAEConfig, evaluate_sae  # noqa: E402
from mlxterp.data import default_corpus, load_texts  # noqa: E402
from mlxterp.data import split_documents  # noqa: E402

LOCAL_WIKITEXT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wikitext-2-raw-test.txt"

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="default")
parser.add_argument("--layer", type=int, default=15)
parser.add_argument("--component", default="output", choices=["output", "mlp", "attn"])
parser.add_argument("--max-texts", type=int, default=20_000)
parser.add_argument("--max-tokens", type=int, default=150_000, help="training tokens per epoch (CPU-sized)")
parser.add_argument("--out", default="sae_wikitext.mlx")
args = parser.parse_args()


def wikitext_texts(max_texts: int) -> list[str]:
    """Seed 003's recipe: WikiText-103 lines longer than 50 characters, cut at 512 characters."""
    try:
        from datasets import load_dataset

        dataset = load_dataset("wikitext", "wikitext-103-raw-v1", split="train")
        rows = (item["text"].strip() for item in dataset)
    except Exception as error:  # no `datasets`, or no route to the hub
        print(f"WikiText-103 unavailable ({type(error).__name__}: {str(error)[:120]})")
        if not LOCAL_WIKITEXT.exists():
            print("falling back to the bundled corpus")
            return default_corpus()
        print(f"falling back to {LOCAL_WIKITEXT.name}")
        rows = (t.strip() for t in load_texts(str(LOCAL_WIKITEXT)))
    texts = []
    for text in rows:
        if len(text) > 50:
            texts.append(text[:512])
        if len(texts) >= max_texts:
            break
    return texts


texts = wikitext_texts(args.max_texts)
train_texts, eval_texts = split_documents(texts, 0.05, seed=0)
print(f"{len(train_texts)} training texts, {len(eval_texts)} held out for evaluation")

model = InterpretableModel(args.model)
config = SAEConfig(expansion_factor=16, k=32, num_epochs=4, validation_split=0.05)
sae = model.train_sae(layer=args.layer, dataset=train_texts, component=args.component, config=config,
                      save_path=args.out, cache_dir=f"{args.out}.cache", max_tokens=args.max_tokens)

metrics = evaluate_sae(sae, model, eval_texts, n_tokens=20_000, progress=True)
for name in ("explained_variance", "fvu", "l0", "dead_fraction", "ce_loss_recovered", "kl_div_with_sae"):
    print(f"{name:>20}: {metrics[name]:.4f}")
print(f"saved to {args.out}; reload with model.load_sae({args.out!r})")
