from __future__ import annotations

import json
from typing import Any

import dagster as dg

from audience_pipelines.components.catalog import where
from audience_pipelines.config import check_destination_config
from audience_pipelines.destinations import DESTINATION_TYPES
from audience_pipelines.engine import ConfigError
from audience_pipelines.resources import DestinationResource

# Kind tags shown in the UI per destination type.
KIND_TAGS = {"sql_table": "sql", "file": "file", "webhook": "webhook", "meta_custom_audiences": "meta"}


class Destination(dg.Component, dg.Model, dg.Resolvable):
    """A place audiences go: a type, its settings, and the environment variables holding its secrets."""

    name: str
    type: str
    settings: dict[str, Any] = {}
    from_env: dict[str, str] = {}  # setting -> environment variable read when a run starts
    pool: str | None = None  # a Dagster pool shared by every sync to this destination (rate limits)

    @property
    def resource_key(self) -> str:
        return f"destination_{self.name}"

    @property
    def capabilities(self):
        return DESTINATION_TYPES[self.type].capabilities

    def validate_in(self, context: dg.ComponentLoadContext) -> None:
        try:
            check_destination_config(self.name, self.type, self.settings, self.from_env)
        except ConfigError as exc:
            raise ConfigError(f"{where(context)}: {exc}") from None

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        self.validate_in(context)
        return dg.Definitions(resources={self.resource_key: DestinationResource(
            name=self.name, type=self.type, settings_json=json.dumps(self.settings), from_env=self.from_env)})
