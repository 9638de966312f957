"""Look-ups across component instances, so references fail at load time with file and key."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import dagster as dg

from audience_pipelines.engine import ConfigError

T = TypeVar("T")


def where(context: dg.ComponentLoadContext) -> str:
    try:
        return str(Path(context.path).relative_to(context.project_root))
    except (ValueError, AttributeError):
        return str(getattr(context, "path", "defs"))


def find(context: dg.ComponentLoadContext, of_type: type[T], name: str, *, owner: str, key: str) -> T:
    """The instance of `of_type` called `name`, or a ConfigError naming the file and key."""
    found = [c for c in context.component_tree.get_all_components(of_type=of_type) if c.name == name]
    kind = of_type.__name__.lower()
    if not found:
        known = sorted(c.name for c in context.component_tree.get_all_components(of_type=of_type))
        raise ConfigError(f"{where(context)}: {owner}, key '{key}': no {kind} named '{name}' (known: {known})")
    if len(found) > 1:
        raise ConfigError(f"{where(context)}: {owner}, key '{key}': {len(found)} {kind}s are named '{name}'")
    return found[0]


def safe_name(name: str) -> str:
    return name.replace("-", "_")
