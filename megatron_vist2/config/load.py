"""Presets + YAML files + dotted overrides -> a typed ``Config``.

Unknown keys and wrong types stop with a ``ConfigError`` that names the dotted field, what was
expected and what to do; nothing is silently ignored or coerced, except into float fields: an int,
or a numeric string such as "3e-4" (which YAML 1.1 reads as text).
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import yaml

from .schema import Config
from ..errors import ConfigError  # re-exported as megatron_vist2.config.ConfigError

PRESET_DIR = Path(__file__).parent / "presets"


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotated type ``tp``; return it (int widened to float)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:                       # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if origin is typing.Literal:                     # a choice: its values' type here, the
        tp = type(typing.get_args(tp)[0])            # value itself in validate.py (with the rest)
    elif origin is dict:                             # Dict[str, X]
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        _, item = typing.get_args(tp)
        return {str(k): _coerce(v, item, f"{where}.{k}") for k, v in value.items()}
    elif origin is list:                             # List[X]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {_type_name(tp)} fields, got {value!r}")
        return _build(tp, value, where)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:                      # YAML 1.1 reads "3e-4" (no dot) as text; users mean a number
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(
            f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, data: Dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"unknown config key '{path}'. Valid keys here: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def _merge(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> Dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        raise ConfigError(f"{path} is empty: a config file needs at least 'base: <preset>' or some "
                          f"fields (presets: {', '.join(available_presets())})")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _resolve_yaml(name_or_path: str, seen: tuple = ()) -> Dict[str, Any]:
    """Read a preset name or YAML path, following ``base: <preset>`` chains."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = PRESET_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ConfigError(
                f"unknown preset '{name_or_path}': not a preset name and not an existing YAML file. "
                f"Presets: {', '.join(available_presets())}")
    if str(path) in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is not None:
        beside = path.parent / str(base)       # a relative path is relative to the including file
        if str(base).endswith((".yaml", ".yml")) and not Path(str(base)).is_absolute():
            if beside.exists():
                base = beside
            elif not Path(str(base)).exists():   # (older configs: relative to the working directory)
                raise ConfigError(f"{path}: base '{base}' not found (looked for {beside}, relative to "
                                  f"the including file)")
        data = _merge(_resolve_yaml(str(base), seen + (str(path),)), data)
    return data


def parse_override(text: str) -> Dict[str, Any]:
    """``a.b.c=value`` -> {"a": {"b": {"c": value}}}; the value is parsed as YAML (3e-4, true, null)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.field=value (e.g. train.lr=3e-4)")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}': empty field name")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def apply_overrides(data: Dict[str, Any], overrides: Optional[Iterable[str]]) -> Dict[str, Any]:
    """Merge dotted overrides into a config mapping (not yet typed)."""
    for text in overrides or ():
        data = _merge(data, parse_override(text))
    return data


def load_config(preset: str, overrides: Optional[Iterable[str]] = None) -> Config:
    """Build a typed Config from a preset (name or YAML path) and dotted overrides."""
    data = apply_overrides(_resolve_yaml(preset), overrides)
    data.setdefault("preset", preset)
    return _build(Config, data, "")


def config_to_dict(cfg: Config) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(data: Dict[str, Any]) -> Config:
    return _build(Config, data, "")
