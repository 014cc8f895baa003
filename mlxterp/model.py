"""InterpretableModel: an mlx-lm model with tracing, generation with edits, and SAE training.

The package's facade: it joins the layers below (loading, tracing, activations, sae) and adds
no logic of its own beyond naming things.
"""

from __future__ import annotations

import functools
import hashlib
import numbers
import os
import warnings
from typing import Any, Iterable, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .anatomy import Anatomy, get_module, module_names, resolve_anatomy, unembed
from .envoy import Envoy, EnvoyList, Port
from .errors import ContextLengthWarning, TraceError
from .generation import Generation
from .hookpoint import HookPoint
from .loading import load_model
from .pipeline import DEFAULT_COMPONENT, train_sae_on_model, train_saes_on_model
from .platform import warn_if_slow_blas
from .sae import SAE, SAEConfig, load_sae
from .tracing import Interventions, Trace


class InterpretableModel:
    """A language model whose activations can be saved and edited.

    `spec` is a Hugging Face repo id or local mlx-lm folder, a `.gguf` file, an already loaded
    `(model, tokenizer)` pair, or None / "default" for the embedded SmolLM2-135M-Instruct.

    >>> model = InterpretableModel.default()
    >>> with model.trace("The capital of France is") as trace:
    ...     logits = model.output.save()
    >>> trace.activations["model.layers.10"].shape  # (batch, seq, d_model)
    """

    def __init__(self, spec: Any = None, tokenizer: Any = None, name: str | None = None):
        warn_if_slow_blas()
        loaded = load_model((spec, tokenizer) if tokenizer is not None else spec)
        self.model: nn.Module = loaded.model
        self.tokenizer = loaded.tokenizer
        self.name: str = name or loaded.name
        self.anatomy: Anatomy = resolve_anatomy(self.model)
        self._interventions: Interventions | None = None

    @classmethod
    def default(cls) -> "InterpretableModel":
        """The embedded default model: SmolLM2-135M-Instruct, offline."""
        return cls("default")

    # -- anatomy -------------------------------------------------------------------------
    @property
    def layers(self) -> EnvoyList:
        """The transformer blocks, as Envoys: `model.layers[3].mlp.output.save()`."""
        return EnvoyList(self, self.anatomy.layers_path, self.anatomy.n_layers)

    @property
    def output(self) -> Port:
        """The model's output: `model.output.save()` inside a trace keeps the logits."""
        return Port(self, "", "output")

    @property
    def n_layers(self) -> int:
        return self.anatomy.n_layers

    @property
    def d_model(self) -> int:
        return int(get_module(self.model, self.anatomy.norm_path).weight.shape[-1])

    @property
    def vocab_size(self) -> int:
        return int(get_module(self.model, self.anatomy.embed_path).weight.shape[0])

    @property
    def final_norm(self) -> nn.Module:
        return get_module(self.model, self.anatomy.norm_path)

    @property
    def embedding(self) -> nn.Module:
        return get_module(self.model, self.anatomy.embed_path)

    def module(self, path: str) -> Envoy:
        """The Envoy of the module at `path` (e.g. "model.layers.3.mlp.gate_proj")."""
        get_module(self.model, path)
        return Envoy(self, path)

    def module_names(self) -> list[str]:
        """Every module path, as `trace.activations` and `model.module(...)` spell them."""
        return module_names(self.model)

    def hook_point(self, layer: int, component: str = "output") -> HookPoint:
        """The HookPoint of (layer, component), component "mlp", "attn" or "output" (also "resid"),
        or of a module path given as `component` (e.g. "model.layers.3.mlp"); `.path` is the
        module path `trace.activations` uses."""
        return self.anatomy.parse_hook_point(component, layer)

    @functools.cached_property
    def fingerprint(self) -> str:
        """What identifies this model whatever it was loaded as: a hash of its architecture,
        dimensions and a few embedding rows (rounded to float16). SAEs store it."""
        ids = sorted({0, 1, 2, 3, self.vocab_size // 2, self.vocab_size - 1})
        rows = self.embedding(mx.array(ids)).astype(mx.float16)
        digest = hashlib.sha256(f"{type(self.model).__name__}|{self.n_layers}|{self.d_model}|{self.vocab_size}|".encode())
        digest.update(np.array(rows).tobytes())
        return digest.hexdigest()[:16]

    def standard_paths(self) -> list[str]:
        """What a trace keeps when nothing is asked: every block's output, MLP and attention."""
        return [self.anatomy.hook_point(i, c).path for i in range(self.n_layers) for c in ("output", "mlp", "attn")]

    def last_needed_path(self, paths: Iterable[str]) -> str | None:
        """The module after which a forward touching `paths` can stop, or None for all of it."""
        layers = []
        for path in paths:
            if path == self.anatomy.embed_path or path.startswith(self.anatomy.embed_path + "."):
                continue
            layer = self.anatomy.layer_of(path)
            if layer is None:
                return None
            layers.append(layer)
        if not layers:
            return self.anatomy.embed_path
        return self.anatomy.layer_path(max(layers))

    def unembed(self, hidden: mx.array, apply_norm: bool = True) -> mx.array:
        """Logits (..., vocab) from residual-stream vectors (..., d_model), through the final norm."""
        if apply_norm:
            hidden = self.final_norm(hidden)
        return unembed(self.model, self.anatomy, hidden)

    # -- tokens --------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (with BOS only where the tokenizer adds one)."""
        return list(self.tokenizer.encode(text))

    def decode(self, ids: Sequence[int] | mx.array) -> str:
        return self.tokenizer.decode(_as_id_list(ids))

    def to_str_tokens(self, text_or_ids: str | Sequence[int] | mx.array) -> list[str]:
        """Each token of a text (or of token ids) as a string."""
        ids = self.encode(text_or_ids) if isinstance(text_or_ids, str) else _as_id_list(text_or_ids)
        return [self.tokenizer.decode([i]) for i in ids]

    @property
    def context_length(self) -> int | None:
        """The longest sequence the model was trained on (`max_position_embeddings` or GPT-2's
        `n_positions` in its args), or None when the model does not say."""
        args = getattr(self.model, "args", None)
        for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(args, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def check_context(self, n_tokens: int, what: str) -> None:
        """Warn when `what` runs `n_tokens` tokens, past the model's context length."""
        limit = self.context_length
        if limit is not None and n_tokens > limit:
            warnings.warn(
                f"{what} runs {n_tokens} tokens, past {self.name}'s context of {limit} "
                "(max_position_embeddings): outputs past it are unreliable; split the text into "
                f"pieces of at most {limit} tokens", ContextLengthWarning, stacklevel=3)

    @property
    def pad_token_id(self) -> int:
        for attr in ("pad_token_id", "eos_token_id"):
            value = getattr(self.tokenizer, attr, None)
            if isinstance(value, int):
                return value
        return 0

    def tokenize_batch(self, inputs) -> tuple[mx.array, mx.array]:
        """Token ids (batch, seq) int32 and mask (batch, seq) of a string, strings or token ids.

        Several texts are right-padded: with causal attention no real token ever attends to a
        pad, so real positions compute exactly as unpadded; `mask` is 0 on pads.
        """
        if isinstance(inputs, str):
            rows = [self.encode(inputs)]
        elif isinstance(inputs, (mx.array, np.ndarray)):
            rows = _array_rows(inputs)
        elif isinstance(inputs, (list, tuple)) and inputs and all(isinstance(t, str) for t in inputs):
            rows = [self.encode(t) for t in inputs]
        elif isinstance(inputs, (list, tuple)) and inputs and all(isinstance(t, numbers.Number) for t in inputs):
            rows = [list(inputs)]
        elif isinstance(inputs, (list, tuple)) and inputs and all(
            isinstance(t, (list, tuple)) for t in inputs
        ):
            rows = [list(t) for t in inputs]
        else:
            raise TraceError(
                "inputs must be a non-empty string, a list of strings, or token ids "
                f"(list of ints, list of lists, or an mx.array); got {_describe(inputs)}"
            )
        if not rows or any(len(r) == 0 for r in rows):
            raise TraceError(
                "an input tokenized to no tokens: pass non-empty text (or at least one token id)"
            )
        wrong = [t for r in rows for t in r if isinstance(t, bool) or not isinstance(t, numbers.Integral)]
        if wrong:
            raise TraceError(
                f"token ids must be integers, got {wrong[0]!r} ({type(wrong[0]).__name__}): pass int "
                "ids (model.encode(text) gives them), or the text itself"
            )
        bad = [t for r in rows for t in r if not 0 <= int(t) < self.vocab_size]
        if bad:
            raise TraceError(f"token id {bad[0]} is outside the vocabulary (size {self.vocab_size})")
        self.check_context(max(len(r) for r in rows), "the input")
        length = max(len(r) for r in rows)
        pad = self.pad_token_id
        tokens = mx.array([[int(t) for t in r] + [pad] * (length - len(r)) for r in rows], dtype=mx.int32)
        mask = mx.array([[1] * len(r) + [0] * (length - len(r)) for r in rows], dtype=mx.int32)
        return tokens, mask

    # -- tracing and generation ----------------------------------------------------------
    def trace(self, inputs, default_capture: bool = True) -> Trace:
        """A context in which to save and edit activations; the forward runs at block exit.

        With nothing saved explicitly (and `default_capture`), every block's output, MLP and
        attention output are kept in `trace.activations`.
        """
        return Trace(self, inputs, default_capture=default_capture)

    def generate(
        self,
        prompt: str,
        max_tokens: int = 50,
        temperature: float = 0.0,
        seed: int | None = None,
        chat: bool = False,
        stop_at_eos: bool = True,
    ) -> Generation:
        """Generate from `prompt` with edits declared in a `with` block applied at every step.

        `with model.generate("Once", max_tokens=20) as gen: model.layers[5].output.add(v)`
        then `gen.text`; or without a block, `model.generate("Once").text`. Greedy when
        `temperature` is 0 (deterministic).
        """
        return Generation(self, prompt, max_tokens, temperature, seed, chat, stop_at_eos)

    # -- sparse autoencoders --------------------------------------------------------------
    def train_sae(
        self,
        layer: int,
        dataset: Any = None,
        component: str = DEFAULT_COMPONENT,
        config: SAEConfig | None = None,
        save_path: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        max_tokens: int | None = None,
        progress: bool = True,
    ) -> SAE:
        """Train an SAE on the activations of (`layer`, `component`) over `dataset`.

        `dataset`: a list of texts, a .txt file or folder, a Hugging Face dataset or its name,
        or None for the bundled corpus. `component`: "mlp" (default), "attn" or "output"
        (residual stream). `config`: an `SAEConfig` (defaults documented in docs/sae.md). With
        `save_path` the SAE is saved there (with checkpoints on the way, resumed if present);
        with `cache_dir` activations are cached on disk. `max_tokens` caps tokens per epoch.
        """
        return train_sae_on_model(self, layer, dataset, component, config, save_path, cache_dir,
                                  max_tokens, progress)

    def train_saes(self, hook_points: str | Sequence[str] = (), dataset: Any = None, config: SAEConfig | None = None,
                   **options: Any) -> dict[str, SAE]:
        """Train one SAE per hook point matching `hook_points` ("layers.*.mlp", ...) and the
        transcoders of `transcoders=[layer, ...]` / `skip_transcoders=[...]`, from one forward per
        batch; returns them by name ("layers.3.mlp", "layers.6.transcoder"). Options: save_dir,
        cache_dir, max_tokens, progress (`mlxterp.pipeline.train_saes_on_model`; docs/sae.md)."""
        return train_saes_on_model(self, hook_points, dataset, config, **options)

    def load_sae(
        self, path: str | os.PathLike, layer: int | None = None, component: str | None = None, strict: bool = True,
        hookpoint: str | None = None, sae_id: str | None = None, subfolder: str | None = None,
    ) -> SAE:
        """Load a saved SAE (mlxterp file, a SAELens, sparsify or Gemma Scope folder, or a hub release
        with `sae_id` / repo with `subfolder`), refusing one trained on another model (or
        layer/component, if given); `mlxterp.load_sae(path, model=model, ...)`. A string in
        `layer`'s place is the SAE id: `model.load_sae("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical")`."""
        if isinstance(layer, str):
            layer, sae_id = None, layer
        return load_sae(path, self, layer, component, strict, hookpoint, sae_id, subfolder)

    def _enter(self, interventions: Interventions) -> None:
        if self._interventions is not None:
            raise TraceError(
                "a trace or generation is already open on this model: finish it before opening another"
            )
        self._interventions = interventions

    def _exit(self, interventions: Interventions) -> None:
        if self._interventions is interventions:
            self._interventions = None

    def _active_interventions(self, what: str) -> Interventions:
        if self._interventions is None:
            raise TraceError(
                f"{what} is only available inside `with model.trace(...)` or "
                "`with model.generate(...)`"
            )
        return self._interventions

    def __repr__(self) -> str:
        return (
            f"InterpretableModel({self.name!r}, layers={self.n_layers}, d_model={self.d_model}, "
            f"vocab={self.vocab_size})"
        )


def _as_id_list(ids) -> list[int]:
    if isinstance(ids, mx.array):
        return [int(i) for i in ids.reshape(-1).tolist()]
    return [int(i) for i in ids]


def _array_rows(ids) -> list[list]:
    """Rows of token ids from a (seq,) or (batch, seq) mx/numpy array of integers."""
    kind = str(ids.dtype)
    if ids.ndim not in (1, 2):
        raise TraceError(
            f"token ids must be an array of shape (seq,) or (batch, seq), got shape {tuple(ids.shape)}: "
            "pass token ids, not activations, and reshape a batch to (batch, seq)"
        )
    if "int" not in kind:
        raise TraceError(
            f"token ids must be an integer array, got {kind}: float ids would be truncated; "
            "pass ids.astype(mx.int32) if they are whole numbers"
        )
    rows = ids.tolist()
    return rows if ids.ndim == 2 else [rows]


def _describe(value) -> str:
    if isinstance(value, (list, tuple)) and any(item is Ellipsis for item in value):
        return (f"a {type(value).__name__} containing `...` (in examples it stands for more of your "
                "own texts: replace it with strings)")
    if isinstance(value, (list, tuple)):
        return f"an empty {type(value).__name__}" if not value else f"a {type(value).__name__} of mixed items"
    return type(value).__name__
