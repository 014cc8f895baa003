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

from .. import distributed
from ..errors import SAEError
from . import train_data
from .checkpoints import checkpoint_path, load_checkpoint, save_checkpoint
from .config import MAX_DEAD_TOKENS_THRESHOLD, SAEConfig
from .data_parallel import DataParallel
from .initialize import INIT_TOKENS, initialization_sample, initialize  # noqa: F401 (INIT_TOKENS: public)
from .jumprelu import check_l0, l0_penalty
from .matryoshka import resolve_prefixes
from .metrics import TRAINING_METRICS, FeatureStats, evaluate_reconstruction, start_wandb
from .model import SAE
from .ops import latent_totals
from .optim import (apply_update, averaged_parameters, init_schedule_free, lr_at, make_optimizer, on_average,
                    training_cache_limit)
from .resample import resample_dead
from .train_data import TrainData

# Tokens used to fit input normalization and the b_dec init when no init_sample is given.
# BatchTopK threshold: running mean of the per-batch threshold for the first 1/THRESHOLD_EMA
# updates, then an EMA with this weight (forgets the estimates of early, untrained weights).
THRESHOLD_EMA = 0.01
# What each step adds up on the device, in this order; read back once per log interval.
STEP_SUMS = tuple(TRAINING_METRICS) + ("nonfinite_inputs",)


class SAETrainer:
    """Trains `sae` under `config`: `fit(train, val)`, then `get_stats()` and `history`.

    Each step is one compiled function of (model, optimizer, counters) state; metrics reach the
    host only every `config.log_every` steps. Loss: FVU + auxk_coefficient * AuxK (topk,
    batchtopk; Matryoshka: the mean FVU of its nested prefixes), FVU + l1_coefficient * L1 (relu),
    or FVU + l0_coefficient * (L0 / k - 1)^2 + AuxK (jumprelu, whose L0 must end within 20% of k).
    """

    def __init__(self, sae: SAE, config: SAEConfig | None = None):
        self.sae = sae
        self.config = config = config or SAEConfig()
        if sae.k != config.k or sae.architecture != config.architecture:
            raise SAEError(
                f"the SAE (k={sae.k}, {sae.architecture!r}) and the config (k={config.k}, "
                f"{config.architecture!r}) disagree: build the SAE with SAE.from_config(d_model, config)"
            )
        if sae.transcode and config.resample_dead_every:
            raise SAEError("resample_dead_every resamples an SAE's latents from its inputs; a transcoder's "
                           "dead latents are revived by AuxK: set resample_dead_every=None")
        self.k_aux = config.resolved_k_aux(sae.d_model)
        self._dec_key = None if sae.transcode else ("W_enc" if sae.tied_weights else "W_dec")  # unit-norm rows
        self.prefixes = None
        if config.architecture == "matryoshka_batchtopk":
            self.prefixes = resolve_prefixes(config.matryoshka_prefixes, sae.d_hidden, config.k)
            sae.metadata["matryoshka_prefixes"] = list(self.prefixes)
        if config.architecture == "jumprelu" and config.k >= sae.d_hidden:
            raise SAEError(f"the JumpReLU L0 target k={config.k} asks every one of the {sae.d_hidden} latents to "
                           "fire on every token, which is no sparse code: lower k or raise expansion_factor")
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
        self._pending = None
        self.dp = DataParallel()  # the ranks of mlx.launch; one rank: every hook is a no-op
        self.steps_per_epoch: int | None = None
        self.resumed_from: int | None = None
        self.progress_label = "Training"  # train_many names each SAE's bar
        self.wandb_group: str | None = None  # train_many puts the SAEs of one run in one W&B group

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
        if isinstance(train, (mx.array, np.ndarray)):
            train = train_data.as_tokens(train, self.sae.data_width, "train")
            if val is None and cfg.validation_split > 0:
                train, val = train_data.split(train, cfg)
        n_tokens = train_data.count_tokens(train, tokens_per_epoch)
        ckpt, first_stream = self.begin(n_tokens, epochs, save_path, init_sample, resume, progress, train)
        metrics: dict[str, float] = {}
        try:
            with training_cache_limit():
                while self.epoch < epochs:
                    if self.batch_in_epoch == 0:
                        self._reset_epoch_stats()
                    stream = self.dp.epoch_stream(first_stream, partial(
                        train_data.raw_batches, train, self.sae.data_width, cfg, self.epoch, self.dp.rank, self.dp.size))
                    first_stream = None
                    batches = train_data.batches(stream, cfg.batch_size)
                    ran = 0
                    for x in itertools.islice(batches, self.batch_in_epoch, self.steps_per_epoch):
                        self.train_batch(x, ckpt)
                        ran += 1
                    if ran == 0:
                        raise SAEError(
                            f"epoch {self.epoch + 1} produced no full batch of {cfg.batch_size} tokens: "
                            "a generator is exhausted after one pass, so pass a callable returning a fresh "
                            "iterable per epoch (e.g. lambda: store.batches(n)), or lower batch_size"
                        )
                    metrics = self.end_epoch(val)
        finally:
            self.close()
        return self.finish(metrics, save_path, ckpt)

    def begin(self, n_tokens: int | None, epochs: int, save_path: str | os.PathLike | None = None,
              init_sample: Any = None, resume: bool = True, progress: bool = True,
              train: TrainData | None = None) -> tuple[Path | None, Iterator[mx.array] | None]:
        """Set up a run of `epochs` over `n_tokens` per epoch (optimizer, resume from the checkpoint
        of `save_path`, initialization, W&B, progress bar); then `train_batch` per batch,
        `end_epoch` per epoch, `close` and `finish` (what `fit` does; `train_many` drives several).
        Returns the checkpoint path and, when initialization read the head of `train`, its stream."""
        cfg = self.config
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise SAEError(f"epochs must be a positive integer, got {epochs!r}")
        self.steps_per_epoch = self.dp.steps_per_epoch(isinstance(train, mx.array), n_tokens, cfg.batch_size)
        if (n_tokens is not None and n_tokens < cfg.batch_size) or self.steps_per_epoch == 0:
            raise SAEError(f"the training data holds {n_tokens} tokens (on rank {self.dp.rank} of {self.dp.size}), "
                           f"fewer than batch_size={cfg.batch_size} per rank: lower batch_size or add data")
        steps = self.steps_per_epoch or (n_tokens // cfg.batch_size if n_tokens else 0)
        self.total_steps = epochs * steps
        if cfg.lr_schedule == "cosine" and not self.total_steps:
            raise SAEError(
                "the number of training steps is unknown (train is a callable), so the cosine LR "
                "schedule cannot be laid out: pass tokens_per_epoch=... (an estimate is fine) or "
                "use lr_schedule='constant'"
            )
        ckpt = checkpoint_path(save_path) if save_path is not None else None
        self.optimizer = make_optimizer(cfg, self.peak_lr, self.sae.trainable_parameters())
        first_stream = None
        resuming = resume and ckpt is not None and self.dp.has_checkpoint(ckpt)
        if resuming:
            distributed.run_on_main(lambda: load_checkpoint(self, ckpt), f"reading the checkpoint {ckpt}")
            self.optimizer.init(self.sae.trainable_parameters())
            init_schedule_free(self.optimizer, cfg, self.sae.trainable_parameters())
        elif self.step == 0:
            first_stream = distributed.run_on_main(lambda: self._initialize(train, init_sample), "initializing the SAE")
        self.dp.share_state(self)
        self.resumed_from = self.step if resuming else None
        self._start_wandb(n_tokens)
        self._bar = tqdm(total=self.total_steps or None, initial=self.step, desc=self.progress_label,
                         disable=not progress or not self.dp.is_main, unit="step")
        self._steps = {flag: self._build_step(flag) for flag in (False, True)}
        self._pending = None
        return ckpt, first_stream

    def end_epoch(self, val: TrainData | None = None) -> dict[str, float]:
        """Close the epoch: log, validate on `val`; returns the epoch's last metrics."""
        self.dp.sync_act_max(self.counters)
        metrics = self._log() if self._steps_since_log else (self.history[-1] if self.history else {})
        if val is not None and self.dp.is_main:
            metrics = {**metrics, **self._validate(val)}
        self.epoch += 1
        self.batch_in_epoch = 0
        return metrics

    def close(self) -> None:
        """Close the progress bar and the W&B run."""
        if self._bar is not None:
            self._bar.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def finish(self, metrics: dict[str, float], save_path: str | os.PathLike | None,
               ckpt: Path | None) -> dict[str, float]:
        """End on the schedule-free average (if any), check a JumpReLU run's L0, record the run in
        the SAE's metadata, save it to `save_path` (rank 0) and remove the checkpoint."""
        average = averaged_parameters(self.optimizer, self.sae.trainable_parameters(), self._dec_key)
        if average is not None:  # schedule-free: the SAE to keep is the average
            self.sae.update(average)
        if self.config.architecture == "jumprelu" and self.history:
            check_l0(self.history[-1]["l0"], self.config.k, self.config.l0_coefficient, self.step)
        self._record_training(metrics)
        if save_path is not None:
            distributed.run_on_main(lambda: self._save_final(save_path, ckpt), f"saving the SAE to {save_path}")
        return metrics

    def _save_final(self, save_path: str | os.PathLike, ckpt: Path | None) -> None:
        self.sae.save(save_path)
        if ckpt is not None and ckpt.exists():
            ckpt.unlink()

    def get_stats(self) -> FeatureStats:
        """Per-latent statistics over the current (last) epoch's training tokens.

        `FeatureSet.from_sae(sae, trainer.get_stats())`.
        """
        c = self.counters
        return FeatureStats.from_totals(np.array(c["fired"]), np.array(c["act_sum"]), np.array(c["act_max"]),
                                        int(np.array(c["epoch_tokens"])))

    # -- the compiled step ---------------------------------------------------------------
    def _build_step(self, with_auxk: bool) -> Callable[[mx.array], None]:
        sae, opt, cfg, counters, dp = self.sae, self.optimizer, self.config, self.counters, self.dp
        dec_key = self._dec_key
        d_hidden, k_aux, peak, total = sae.d_hidden, self.k_aux, self.peak_lr, self.total_steps

        def loss_fn(x: mx.array, dead: mx.array):
            out = sae.forward(x, dead_mask=dead if with_auxk else None, k_aux=k_aux,
                              bandwidth=cfg.jumprelu_bandwidth, prefixes=self.prefixes)
            prefix_fvu = out.fvu if out.prefix_fvu is None else mx.mean(out.prefix_fvu)
            l0_loss = l0_penalty(out.l0, cfg.k) if sae.architecture == "jumprelu" else mx.array(0.0)
            if sae.architecture == "relu":
                loss = out.fvu + cfg.l1_coefficient * out.l1_loss
            else:
                loss = prefix_fvu + cfg.auxk_coefficient * out.auxk_loss + cfg.l0_coefficient * l0_loss
            return loss, (out, prefix_fvu, l0_loss)

        loss_and_grad = nn.value_and_grad(sae, loss_fn)
        state = [sae.state, opt.state, counters]

        @partial(mx.compile, inputs=state, outputs=state)
        def step(x: mx.array) -> None:
            since = counters["tokens_since_fired"]
            dead = since > cfg.dead_tokens_threshold
            lr = lr_at(opt.state["step"], peak, cfg, total)
            (loss, (out, prefix_fvu, l0_loss)), grads = loss_and_grad(x, dead)
            fired, act_sum, act_max = latent_totals(mx.stop_gradient(out.top_acts), out.top_indices, d_hidden)
            n = x.shape[0]
            batch_min = None
            if sae.architecture in ("batchtopk", "matryoshka_batchtopk"):
                kept = mx.stop_gradient(out.top_acts)
                batch_min = mx.min(mx.where(kept > 0, kept, mx.inf))
            if dp.active:  # one all_sum: the global batch's gradient and firing counts
                grads, fired, act_sum, n, batch_min = dp.reduce_step(sae, x, grads, fired, act_sum, batch_min)
            grad_norm = apply_update(sae, opt, grads, lr, dec_key, cfg.gradient_clip)
            counters["tokens_since_fired"] = mx.where(
                fired > 0, 0, mx.minimum(since + n, MAX_DEAD_TOKENS_THRESHOLD + n))
            counters["fired"] = counters["fired"] + fired
            counters["act_sum"] = counters["act_sum"] + act_sum
            counters["act_max"] = mx.maximum(counters["act_max"], act_max)
            counters["epoch_tokens"] = counters["epoch_tokens"] + n
            if sae.architecture in ("batchtopk", "matryoshka_batchtopk"):
                weight = mx.maximum(1.0 / (opt.state["step"].astype(mx.float32)), THRESHOLD_EMA)
                sae.threshold = mx.where(mx.isinf(batch_min), sae.threshold,
                                         sae.threshold + weight * (batch_min - sae.threshold))
            values = {"loss": loss, "fvu": out.fvu, "recon_loss": out.recon_loss, "auxk_loss": out.auxk_loss,
                      "l1_loss": out.l1_loss, "l0_loss": l0_loss, "prefix_fvu": prefix_fvu, "l0": out.l0,
                      "dead_fraction": mx.mean(dead.astype(mx.float32)),
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
    def train_batch(self, x: mx.array, ckpt: Path | None = None) -> None:
        """One step on a (batch_size, data_width) batch, with logging, resampling and checkpoints."""
        cfg = self.config
        self._steps[self.any_dead](x)
        mx.async_eval(self.sae.state, self.optimizer.state, self.counters)
        # Wait for the previous step only, so at most one step is queued behind the running one.
        if self._pending is not None:
            mx.eval(self._pending)
        self._pending = self.counters["metric_sum"]
        self.step += 1
        self.batch_in_epoch += 1
        self._bar.update(1)
        self._steps_since_log += 1
        if self.step == 1 or self.step % cfg.log_every == 0:
            self._log()
        if cfg.resample_dead_every and self.step % cfg.resample_dead_every == 0:
            resample_dead(self, self.dp.gather(x))
        if ckpt is not None and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
            if self._steps_since_log:
                self._log()  # raises on a NaN loss or input since the last log
            self.dp.sync_act_max(self.counters)
            distributed.run_on_main(lambda: save_checkpoint(self, ckpt), f"writing the checkpoint {ckpt}")

    def _log(self) -> dict[str, float]:
        sums = np.array(self.dp.mean_over_ranks(self.counters["metric_sum"]), dtype=np.float64)
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
        stream = train_data.raw_batches(val, self.sae.data_width, self.config, None)
        with on_average(self.sae, self.optimizer, self._dec_key):
            result = evaluate_reconstruction(self.sae, train_data.batches(stream, self.config.batch_size,
                                                                          drop_last=False))
        out = {f"val/{k}": float(v) for k, v in result.items()}
        out["val/loss"] = out["val/fvu"]
        if self._wandb is not None:
            self._wandb.log(out, step=self.step)
        if self.history:
            self.history[-1].update(out)
        return out

    def _initialize(self, train: TrainData, init_sample: Any) -> Iterator[mx.array] | None:
        """Fit normalization and b_dec; returns the epoch-0 stream when its head was consumed."""
        sample, first_stream = initialization_sample(train, init_sample, self.sae.data_width, self.config)
        initialize(self.sae, sample, self.config)
        return first_stream

    # -- reporting -----------------------------------------------------------------------
    def _start_wandb(self, n_tokens: int | None) -> None:
        if self.config.use_wandb and self.dp.is_main:
            self._wandb = start_wandb(self.sae, self.config, self.peak_lr, n_tokens, self.wandb_group)

    def _record_training(self, metrics: dict[str, float]) -> None:
        self.sae.metadata["training"] = {
            "config": self.config.to_dict(),
            "steps": self.step,
            "tokens": self.step * self.config.batch_size * self.dp.size,
            "ranks": self.dp.size,
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
