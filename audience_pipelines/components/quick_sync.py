"""Quick sync: a new sync for an audience, copied from the newest active sync of the same entity and
destination, written as YAML beside it and validated by loading the definitions.

Syncs are found in the YAML of `defs/` as a person wrote them. "Newest" is the sync declared last:
in the file changed most recently, the last document. A sync is active unless its schedule or
automation sensor is stopped in the Dagster instance (a `manual` sync has nothing to pause).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from audience_pipelines.engine import ConfigError

SYNC_TYPE = "audience_pipelines.components.AudienceSync"
AUDIENCE_TYPE = "audience_pipelines.components.Audience"
# What a quick sync takes from its template; the audience, name and target are its own.
COPIED = ("mode", "removal", "schedule", "identifiers", "fields", "default_region", "phone_region_column",
          "create_profiles", "max_removal_share", "max_failure_rate", "batch_size", "parallel_batches")
DEFS = Path(__file__).parents[1] / "defs"


@dataclass(frozen=True)
class Declared:
    """A component document as written: its file, its position there, its attributes."""

    path: Path
    index: int
    attributes: dict


def declared(defs: Path, component_type: str) -> list[Declared]:
    """Every document of this component type under `defs`, oldest first (file changed last, document last)."""
    found = []
    for path in sorted(defs.rglob("*.yaml"), key=lambda p: (p.stat().st_mtime_ns, str(p))):
        try:
            documents = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        for i, doc in enumerate(documents):
            if isinstance(doc, dict) and doc.get("type") == component_type:
                found.append(Declared(path, i, dict(doc.get("attributes") or {})))
    return found


def sync_name(audience: str, destination: str) -> str:
    return f"{audience}_to_{destination}"


@dataclass
class QuickSync:
    name: str
    attributes: dict  # the new sync's, as written
    template: Declared | None
    path: Path | None  # where it was written (None: no template, nothing written)

    def yaml(self) -> str:
        return yaml.safe_dump({"type": SYNC_TYPE, "attributes": self.attributes}, sort_keys=False)


def plan_quick_sync(audience: str, destination: str, is_paused: Callable[[str], bool], name: str | None = None,
                    defs: Path = DEFS) -> QuickSync:
    """The sync a quick sync would write, and its template (None when no active sync fits)."""
    audiences = {a.attributes.get("name"): a.attributes for a in declared(defs, AUDIENCE_TYPE)}
    if audience not in audiences:
        raise ConfigError(f"no audience named '{audience}' in {defs} (known: {', '.join(sorted(map(str, audiences)))})")
    entity = audiences[audience].get("entity")
    syncs = declared(defs, SYNC_TYPE)
    name = name or sync_name(audience, destination)
    if any(s.attributes.get("name") == name for s in syncs):
        raise ConfigError(f"a sync named '{name}' is already declared; choose another with --name")
    fits = [s for s in syncs if s.attributes.get("destination") == destination
            and audiences.get(s.attributes.get("audience"), {}).get("entity") == entity
            and not is_paused(s.attributes["name"])]
    template = fits[-1] if fits else None
    attributes = {"name": name, "audience": audience, "destination": destination}
    if template is None:
        attributes |= {"mode": "mirror", "schedule": "on_audience_update"}
        return QuickSync(name, attributes, None, None)
    copied = {k: template.attributes[k] for k in COPIED if k in template.attributes}
    target = template.attributes.get("target") or {}
    if target.get("name_column"):
        attributes["target"] = {"name_column": target["name_column"]}
    else:
        attributes["target"] = {"name": audience}  # the destination audience is named after the new audience
    return QuickSync(name, attributes | copied, template, template.path)


def validate_project() -> None:
    """Load the project's definitions as the code location does (raises on a mistake)."""
    from audience_pipelines.definitions import defs

    defs()


def write_quick_sync(plan: QuickSync, validate: Callable[[], None]) -> None:
    """Append the sync to its template's file and load the definitions; on a load error the file is put back."""
    assert plan.path is not None
    before = plan.path.read_text()
    separator = "" if before.endswith("\n") or not before else "\n"
    plan.path.write_text(before + separator + "---\n" + plan.yaml())
    try:
        validate()
    except Exception:
        plan.path.write_text(before)
        raise
