"""The trace API as the model's own module tree: `model.layers[3].mlp.output.save()`.

An Envoy stands for a module (by path); its `.input` / `.output` are Ports, on which saves and
edits are declared inside an open `with model.trace(...)` or `with model.generate(...)` block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import mlx.core as mx
import numpy as np

from .anatomy import get_module, unknown_path_message
from .attention import ATTENTION_KINDS, SAVE_ONLY_KINDS, check_supported, n_heads
from .errors import TraceError
from .gradients import GradPort
from .tracing import Edit, EditFn, Interventions, Positions, Saved

if TYPE_CHECKING:
    from .model import InterpretableModel


class Port:
    """The input or output of one module inside a trace: save it or edit it.

    Edits take `positions`: None (all tokens), an int, a list of ints, or a slice, over the
    token axis (axis 1); negative positions count from the end of each forward call.
    """

    def __init__(self, model: "InterpretableModel", path: str, kind: str):
        self._model = model
        self._path = path
        self._kind = kind

    def _active(self) -> Interventions:
        return self._model._active_interventions(f"{self._path or 'model'}.{self._kind}")

    def save(self) -> Saved:
        """Keep this value; the returned handle holds it after the block exits."""
        return self._active().save(self._path, self._kind)

    @property
    def grad(self) -> GradPort:
        """The gradient of the trace's metric here: `model.layers[8].output.grad.save()`."""
        return GradPort(self._model, self._path, self._kind)

    def edit(self, fn: EditFn, positions: Positions = None, label: str | None = None) -> None:
        """Replace the value `a` by `fn(a)` (at `positions`); `fn` must return an array of a's
        shape and dtype. `label` names the edit in error messages."""
        if not callable(fn):
            raise TraceError(f"edit needs a function array -> array, got {type(fn).__name__}")
        if label is None:
            label = f"edit({getattr(fn, '__name__', type(fn).__name__)})"
        self._active().add_edit(self._path, self._kind, Edit(fn, positions, label))

    def zero(self, positions: Positions = None) -> None:
        self.edit(mx.zeros_like, positions, "zero()")

    def scale(self, factor: float, positions: Positions = None) -> None:
        self._finite("scale", factor=factor)
        self.edit(lambda a: a * factor, positions, f"scale({factor!r})")

    def add(self, vector, positions: Positions = None) -> None:
        """Add `vector` (broadcast against (batch, seq, d)), e.g. a steering direction."""
        vector = mx.array(vector)
        self.edit(lambda a: a + vector.astype(a.dtype), positions, f"add(<vector {tuple(vector.shape)}>)")

    def set(self, value, positions: Positions = None) -> None:
        """Replace the value by `value` (an array broadcast to the edited shape)."""
        value = mx.array(value)
        self.edit(lambda a: mx.broadcast_to(value.astype(a.dtype), a.shape), positions,
                  f"set(<value {tuple(value.shape)}>)")

    def clamp(self, min=None, max=None, positions: Positions = None) -> None:
        """Clip the value into [min, max] (either bound may be None, not both)."""
        if min is None and max is None:
            raise TraceError(f"clamp of {self._where()} needs min=, max= or both")
        self._finite("clamp", min=min, max=max)
        if min is not None and max is not None and np.any(np.asarray(min) > np.asarray(max)):
            raise TraceError(f"clamp of {self._where()} has min={min!r} above max={max!r}: swap them")
        self.edit(lambda a: mx.clip(a, min, max), positions, f"clamp({min!r}, {max!r})")

    def copy(self, from_row: int, to_rows: int | Sequence[int], positions: Positions = None) -> None:
        """Copy this value from batch row `from_row` into rows `to_rows` (at `positions`), within
        the one forward: with clean and corrupted prompts in one trace, this is activation
        patching, `model.layers[5].output.copy(from_row=0, to_rows=1, positions=[3])`."""
        targets = [to_rows] if isinstance(to_rows, int) else list(to_rows)
        rows = [from_row, *targets]
        if not targets or any(isinstance(r, bool) or not isinstance(r, int) for r in rows):
            raise TraceError(f"copy of {self._where()} needs int rows: from_row=int, to_rows=int or a list of ints")

        def copy_rows(a: mx.array) -> mx.array:
            if not all(-a.shape[0] <= r < a.shape[0] for r in rows):
                raise TraceError(
                    f"copy of {self._where()} from row {from_row} to {targets}: the batch has "
                    f"{a.shape[0]} rows (0..{a.shape[0] - 1}); pass rows inside it")
            out = mx.array(a)
            out[mx.array(targets)] = mx.broadcast_to(a[from_row], (len(targets), *a.shape[1:]))
            return out

        self.edit(copy_rows, positions, f"copy(from_row={from_row}, to_rows={to_rows!r})")

    def __setitem__(self, index, value) -> None:
        """`port[:, 3] = 0`: assign into the value at `index` (numpy-style, all axes)."""

        def assign(a: mx.array) -> mx.array:
            out = mx.array(a)
            out[index] = value
            return out

        self.edit(assign, label=f"[{index!r}] = ...")

    def _where(self) -> str:
        return f"{self._path or 'model'}.{self._kind}"

    def _finite(self, what: str, **values) -> None:
        for name, value in values.items():
            if value is not None and not np.all(np.isfinite(np.asarray(value, dtype=np.float64))):
                raise TraceError(f"{what} of {self._where()} got {name}={value!r}: pass a finite number")

    def __repr__(self) -> str:
        return f"Port({self._path or 'model'!r}, {self._kind})"


class Envoy:
    """A module of the model, addressed by path: `.output` / `.input` are its Ports in a trace.

    Child modules are Envoys too (`model.layers[3].mlp`); `.module` is the mlx module itself.
    Assigning `envoy.output = value_or_fn` declares an edit.
    """

    def __init__(self, model: "InterpretableModel", path: str):
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_path", path)

    @property
    def path(self) -> str:
        return self._path

    @property
    def module(self):
        return get_module(self._model.model, self._path)

    @property
    def output(self) -> Port:
        return Port(self._model, self._path, "output")

    @property
    def input(self) -> Port:
        return Port(self._model, self._path, "input")

    def __setattr__(self, name: str, value) -> None:
        if name not in ("output", "input"):
            raise AttributeError(f"cannot set {name!r} on a module envoy; set .output or .input")
        port = Port(self._model, self._path, name)
        if callable(value):
            port.edit(value)
        else:
            port.set(value)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        child = f"{self._path}.{name}" if self._path else name
        module = self.module
        if isinstance(module, dict) and name in module:
            value = module[name]
            return EnvoyList(self._model, child, len(value)) if isinstance(value, list) else Envoy(
                self._model, child
            )
        if name in ATTENTION_KINDS and (is_attention(self._model, self._path) or not hasattr(module, name)):
            return attention_port(self._model, self._path, name)  # `keys` also names dict.keys
        if hasattr(module, name):
            return getattr(module, name)
        raise AttributeError(unknown_path_message(self._model.model, child))

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Envoy({self._path or 'model'!r}: {type(self.module).__name__})"


class SaveOnlyPort(Port):
    """An attention pattern (batch, heads, query, key) or the queries / keys (batch, heads, seq,
    head_dim) the attention uses: these can be saved, not edited (edit `.heads` instead)."""

    def edit(self, fn: EditFn, positions: Positions = None, label: str | None = None) -> None:
        layer, attn = self._model.anatomy.layer_of(self._path), self._path.rpartition(".")[2]
        raise TraceError(
            f"{self._where()} can be saved, not edited: edit the per-head outputs instead, e.g. "
            f"model.layers[{layer}].{attn}.heads[0].zero()"
        )

    __setitem__ = edit


class HeadsPort(Port):
    """Per-head outputs of an attention module, before the output projection: (batch, seq, heads,
    head_dim). Save and edit them like any activation; `heads[h]` is head h alone."""

    def __init__(self, model: "InterpretableModel", path: str, head: int | None = None):
        super().__init__(model, path, "heads")
        self._head = head

    def __getitem__(self, head: int) -> "HeadsPort":
        count = n_heads(get_module(self._model.model, self._path))
        if isinstance(head, bool) or not isinstance(head, int) or self._head is not None:
            raise TraceError(f"index {self._where()} with one head number (an int), got {head!r}")
        if not -count <= head < count:
            raise TraceError(
                f"head {head} is out of range: {self._path} has {count} heads "
                f"(valid: 0..{count - 1}, or -1 for the last)"
            )
        return HeadsPort(self._model, self._path, head % count)

    def save(self) -> Saved:
        saved = super().save()
        return saved if self._head is None else HeadSaved(saved, self._head)

    def edit(self, fn: EditFn, positions: Positions = None, label: str | None = None) -> None:
        if self._head is None or not callable(fn):
            return super().edit(fn, positions, label)
        head, where = self._head, self._where()
        inner = Edit(fn, None, label or f"edit({getattr(fn, '__name__', type(fn).__name__)})")

        def on_head(a: mx.array) -> mx.array:
            part = a[:, :, head]
            out = mx.array(a)
            out[:, :, head] = inner._checked(fn(part), part, f"{where}[{head}]")
            return out

        super().edit(on_head, positions, f"{inner.label} of head {head}")


class HeadSaved(Saved):
    """One head's outputs (batch, seq, head_dim), read from the saved outputs of all heads."""

    def __init__(self, heads: Saved, head: int):
        super().__init__(heads.path, f"heads[{head}]")
        self._heads, self._head = heads, head

    @property
    def value(self) -> mx.array:
        return self._heads.value[:, :, self._head]

    def __repr__(self) -> str:
        return f"Saved({self.path!r}, {self.kind}, {'pending' if not self._heads._chunks else tuple(self.value.shape)})"


def is_attention(model: "InterpretableModel", path: str) -> bool:
    layer = model.anatomy.layer_of(path)
    return layer is not None and model.anatomy.hook_point(layer, "attn").path == path


def attention_port(model: "InterpretableModel", path: str, kind: str) -> Port:
    """`model.layers[i].self_attn.<kind>`: the pattern, queries, keys or per-head outputs."""
    if not is_attention(model, path):
        example = model.anatomy.hook_point(0, "attn").path
        raise TraceError(
            f"{kind} belongs to attention modules, and {path or 'the model'!r} is not one: use "
            f"model.layers[i].{example.rpartition('.')[2]}.{kind} (e.g. {example!r})"
        )
    check_supported(get_module(model.model, path), path)
    return SaveOnlyPort(model, path, kind) if kind in SAVE_ONLY_KINDS else HeadsPort(model, path)


class EnvoyList(Sequence):
    """A list of modules (the transformer blocks) as Envoys; index errors name the valid range."""

    def __init__(self, model: "InterpretableModel", path: str, length: int):
        self._model = model
        self._path = path
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[Envoy]:
        return (Envoy(self._model, f"{self._path}.{i}") for i in range(self._length))

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(self._length)[index]]
        if isinstance(index, bool) or not isinstance(index, int):
            raise TraceError(f"index {self._path} with an int, got {index!r}")
        if not -self._length <= index < self._length:
            raise TraceError(
                f"layer {index} is out of range: {self._path} has {self._length} entries "
                f"(valid: 0..{self._length - 1}, or -1 for the last)"
            )
        return Envoy(self._model, f"{self._path}.{index % self._length}")

    def __repr__(self) -> str:
        return f"EnvoyList({self._path!r}, {self._length})"
