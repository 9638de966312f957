"""Look-ups across component instances, so references fail at load time with file and key."""

from __future__ import annotations

from typing import TypeVar

import dagster as dg

from audience_pipelines.engine import ConfigError

T = TypeVar("T")


def where(context: dg.ComponentLoadContext) -> str:
    """`defs/syncs/defs.yaml (document 2)`: where a component instance was declared."""
    try:
        loc = context.component_path
        path = loc.file_path
        if path.is_dir():
            path = path / "defs.yaml"
        try:
            shown = path.relative_to(context.defs_module_path.parent)
        except ValueError:
            shown = path
        doc = f" (document {int(loc.instance_key) + 1})" if isinstance(loc.instance_key, int) else ""
        return f"{shown.as_posix()}{doc}"
    except Exception:  # noqa: BLE001 - a location is a courtesy; never hide the real error
        return "defs"


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


def find_optional(context: dg.ComponentLoadContext, of_type: type[T]) -> T | None:
    """The single instance of a project-wide component, or None."""
    found = context.component_tree.get_all_components(of_type=of_type)
    if len(found) > 1:
        raise ConfigError(f"{where(context)}: only one {of_type.__name__} may be declared, found {len(found)}")
    return found[0] if found else None


# Every component module imports this one, so the load-error hooks are in place before any YAML loads.
from audience_pipelines.components.load_errors import install as _install_load_errors  # noqa: E402

_install_load_errors()
