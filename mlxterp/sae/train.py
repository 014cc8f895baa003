"""The SAE training loop on activation arrays: one compiled step per batch, logging, validation,
dead-latent tracking and resampling, checkpoints and W&B.

Data forms: `train_data`; the LR schedule and the parameter update: `optim`; checkpoint files:
`checkpoints`. No language model is involved (`InterpretableModel.train_sae` feeds it).
"""

from __future__ import annotations

import itertools
import math
import os
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from tqdm.auto import tqdm

from ..errors import SAEError
from . import train_data
from .checkpoints import checkpoint_path, load_checkpoint, save_checkpoint
from .config import MAX_DEAD_TOKENS_THRESHOLD, SAEConfig
from .metrics import TRAINING_METRICS, FeatureStats, evaluate_reconstruction
from .model import SAE
from .ops import latent_totals
from .optim import apply_update, averaged_parameters, init_schedule_free, lr_at, make_optimizer, training_cache_limit
from .resample import resample_dead
from .train_data import TrainData

# Tokens used to fit input normalization and the b_dec init when no init_sample is given.
INIT_TOKENS = 1 << 15
# BatchTopK threshold: running mean of the per-batch threshold for the first 1/THRESHOLD_EMA
# updates, then an EMA with this weight (forgets the estimates of early, untrained weights).
THRESHOLD_EMA = 0.01
# What each step adds up on the device, in this order; read back once per log interval.
STEP_SUMS = tuple(TRAINING_METRICS) + ("nonfinite_inputs",)


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
        self.optimizer: optim.Optimizer | None = None
        self.counters = self._fresh_counters()
        self.any_dead = False
        self._steps_since_log = 0
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
            train = train_data.as_tokens(train, self.sae.d_model, "train")
            if val is None and cfg.validation_split > 0:
                train, val = train_data.split(train, cfg)
        n_tokens = train_data.count_tokens(train, tokens_per_epoch)
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
        self.optimizer = make_optimizer(cfg, self.peak_lr, self.sae.trainable_parameters())
        first_stream = None
        if resume and ckpt is not None and ckpt.exists():
            load_checkpoint(self, ckpt)
            self.optimizer.init(self.sae.trainable_parameters())
            init_schedule_free(self.optimizer, cfg, self.sae.trainable_parameters())
        elif self.step == 0:
            first_stream = self._initialize(train, init_sample)
        self._start_wandb(n_tokens)
        self._bar = tqdm(total=self.total_steps or None, initial=self.step, desc="Training",
                         disable=not progress, unit="step")
        metrics: dict[str, float] = {}
        try:
            with training_cache_limit():
                self._steps = {flag: self._build_step(flag) for flag in (False, True)}
                while self.epoch < epochs:
                    if self.batch_in_epoch == 0:
                        self._reset_epoch_stats()
                    stream = first_stream or train_data.raw_batches(train, self.sae.d_model, cfg, self.epoch)
                    first_stream = None
                    if self._run_epoch(stream, ckpt) == 0:
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
        average = averaged_parameters(self.optimizer, self.sae.trainable_parameters(), self._dec_key)
        if average is not None:  # schedule-free: the SAE to keep is the average
            self.sae.update(average)
        self._record_training(metrics)
        if save_path is not None:
            self.sae.save(save_path)
            if ckpt is not None and ckpt.exists():
                ckpt.unlink()
        return metrics

    def get_stats(self) -> FeatureStats:
        """Per-latent statistics over the current (last) epoch's training tokens.

        `FeatureSet.from_sae(sae, trainer.get_stats())`.
        """
        c = self.counters
        return FeatureStats.from_totals(np.array(c["fired"]), np.array(c["act_sum"]), np.array(c["act_max"]),
                                        int(np.array(c["epoch_tokens"])))

    @property
    def _dec_key(self) -> str:
        """The parameter whose rows are the decoder directions (kept at unit norm)."""
        return "W_enc" if self.sae.tied_weights else "W_dec"

    # -- the compiled step ---------------------------------------------------------------
    def _build_step(self, with_auxk: bool) -> Callable[[mx.array], None]:
        sae, opt, cfg, counters = self.sae, self.optimizer, self.config, self.counters
        dec_key = self._dec_key
        d_hidden, k_aux, peak, total = sae.d_hidden, self.k_aux, self.peak_lr, self.total_steps

        def loss_fn(x: mx.array, dead: mx.array):
            out = sae.forward(x, dead_mask=dead if with_auxk else None, k_aux=k_aux)
            if sae.architecture == "relu":
                loss = out.fvu + cfg.l1_coefficient * out.l1_loss
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
            grad_norm = apply_update(sae, opt, grads, lr, dec_key, cfg.gradient_clip)
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
            values = {"loss": loss, "fvu": out.fvu, "recon_loss": out.recon_loss, "auxk_loss": out.auxk_loss,
                      "l1_loss": out.l1_loss, "l0": out.l0, "dead_fraction": mx.mean(dead.astype(mx.float32)),
                      "grad_norm": grad_norm, "learning_rate": lr,
                      "nonfinite_inputs": mx.sum(~mx.isfinite(x)).astype(mx.float32)}
            counters["metric_sum"] = counters["metric_sum"] + mx.stack([values[k] for k in STEP_SUMS])

        return step

    def _fresh_counters(self) -> dict[str, mx.array]:
        h = self.sae.d_hidden
        return {
            "tokens_since_fired": mx.zeros((h,), dtype=mx.int32),
            "fired": mx.zeros((h,)),
            "act_sum": mx.zeros((h,)),
            "act_max": mx.zeros((h,)),
            "epoch_tokens": mx.array(0.0),
            "metric_sum": mx.zeros((len(STEP_SUMS),)),
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
        for x in itertools.islice(train_data.batches(stream, cfg.batch_size), self.batch_in_epoch, None):
            self._steps[self.any_dead](x)
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
                resample_dead(self, x)
            if ckpt is not None and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                if self._steps_since_log:
                    self._log()  # raises on a NaN loss or input since the last log
                save_checkpoint(self, ckpt)
        return ran

    def _log(self) -> dict[str, float]:
        sums = np.array(self.counters["metric_sum"], dtype=np.float64)
        self.counters["metric_sum"] = mx.zeros_like(self.counters["metric_sum"])
        record = dict(zip(STEP_SUMS, (sums / max(self._steps_since_log, 1)).tolist()))
        first = self.step - self._steps_since_log + 1
        self._steps_since_log = 0
        if record.pop("nonfinite_inputs") > 0:
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
        self.any_dead = bool(mx.any(self.counters["tokens_since_fired"] > self.config.dead_tokens_threshold))
        record["step"] = self.step
        self.history.append(record)
        self._bar.set_postfix_str(
            f"loss={record['loss']:.3f}, l0={record['l0']:.1f}, dead={100 * record['dead_fraction']:.1f}%")
        if self._wandb is not None:
            self._wandb.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=self.step)
        return record

    def _validate(self, val: TrainData) -> dict[str, float]:
        stream = train_data.raw_batches(val, self.sae.d_model, self.config, None)
        training_point = self.sae.trainable_parameters()
        average = averaged_parameters(self.optimizer, training_point, self._dec_key)
        if average is not None:  # schedule-free: validate the average, the SAE training ends with
            self.sae.update(average)
        try:
            result = evaluate_reconstruction(self.sae, train_data.batches(stream, self.config.batch_size,
                                                                          drop_last=False))
        finally:
            self.sae.update(training_point)
        out = {f"val/{k}": float(v) for k, v in result.items()}
        out["val/loss"] = out["val/fvu"]
        if self._wandb is not None:
            self._wandb.log(out, step=self.step)
        if self.history:
            self.history[-1].update(out)
        return out

    def _initialize(self, train: TrainData, init_sample: Any) -> Iterator[mx.array] | None:
        """Fit normalization and b_dec; returns the epoch-0 stream when its head was consumed."""
        first_stream = None
        d_model = self.sae.d_model
        if init_sample is not None:
            sample = train_data.as_tokens(init_sample, d_model, "init_sample")
        elif isinstance(train, mx.array):
            pick = np.random.default_rng(self.config.seed).permutation(train.shape[0])[:INIT_TOKENS]
            sample = train[mx.array(np.sort(pick))]
        else:
            stream = train_data.raw_batches(train, d_model, self.config, 0)
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
        if float(mx.max(mx.abs(sample - sample[:1]))) == 0:
            raise SAEError(f"the training activations are constant (all {sample.shape[0]} tokens of the "
                           "initialization sample are the same vector): there is nothing to learn and "
                           "FVU is undefined; check the data and the hook point")
        self.sae.fit_normalization(sample)
        self.sae.init_b_dec(sample, self.config.b_dec_init)
        return first_stream

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
    """Build an SAE for `config`, train it on `data` (see `train_data`), return it.

    `d_model` is read from array data when omitted. `metadata` (hook point, model, ...) is stored
    with the SAE before training, so checkpoints and the saved file carry it.
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
