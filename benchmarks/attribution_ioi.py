"""Attribution patching and feature attribution on SmolLM2 with IOI prompts (names swapped).

Parts (`--part`):
- `compare`: attribution patching (one clean forward, one corrupted forward and backward)
  against real `activation_patching` (one forward per layer x position), per component
  (residual stream, attention, MLP) on every layer and position: Pearson r of the recoveries,
  and each side's time in this run.
- `attribution` / `activation`: only that side, for a whole-process timer to compare.
- `features`: trains a small TopK SAE on a residual-stream layer (WikiText-2 from
  ../shared/data), runs feature attribution on the IOI prompts (linear and integrated
  gradients), and ablates the top features against as many random active ones.

    python benchmarks/attribution_ioi.py --part compare [--pairs 2] [--components output,attn,mlp] [--layers 0,3,6]
    python benchmarks/attribution_ioi.py --part features [--layer 6] [--train-tokens 100000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mlxterp.platform import use_fast_blas  # noqa: E402

use_fast_blas()  # on Linux, re-executes with OpenBLAS preloaded

import numpy as np  # noqa: E402

from mlxterp import InterpretableModel, SAEConfig  # noqa: E402
from mlxterp.attribution import attribution_patching  # noqa: E402
from mlxterp.features.attribution import ablation_check, feature_attribution  # noqa: E402
from mlxterp.patching import activation_patching, logit_difference  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wikitext-2-raw-test.txt"
TEMPLATE = "When{a} and{b} went to the store,{s} gave a drink to"
NAMES = [(" Mary", " John"), (" Tom", " Sarah"), (" James", " Anna"), (" David", " Emma"),
         (" Paul", " Lisa"), (" Mark", " Kate"), (" Peter", " Alice"), (" Jack", " Lucy")]


def ioi(model, pairs: int):
    """Clean prompts (answer: the first name), corrupted ones (the subject swapped, answer: the
    second name) and the logit difference of the clean answers, averaged over prompts."""
    chosen = NAMES[:pairs]
    clean = [TEMPLATE.format(a=a, b=b, s=b) for a, b in chosen]
    corrupted = [TEMPLATE.format(a=a, b=b, s=a) for a, b in chosen]
    return clean, corrupted, logit_difference(model, [a for a, _ in chosen], [b for _, b in chosen])


def compare(model, args) -> None:
    clean, corrupted, metric = ioi(model, args.pairs)
    components = args.components.split(",")
    # Before the first token where clean and corrupted differ, patching changes nothing (both
    # methods give exactly 0 there): only the positions from that token on are compared.
    first = next(i for i, (a, b) in enumerate(zip(model.encode(clean[0]), model.encode(corrupted[0]))) if a != b)
    positions = list(range(first, len(model.encode(clean[0]))))
    layers = list(range(model.n_layers)) if args.layers is None else [int(l) for l in args.layers.split(",")]
    if args.part in ("compare", "attribution"):
        start = time.perf_counter()
        estimate = attribution_patching(model, clean, corrupted, metric, components=components,
                                        heads=args.method == "linear", method=args.method, steps=args.steps,
                                        layers=None if args.method == "linear" else layers)
        print(f"attribution patching ({args.method}), {len(estimate.layers)} layers x {len(model.encode(clean[0]))} "
              f"positions x {len(components)} components{' + heads' if args.method == 'linear' else ''}: "
              f"{time.perf_counter() - start:.1f} s")
    if args.part in ("compare", "activation"):
        for component in components:
            start = time.perf_counter()
            exact = activation_patching(model, clean, corrupted, metric, component=component, per_position=positions,
                                        layers=layers)
            print(f"activation patching, {component}: {exact.recovery.size} forwards, "
                  f"{time.perf_counter() - start:.1f} s")
            if args.part == "compare":
                rows = [estimate.layers.index(l) for l in layers]
                guess = estimate.components[component].recovery[rows][:, positions]
                r = np.corrcoef(guess.reshape(-1), exact.recovery.reshape(-1))[0, 1]
                print(f"  {component}: Pearson r = {r:.3f} over {exact.recovery.size} (layer, position) pairs; "
                      f"clean {exact.clean_metric:.3f}, corrupted {exact.corrupted_metric:.3f}")
                for name, table in (("exact", exact.recovery), ("estimate", guess)):
                    print(f"  {name} recovery, layers x positions {positions}:")
                    print("   " + np.array2string(table, precision=2, suppress_small=True, max_line_width=200).replace("\n", "\n   "))
    if args.part == "compare" and estimate.heads is not None:
        heads = estimate.heads.sum(axis=2)
        top = np.dstack(np.unravel_index(np.argsort(-np.abs(heads), axis=None)[:5], heads.shape))[0]
        print("heads with the largest estimated recovery (layer, head: recovery):",
              ", ".join(f"L{l}H{h}: {heads[l, h]:+.3f}" for l, h in top))


def features(model, args) -> None:
    clean, _, metric = ioi(model, args.pairs)
    text = DATA.read_text()
    config = SAEConfig(expansion_factor=8, k=32, batch_size=1024, context_length=128, num_epochs=2,
                       validation_split=0.0, checkpoint_every=None)
    start = time.perf_counter()
    sae = model.train_sae(layer=args.layer, component="output", dataset=[text], config=config,
                          max_tokens=args.train_tokens)
    print(f"SAE on layer {args.layer}'s residual stream, {sae.d_hidden} features, trained on "
          f"{args.train_tokens} tokens x 2 epochs in {time.perf_counter() - start:.0f} s")
    for method in ("linear", "ig"):
        result = feature_attribution(model, clean, sae, metric, method=method)
        print(f"{method}: metric {result.metric:.3f}, attribution summed {result.attribution.sum():+.3f}, "
              f"top features {[(i, round(v, 3)) for i, v in result.top(5, signed=True)]}")
        for n in (5, 20):
            print(f"  n={n}: {ablation_check(model, clean, sae, result, metric, n=n, draws=10)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("compare", "attribution", "activation", "features"), default="compare")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--components", default="output,attn,mlp")
    parser.add_argument("--layers", default=None, help="activation patching only these layers, e.g. 0,29")
    parser.add_argument("--method", choices=("linear", "ig"), default="linear")
    parser.add_argument("--steps", type=int, default=4, help="integration points for --method ig")
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--train-tokens", type=int, default=100_000)
    args = parser.parse_args()
    model = InterpretableModel.default()
    (features if args.part == "features" else compare)(model, args)


if __name__ == "__main__":
    main()
