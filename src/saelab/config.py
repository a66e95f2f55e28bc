"""One typed config tree for the CLI, config files and checkpoints.

Configs are plain dataclasses. Every field carries its help text in ``metadata["help"]``;
from that one declaration this module builds argparse flags, reads JSON/TOML files strictly
(unknown keys and wrong types are errors, not silently ignored) and writes JSON back.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value, file or combination is invalid. The message says which and how to fix it."""


def option(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with help text (used for ``--help`` and the docs)."""
    metadata = {"help": help}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a JSON/TOML value to ``tp``, or raise ConfigError naming the field."""
    inner, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: null is not allowed here (expected {_type_name(tp)})")
    tp = inner
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table/object, got {type(value).__name__}")
        return from_dict(tp, value, where=where)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table/object, got {type(value).__name__}")
        _, val_tp = get_args(tp)
        return {str(k): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a dict, strictly: unknown keys and bad types raise."""
    assert dataclasses.is_dataclass(cls)
    hints = _field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}: " if where else ""
        raise ConfigError(
            f"{prefix}unknown option(s) {unknown} for {cls.__name__}; "
            f"valid options are {sorted(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where or cls.__name__}: missing required option(s) {missing}")
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(obj)


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML config file into a dict."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text)
        return json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"config file {path} is not valid {path.suffix[1:].upper()}: {err}") from err


# ---------------------------------------------------------------------------- argparse generation


def _flag(name: str, prefix: str) -> str:
    return "--" + (prefix + name).replace("_", "-")


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    prefix: str = "",
    skip: tuple[str, ...] = (),
    flag_prefix: str | None = None,
) -> None:
    """Add one flag per scalar/list field of ``cls``; defaults stay None so files can fill them.

    ``prefix`` namespaces the argparse destinations (see :func:`args_to_dict`); the flags use
    ``flag_prefix`` (default: the same prefix).
    """
    flag_prefix = prefix if flag_prefix is None else flag_prefix
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip:
            continue
        tp, _ = _strip_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            continue
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        if default is not None and default != [] and default != "":
            help_text += f" (default: {default})"
        flag = _flag(f.name, flag_prefix)
        dest = (prefix + f.name).replace("-", "_").replace(".", "__")
        origin = get_origin(tp)
        if tp is bool:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif origin is Literal:
            parser.add_argument(flag, dest=dest, choices=list(get_args(tp)), default=None,
                                help=help_text)
        elif origin is list:
            (item,) = get_args(tp)
            parser.add_argument(flag, dest=dest, nargs="+", type=item, default=None, help=help_text)
        elif tp in (int, float, str):
            parser.add_argument(flag, dest=dest, type=tp, default=None, metavar=tp.__name__.upper(),
                                help=help_text)


def args_to_dict(ns: argparse.Namespace, cls: type, prefix: str = "") -> dict[str, Any]:
    """The flags of ``cls`` that the user actually set, as a dict for :func:`from_dict`."""
    out = {}
    for f in dataclasses.fields(cls):
        dest = (prefix + f.name).replace("-", "_").replace(".", "__")
        value = getattr(ns, dest, None)
        if value is not None:
            out[f.name] = value
    return out


def describe(cls: type) -> list[tuple[str, str, str]]:
    """(name, default, help) rows for docs and ``saelab architectures``."""
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else "(required)"
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        rows.append((f.name, str(default), f.metadata.get("help", "")))
    return rows
