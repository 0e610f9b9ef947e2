"""Name -> strategy class registry; refuses duplicates (the Opacus accountant habit).

The CLI and TOML configs resolve strategies by name through here, never by import
path strings.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fedcare.errors import ConfigError

__all__ = ["available_strategies", "make_strategy", "register_strategy"]

_REGISTRY: dict[str, type[Any]] = {}
T = TypeVar("T", bound=type[Any])


def register_strategy(cls: T) -> T:
    """Class decorator: register ``cls`` under ``cls.name``; duplicates are an error."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__} needs a non-empty class attribute 'name'")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"a strategy named {name!r} is already registered")
    _REGISTRY[name] = cls
    return cls


def available_strategies() -> list[str]:
    """Names of all registered strategies, sorted."""
    return sorted(_REGISTRY)


def make_strategy(name: str, **kwargs: Any) -> Any:
    """Build the strategy registered as ``name`` with keyword arguments."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown strategy {name!r}; available: {', '.join(available_strategies())}") from None
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"strategy {name!r}: {exc}") from None
