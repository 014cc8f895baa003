"""Model-free SAE training on activation arrays: Adam, warmup + cosine LR, AuxK, checkpoints.

Training data is one of (every batch is raw activations (..., d_model), any float dtype):
- an array (n_tokens, d_model) (mx or numpy): shuffled each epoch with `config.seed + epoch`;
  `config.validation_split` of it is held out when no `val` is given;
- a list/tuple of arrays: streamed in order each epoch;
- a callable returning a fresh iterable of arrays per epoch (e.g. `lambda: store.batches(4096)`).
Streams are re-cut into batches of exactly `config.batch_size` tokens (one compiled shape); the
last partial batch of an epoch is dropped. Validation data takes the same forms (never shuffled).
"""

from __future__ import annotations

import itertools
import math
import os
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, Union

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten
from tqdm.auto import tqdm

from ..errors import SAEError
from .config import MAX_DEAD_TOKENS_THRESHOLD, SAEConfig
from .io import read_tensors, sae_spec, sae_tensors, write_tensors
from .metrics import evaluate_reconstruction
from .model import SAE, THRESHOLD_EMA, latent_totals, unit_rows
from .normalize import normalize
from .sparse_ops import _streams

TrainData = Union[mx.array, np.ndarray, Sequence[Any], Callable[[], Iterable[Any]]]

CHECKPOINT_FORMAT = "mlxterp.sae.checkpoint"
CHECKPOINT_VERSION = 1
# Tokens used to fit input normalization and the b_dec init when no init_sample is given.
INIT_TOKENS = 1 << 15
METRICS = ("loss", "fvu", "recon_loss", "auxk_loss", "l1_loss", "l0", "dead_fraction", "grad_norm",
           "learning_rate", "nonfinite_inputs")


def checkpoint_path(save_path: str | os.PathLike) -> Path:
    """Where training checkpoints of the SAE saved at `save_path` live: "<save_path>.checkpoint"."""
    return Path(f"{os.fspath(save_path)}.checkpoint")


def lr_at(step: mx.array, peak: float, config: SAEConfig, total_steps: int) -> mx.array:
    """Learning rate of 0-based `step`: linear warmup to `peak`, then cosine decay to the floor.

    The floor is `peak * min_lr_ratio`, reached at `total_steps` and held after. Warmup lasts
    `warmup_steps` but at most a fifth of the run, so that a short run still reaches the peak.
    """
    step = step.astype(mx.float32)
    warmup = min(config.warmup_steps, max(total_steps // 5, 1)) if total_steps else config.warmup_steps
    lr = peak * (mx.minimum((step + 1) / warmup, 1.0) if warmup else mx.array(1.0))
    if config.lr_schedule == "constant":
        return lr
    progress = mx.clip((step - warmup) / max(total_steps - warmup, 1), 0.0, 1.0)
    floor = config.min_lr_ratio
    return lr * (floor + (1 - floor) * 0.5 * (1 + mx.cos(math.pi * progress)))


class SAETrainer:
    """Trains `sae` under `config`: `fit(train, val)`, then `get_stats()` and `history`.

    Each step is one compiled function of (model, optimizer, counters) state; metrics reach the
    host only every `config.log_every` steps. Loss: FVU + auxk_coefficient * AuxK (topk,
    batchtopk) or FVU + l1_coefficient * L1 (relu).
    """

    def __init__(self, sae: SAE, config: SAEConfig | None = None):
        self.sae = sae
        self.config = config = config or SAEConfig()
        if sae.k != config.k or sae.architecture != config.architecture:
            raise SAEError(
                f"the SAE (k={sae.k}, {sae.architecture!r}) and the config (k={config.k}, "
                f"{config.architecture!r}) disagree: build the SAE with SAE.from_config(d_model, config)"
            )
        self.k_aux = config.resolved_k_aux(sae.d_model)
        self.peak_lr = config.resolved_learning_rate(sae.d_hidden)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.total_steps = 0
        self.history: list[dict[str, float]] = []
        self.optimizer: optim.Adam | None = None
        self.counters = self._fresh_counters()
        self._steps_since_log = 0
        self._any_dead = False
        self._bar = None
        self._wandb = None

    # -- public API ----------------------------------------------------------------------
    def fit(
        self,
        train: TrainData,
        val: TrainData | None = None,
        *,
        epochs: int | None = None,
        save_path: str | os.PathLike | None = None,
        init_sample: Any = None,
        tokens_per_epoch: int | None = None,
        resume: bool = True,
        progress: bool = True,
    ) -> dict[str, float]:
        """Train for `epochs` (default `config.num_epochs`) passes over `train`; returns the last metrics.

        From scratch, input normalization and b_dec are fitted on `init_sample` (raw activations)
        or on the first 32k training tokens. With `save_path`, a checkpoint is written every
        `config.checkpoint_every` steps to `checkpoint_path(save_path)` and, when `resume`, an
        existing one is continued; the trained SAE is saved to `save_path` at the end and the
        checkpoint removed. `tokens_per_epoch` is needed (an estimate is fine) for the cosine
        schedule when `train` is a callable.
        """
        cfg = self.config
        epochs = cfg.num_epochs if epochs is None else epochs
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise SAEError(f"epochs must be a positive integer, got {epochs!r}")
        if isinstance(train, (mx.array, np.ndarray)):
            train = self._as_tokens(train, "train")
            if val is None and cfg.validation_split > 0:
                train, val = self._split(train)
        n_tokens = self._count_tokens(train, tokens_per_epoch)
        if n_tokens is not None and n_tokens < cfg.batch_size:
            raise SAEError(f"the training data holds {n_tokens} tokens, fewer than batch_size="
                           f"{cfg.batch_size}: lower batch_size or add data")
        self.total_steps = epochs * (n_tokens // cfg.batch_size) if n_tokens else 0
        if cfg.lr_schedule == "cosine" and not self.total_steps:
            raise SAEError(
                "the number of training steps is unknown (train is a callable), so the cosine LR "
                "schedule cannot be laid out: pass tokens_per_epoch=... (an estimate is fine) or "
                "use lr_schedule='constant'"
            )
        ckpt = checkpoint_path(save_path) if save_path is not None else None
        schedule = partial(lr_at, peak=self.peak_lr, config=cfg, total_steps=self.total_steps)
        self.optimizer = optim.Adam(learning_rate=schedule, bias_correction=True)
        self.optimizer.init(self.sae.trainable_parameters())
        first_stream = None
        if resume and ckpt is not None and ckpt.exists():
            self._load_checkpoint(ckpt)
            self.optimizer.init(self.sae.trainable_parameters())
        elif self.step == 0:
            first_stream = self._initialize(train, init_sample)
        self._steps = {flag: self._build_step(flag) for flag in (False, True)}
        self._start_wandb(n_tokens)
        self._bar = tqdm(total=self.total_steps or None, initial=self.step, desc="Training",
                         disable=not progress, unit="step")
        metrics: dict[str, float] = {}
        try:
            while self.epoch < epochs:
                if self.batch_in_epoch == 0:
                    self._reset_epoch_stats()
                stream = first_stream if first_stream is not None else self._raw_batches(train, self.epoch)
                first_stream = None
                ran = self._run_epoch(stream, ckpt)
                if ran == 0:
                    raise SAEError(
                        f"epoch {self.epoch + 1} produced no full batch of {cfg.batch_size} tokens: "
                        "a generator is exhausted after one pass, so pass a callable returning a fresh "
                        "iterable per epoch (e.g. lambda: store.batches(n)), or lower batch_size"
                    )
                metrics = self._log() if self._steps_since_log else (self.history[-1] if self.history else {})
                if val is not None:
                    metrics = {**metrics, **self._validate(val)}
                self.epoch += 1
                self.batch_in_epoch = 0
        finally:
            self._bar.close()
            if self._wandb is not None:
                self._wandb.finish()
                self._wandb = None
        self._record_training(metrics)
        if save_path is not None:
            self.sae.save(save_path)
            if ckpt is not None and ckpt.exists():
                ckpt.unlink()
        return metrics

    def get_stats(self) -> dict[str, Any]:
        """Per-latent statistics over the current (last) epoch's training tokens.

        {"frequency", "mean_activation" (over tokens where it fired), "max_activation"}: (d_hidden,)
        numpy float32 arrays; "n_tokens": int. `FeatureSet.from_sae(sae, trainer.get_stats())`.
        """
        c = self.counters
        n = max(int(np.array(c["epoch_tokens"])), 1)
        fired = np.array(c["fired"], dtype=np.float64)
        return {
            "frequency": (fired / n).astype(np.float32),
            "mean_activation": (np.array(c["act_sum"], dtype=np.float64) / np.maximum(fired, 1)).astype(np.float32),
            "max_activation": np.array(c["act_max"], dtype=np.float32),
            "n_tokens": int(np.array(c["epoch_tokens"])),
        }

    # -- the compiled step ---------------------------------------------------------------
    def _build_step(self, with_auxk: bool) -> Callable[[mx.array], None]:
        keep_freed_memory()
        sae, opt, cfg, counters = self.sae, self.optimizer, self.config, self.counters
        dec_key = "W_enc" if sae.tied_weights else "W_dec"
        d_hidden, k_aux, peak, total = sae.d_hidden, self.k_aux, self.peak_lr, self.total_steps

        def loss_fn(x: mx.array, dead: mx.array):
            out = sae.forward(x, dead_mask=dead if with_auxk else None, k_aux=k_aux)
            if sae.architecture == "relu":
                loss = out.fvu + cfg.l1_coefficient * out.l1
            else:
                loss = out.fvu + cfg.auxk_coefficient * out.auxk_loss
            return loss, out

        loss_and_grad = nn.value_and_grad(sae, loss_fn)
        state = [sae.state, opt.state, counters]

        @partial(mx.compile, inputs=state, outputs=state)
        def step(x: mx.array) -> None:
            since = counters["tokens_since_fired"]
            dead = since > cfg.dead_tokens_threshold
            lr = lr_at(opt.state["step"], peak, cfg, total)
            (loss, out), grads = loss_and_grad(x, dead)
            grad_norm = _update(sae, opt, grads, dec_key, cfg.gradient_clip)
            fired, act_sum, act_max = latent_totals(mx.stop_gradient(out.top_acts), out.top_indices, d_hidden)
            n = x.shape[0]
            counters["tokens_since_fired"] = mx.where(
                fired > 0, 0, mx.minimum(since + n, MAX_DEAD_TOKENS_THRESHOLD + n))
            counters["fired"] = counters["fired"] + fired
            counters["act_sum"] = counters["act_sum"] + act_sum
            counters["act_max"] = mx.maximum(counters["act_max"], act_max)
            counters["epoch_tokens"] = counters["epoch_tokens"] + n
            if sae.architecture == "batchtopk":
                kept = mx.stop_gradient(out.top_acts)
                batch_min = mx.min(mx.where(kept > 0, kept, mx.inf))
                weight = mx.maximum(1.0 / (opt.state["step"].astype(mx.float32)), THRESHOLD_EMA)
                sae.threshold = mx.where(mx.isinf(batch_min), sae.threshold,
                                         sae.threshold + weight * (batch_min - sae.threshold))
            nonfinite = mx.sum(~mx.isfinite(x)).astype(mx.float32)
            metrics = mx.stack([loss, out.fvu, out.mse, out.auxk_loss, out.l1, out.l0,
                                mx.mean(dead.astype(mx.float32)), grad_norm, lr, nonfinite])
            counters["metric_sum"] = counters["metric_sum"] + metrics

        return step

    def _fresh_counters(self) -> dict[str, mx.array]:
        h = self.sae.d_hidden
        return {
            "tokens_since_fired": mx.zeros((h,), dtype=mx.int32),
            "fired": mx.zeros((h,)),
            "act_sum": mx.zeros((h,)),
            "act_max": mx.zeros((h,)),
            "epoch_tokens": mx.array(0.0),
            "metric_sum": mx.zeros((len(METRICS),)),
        }

    def _reset_epoch_stats(self) -> None:
        for key in ("fired", "act_sum", "act_max"):
            self.counters[key] = mx.zeros_like(self.counters[key])
        self.counters["epoch_tokens"] = mx.array(0.0)

    # -- the loop ------------------------------------------------------------------------
    def _run_epoch(self, stream: Iterable[mx.array], ckpt: Path | None) -> int:
        cfg = self.config
        ran = 0
        pending = None
        for x in itertools.islice(self._rebatch(stream), self.batch_in_epoch, None):
            self._steps[self._any_dead](x)
            mx.async_eval(self.sae.state, self.optimizer.state, self.counters)
            # Wait for the previous step only, so at most one step is queued behind the running one.
            if pending is not None:
                mx.eval(pending)
            pending = self.counters["metric_sum"]
            self.step += 1
            self.batch_in_epoch += 1
            self._bar.update(1)
            self._steps_since_log += 1
            ran += 1
            if self.step == 1 or self.step % cfg.log_every == 0:
                self._log()
            if cfg.resample_dead_every and self.step % cfg.resample_dead_every == 0:
                self._resample_dead(x)
            if ckpt is not None and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self._save_checkpoint(ckpt)
        return ran

    def _log(self) -> dict[str, float]:
        sums = np.array(self.counters["metric_sum"], dtype=np.float64)
        self.counters["metric_sum"] = mx.zeros_like(self.counters["metric_sum"])
        record = dict(zip(METRICS, (sums / max(self._steps_since_log, 1)).tolist()))
        first = self.step - self._steps_since_log + 1
        self._steps_since_log = 0
        if record["nonfinite_inputs"] > 0:
            raise SAEError(
                f"the training activations contain NaN or inf (in steps {first}..{self.step}): check "
                "the activations (a float16 overflow? a broken hook?) and drop or fix those tokens"
            )
        if not all(math.isfinite(v) for v in record.values()):
            raise SAEError(
                f"the loss became NaN/inf at steps {first}..{self.step} (loss={record['loss']}): "
                f"lower learning_rate (now {self.peak_lr:.2e}), keep normalize_input=True, set "
                "gradient_clip, or check the activations for extreme values; nothing was saved"
            )
        del record["nonfinite_inputs"]
        self._any_dead = bool(mx.any(self.counters["tokens_since_fired"] > self.config.dead_tokens_threshold))
        record["step"] = self.step
        self.history.append(record)
        self._bar.set_postfix_str(
            f"loss={record['loss']:.3f}, l0={record['l0']:.1f}, dead={100 * record['dead_fraction']:.1f}%")
        if self._wandb is not None:
            self._wandb.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=self.step)
        return record

    def _validate(self, val: TrainData) -> dict[str, float]:
        batches = self._rebatch(self._raw_batches(val, None), drop_last=False)
        result = evaluate_reconstruction(self.sae, batches)
        out = {f"val/{k}": float(v) for k, v in result.items()}
        out["val/loss"] = out["val/fvu"]
        if self._wandb is not None:
            self._wandb.log(out, step=self.step)
        if self.history:
            self.history[-1].update(out)
        return out

    # -- data ----------------------------------------------------------------------------
    def _as_tokens(self, data: Any, name: str) -> mx.array:
        arr = mx.array(data)
        if arr.ndim < 2 or arr.shape[-1] != self.sae.d_model:
            raise SAEError(f"{name} activations must be (..., d_model={self.sae.d_model}), got shape "
                           f"{tuple(arr.shape)}: pass the activations of the layer the SAE is built for")
        return arr.reshape(-1, self.sae.d_model)

    def _split(self, data: mx.array) -> tuple[mx.array, mx.array | None]:
        n_val = int(data.shape[0] * self.config.validation_split)
        if n_val == 0 or data.shape[0] - n_val < self.config.batch_size:
            return data, None
        order = mx.array(np.random.default_rng(self.config.seed).permutation(data.shape[0]))
        return data[order[n_val:]], data[order[:n_val]]

    def _count_tokens(self, train: TrainData, tokens_per_epoch: int | None) -> int | None:
        if tokens_per_epoch is not None:
            return int(tokens_per_epoch)
        if isinstance(train, mx.array):
            return train.shape[0]
        if isinstance(train, (list, tuple)):
            return sum(math.prod(b.shape[:-1]) for b in train)
        if callable(train):
            return None
        if isinstance(train, Iterator):
            raise SAEError("training data is a one-pass iterator, which epochs and validation would exhaust: "
                           "pass a callable returning a fresh iterable per epoch (e.g. lambda: store.batches(n))")
        raise SAEError(f"unsupported training data {type(train).__name__}: pass an array (n, d_model), "
                       "a list of arrays, or a callable returning an iterable of arrays per epoch")

    def _raw_batches(self, data: TrainData, epoch: int | None) -> Iterator[mx.array]:
        """Arrays of (n_i, d_model) float32 for one epoch; `epoch` seeds the shuffle of array data."""
        if isinstance(data, (mx.array, np.ndarray)):
            data = self._as_tokens(data, "train" if epoch is not None else "validation")
            if epoch is None:
                yield data
                return
            order = np.random.default_rng(self.config.seed + epoch).permutation(data.shape[0])
            bs = self.config.batch_size
            for start in range(0, data.shape[0] - bs + 1, bs):
                yield data[mx.array(order[start : start + bs])]
            return
        source = data() if callable(data) else data
        for batch in source:
            yield self._as_tokens(batch, "train" if epoch is not None else "validation").astype(mx.float32)

    def _rebatch(self, stream: Iterable[mx.array], drop_last: bool = True) -> Iterator[mx.array]:
        """Re-cut a stream of (n_i, d_model) arrays into (batch_size, d_model) float32 batches."""
        bs = self.config.batch_size
        pending: list[mx.array] = []
        have = 0
        for chunk in stream:
            chunk = chunk.astype(mx.float32)
            if not pending and have == 0 and chunk.shape[0] == bs:
                yield chunk
                continue
            pending.append(chunk)
            have += chunk.shape[0]
            if have >= bs:
                joined = mx.concatenate(pending) if len(pending) > 1 else pending[0]
                full = have // bs * bs
                for start in range(0, full, bs):
                    yield joined[start : start + bs]
                pending, have = ([joined[full:]] if have > full else []), have - full
        if have and not drop_last:
            yield mx.concatenate(pending)

    def _initialize(self, train: TrainData, init_sample: Any) -> Iterator[mx.array] | None:
        """Fit normalization and b_dec; returns the epoch-0 stream when its head was consumed."""
        first_stream = None
        if init_sample is not None:
            sample = self._as_tokens(init_sample, "init_sample")
        elif isinstance(train, mx.array):
            pick = np.random.default_rng(self.config.seed).permutation(train.shape[0])[:INIT_TOKENS]
            sample = train[mx.array(np.sort(pick))]
        else:
            stream = self._raw_batches(train, 0)
            head, have = [], 0
            for chunk in stream:
                head.append(chunk)
                have += chunk.shape[0]
                if have >= INIT_TOKENS:
                    break
            if not head:
                raise SAEError("the training data is empty: pass activations (n_tokens, d_model)")
            sample = mx.concatenate(head)[:INIT_TOKENS]
            first_stream = itertools.chain(head, stream)
        if not bool(mx.all(mx.isfinite(sample))):
            raise SAEError("the training activations contain NaN or inf: check the activations "
                           "(a float16 overflow? a broken hook?) and drop or fix those tokens")
        self.sae.fit_normalization(sample)
        self.sae.init_b_dec(sample, self.config.b_dec_init)
        return first_stream

    # -- dead latents --------------------------------------------------------------------
    def _resample_dead(self, x: mx.array) -> None:
        """Point dead latents at high-error inputs of batch `x` (Bricken et al. 2023 / glassbox).

        Inputs are drawn with probability proportional to their squared reconstruction error;
        each dead latent's decoder row becomes the unit direction of its (centred) input, its
        encoder row that direction scaled to 0.2x the mean live encoder norm, its bias 0, and
        its Adam moments are reset.
        """
        sae, opt, cfg = self.sae, self.optimizer, self.config
        dead = np.flatnonzero(np.array(self.counters["tokens_since_fired"] > cfg.dead_tokens_threshold))
        if dead.size == 0:
            return
        x_n, _ = normalize(sae.normalization, sae.norm_stats, x)
        err = mx.sum(mx.square(x_n - sae.forward(x).sae_out), axis=-1)
        key = mx.random.key(cfg.seed * 1_000_003 + self.step)
        picks = mx.random.categorical(2 * mx.log(mx.maximum(err, 1e-30)), num_samples=dead.size, key=key)
        directions = unit_rows(x_n[picks] - sae.b_dec)
        rows = mx.array(dead)
        live = np.setdiff1d(np.arange(sae.d_hidden), dead)
        enc_norm = mx.mean(mx.linalg.norm(sae.W_enc[mx.array(live)], axis=-1)) if live.size else mx.array(1.0)
        if sae.tied_weights:
            sae.W_enc = _set_rows(sae.W_enc, rows, directions)
        else:
            sae["W_dec"] = _set_rows(sae["W_dec"], rows, directions)
            sae.W_enc = _set_rows(sae.W_enc, rows, 0.2 * enc_norm * directions)
        sae.b_enc = _set_rows(sae.b_enc, rows, 0.0)
        for name in ["W_enc", "b_enc"] + ([] if sae.tied_weights else ["W_dec"]):
            for moment in ("m", "v"):
                opt.state[name][moment] = _set_rows(opt.state[name][moment], rows, 0.0)
        self.counters["tokens_since_fired"] = _set_rows(self.counters["tokens_since_fired"], rows, 0)
        mx.eval(sae.state, opt.state, self.counters)

    # -- checkpoints ---------------------------------------------------------------------
    def _save_checkpoint(self, path: Path) -> None:
        """Write weights, optimizer state, counters and position atomically, if all are finite."""
        if self._steps_since_log:
            self._log()  # raises on a NaN loss or input since the last log
        tensors = {f"sae.{k}": v for k, v in sae_tensors(self.sae).items()}
        tensors.update({f"optimizer.{k}": v for k, v in tree_flatten(self.optimizer.state)})
        tensors.update({f"counters.{k}": v for k, v in self.counters.items() if k != "metric_sum"})
        for name, value in tensors.items():
            if mx.issubdtype(value.dtype, mx.floating) and not bool(mx.all(mx.isfinite(value))):
                raise SAEError(
                    f"{name} became NaN/inf by step {self.step}, so no checkpoint was written (the "
                    f"last good one stays at {path}): lower learning_rate (now {self.peak_lr:.2e}), "
                    "keep normalize_input=True, or check the activations"
                )
        header = {"sae": sae_spec(self.sae), "metadata": self.sae.metadata, "config": self.config.to_dict(),
                  "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                  "total_steps": self.total_steps, "any_dead": self._any_dead, "history": self.history}
        write_tensors(path, tensors, header, CHECKPOINT_FORMAT, CHECKPOINT_VERSION)

    def _load_checkpoint(self, path: Path) -> None:
        tensors, header = read_tensors(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "checkpoint")
        if header.get("config") != self.config.to_dict() or header.get("sae") != sae_spec(self.sae):
            raise SAEError(
                f"the checkpoint {path} belongs to a different SAE or config: delete it to start over, "
                "pass resume=False, or resume with the same config"
            )
        if header.get("total_steps") != self.total_steps:
            raise SAEError(f"the checkpoint {path} was laid out for {header.get('total_steps')} steps, "
                           f"this run for {self.total_steps}: resume with the same data, epochs and "
                           "tokens_per_epoch, or delete the checkpoint")
        groups: dict[str, list[tuple[str, mx.array]]] = {"sae": [], "optimizer": [], "counters": []}
        for name, value in tensors.items():
            group, _, key = name.partition(".")
            groups[group].append((key, mx.array(value)))
        self.sae.update(tree_unflatten(groups["sae"]))
        self.optimizer.state = tree_unflatten(groups["optimizer"])
        self.counters.update(dict(groups["counters"]))
        self.sae.metadata = header["metadata"]
        self.step, self.epoch, self.batch_in_epoch = header["step"], header["epoch"], header["batch_in_epoch"]
        self.history = list(header.get("history", []))
        self._any_dead = bool(header.get("any_dead", False))

    # -- reporting -----------------------------------------------------------------------
    def _start_wandb(self, n_tokens: int | None) -> None:
        cfg = self.config
        if not cfg.use_wandb:
            return
        try:
            import wandb
        except ImportError:
            raise SAEError("use_wandb=True needs the wandb package: pip install 'mlxterp[wandb]' "
                           "(or pip install wandb), or set use_wandb=False") from None
        meta = self.sae.metadata
        self._wandb = wandb.init(
            project=cfg.wandb_project or "mlxterp-sae",
            name=cfg.wandb_name,
            tags=list(cfg.wandb_tags) or None,
            config={**cfg.to_dict(), "d_model": self.sae.d_model, "d_hidden": self.sae.d_hidden,
                    "layer": meta.get("layer"), "component": meta.get("component"),
                    "model_name": meta.get("model_name"), "tokens_per_epoch": n_tokens,
                    "learning_rate_resolved": self.peak_lr},
        )

    def _record_training(self, metrics: dict[str, float]) -> None:
        self.sae.metadata["training"] = {
            "config": self.config.to_dict(),
            "steps": self.step,
            "tokens": self.step * self.config.batch_size,
            "learning_rate": self.peak_lr,
            "final_metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        }


def _update(sae: SAE, opt: optim.Optimizer, grads: dict, dec_key: str, clip: float | None) -> mx.array:
    """Project, clip and apply `grads`, renormalize the decoder rows; returns the unclipped grad norm.

    The same arithmetic as remove_parallel_component + optim.clip_grad_norm + opt.update +
    unit_rows, but each large parameter's chain runs on its own stream (sparse_ops._streams():
    one thread each on the CPU, the default stream elsewhere).
    """
    streams = _streams()
    flat = dict(tree_flatten(grads))
    big = [name for name, g in flat.items() if g.size >= 1 << 16]
    where = {name: streams[i % len(streams)] for i, name in enumerate(big)}

    def on(name):
        stream = where.get(name)
        return mx.stream(stream) if stream is not None else _NoStream()

    params = dict(tree_flatten(sae.trainable_parameters()))
    squares = []
    for name in flat:
        if name == dec_key:  # remove_parallel_component, its row sums spread over the streams
            g, w = flat[name], params[name]
            flat[name] = g - _row_dots(g, w, streams)[:, None] * w
        with on(name):
            squares.append(mx.sum(mx.square(flat[name])))
    grad_norm = mx.sqrt(sum(squares))
    scale = mx.minimum(clip / (grad_norm + 1e-6), 1.0) if clip is not None else None
    opt.apply_gradients({}, {})  # the schedule and step counter, as before its per-parameter updates
    new = {}
    for name, g in flat.items():
        with on(name):
            if scale is not None:
                g = g * scale
            new[name] = opt.apply_single(g, params[name], _state_at(opt.state, name))
    if dec_key in new:  # unit_rows, its row norms spread over the streams
        w = new[dec_key]
        norms = mx.sqrt(_row_dots(w, w, streams))
        with on(dec_key):
            new[dec_key] = w / mx.maximum(norms, 1e-8)[:, None]
    sae.update(tree_unflatten(list(new.items())))
    return grad_norm


def _row_dots(a: mx.array, b: mx.array, streams: list) -> mx.array:
    """sum(a * b, axis=-1) for (rows, d) arrays, row blocks on the given streams."""
    if len(streams) == 1:
        return mx.sum(a * b, axis=-1)
    step = -(-a.shape[0] // len(streams))
    parts = []
    for i, stream in enumerate(streams):
        with mx.stream(stream):
            parts.append(mx.sum(a[i * step : (i + 1) * step] * b[i * step : (i + 1) * step], axis=-1))
    return mx.concatenate(parts)


def _state_at(state: dict, dotted: str) -> dict:
    for part in dotted.split("."):
        state = state[part]
    return state


class _NoStream:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


_FREED_MEMORY_KEPT = False
# MLX's buffer cache limit while training: freed buffers up to this size are kept for reuse.
TRAINING_CACHE_BYTES = 4 << 30


def keep_freed_memory() -> None:
    """Raise MLX's buffer-cache limit (never lower it) so a step's large buffers are reused.

    The mlx CPU backend caches freed buffers only up to 32 MiB by default, so every step hands
    its large buffers (encoder, decoder, Adam moments ~38 MiB each at d_hidden 12288 x 768, the
    (n, d_hidden) pre-activations, the sorted gathers) back to the OS and maps them fresh next
    step: ~300k page faults, ~40% of a step. With the limit raised to min(TRAINING_CACHE_BYTES,
    a quarter of MLX's memory limit) they stay cached; the cache holds at most the step's own
    working set. Set MLXTERP_KEEP_FREED_MEMORY=0 to leave the limit alone.
    """
    global _FREED_MEMORY_KEPT
    if _FREED_MEMORY_KEPT or os.environ.get("MLXTERP_KEEP_FREED_MEMORY", "1") == "0":
        return
    _FREED_MEMORY_KEPT = True
    want = min(TRAINING_CACHE_BYTES, max(mx.get_memory_limit() // 4, 1 << 30))
    previous = mx.set_cache_limit(want)
    if previous > want:
        mx.set_cache_limit(previous)


def _set_rows(a: mx.array, rows: mx.array, values: Any) -> mx.array:
    """A copy of `a` with `a[rows] = values`."""
    out = mx.array(a)
    out[rows] = values
    return out


def train_sae_on_activations(
    data: TrainData,
    config: SAEConfig | None = None,
    *,
    d_model: int | None = None,
    val: TrainData | None = None,
    save_path: str | os.PathLike | None = None,
    metadata: dict[str, Any] | None = None,
    init_sample: Any = None,
    tokens_per_epoch: int | None = None,
    resume: bool = True,
    progress: bool = True,
) -> SAE:
    """Build an SAE for `config`, train it on `data` (see the module docstring), return it.

    `d_model` is read from array data when omitted. `metadata` (layer, component, model_name,
    ...) is stored with the SAE before training, so checkpoints and the saved file carry it.
    """
    config = config or SAEConfig()
    if d_model is None:
        if isinstance(data, (mx.array, np.ndarray)):
            d_model = int(data.shape[-1])
        elif init_sample is not None:
            d_model = int(init_sample.shape[-1])
        else:
            raise SAEError("d_model is unknown for streamed data: pass d_model=... (the activation width)")
    sae = SAE.from_config(d_model, config)
    if metadata:
        sae.metadata.update(metadata)
    SAETrainer(sae, config).fit(train=data, val=val, save_path=save_path, init_sample=init_sample,
                                tokens_per_epoch=tokens_per_epoch, resume=resume, progress=progress)
    return sae
