from __future__ import annotations

from typing import Literal

import dagster as dg

from audience_pipelines.components.catalog import find, where
from audience_pipelines.components.warehouse import Warehouse
from audience_pipelines.components.yaml_text import Text
from audience_pipelines.engine import ConfigError
from audience_pipelines.identifiers import KINDS


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

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys([self.key, *self.identifiers.values(), *self.attributes]))

    def validate_in(self, context: dg.ComponentLoadContext) -> Warehouse:
        unknown = sorted(set(self.identifiers) - set(KINDS))
        if unknown:
            raise ConfigError(f"{where(context)}: entity '{self.name}', key 'identifiers': unknown kind(s) "
                              f"{unknown}; known kinds: {list(KINDS)}")
        return find(context, Warehouse, self.warehouse, owner=f"entity '{self.name}'", key="warehouse")

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        self.validate_in(context)
        return dg.Definitions()
