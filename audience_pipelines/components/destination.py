from __future__ import annotations

import json
from typing import Annotated, Any

import dagster as dg

from audience_pipelines.components.catalog import where
from audience_pipelines.components.yaml_text import Text, resolve_text
from audience_pipelines.config import check_destination_config, text_settings
from audience_pipelines.destinations import DESTINATION_TYPES
from audience_pipelines.engine import ConfigError
from audience_pipelines.resources import DestinationResource

# Kind tags shown in the UI per destination type.
KIND_TAGS = {"sql_table": "sql", "file": "file", "webhook": "webhook", "meta_custom_audiences": "meta"}


def resolve_settings(context: dg.ResolutionContext, model) -> dict[str, Any]:
    """Settings as written: the text settings of the destination's type (ids, names, URLs) keep the text
    the YAML holds, quoted or not (`4242`, "0042"); the others (timeout_s, batch_size, ...) keep their
    types. An unknown type or setting resolves as Dagster resolves it and is reported by validation."""
    at = context.at_path("settings")
    settings = model.settings
    if isinstance(settings, str):  # the whole mapping from a template
        settings = at.resolve_value(settings)
    if not isinstance(settings, dict):
        return settings
    type_name = resolve_text(context.at_path("type"), model.type)
    text = text_settings(type_name) if isinstance(type_name, str) else frozenset()
    return {k: resolve_text(at.at_path(k), v) if k in text else at.at_path(k).resolve_value(v)
            for k, v in settings.items()}


class Destination(dg.Component, dg.Model, dg.Resolvable):
    """A place audiences go: a type, its settings, and the environment variables holding its secrets."""

    name: Text
    type: Text
    settings: Annotated[dict[str, Any], dg.Resolver.from_model(resolve_settings)] = {}
    from_env: dict[str, Text] = {}  # setting -> environment variable read when a run starts
    pool: Text | None = None  # a Dagster pool shared by every sync to this destination (rate limits)

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
