"""Benchmark: peak RSS of `model.train_sae(..., cache_dir=...)` on N tokens and on 10N tokens.

Each size runs in a child process of its own (capture, cache writing, training over the cache,
validation, all of it), which prints its peak resident set (`ru_maxrss`), wall time and the size
of its activation cache on disk; the parent prints both and their ratio. The out-of-core store
keeps memory bounded by its shuffle buffer (65,536 rows), whatever the dataset's size.

    python benchmarks/out_of_core.py                      # N = 100,000 tokens, 2 epochs
    python benchmarks/out_of_core.py --tokens 20000 --epochs 1

Model: a random-weight mlx-lm llama, d_model 256 (2 layers, byte tokenizer), so a token's
activation is 1 KiB: the 10N run's cache is several times the shuffle buffer.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlxterp.platform import use_fast_blas  # noqa: E402

use_fast_blas()  # on Linux, re-executes with OpenBLAS preloaded

WORDS = [f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "su", "ta", "vo", "ri") for b in ("n", "st", "la", "mo", "ek")]


def texts(n_tokens: int, seed: int = 0) -> list[str]:
    """Documents of ~1,000 bytes (a token each, with the byte tokenizer), `n_tokens` bytes in all."""
    rng = random.Random(seed)
    docs, have = [], 0
    while have < n_tokens:
        words = []
        while sum(map(len, words)) + len(words) < 1000:
            words.append(rng.choice(WORDS))
        docs.append(" ".join(words))
        have += len(docs[-1])
    return docs


def model(d_model: int):
    import mlx.core as mx
    from mlx_lm.models import llama

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_models import byte_tokenizer

    from mlxterp import InterpretableModel

    args = llama.ModelArgs(model_type="llama", vocab_size=300, hidden_size=d_model, num_hidden_layers=2,
                           intermediate_size=2 * d_model, num_attention_heads=4, num_key_value_heads=2,
                           rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True)
    mx.random.seed(0)
    net = llama.Model(args)
    net.set_dtype(mx.float32)
    mx.eval(net.parameters())
    return InterpretableModel((net, byte_tokenizer()), name=f"random-llama-{d_model}")


def child(args: argparse.Namespace) -> None:
    import mlx.core as mx

    from mlxterp.sae.config import SAEConfig

    lm = model(args.d_model)
    data = texts(args.tokens)
    config = SAEConfig(expansion_factor=args.expansion, k=args.k, batch_size=args.batch_size,
                       context_length=128, num_epochs=args.epochs)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        sae = lm.train_sae(layer=1, dataset=data, component="mlp", config=config, save_path=Path(folder) / "sae.mlx",
                           cache_dir=Path(folder) / "cache", progress=False)
        wall = time.perf_counter() - start
        cache_bytes = sum(p.stat().st_size for p in (Path(folder) / "cache").rglob("*") if p.is_file())
        shards = len(list((Path(folder) / "cache").rglob("shard-*.safetensors")))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"tokens": args.tokens, "train_tokens_per_epoch": sae.metadata["n_train_tokens_per_epoch"],
                      "steps": sae.metadata["training"]["steps"], "peak_rss_mib": peak_kib / 1024,
                      "mlx_peak_mib": mx.get_peak_memory() / 2**20,
                      "wall_s": wall, "cache_mib": cache_bytes / 2**20, "shards": shards,
                      "val_fvu": sae.metadata["training"]["final_metrics"].get("val/fvu")}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=100_000, help="N: the smaller dataset's tokens")
    parser.add_argument("--epochs", type=int, default=2, help="epochs (the second reads the cache back)")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--expansion", type=int, default=4)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    results = []
    for tokens in (args.tokens, 10 * args.tokens):
        command = [sys.executable, __file__, "--child", "--tokens", str(tokens), "--epochs", str(args.epochs),
                   "--d-model", str(args.d_model), "--expansion", str(args.expansion), "--k", str(args.k),
                   "--batch-size", str(args.batch_size)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    small, large = results
    print(f"peak RSS: {small['peak_rss_mib']:.0f} MiB on {small['tokens']:,} tokens, {large['peak_rss_mib']:.0f} MiB "
          f"on {large['tokens']:,} tokens (cache {large['cache_mib']:.0f} MiB): "
          f"ratio {large['peak_rss_mib'] / small['peak_rss_mib']:.3f}")


if __name__ == "__main__":
    main()
