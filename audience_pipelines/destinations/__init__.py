"""Destination types, one package each.

A package's `__init__` is light: its settings model, capabilities and `@register`. Its client
(`client.py`, with httpx, SQLAlchemy or a platform SDK) is imported only when a run opens it.
Types are found by listing this folder and the `audience_pipelines.destinations` entry-point
group, so a new destination is its own package plus its fake and tests.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from importlib.metadata import entry_points

from audience_pipelines.contract import ConfigError, DestinationType, registered

ENTRY_POINT_GROUP = "audience_pipelines.destinations"
_lock = threading.Lock()
_discovered = False


def _discover() -> None:
    global _discovered
    with _lock:
        if _discovered:
            return
        for info in pkgutil.iter_modules(__path__):
            if info.ispkg:
                importlib.import_module(f"{__name__}.{info.name}")
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()
        _discovered = True


def destination_types() -> dict[str, type[DestinationType]]:
    """Every destination type, by name."""
    _discover()
    return registered()


def destination_type(name: str) -> type[DestinationType]:
    types = destination_types()
    try:
        return types[name]
    except KeyError:
        raise ConfigError(f"unknown destination type '{name}'; known types: {sorted(types)}") from None


__all__ = ["destination_type", "destination_types"]
