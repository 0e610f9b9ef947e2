"""Reading the TOML files a user writes, with one-line errors and "did you mean" hints.

Every problem is a :class:`~fedcare.errors.ConfigError` whose message starts with the
file name. Problems of one kind are collected: all unknown keys at once (each with the
nearest known key, or the table where a known key of that name belongs), then all bad
values at once.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedcare.errors import ConfigError
from fedcare.types import ConfigValue

__all__ = ["Checker", "dump_toml", "read_toml", "resolve_path"]


def read_toml(path: Path, what: str = "config file") -> dict[str, Any]:
    """Parse ``path`` as TOML, or raise a one-line ConfigError naming it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc})") from None
    try:
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:  # RecursionError: nesting too deep
        raise ConfigError(f"{path}: invalid TOML: {' '.join(str(exc).split())[:200]}") from None


class Checker:
    """Collects unknown keys and bad values of one file, then raises them as one line each.

    Parameters
    ----------
    where : str
        The file, as it starts every message.
    places : Mapping[str, set[str]]
        Every table's known keys by prefix (``""`` for the top level, ``"fit."``...), so
        that a key written in the wrong table is pointed to the right one.
    """

    def __init__(self, where: str, places: Mapping[str, set[str] | frozenset[str]]) -> None:
        self.where = where
        self.places = places
        self.unknown: list[str] = []
        self.bad: list[str] = []

    def keys(self, table: Mapping[str, Any], allowed: set[str] | frozenset[str], prefix: str) -> None:
        """Record every key of ``table`` that is not in ``allowed``."""
        for key in table:
            if key in allowed:
                continue
            hint = difflib.get_close_matches(key, sorted(allowed), n=1)
            if hint:
                self.unknown.append(f"'{prefix}{key}' (did you mean '{prefix}{hint[0]}'?)")
                continue
            where = {f"{p}{k}": k for p, keys in self.places.items() if p != prefix for k in keys}
            near = difflib.get_close_matches(key, sorted(set(where.values())), n=1)
            elsewhere = sorted(full for full, k in where.items() if near and k == near[0])
            self.unknown.append(f"'{prefix}{key}'" + (f" (did you mean '{elsewhere[0]}'?)" if elsewhere else ""))

    def table(self, parent: Mapping[str, Any], key: str, name: str) -> dict[str, Any]:
        """The sub-table ``key`` (empty when absent; a problem when not a table)."""
        value = parent.get(key, {})
        if not isinstance(value, dict):
            self.bad.append(f"{name} must be a table")
            return {}
        return value

    def raise_unknown(self) -> None:
        """Raise the unknown keys found so far, if any."""
        if self.unknown:
            word = "key" if len(self.unknown) == 1 else "keys"
            raise ConfigError(f"{self.where}: unknown {word} {', '.join(self.unknown)}")

    def raise_bad(self) -> None:
        """Raise the bad values found so far, if any."""
        if self.bad:
            raise ConfigError(f"{self.where}: " + "; ".join(self.bad))

    # typed getters: record a problem and return the default when the value is wrong
    def string(self, table: Mapping[str, Any], key: str, name: str, default: str | None = None) -> str | None:
        """A non-empty string."""
        value = table.get(key, default)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            self.bad.append(f"{name} must be a non-empty string, got {value!r}")
            return default
        return value

    def choice(self, table: Mapping[str, Any], key: str, name: str, default: str, options: tuple[str, ...]) -> str:
        """One of ``options``."""
        value = table.get(key, default)
        if value not in options:
            self.bad.append(f"{name} must be one of {', '.join(repr(o) for o in options)}, got {value!r}")
            return default
        return str(value)

    def integer(self, table: Mapping[str, Any], key: str, name: str, default: int, minimum: int | None = None) -> int:
        """An integer, optionally at least ``minimum``."""
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            bound = f" >= {minimum}" if minimum is not None else ""
            self.bad.append(f"{name} must be an integer{bound}, got {value!r}")
            return default
        return value

    def optional_integer(self, table: Mapping[str, Any], key: str, name: str, minimum: int) -> int | None:
        """An integer at least ``minimum``, or None when absent."""
        if key not in table:
            return None
        return self.integer(table, key, name, minimum, minimum=minimum)

    def number(
        self, table: Mapping[str, Any], key: str, name: str, default: float | None, *, positive: bool = False
    ) -> float | None:
        """A finite number (optionally > 0), or ``default`` when absent."""
        value = table.get(key, default)
        if value is None:
            return None
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value == value
        if ok and positive and not value > 0:
            ok = False
        if not ok:
            self.bad.append(f"{name} must be a {'positive ' if positive else ''}number, got {value!r}")
            return default
        return float(value)

    def fraction(self, table: Mapping[str, Any], key: str, name: str, default: float, *, closed: bool) -> float:
        """A number in (0, 1) or (0, 1]."""
        value = table.get(key, default)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and not (0 < value < 1 or (closed and value == 1)):
            ok = False
        if not ok:
            interval = "(0, 1]" if closed else "(0, 1)"
            self.bad.append(f"{name} must be a number in {interval}, got {value!r}")
            return default
        return float(value)

    def boolean(self, table: Mapping[str, Any], key: str, name: str, default: bool) -> bool:
        """True or false."""
        value = table.get(key, default)
        if not isinstance(value, bool):
            self.bad.append(f"{name} must be true or false, got {value!r}")
            return default
        return value

    def names(self, table: Mapping[str, Any], key: str, name: str) -> tuple[str, ...] | None:
        """A list of non-empty strings, or None when absent."""
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            self.bad.append(f"{name} must be a list of names, got {value!r}")
            return None
        return tuple(v.strip() for v in value)

    def scalars(self, table: Mapping[str, Any], key: str, name: str) -> tuple[str | int | float | bool, ...] | None:
        """A value or a list of values (strings, numbers or booleans), or None when absent."""
        value = table.get(key)
        if value is None:
            return None
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(v, str | int | float | bool) for v in items):
            self.bad.append(f"{name} must be a value or a list of values, got {value!r}")
            return None
        return tuple(items)

    def config(self, table: Mapping[str, Any], name: str) -> dict[str, ConfigValue]:
        """A flat table of scalars (a training config)."""
        out: dict[str, ConfigValue] = {}
        for key, value in table.items():
            if not isinstance(value, bool | int | float | str):
                self.bad.append(f"{name}.{key} must be a string, number or boolean, got {value!r}")
            else:
                out[key] = value
        return out


def resolve_path(base: Path, text: str) -> Path:
    """``text`` as a path, relative ones against ``base`` (a config file's folder)."""
    p = Path(text).expanduser()
    return p if p.is_absolute() else (base / p)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise ConfigError(f"cannot write {type(value).__name__} {value!r} to TOML")


def _key(key: str) -> str:
    return key if key and all(c.isalnum() or c in "-_" for c in key) else json.dumps(key)


def dump_toml(data: Mapping[str, Any]) -> str:
    """TOML text for ``data`` (tables, scalars, lists, dates): what :func:`read_toml` reads back."""
    lines: list[str] = []

    def table(prefix: str, t: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in t.items() if not isinstance(v, Mapping)}
        if prefix and (scalars or not t):
            lines.append(f"[{prefix}]")
        lines.extend(f"{_key(k)} = {_value(v)}" for k, v in scalars.items())
        if scalars:
            lines.append("")
        for k, v in t.items():
            if isinstance(v, Mapping):
                table(f"{prefix}.{_key(k)}" if prefix else _key(k), v)

    table("", data)
    return "\n".join(lines).rstrip() + "\n"
