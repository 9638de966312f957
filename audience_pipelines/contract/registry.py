"""Destination types by name.

A type registers itself with `@register` in its package's light `__init__`; discovery (which
packages to import) belongs to `audience_pipelines.destinations`, so this module imports nothing
of theirs.
"""

from __future__ import annotations

from audience_pipelines.contract.errors import ConfigError

_TYPES: dict = {}


def register(cls):
    """Class decorator for a DestinationType."""
    existing = _TYPES.get(cls.name)
    if existing is not None and existing is not cls:
        raise ConfigError(f"two destination types are named '{cls.name}': {existing.__module__} and {cls.__module__}")
    _TYPES[cls.name] = cls
    return cls


def registered() -> dict:
    """The types registered so far, by name."""
    return dict(sorted(_TYPES.items()))
