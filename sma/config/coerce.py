"""Config values from JSON, YAML and command-line strings: typed coercion, nested dicts <-> frozen dataclasses,
dotted-key overrides, files. Unknown keys are errors everywhere."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is invalid (the message names the key)."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce_union(value: Any, args: tuple, tp: Any, key: str) -> Any:
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
        if type(None) in args:
            return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return coerce(value, arg, key)
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(f"{key}: cannot read {value!r} as {tp}: {'; '.join(errors)}")


def _coerce_tuple(value: Any, args: tuple, key: str) -> tuple:
    if isinstance(value, str):  # "0.3,0.5", "[0.3 0.5]", "[]"
        value = [v for v in value.strip().strip("[]()").replace(",", " ").split() if v]
    if not isinstance(value, (list, tuple)):
        value = [value]
    if args and args[-1] is not Ellipsis:  # fixed length, e.g. tuple[int, int]
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(coerce(v, a, key) for v, a in zip(value, args, strict=True))
    inner = args[0] if args else str
    return tuple(coerce(v, inner, key) for v in value)


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected a boolean, got {value!r}")
    if tp in (int, float):
        what = "an integer" if tp is int else "a number"
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected {what}, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {what}, got {value!r}") from None
        if tp is float:
            return number
        if number != int(number):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(number)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (from JSON, YAML or a CLI string) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, typing.get_args(tp), tp, key)
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for section {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin is tuple:
        return _coerce_tuple(value, typing.get_args(tp), key)
    return _coerce_scalar(value, tp, key)


def from_dict(cls: type[T], data: dict[str, Any], *, prefix: str = "") -> T:
    """Build ``cls`` from a (nested) mapping; unknown keys raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + u for u in unknown)}; "
            f"valid keys in {prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(names))}"
        )
    kwargs = {k: coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready nested dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def override(cfg: T, key: str, value: Any, *, _prefix: str = "") -> T:
    """Return ``cfg`` with the dotted ``key`` set to ``value`` (coerced to the field's type)."""
    head, _, rest = key.partition(".")
    hints = typing.get_type_hints(type(cfg))
    if head not in hints:
        names = ", ".join(sorted(f.name for f in dataclasses.fields(cfg)))
        raise ConfigError(f"unknown config key {_prefix + key!r}; valid keys in "
                          f"{_prefix.rstrip('.') or 'the top level'}: {names}")
    if rest:
        child = getattr(cfg, head)
        if not dataclasses.is_dataclass(child):
            raise ConfigError(f"{_prefix + head} is not a section; cannot set {_prefix + key!r}")
        return dataclasses.replace(cfg, **{head: override(child, rest, value, _prefix=f"{_prefix}{head}.")})
    return dataclasses.replace(cfg, **{head: coerce(value, hints[head], _prefix + key)})


def apply_overrides(cfg: T, overrides: dict[str, Any]) -> T:
    for key, value in overrides.items():
        cfg = override(cfg, key, value)
    return cfg


def get_key(cfg: Any, key: str) -> Any:
    """The value at dotted ``key``."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def read_mapping(path: str | Path) -> dict[str, Any]:
    """A JSON or YAML file's top-level mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text()
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'}: "
                          f"{str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_config(path: str | Path, cls: type[T] | None = None) -> T:
    """Load a JSON or YAML config file into ``cls`` (default :class:`~sma.config.RunConfig`); missing keys keep
    their defaults."""
    if cls is None:
        from sma.config.sections import RunConfig

        cls = RunConfig  # type: ignore[assignment]
    try:
        return from_dict(cls, read_mapping(path))
    except ConfigError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ConfigError(f"{path}: {exc}") from None


def save_config(cfg: Any, path: str | Path) -> None:
    from sma.atomic import write_json

    write_json(path, to_dict(cfg), indent=2)
