"""YAML configs mapped onto typed, validated dataclasses.

- ``extends: other.yaml`` (or a list of files) is resolved relative to the file that names it and deep-merged:
  later files and the file itself win; mappings merge key by key, everything else is replaced.
- Dotted overrides after the config (``train.max_steps=200 regularizer.weight=0.5``) are parsed with
  a YAML safe loader so ``1e-3`` is a float, ``null`` is None and ``[1, 2]`` a list.
- Validation is strict and happens before anything heavy: an unknown key names the closest valid one, a wrong
  type names key and value, and each section's ``validate()`` checks ranges.

Each component owns its section dataclass (model/config.py, data/config.py, regularizers/base.py,
eval/config.py); the root ``Config`` that composes them, with the training-loop sections, is in
``linreg/config.py``.
Config text is never evaluated: a ``yaml.SafeLoader`` subclass only.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from core.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``3e-4`` as a float (YAML 1.1 wants ``3.0e-4``; researchers type ``3e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+"
               r"(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: plain data only, never objects or code


# ----------------------------------------------------------------------------------------------------------------
# Generic machinery
# ----------------------------------------------------------------------------------------------------------------

def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def flatten(tree: dict, prefix: str = "") -> dict:
    """A nested mapping as ``{dotted key: leaf}`` (an empty mapping is a leaf: ``model.extra: {}`` stays)."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


UNSET = _Unset()  # the value of a key one side of a difference lacks


def differences(a: dict, b: dict) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (value in a, value in b)}`` for every leaf whose values differ (``UNSET`` where a side lacks
    the key), in key order; nested and already flattened mappings alike."""
    fa, fb = flatten(a), flatten(b)
    keys = sorted(fa.keys() | fb.keys())
    return {k: (fa.get(k, UNSET), fb.get(k, UNSET)) for k in keys if fa.get(k, UNSET) != fb.get(k, UNSET)}


def first_difference(a: dict, b: dict) -> str | None:
    """``"key (value in a vs value in b)"`` for the first differing leaf, or None when the mappings agree."""
    for key, (va, vb) in differences(a, b).items():
        return f"{key} ({va!r} vs {vb!r})"
    return None


def load_yaml_tree(path: str | os.PathLike, _seen: tuple = ()) -> dict:
    """Load a YAML file and everything it ``extends``, merged (the file itself last)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path in _seen:
        raise ConfigError(f"config 'extends' cycle: {' -> '.join(str(p) for p in (*_seen, path))}")
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if data is None:  # an empty (or truncated-to-nothing) file would silently mean "all defaults"
        raise ConfigError(f"{path}: empty config file")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    parents = data.pop("extends", None) or []
    if isinstance(parents, str):
        parents = [parents]
    merged: dict = {}
    for parent in parents:
        merged = deep_merge(merged, load_yaml_tree(path.parent / parent, (*_seen, path)))
    return deep_merge(merged, data)


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict."""
    tree = dict(tree)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.strip().split(".")
        for p in parts[:-1]:
            child = node.get(p)
            child = dict(child) if isinstance(child, dict) else {}
            node[p] = child
            node = child
        node[parts[-1]] = value
    return tree


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


_SCALARS = {bool: (bool, "true/false"), int: (int, "an integer"), float: ((int, float), "a number"),
            str: (str, "a string")}  # annotation -> (accepted Python types, what the error says is expected)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert ``value`` against the annotation ``tp``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else ConfigError(f"{key}: {value!r} is not a {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}{hint}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for section '{key}', got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)  # YAML's 1e3 and 2.0 are floats
    if tp not in _SCALARS:
        raise ConfigError(f"{key}: unsupported annotation {tp}")
    accepted, what = _SCALARS[tp]
    # bool is an int in Python, but `true` is not a count or a rate
    if not isinstance(value, accepted) or (tp is not bool and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {what}, got {value!r}")
    return float(value) if tp is float else value


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, strictly: unknown keys and wrong types are errors."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)" if close else ""
            valid = "" if close else f" (valid keys: {', '.join(names)})"
            raise ConfigError(f"unknown config key '{full}'{hint}{valid}")
        kwargs[key] = _coerce(value, hints[key], full)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(prefix)
    return obj


def check(cond: bool, key: str, value: Any, why: str) -> None:
    """One-line range check used by the sections' ``validate`` methods."""
    if not cond:
        raise ConfigError(f"{key}={value!r}: {why}")
