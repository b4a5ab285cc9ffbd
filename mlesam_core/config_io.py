"""Typed configuration: dataclasses loaded from YAML, validated with errors that name the dotted key.

One mechanism for every config in the project (model, training, ROS pipeline): a config is a (nested)
dataclass; `load_config` reads YAML, applies `dotted.key=value` overrides and builds the dataclass,
rejecting unknown keys, missing required keys and wrongly typed values with a `ConfigError` whose
message starts with the dotted key (and the file, when there is one).
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")
# The folder above mlesam_core (a source checkout: the repository root), where relative config paths are also sought.
SOURCE_ROOT = Path(__file__).resolve().parents[1]
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names the key."""


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping from `path` (an empty file gives {})."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Return a copy of `data` with `dotted.key=value` overrides applied (values parsed as YAML)."""
    result = _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{key}: cannot parse override value {raw!r}: {exc}") from exc
        node = result
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(parts[:depth + 1])}: is not a mapping, cannot set {key}")
            node = child
        node[parts[-1]] = value
    return result


def from_dict(cls: type[T], data: Any, key: str = "", source: str | None = None) -> T:
    """Build dataclass `cls` from a mapping, validating every field; errors name the dotted key."""
    try:
        return _convert(cls, data, key)
    except ConfigError as exc:
        if source:
            raise ConfigError(f"{source}: {exc}") from None
        raise


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = (),
                data: Mapping | None = None) -> T:
    """Load `cls` from a YAML file (or a mapping) plus `dotted.key=value` overrides."""
    base = load_yaml(path) if path is not None else dict(data or {})
    merged = apply_overrides(base, overrides)
    return from_dict(cls, merged, source=str(path) if path is not None else None)


def to_dict(config: Any) -> Any:
    """Plain-data (YAML/JSON-ready) form of a config dataclass: tuples become lists."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    if isinstance(config, Path):
        return str(config)
    return config


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def _name(key: str) -> str:
    return key or "<root>"


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_describe(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if origin in (tuple, list, Sequence):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list of {_describe(args[0])}" if args else "list"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, key)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{_name(key)}: must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{_name(key)}: must not be null (expected {_describe(tp)})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        raise ConfigError(f"{_name(key)}: expected {_describe(tp)}, got {value!r}")
    if origin in (tuple, list) or tp in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{_name(key)}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{_name(key)}: expected {len(args)} items, got {len(value)}")
            items = [_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))]
        else:
            item_tp = args[0] if args else Any
            items = [_convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{_name(key)}: expected a mapping, got {value!r}")
        args = get_args(tp)
        val_tp = args[1] if args else Any
        return {k: _convert(val_tp, v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{_name(key)}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{_name(key)}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            # YAML 1.1 (PyYAML) reads 1e-4 and 3e-3 (no dot) as strings; they are plainly meant as numbers
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{_name(key)}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{_name(key)}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{_name(key)}: expected a path, got {value!r}")
        return Path(value)
    raise ConfigError(f"{_name(key)}: unsupported config type {tp!r}")


def _convert_dataclass(cls: type, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(value) and isinstance(value, cls):
        return value
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{_name(key)}: expected a mapping, got {value!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        bad = f"{key}.{unknown[0]}" if key else str(unknown[0])
        raise ConfigError(f"{bad}: unknown key (known keys: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, field in fields.items():
        sub = f"{key}.{name}" if key else name
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], sub)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{sub}: required key is missing")
    try:
        obj = cls(**kwargs)
    except ConfigError as exc:
        # __post_init__ checks name their own fields; prefix the path to this dataclass.
        if key:
            raise ConfigError(f"{key}.{exc}") from None
        raise
    return obj


def resolve_path(path: str | Path, bases: Sequence[Path] = ()) -> Path:
    """`path` as given when it is absolute or exists (relative to the cwd), else the first existing one relative to
    each of `bases` and then `SOURCE_ROOT`; `path` unchanged when none exists (the caller names it as missing)."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return candidate
    for base in (*bases, SOURCE_ROOT):
        if (base / candidate).exists():
            return base / candidate
    return candidate


def doc_field(default: Any, doc: str, **metadata: Any) -> Any:
    """A dataclass field with a description in its metadata (`doc`: e.g. a ROS ParameterDescriptor's text);
    list and dict defaults are copied per instance."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"doc": doc, **metadata})
    return dataclasses.field(default=default, metadata={"doc": doc, **metadata})


def check(condition: bool, key: str, message: str) -> None:
    """Raise ConfigError('key: message') unless `condition` holds (for __post_init__ validation)."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


__all__ = ["ConfigError", "load_yaml", "apply_overrides", "from_dict", "load_config", "to_dict", "doc_field", "check",
           "resolve_path", "SOURCE_ROOT"]
