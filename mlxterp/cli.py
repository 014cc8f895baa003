"""The `mlxterp` command: train, evaluate, analyze and browse SAEs from the shell."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .data import load_texts, split_documents
from .distributed import is_main
from .errors import DataError, MlxterpError
from .features import collect_dashboard_data, evaluate_sae
from .io_utils import atomic_write_text
from .model import InterpretableModel
from .pipeline import DEFAULT_COMPONENT, training_store
from .platform import use_fast_blas
from .sae import SAEConfig
from .sae.config import ARCHITECTURES
from .viz import check_port, export_neuronpedia, serve_dashboard, write_dashboard

MODEL_HELP = "model: a Hugging Face repo id, an mlx-lm folder or a .gguf file (default: the embedded SmolLM2-135M-Instruct)"
DATASET_HELP = "text: a .txt file, a folder of .txt files, or a Hugging Face dataset name like wikitext:wikitext-2-raw-v1:train (default: the bundled corpus)"


def _load_model(spec: str | None) -> InterpretableModel:
    return InterpretableModel(spec or "default")


def _config(args) -> SAEConfig:
    fields = {
        "expansion_factor": args.expansion_factor,
        "k": args.k,
        "architecture": args.architecture,
        "num_epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "context_length": args.context_length,
        "use_wandb": args.wandb,
        "wandb_project": args.wandb_project,
    }
    return SAEConfig(**{k: v for k, v in fields.items() if v is not None})


def _add_training_args(parser: argparse.ArgumentParser, max_tokens: int | None = None,
                       epochs: int | None = None) -> None:
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--dataset", help=DATASET_HELP)
    parser.add_argument("--layer", type=int, help="block index (default: the middle layer)")
    parser.add_argument("--component", default=DEFAULT_COMPONENT, choices=["mlp", "attn", "output", "resid"],
                        help=f"hook point inside the block (default: {DEFAULT_COMPONENT}; output = resid = "
                             "residual stream after the block)")
    parser.add_argument("--expansion-factor", type=int, help="latents per input dimension (default 16)")
    parser.add_argument("--k", type=int, help="active latents per token (default 32)")
    parser.add_argument("--architecture", choices=ARCHITECTURES, help="k is the L0 target for jumprelu")
    parser.add_argument("--epochs", type=int, default=epochs,
                        help=f"passes over the training tokens (default: {epochs or 'SAEConfig.num_epochs'}; "
                             "epochs after the first read the activation cache)")
    parser.add_argument("--batch-size", type=int, help="tokens per training step (default 4096)")
    parser.add_argument("--learning-rate", type=float, help="default: scaled with the number of latents")
    parser.add_argument("--context-length", type=int, help="tokens per context (default 256)")
    parser.add_argument("--max-tokens", type=int, default=max_tokens,
                        help=f"cap on training tokens per epoch (default: {max_tokens or 'no cap'})")
    parser.add_argument("--cache-dir", help="where to cache activations (default: <out>/activation_cache)")
    parser.add_argument("--wandb", action="store_true", default=None, help="log to Weights & Biases")
    parser.add_argument("--wandb-project")


def _cache_dir(args, out: Path) -> Path:
    return Path(args.cache_dir) if args.cache_dir else out.parent / "activation_cache"


def _train(args, out: Path, texts: list[str]):
    model = _load_model(args.model)
    layer = args.layer if args.layer is not None else model.n_layers // 2
    sae = model.train_sae(
        layer=layer,
        dataset=texts,
        component=args.component,
        config=_config(args),
        save_path=out,
        cache_dir=_cache_dir(args, out),
        max_tokens=args.max_tokens,
    )
    return model, sae


def cmd_train(args) -> None:
    if args.hook_points or args.transcoders or args.skip_transcoders:
        return _train_many(args)
    _, sae = _train(args, Path(args.out), load_texts(args.dataset))
    if is_main():  # under mlx.launch, rank 0 saved it
        print(f"saved {sae.d_hidden}-latent SAE to {args.out}")


def _train_many(args) -> None:
    """Several SAEs and transcoders from one forward per batch; --out is then a folder."""
    if args.layer is not None:
        raise DataError("--layer/--component choose one hook point: with --hook-points name them there, "
                        "e.g. --hook-points layers.3.mlp layers.3.output")
    model, out = _load_model(args.model), Path(args.out)
    saes = model.train_saes(args.hook_points or (), load_texts(args.dataset), _config(args),
                            transcoders=args.transcoders or (), skip_transcoders=args.skip_transcoders or (),
                            save_dir=out, cache_dir=args.cache_dir or out / "activation_cache",
                            max_tokens=args.max_tokens)
    for name, sae in saes.items():
        print(f"saved {name} ({sae.d_hidden} latents) to {out / (name + '.mlx')}")


def cmd_evaluate(args) -> None:
    model = _load_model(args.model)
    sae = model.load_sae(args.sae)
    metrics = evaluate_sae(sae, model, load_texts(args.dataset), n_tokens=args.n_tokens,
                           n_ce_contexts=args.ce_contexts, progress=True)
    print(json.dumps(metrics, indent=2))
    if args.out:
        atomic_write_text(args.out, json.dumps(metrics, indent=2))


def cmd_analyze(args) -> None:
    model = _load_model(args.model)
    sae = model.load_sae(args.sae)
    print(sae.analyze_text(model, args.prompt, top_k=args.top_k))


def _dashboard(model, sae, dataset, out_dir: Path, n_tokens: int, serve: bool, port: int) -> Path:
    data = collect_dashboard_data(sae, model, dataset, n_tokens=n_tokens, progress=True)
    index = write_dashboard(data, out_dir)
    print(f"dashboard written to {index}")
    if serve:
        server = serve_dashboard(out_dir, port=port)
        print(f"serving on {server.url} (Ctrl-C to stop)")
        server.wait()
    return index


def cmd_dashboard(args) -> None:
    if args.serve:
        check_port(args.port)  # before the scan, which may take minutes
    model = _load_model(args.model)
    sae = model.load_sae(args.sae)
    _dashboard(model, sae, load_texts(args.dataset), Path(args.out), args.n_tokens, args.serve, args.port)


def cmd_neuronpedia(args) -> None:
    model = _load_model(args.model)
    sae = model.load_sae(args.sae)
    paths = export_neuronpedia(sae, model, load_texts(args.dataset), args.out, model_id=args.model_id,
                               sae_set=args.sae_set, dataset_name=args.dataset or "", n_tokens=args.n_tokens,
                               n_features=args.n_features, progress=True)
    print(f"{len(paths)} Neuronpedia batch files written to {args.out}")


def cmd_run(args) -> None:
    """The main job: train on the default model and corpus, evaluate, write a dashboard."""
    if args.serve:
        check_port(args.port)
    out = Path(args.out)
    texts = load_texts(args.dataset)
    if args.eval_dataset:
        train_texts, eval_texts = texts, load_texts(args.eval_dataset)
    else:
        train_texts, eval_texts = split_documents(texts, 0.1, seed=12345)
    model, sae = _train(args, out / "sae.mlx", train_texts)
    print(f"evaluating on {len(eval_texts)} held-out documents ...")
    metrics = evaluate_sae(sae, model, eval_texts, n_tokens=args.eval_tokens, progress=True)
    atomic_write_text(out / "eval.json", json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))
    # The dashboard's examples come from the training activations already cached: no forward.
    store = training_store(model, sae.hook_point, train_texts, _config(args), _cache_dir(args, out / "sae.mlx"),
                           args.max_tokens, progress=False)
    _dashboard(model, sae, store, out / "dashboard", args.dashboard_tokens, args.serve, args.port)


def _scan_command(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand that scans a dataset with a saved SAE and writes into the folder --out (./name)."""
    command = sub.add_parser(name, help=help)
    command.add_argument("sae", help="a saved SAE (e.g. my_sae.mlx)")
    command.add_argument("--model", help=MODEL_HELP)
    command.add_argument("--dataset", help=DATASET_HELP)
    command.add_argument("--out", default=name, help=f"output folder (default ./{name})")
    command.add_argument("--n-tokens", type=int, default=50_000, help="tokens to scan for examples")
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlxterp", description="Interpretability for MLX language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train an SAE, evaluate it and write a dashboard (the main job)")
    # The default job (SmolLM2, bundled corpus) must finish in 15 minutes on two CPU cores: the
    # model forward dominates, so it captures 200k tokens once, trains 5 epochs on the cache and
    # builds the dashboard from that cache.
    _add_training_args(run, max_tokens=200_000, epochs=5)
    run.add_argument("--out", default="runs/default", help="output folder (default runs/default)")
    run.add_argument("--eval-dataset", help="text to evaluate on (default: 10%% of --dataset's documents, held out from training)")
    run.add_argument("--eval-tokens", type=int, default=20_000)
    run.add_argument("--dashboard-tokens", type=int, default=50_000,
                     help="cached training tokens the dashboard scans for examples (default 50000)")
    run.add_argument("--serve", action="store_true", help="serve the dashboard on localhost afterwards")
    run.add_argument("--port", type=int, default=8000)
    run.set_defaults(func=cmd_run)

    train = sub.add_parser("train", help="train an SAE on one layer's activations (or several SAEs and "
                                         "transcoders from one forward: --hook-points, --transcoders)")
    _add_training_args(train)
    train.add_argument("--out", required=True, help="where to save the SAE, e.g. my_sae.mlx (a folder with "
                                                    "--hook-points / --transcoders)")
    train.add_argument("--hook-points", nargs="+", help="one SAE per matching hook point, e.g. 'layers.*.mlp' "
                                                        "layers.3.output (components: output, mlp, attn, mlp_in)")
    train.add_argument("--transcoders", nargs="+", type=int, help="layers to train an MLP transcoder on")
    train.add_argument("--skip-transcoders", nargs="+", type=int, help="layers to train a skip transcoder on")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="reconstruction and downstream metrics of a saved SAE")
    evaluate.add_argument("sae", help="a saved SAE (e.g. my_sae.mlx)")
    evaluate.add_argument("--model", help=MODEL_HELP)
    evaluate.add_argument("--dataset", help=DATASET_HELP)
    evaluate.add_argument("--n-tokens", type=int, default=20_000)
    evaluate.add_argument("--ce-contexts", type=int, default=16)
    evaluate.add_argument("--out", help="also write the metrics to this JSON file")
    evaluate.set_defaults(func=cmd_evaluate)

    dashboard = _scan_command(sub, "dashboard", "write (and optionally serve) a feature dashboard")
    dashboard.add_argument("--serve", action="store_true", help="serve on localhost after writing")
    dashboard.add_argument("--port", type=int, default=8000, help="port (0 = any free port)")
    dashboard.set_defaults(func=cmd_dashboard)

    neuronpedia = _scan_command(sub, "neuronpedia", "export the features in Neuronpedia's feature JSON")
    neuronpedia.add_argument("--n-features", type=int, help="export this many features drawn at random (default: all)")
    neuronpedia.add_argument("--model-id", help="Neuronpedia model id (default: from the model name)")
    neuronpedia.add_argument("--sae-set", help="Neuronpedia SAE set (default: res-mlxterp, mlp-mlxterp or att-mlxterp)")
    neuronpedia.set_defaults(func=cmd_neuronpedia)

    analyze = sub.add_parser("analyze", help="the top features of a prompt, per token and overall")
    analyze.add_argument("sae", help="a saved SAE (e.g. my_sae.mlx)")
    analyze.add_argument("prompt")
    analyze.add_argument("--model", help=MODEL_HELP)
    analyze.add_argument("--top-k", type=int, default=10)
    analyze.set_defaults(func=cmd_analyze)
    return parser


def main(argv: list[str] | None = None) -> int:
    use_fast_blas()
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MlxterpError as error:
        print(f"mlxterp: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
