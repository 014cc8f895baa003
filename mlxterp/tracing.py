"""The trace context: run a model once, saving and editing module inputs and outputs by path.

Inside `with model.trace(inputs) as trace:` a user declares what to save and how to edit; the
forward pass runs when the block exits, with every edit applied. Modules are swapped for hooks
only for the duration of that forward and are always restored.
"""

from __future__ import annotations

import contextlib
import numbers
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import mlx.core as mx

from .anatomy import get_module, unknown_path_message
from .attention import ATTENTION_KINDS, mask_pattern, recompute_attention
from .errors import NotSavedError, TraceError
from .gradients import add_zero, declare_metric, run_with_gradients

if TYPE_CHECKING:
    from .model import InterpretableModel

Positions = int | Sequence[int] | slice | None
EditFn = Callable[[mx.array], mx.array]


class StopForward(Exception):
    """Raised by the hook of the last module a trace needs, to skip the rest of the forward."""


class Saved:
    """A value saved inside a trace; after the block it holds the array in `.value`.

    It also behaves like the array for the common cases (`shape`, indexing, numpy conversion).
    """

    def __init__(self, path: str, kind: str):
        self.path = path
        self.kind = kind
        self._chunks: list[mx.array] = []

    @property
    def value(self) -> mx.array:
        if not self._chunks:
            raise TraceError(
                f"the {self.kind} of {self.path or 'the model'!r} is not available yet: "
                "saved values are filled in when the `with model.trace(...)` block exits"
            )
        if len(self._chunks) > 1:
            self._chunks = [mx.concatenate(self._chunks, axis=1)]
        return self._chunks[0]

    def _record(self, array: mx.array) -> None:
        self._chunks.append(array)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.value, name)

    def __getitem__(self, index):
        return self.value[index]

    def __array__(self, dtype=None, copy=None):
        import numpy as np

        return np.asarray(self.value, dtype=dtype)

    def __repr__(self) -> str:
        state = f"shape={tuple(self._chunks[0].shape)}" if self._chunks else "pending"
        return f"Saved({self.path or 'logits'!r}, {self.kind}, {state})"


@dataclass
class Edit:
    """A function applied to a module's input or output at chosen token positions.

    `label` is how error messages name the edit (e.g. "zero(positions=[50])").
    """

    fn: EditFn
    positions: Positions = None
    label: str = "edit"
    takes_index: bool = False  # fn(array, index) edits the whole array at `index` itself

    def __post_init__(self):
        # One concrete sequence, read on every forward call (a generator would be used up).
        if hasattr(self.positions, "tolist"):
            self.positions = self.positions.tolist()
        if self.positions is not None and not isinstance(self.positions, (int, slice)):
            self.positions = tuple(self.positions) if isinstance(self.positions, Iterable) else self.positions

    def apply(self, array: mx.array, offset: int, where: str = "") -> mx.array:
        index = None if self.positions is None else local_positions(self.positions, offset, array.shape[1])
        if self.positions is not None and index is None:
            return array
        if self.positions is None or self.takes_index:
            return self._checked(self.fn(array, index) if self.takes_index else self.fn(array), array, where)
        part = array[:, index]
        edited = mx.array(array)
        edited[:, index] = self._checked(self.fn(part), part, where)
        return edited

    def check_positions(self, length: int, horizon: int, where: str) -> None:
        """Refuse positions outside the sequence: `length` tokens in the first forward call,
        `horizon` over the whole run (more than `length` in generation, where later steps add
        one token each). Negative positions count back from the end of each call, so they
        must fit in the first one."""
        positions = self.positions
        if positions is None or isinstance(positions, slice):
            return
        items = list(positions) if isinstance(positions, tuple) else [positions]
        wrong = [p for p in items if isinstance(p, bool) or not isinstance(p, numbers.Integral)]
        if wrong or not items:
            raise TraceError(
                f"the edit {self.label} of {where} has positions {positions!r}: pass None, an int, "
                "a non-empty list of ints or a slice over the token axis"
            )
        bad = [p for p in items if (p >= horizon if p >= 0 else -p > length)]
        if bad:
            span = (f"the input has {length} tokens (positions 0..{length - 1}, or -{length}..-1 "
                    "from the end)")
            if horizon > length:
                span = (f"the prompt has {length} tokens and generation runs {horizon} in all "
                        f"(positions 0..{horizon - 1}; negative ones count back from the newest "
                        f"token, at most -{length})")
            raise TraceError(
                f"the edit {self.label} of {where} would do nothing at positions {bad}: {span}. "
                "Pass positions inside the sequence."
            )

    def _checked(self, out: Any, like: mx.array, where: str) -> mx.array:
        if not isinstance(out, mx.array):
            raise TraceError(
                f"the edit {self.label} of {where} returned {type(out).__name__}, not an array: an "
                f"edit is a function a -> edited a of the same shape {tuple(like.shape)}, e.g. "
                "`lambda a: a * 2` (did the function forget to `return`?)"
            )
        if out.shape != like.shape:
            raise TraceError(
                f"the edit {self.label} of {where} returned shape {tuple(out.shape)} for a value of "
                f"shape {tuple(like.shape)}: an edit must keep the shape (to edit some tokens only, "
                "pass positions=... instead of slicing)"
            )
        if out.dtype != like.dtype:
            raise TraceError(
                f"the edit {self.label} of {where} returned {out.dtype} for a {like.dtype} value: "
                "return the same dtype, e.g. `(...).astype(a.dtype)`"
            )
        return out


def local_positions(positions: Positions, offset: int, length: int):
    """Map absolute token positions to indices into a call covering [offset, offset + length).

    Negative positions count back from the end of each forward call (-1 is the newest token),
    so that an edit at -1 follows the newest token during generation. Returns None when no
    position falls inside this call.
    """
    if isinstance(positions, slice):
        positions = range(offset + length)[positions]
    if isinstance(positions, int):
        positions = [positions]
    local = sorted(
        {p + length if p < 0 else p - offset for p in positions} & set(range(length))
    )
    return mx.array(local, dtype=mx.int32) if local else None


class SavedValues(dict):
    """Saved arrays by module path (`trace.activations`, `trace.inputs`); a path that was not
    saved raises NotSavedError saying what was saved and how to save it."""

    def __init__(self, root, kind: str, layers_path: str = "", block: str = "trace"):
        super().__init__()
        self._root = root
        self._kind = kind
        self._layers_path = layers_path
        self._block = block
        self.logits_saved = False

    def __missing__(self, path):
        try:
            get_module(self._root, path) if isinstance(path, str) else None
        except TraceError:
            raise NotSavedError(unknown_path_message(self._root, path)) from None
        prefix = f"{self._layers_path}."
        block = path[len(prefix):] if self._layers_path and isinstance(path, str) and path.startswith(prefix) else ""
        port = (f"model.layers[{block}].{self._kind}.save()" if block.isdigit()
                else f"model.module({path!r}).{self._kind}.save()")
        saved = [repr(p) for p in sorted(self)] + (["the logits (trace.logits)"] if self.logits_saved else [])
        default = (", or save nothing at all: a trace with nothing saved keeps every block's output, "
                   "mlp and attn") if self._kind == "output" and self._block == "trace" else ""
        raise NotSavedError(
            f"the {self._kind} of {path!r} was not saved in this {self._block} (saved: "
            f"{', '.join(saved) or 'nothing'}). Save it inside the `with model.{self._block}(...)` block "
            f"with `{port}`{default}"
        )


@dataclass
class Interventions:
    """What a trace or a generation saves and edits, keyed by (module path, "input"/"output")."""

    saves: dict[tuple[str, str], Saved] = field(default_factory=dict)
    edits: dict[tuple[str, str], list[Edit]] = field(default_factory=dict)
    wants_logits: bool = False
    grads: dict[tuple[str, str], Saved] = field(default_factory=dict)  # see gradients.py
    metric: tuple[Callable[[], mx.array], Saved] | None = None
    runner: "HookedRun | None" = field(default=None, repr=False)  # set during the forward

    def save(self, path: str, kind: str) -> Saved:
        if path == "":
            self.wants_logits = True
        return self.saves.setdefault((path, kind), Saved(path, kind))

    def add_edit(self, path: str, kind: str, edit: Edit) -> None:
        if path == "":
            raise TraceError(
                "the model's output (logits) cannot be edited inside the forward; edit the "
                "last layer or the final norm instead, or post-process the saved logits"
            )
        self.edits.setdefault((path, kind), []).append(edit)

    def save_grad(self, path: str, kind: str) -> Saved:
        if path == "":
            self.wants_logits = True
        return self.grads.setdefault((path, kind), Saved(path, f"{kind} gradient"))

    def inner(self, path: str, kind: str, array: mx.array) -> mx.array:
        """Save, edit or take the gradient of a value computed inside an edit (an SAE's codes)."""
        runner = self.runner
        return runner.process(path, kind, array) if runner is not None and (path, kind) in runner.touched else array

    def paths(self) -> set[str]:
        return {p for p, _ in self.saves} | {p for p, _ in self.edits} | {p for p, _ in self.grads}


class Hook:
    """Stands in for a module during a forward: edits and saves its input and output."""

    def __init__(self, module, path: str, runner: "HookedRun"):
        self.module = module
        self.path = path
        self.runner = runner

    def __call__(self, *args, **kwargs):
        runner = self.runner
        if args and (self.path, "input") in runner.touched:
            args = (runner.process(self.path, "input", args[0]), *args[1:])
        kinds = runner.attention.get(self.path)
        out = (recompute_attention(self.module, args, kwargs, lambda kind, a: runner.process(self.path, kind, a), kinds)
               if kinds else self.module(*args, **kwargs))
        if (self.path, "output") in runner.touched:
            out = runner.process(self.path, "output", out)
        if self.path == runner.stop_path:
            raise StopForward
        return out

    def __getattr__(self, name: str) -> Any:
        # mlx-lm code reads attributes of blocks (e.g. `layer.use_sliding`): answer for the module.
        return getattr(self.module, name)


class HookedRun:
    """Installs hooks for a set of interventions and applies them on each call."""

    def __init__(self, interventions: Interventions, stop_path: str | None, horizon: int | None = None):
        self.interventions = interventions
        self.stop_path = stop_path
        self.horizon = horizon  # tokens over the whole run (generation); None: the first call's
        self.offset = 0
        self.touched = set(interventions.saves) | set(interventions.edits) | set(interventions.grads)
        self.deltas: dict | None = None  # gradients.py: zeros added at the gradient points
        self.shapes: dict = {}
        self.attention: dict[str, set[str]] = {}  # attention module path -> kinds asked of it
        for path, kind in self.touched:
            if kind in ATTENTION_KINDS:
                self.attention.setdefault(path, set()).add(kind)

    def process(self, path: str, kind: str, array: mx.array) -> mx.array:
        key = (path, kind)
        if not isinstance(array, mx.array):
            raise TraceError(
                f"the {kind} of {path!r} is a {type(array).__name__}, not an array; "
                "only array inputs and outputs can be saved or edited"
            )
        where = f"{path or 'model'}.{kind}"
        for edit in self.interventions.edits.get(key, ()):
            if self.offset == 0 and array.ndim >= 2:
                edit.check_positions(array.shape[1], self.horizon or array.shape[1], where)
            array = edit.apply(array, self.offset, where)
        if key in self.interventions.grads:
            array = add_zero(self, key, array)
        if key in self.interventions.saves:
            self.interventions.saves[key]._record(array)
        return array

    @contextlib.contextmanager
    def installed(self, root) -> Iterator[None]:
        """Swap each touched module (and the stop module) for a Hook; always restore them."""
        paths = {p for p, _ in self.touched if p} | ({self.stop_path} if self.stop_path else set())
        swapped = []
        self.interventions.runner = self
        try:
            # Deepest first, so a parent is swapped only after its hooked children.
            for path in sorted(paths, key=lambda p: -p.count(".")):
                parent_path, _, name = path.rpartition(".")
                parent = get_module(root, parent_path)
                original = parent[int(name)] if isinstance(parent, list) else parent[name]
                hook = Hook(original, path, self)
                if isinstance(parent, list):
                    parent[int(name)] = hook
                else:
                    parent[name] = hook
                swapped.append((parent, name, original))
            yield
        finally:
            self.interventions.runner = None
            for parent, name, original in reversed(swapped):
                if isinstance(parent, list):
                    parent[int(name)] = original
                else:
                    parent[name] = original


class InterventionBlock:
    """A `with` block on `self.model` in which saves and edits (`self.interventions`) are
    declared; `run()` executes them when the block exits without an error."""

    model: Any
    interventions: Interventions

    def __enter__(self):
        self.model._enter(self.interventions)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.model._exit(self.interventions)
        if exc_type is None:
            self.run()
        return False

    def run(self) -> None:
        raise NotImplementedError


class Trace(InterventionBlock):
    """One forward pass with saves and edits declared in a `with` block.

    After the block: `trace.activations[path]` holds each saved module output
    (batch, seq, d_model), `trace.inputs[path]` each saved input, `trace.logits` the logits
    when `model.output.save()` was asked for, `trace.tokens` / `trace.mask` the (batch, seq)
    token ids and attention mask (0 on padding; padded positions hold no real token).
    """

    def __init__(self, model: "InterpretableModel", inputs, default_capture: bool = True):
        self.model = model
        self.tokens, self.mask = model.tokenize_batch(inputs)
        self.interventions = Interventions()
        self.default_capture = default_capture
        self.activations = SavedValues(model.model, "output", model.anatomy.layers_path)
        self.inputs = SavedValues(model.model, "input", model.anatomy.layers_path)
        self.logits: mx.array | None = None

    def save(self, path: str, kind: str = "output") -> Saved:
        """Save the output (or input) of the module at `path`, e.g. "model.layers.3.mlp"."""
        get_module(self.model.model, path)
        return self.interventions.save(path, kind)

    def run(self) -> None:
        """Run the forward with the declared interventions and fill in the saved values."""
        interventions = self.interventions
        if self.default_capture and not interventions.saves:
            for path in self.model.standard_paths():
                interventions.save(path, "output")
        for path in interventions.paths():
            if isinstance(get_module(self.model.model, path), list):
                raise TraceError(f"{path!r} is a list of modules: index it, e.g. {path}.0")
        stop = None if interventions.wants_logits else self.model.last_needed_path(interventions.paths())
        runner = HookedRun(interventions, stop)
        if interventions.grads or interventions.metric:
            run_with_gradients(lambda: self._forward(runner), runner, self.mask)
        else:
            self._forward(runner)
        values = [s.value for s in interventions.saves.values() if s._chunks]
        mx.eval(values)
        for (path, kind), saved in interventions.saves.items():
            if not saved._chunks:
                continue
            if path == "":
                self.logits = saved.value
                self.activations.logits_saved = True
            elif kind == "output":
                self.activations[path] = saved.value
            elif kind == "input":
                self.inputs[path] = saved.value
            elif kind == "pattern":
                saved._chunks = [mask_pattern(saved.value, self.mask)]

    def _forward(self, runner: HookedRun) -> mx.array | None:
        with runner.installed(self.model.model):
            try:
                logits = self.model.model(self.tokens)
            except StopForward:
                logits = None
        if self.interventions.wants_logits:
            logits = runner.process("", "output", logits)
        return logits

    def metric(self, fn: Callable[[], mx.array]) -> Saved:
        """Declare the scalar metric `.grad.save()` differentiates (see gradients.py)."""
        return declare_metric(self, fn, Saved("", "metric"))

    @property
    def output(self) -> mx.array | None:
        """The logits (batch, seq, vocab), when `model.output.save()` was asked for."""
        return self.logits
