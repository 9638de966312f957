from __future__ import annotations

from typing import Literal

import dagster as dg

from audience_pipelines.components.catalog import find, where
from audience_pipelines.components.warehouse import Warehouse
from audience_pipelines.components.yaml_text import Text
from audience_pipelines.engine import ConfigError
from audience_pipelines.engine.related import Relation
from audience_pipelines.identifiers import KINDS


RELATION_KEYS = ("table", "key", "on")  # the related table, its key column, the entity's column holding it


class Entity(dg.Component, dg.Model, dg.Resolvable):
    """A table of people (or accounts): its key, identifier columns and attribute columns."""

    name: Text
    # What a record is: one-click activation sends only people to ad platforms.
    kind: Literal["person", "company", "other"] | None = None
    table: Text
    key: Text
    warehouse: Text = "main"
    identifiers: dict[str, Text] = {}  # identifier kind -> column
    attributes: list[Text] = []
    # Tables joined many-to-one, e.g. company: {table: companies, key: company_id, on: company_id}; a sync
    # maps `company.name` like any column. YAML 1.1 reads a bare `on` as true: both are taken as "on".
    related: dict[str, dict] = {}

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys([self.key, *self.identifiers.values(), *self.attributes]))

    def validate_in(self, context: dg.ComponentLoadContext) -> Warehouse:
        unknown = sorted(set(self.identifiers) - set(KINDS))
        if unknown:
            raise ConfigError(f"{where(context)}: entity '{self.name}', key 'identifiers': unknown kind(s) "
                              f"{unknown}; known kinds: {list(KINDS)}")
        for name in self.related:
            self.relation(name, where(context))
        return find(context, Warehouse, self.warehouse, owner=f"entity '{self.name}'", key="warehouse")

    def relation(self, name: str, at: str = "") -> Relation:
        """The relation as declared; a ConfigError names the key that is wrong."""
        owner = f"{at + ': ' if at else ''}entity '{self.name}', key 'related.{name}"
        given = {("on" if k is True else str(k)): str(v) for k, v in (self.related[name] or {}).items()}
        if "." in name or not name:
            raise ConfigError(f"{owner}': '{name}' is not a relation name (no dots: a sync maps "
                              "'<relation>.<column>')")
        unknown, missing = sorted(set(given) - set(RELATION_KEYS)), [k for k in RELATION_KEYS if not given.get(k)]
        if unknown or missing:
            raise ConfigError(f"{owner}': give exactly {list(RELATION_KEYS)}"
                              + (f"; unknown {unknown}" if unknown else "") + (f"; missing {missing}" if missing else ""))
        if given["on"] not in self.columns:
            raise ConfigError(f"{owner}.on': column '{given['on']}' is not a column of the entity ({self.columns}); "
                              "add it to 'attributes'")
        return Relation(name, given["table"], given["key"], given["on"])

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        self.validate_in(context)
        return dg.Definitions()
