"""Dataclass configs from YAML presets plus `key=value` command-line overrides.

YAML holds values only. Files are merged in order (later wins), then overrides; nested dataclasses
are addressed with dots (`model.hidden_dim=64`). Unknown keys are an error that lists the valid ones;
a key that was renamed (RENAMED_KEYS) is read under its new name with a one-line warning, so configs
saved beside older checkpoints still load and resume.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
import warnings
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

# Old key -> its new name. torch_threads: PPO's thread count, now num_threads as in the Decision config.
RENAMED_KEYS: dict[str, str] = {"torch_threads": "num_threads"}


class RenamedKeyWarning(UserWarning):
    """A config used a key under its old name (the CLI prints it as one line)."""


def rename_old_keys(
    data: dict[str, Any], field_names: set[str], where: str = "", warn: bool = True
) -> dict[str, Any]:
    """`data` with each old key of RENAMED_KEYS under its new name, where `field_names` has the new
    one and not the old; when both are given the new key's value wins."""
    renamed = dict(data)
    for old, new in RENAMED_KEYS.items():
        if old in renamed and new in field_names and old not in field_names:
            value = renamed.pop(old)
            renamed.setdefault(new, value)
            if warn:
                warnings.warn(
                    f"config key {where}{old} is now called {where}{new}; read as {where}{new}={renamed[new]!r}",
                    RenamedKeyWarning,
                    stacklevel=3,
                )
    return renamed


def load_config(cls: type[T], paths: list[str | Path] | None = None, overrides: list[str] | None = None) -> T:
    """Build `cls` from YAML files (merged in order) and `key=value` overrides."""
    merged: dict[str, Any] = {}
    for path in paths or []:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {str(path)!r} not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise ValueError(f"config file {str(path)!r} is not valid YAML text: {error}") from error
        if not isinstance(data, dict):
            raise ValueError(f"config file {str(path)!r} must hold a mapping of keys to values")
        _deep_merge(merged, data)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key=value (e.g. batch_size=32)")
        value = yaml.safe_load(raw) if raw != "" else ""
        node = merged
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return from_dict(cls, merged)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a mapping, strictly: unknown keys and wrong types raise ValueError."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    data = rename_old_keys(data, set(fields), where)
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
            f"valid keys{' in ' + where.rstrip('.') if where else ''}: {', '.join(sorted(fields))}"
        )
    kwargs = {name: _coerce(hints[name], value, where + name) for name, value in data.items()}
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(config), indent=2, sort_keys=True))


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(errors[0] if errors else f"config key {key}: bad value {value!r}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"config key {key}: expected a section (mapping), got {value!r}")
        return from_dict(hint, value, where=key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config key {key}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"config key {key}: {value!r} is not one of {list(args)}")
        return value
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"config key {key}: expected true/false, got {value!r}")
    if hint in (float, int) and isinstance(value, str):
        # YAML 1.1 reads "3e-4" (no dot) as a string; a number written that way is still a number.
        try:
            value = float(value)
        except ValueError:
            pass
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # nan/inf pass every `x > 0` style check below them
                raise ValueError(f"config key {key}: expected a finite number, got {value!r}")
            return float(value)
        raise ValueError(f"config key {key}: expected a number, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"config key {key}: expected an integer, got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"config key {key}: expected a string, got {value!r}")
    return value


def _deep_merge(base: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value
