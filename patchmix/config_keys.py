"""The configuration's dotted keys (``train.epochs``, ``search.population``): a nested update flattened to them,
every setting listed by them, and one key set on a :class:`patchmix.config.Config` with its value converted to the
field's type (a string from ``--set`` or a flag, or a JSON value from a config file)."""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import ConfigError

#: The sections of a configuration: the fields of :class:`patchmix.config.Config` below ``preset``.
SECTIONS = ("data", "model", "train", "search", "run")
#: Keys that were renamed: the old key -> the new one, named in the error an old config file or ``--set`` gets.
RENAMED_KEYS = {"search.table": "search.fitness"}


def leaves(d: dict, prefix: str = ""):
    """``(dotted key, value)`` of every setting (the items of tuples and lists too)."""
    for k, v in d.items():
        if isinstance(v, dict):
            yield from leaves(v, f"{prefix}{k}.")
        elif isinstance(v, (list, tuple)):
            for item in v:
                yield f"{prefix}{k}", item
        else:
            yield f"{prefix}{k}", v


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"epochs": 10}}`` as ``{"train.epochs": 10}`` (dotted keys pass through)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and "." not in k and key.count(".") < 1 and key in SECTIONS:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _fields(obj) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj)}


def set_key(cfg: Any, key: str, value: Any) -> None:
    """Set ``key`` (``preset`` or ``section.field``) on the configuration ``cfg``, in place;
    :class:`~patchmix.errors.ConfigError` naming the key for an unknown key or a value of the wrong type."""
    if key in RENAMED_KEYS:
        new = RENAMED_KEYS[key]
        raise ConfigError(f"config key {key!r} was renamed {new!r}: write {new}={value}")
    if key == "preset":
        cfg.preset = str(value)
        return
    section, _, name = key.partition(".")
    if section not in SECTIONS or not name:
        raise ConfigError(f"unknown config key {key!r}; keys look like train.epochs, search.population, "
                          f"data.source (sections: {', '.join(SECTIONS)})")
    sub = getattr(cfg, section)
    fields = _fields(sub)
    if name not in fields:
        raise ConfigError(f"unknown config key {key!r}; {section} has: {', '.join(fields)}")
    setattr(sub, name, _coerce(key, fields[name], value))


def _coerce(key: str, fld: dataclasses.Field, value: Any) -> Any:
    """Convert ``value`` (possibly a string from the command line) to the field's type."""
    typ = str(fld.type)
    try:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and "None" in typ):
            if "None" not in typ:
                raise ConfigError(f"{key} cannot be None", key=key)
            return None
        if typ.startswith("tuple"):
            items = value.split(",") if isinstance(value, str) else list(value)
            items = [i.strip() if isinstance(i, str) else i for i in items if not (isinstance(i, str) and not i.strip())]
            if "int" in typ:
                return tuple(int(i) for i in items)
            if "float" in typ:
                return tuple(float(i) for i in items)
            return tuple(str(i) for i in items)
        if typ.startswith("bool"):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if typ.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if typ.startswith("float"):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"bad value for {key}: {value!r} (expected {typ})", key=key) from None


__all__ = ["RENAMED_KEYS", "SECTIONS", "flatten", "leaves", "set_key"]
