"""Read and replace activations of any ``torch.nn.Module`` by module path.

A hook point is a module path (``transformer.h.5``, ``model.layers.12.mlp``) plus where to read:
the module's ``output`` (default) or its ``input`` (the first positional argument, or the
``hidden_states`` keyword). Tuple outputs (many transformer blocks return ``(hidden, ...)``) are
read at element ``tuple_index`` and, when replaced, rebuilt with the other elements unchanged.

:func:`capture` reads several hook points in one forward pass and stops the pass as soon as the
last of them has fired, by raising a private exception from that hook and catching it: later
layers never run.
"""

from __future__ import annotations

import difflib
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn

Where = Literal["output", "input"]


class HookError(ValueError):
    """A hook point is wrong: unknown module path, unreadable value, or a width mismatch."""


@dataclass(frozen=True)
class HookPoint:
    """Where to read activations: a module path, output or input, and the tuple element."""

    path: str
    where: Where = "output"
    tuple_index: int = 0

    @classmethod
    def parse(cls, text: str | HookPoint) -> HookPoint:
        """``"transformer.h.1"``, ``"transformer.h.1:input"`` or ``"blocks.0:output:1"``."""
        if isinstance(text, HookPoint):
            return text
        parts = text.split(":")
        if len(parts) > 3 or not parts[0]:
            raise HookError(f"bad hook {text!r}: write MODULE_PATH[:output|:input[:TUPLE_INDEX]], "
                            "e.g. transformer.h.1 or model.layers.3:input")
        where = parts[1] if len(parts) > 1 else "output"
        if where not in ("output", "input"):
            raise HookError(f"bad hook {text!r}: {where!r} must be 'output' or 'input'")
        try:
            index = int(parts[2]) if len(parts) > 2 else 0
        except ValueError as err:
            raise HookError(f"bad hook {text!r}: tuple index {parts[2]!r} is not an integer") from err
        return cls(parts[0], where, index)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        """The canonical text form (the default parts left out)."""
        text = self.path if self.where == "output" else f"{self.path}:input"
        if self.tuple_index:
            text = f"{self.path}:{self.where}:{self.tuple_index}"
        return text

    def __str__(self) -> str:
        return self.name


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at ``path``; an unknown path raises HookError listing the closest paths."""
    modules = dict(model.named_modules())
    if path in modules:
        return modules[path]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
    if not close:  # fall back to paths sharing the longest existing prefix
        prefix = path
        while prefix and not any(n.startswith(prefix) for n in names):
            prefix = prefix.rpartition(".")[0]
        close = [n for n in names if prefix and n.startswith(prefix)][:5]
    hint = f"closest existing paths: {', '.join(close)}" if close else (
        f"top-level modules: {', '.join(n for n in names if '.' not in n)}")
    raise HookError(f"model {type(model).__name__} has no module {path!r}; {hint}. "
                    "List them all with [n for n, _ in model.named_modules()]")


def select_tensor(value: Any, hook: HookPoint) -> Tensor:
    """The activation tensor inside a module output (tensor, tuple, or model-output object)."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, tuple | list) or hasattr(value, "to_tuple"):
        items = tuple(value.to_tuple()) if hasattr(value, "to_tuple") else tuple(value)
        if not -len(items) <= hook.tuple_index < len(items):
            raise HookError(f"hook {hook}: the module returned {len(items)} values, so tuple "
                            f"index {hook.tuple_index} does not exist")
        item = items[hook.tuple_index]
        if isinstance(item, Tensor):
            return item
        raise HookError(f"hook {hook}: element {hook.tuple_index} is a {type(item).__name__}, "
                        "not a tensor; pick another tuple index")
    raise HookError(f"hook {hook}: the module produced a {type(value).__name__}, not a tensor "
                    "or tuple of tensors; hook a different module")


def replace_tensor(value: Any, hook: HookPoint, new: Tensor) -> Any:
    """``value`` with the hooked tensor swapped for ``new``, keeping its tuple structure."""
    if isinstance(value, Tensor):
        return new
    if isinstance(value, tuple | list):
        items = list(value)
        items[hook.tuple_index] = new
        return type(value)(items) if isinstance(value, list) else tuple(items)
    raise HookError(f"hook {hook}: cannot replace a {type(value).__name__} output; hook a module "
                    "that returns a tensor or a tuple")


def _input_tensor(args: tuple[Any, ...], kwargs: dict[str, Any], hook: HookPoint) -> Tensor:
    if args:
        return select_tensor(args[0], hook)
    if isinstance(kwargs.get("hidden_states"), Tensor):
        return kwargs["hidden_states"]
    raise HookError(f"hook {hook}: the module was called without a positional input or a "
                    "hidden_states keyword; hook its output instead")


_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock held while saelab hooks are on ``model``.

    Module hooks are shared by every thread, so two threads capturing from one model at once
    would see (and stop) each other's passes; capture and splice hold this lock instead.
    """
    with _LOCKS_GUARD:
        if model not in _LOCKS:
            _LOCKS[model] = threading.RLock()
        return _LOCKS[model]


class _StopForward(Exception):
    """Raised from the last needed hook to end the forward pass early."""


def capture(model: nn.Module, hooks: Sequence[HookPoint | str],
            forward: Callable[[], Any], *, stop_early: bool = True) -> dict[HookPoint, Tensor]:
    """Run ``forward()`` and return the tensor at every hook point (detached).

    With ``stop_early`` the pass ends right after the last hook fires, so later layers are
    skipped. A module called several times in one pass is read at its first call.
    """
    points = [HookPoint.parse(h) for h in hooks]
    if not points:
        raise HookError("capture needs at least one hook point")
    captured: dict[HookPoint, Tensor] = {}
    with model_lock(model), _reading_hooks(model, points, captured, stop_early), \
            suppress(_StopForward):
        forward()
    _check_all_ran(points, captured)
    return captured


def capture_with_output(model: nn.Module, hooks: Sequence[HookPoint | str],
                        forward: Callable[[], Any]) -> tuple[Any, dict[HookPoint, Tensor]]:
    """Run the whole ``forward()`` and return its output and the tensor at every hook."""
    points = [HookPoint.parse(h) for h in hooks]
    captured: dict[HookPoint, Tensor] = {}
    with model_lock(model), _reading_hooks(model, points, captured, stop_early=False):
        output = forward()
    _check_all_ran(points, captured)
    return output, captured


def _check_all_ran(points: list[HookPoint], captured: dict[HookPoint, Tensor]) -> None:
    missing = [str(p) for p in points if p not in captured]
    if missing:
        raise HookError(f"hooks {missing} never ran during the forward pass; is the module used "
                        "by this model's forward?")


@contextmanager
def _reading_hooks(model: nn.Module, points: list[HookPoint], captured: dict[HookPoint, Tensor],
                   stop_early: bool) -> Iterator[None]:
    handles = []
    owner = threading.get_ident()

    def record(point: HookPoint, tensor: Tensor) -> None:
        if threading.get_ident() != owner:
            return  # another thread's forward pass through the same model
        if point not in captured:
            captured[point] = tensor.detach()
        if stop_early and len(captured) == len(set(points)):
            raise _StopForward

    try:
        for point in dict.fromkeys(points):
            module = resolve_module(model, point.path)
            if point.where == "output":
                handles.append(module.register_forward_hook(
                    lambda _m, _a, out, p=point: record(p, select_tensor(out, p))))
            else:
                handles.append(module.register_forward_pre_hook(
                    lambda _m, args, kwargs, p=point: record(p, _input_tensor(args, kwargs, p)),
                    with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def splice(model: nn.Module, hook: HookPoint | str,
           edit: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Within the block, the hooked tensor is replaced by ``edit(tensor)`` on every call.

    For an output hook the module's output is replaced (tuple structure kept); for an input
    hook the module's first input (positional, or the ``hidden_states`` keyword) is replaced.
    Only forward passes of the calling thread are changed.
    """
    point = HookPoint.parse(hook)
    module = resolve_module(model, point.path)
    owner = threading.get_ident()

    def on_output(_m: nn.Module, _a: Any, out: Any) -> Any:
        if threading.get_ident() != owner:
            return None
        return replace_tensor(out, point, edit(select_tensor(out, point)))

    def on_input(_m: nn.Module, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        if threading.get_ident() != owner:
            return None
        new = edit(_input_tensor(args, kwargs, point))
        if args:
            return (replace_tensor(args[0], point, new), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}

    with model_lock(model):
        handle = (module.register_forward_hook(on_output) if point.where == "output"
                  else module.register_forward_pre_hook(on_input, with_kwargs=True))
        try:
            yield
        finally:
            handle.remove()


def check_width(hook: HookPoint | str, width: int, sae_d_in: int, sae_name: str = "the SAE") -> None:
    """Raise HookError when the activations at ``hook`` and the SAE differ in width."""
    if width != sae_d_in:
        raise HookError(f"hook {hook} gives activations of width {width} but {sae_name} expects "
                        f"d_in={sae_d_in}; use the hook the SAE was trained on (or an SAE "
                        f"trained on width {width})")


def hook_width(model: nn.Module, hook: HookPoint | str, forward: Callable[[], Any]) -> int:
    """The last-dimension width at ``hook`` (one forward pass, stopped early)."""
    point = HookPoint.parse(hook)
    return int(capture(model, [point], forward)[point].shape[-1])

