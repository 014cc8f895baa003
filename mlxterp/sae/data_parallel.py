"""Data-parallel SAE training over the ranks of `mlx.launch` (mx.distributed); docs/distributed.md.

Each rank trains on its own batches of `config.batch_size` tokens, so the global batch is
batch_size x ranks. One step makes one all_sum of one fused buffer holding every gradient, the
statistics of the global batch's variance, the per-latent firing counts and activation sums, and
each rank's BatchTopK batch minimum. The training loss is a sum over tokens divided by the
batch's total variance, so each rank's gradient is weighted by its own batch's variance and the
sum divided by the global batch's: the update is the gradient of the global batch's loss, as a
single process would take it on the concatenated batch (exactly for TopK; for ReLU's L1 term and
BatchTopK's selection, which are not sums over tokens, each rank's batch stands on its own).

Rank 0 initializes, reads and writes checkpoints and the final SAE, logs to W&B and shows
progress; the others receive its state (`share_state`). With one rank every hook is a no-op.
Every collective outside the compiled step is evaluated where it is made: MLX evaluates lazily,
and ranks that ran their collectives in different orders would wait for each other forever.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from .. import distributed
from ..errors import SAEError
from .io import sae_tensors
from .normalize import normalize

if TYPE_CHECKING:
    from .train import SAETrainer


class DataParallel:
    """The trainer's view of the run's ranks (`distributed.group()`)."""

    def __init__(self) -> None:
        self.group = distributed.group()
        self.rank, self.size = self.group.rank(), self.group.size()
        self.active = self.size > 1
        self.is_main = self.rank == 0

    # -- inside the compiled step ----------------------------------------------------------
    def reduce_step(self, sae, x: mx.array, grads: dict, fired: mx.array, act_sum: mx.array,
                    batch_min: mx.array | None) -> tuple[dict, mx.array, mx.array, int, mx.array | None]:
        """Global (grads, fired, act_sum, n_tokens, batch_min) of this step, by one all_sum."""
        x_n, _ = normalize(sae.normalization, sae.norm_stats, x)
        n = x_n.shape[0]
        # Each rank's variance about its own mean, as the loss computes it; the global one is
        # rebuilt from means taken about a shared point (b_dec), which keeps the sums small.
        mean = mx.mean(x_n, axis=0)
        variance = mx.maximum(mx.sum(mx.square(x_n - mean)), 1e-12)
        offset = n * (mean - mx.stop_gradient(sae.b_dec))
        names = sorted(name for name, _ in tree_flatten(grads))
        flat = dict(tree_flatten(grads))
        mins = mx.zeros((self.size,)) if batch_min is None else (mx.arange(self.size) == self.rank) * batch_min
        parts = [flat[name].reshape(-1) * variance for name in names] + [
            variance[None], offset, mx.sum(mx.square(offset))[None] / n, fired, act_sum, mins]
        total = mx.distributed.all_sum(mx.concatenate(parts), group=self.group)
        sizes = [flat[name].size for name in names] + [1, offset.size, 1, fired.size, act_sum.size, self.size]
        pieces = mx.split(total, list(itertools.accumulate(sizes))[:-1])
        n_global = n * self.size
        sum_var, sum_offset, sum_sq_offsets = pieces[-6][0], pieces[-5], pieces[-4][0]
        global_variance = mx.maximum(sum_var + sum_sq_offsets - mx.sum(mx.square(sum_offset)) / n_global, 1e-12)
        reduced = [(name, (piece / global_variance).reshape(flat[name].shape))
                   for name, piece in zip(names, pieces)]
        global_min = None if batch_min is None else mx.min(pieces[-1])
        return tree_unflatten(reduced), pieces[-3], pieces[-2], n_global, global_min

    # -- around the steps -----------------------------------------------------------------
    def steps_per_epoch(self, array_data: bool, n_tokens: int | None, batch_size: int) -> int | None:
        """Steps every rank takes per epoch (None: one rank, run until the data ends).

        Array data is shared by all ranks (each takes its slice of each global batch); other
        data is each rank's own, and the ranks agree on the fewest full batches any one holds.
        """
        if not self.active:
            return None
        if array_data:
            return n_tokens // (batch_size * self.size)
        if n_tokens is None:
            raise SAEError(f"a distributed run ({self.size} ranks) must know each rank's tokens per epoch to "
                           "agree on the steps: pass tokens_per_epoch=... (each rank its own)")
        local = mx.array(n_tokens // batch_size, dtype=mx.int32)
        return int(mx.distributed.all_min(local, group=self.group).item())

    def epoch_stream(self, first: Iterator[mx.array] | None,
                     make: Callable[[], Iterable[mx.array]]) -> Iterator[mx.array]:
        """The epoch's stream; with several ranks, started over when it ends early, so that a rank
        whose data holds fewer batches than agreed (tokens dropped by the norm limit) keeps step."""
        if not self.active:
            yield from first or make()
            return
        source = first or make()
        while True:
            produced = False
            for batch in source:
                produced = True
                yield batch
            if not produced:
                return
            source = make()

    def gather(self, x: mx.array) -> mx.array:
        """The global batch (the ranks' batches in rank order), e.g. for resampling."""
        if not self.active:
            return x
        gathered = mx.distributed.all_gather(x, group=self.group)
        mx.eval(gathered)  # now: every rank must run its collectives in the same order
        return gathered

    def sync_act_max(self, counters: dict[str, mx.array]) -> None:
        """Make the per-latent maximum activation global (kept per rank between reads: a max of
        maxima, so repeating it never double-counts)."""
        if self.active:
            counters["act_max"] = mx.distributed.all_max(counters["act_max"], group=self.group)
            mx.eval(counters["act_max"])

    def mean_over_ranks(self, values: mx.array) -> mx.array:
        """The ranks' mean of `values` (the logged metric sums: every rank then decides alike)."""
        if not self.active:
            return values
        total = mx.distributed.all_sum(values, group=self.group)
        mx.eval(total)
        return total / self.size

    def has_checkpoint(self, ckpt: Path) -> bool:
        """Whether rank 0 has the checkpoint `ckpt` (it alone reads and writes them)."""
        if not self.active:
            return ckpt.exists()
        flag = mx.array(self.is_main and ckpt.exists(), dtype=mx.int32)
        return bool(mx.distributed.all_sum(flag, group=self.group).item())

    def share_state(self, trainer: "SAETrainer") -> None:
        """Give every rank rank 0's SAE, optimizer state, counters and position in the run."""
        if not self.active:
            return
        sae_state = distributed.broadcast(sae_tensors(trainer.sae))
        trainer.sae.update(tree_unflatten(list(sae_state.items())))
        opt_state = distributed.broadcast(dict(tree_flatten(trainer.optimizer.state)))
        trainer.optimizer.state = tree_unflatten(list(opt_state.items()))
        trainer.counters.update(distributed.broadcast(trainer.counters))
        position = mx.array([trainer.step, trainer.epoch, trainer.batch_in_epoch, trainer.any_dead], dtype=mx.int64)
        step, epoch, batch_in_epoch, any_dead = distributed.broadcast({"p": position})["p"].tolist()
        trainer.step, trainer.epoch, trainer.batch_in_epoch, trainer.any_dead = step, epoch, batch_in_epoch, bool(any_dead)
