from __future__ import annotations

from typing import Annotated, Any

import dagster as dg

from audience_pipelines.components.catalog import where
from audience_pipelines.components.yaml_text import Text, resolve_text
from audience_pipelines.config import ConfiguredDestination, configure_destination, text_settings
from audience_pipelines.engine import ConfigError


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

    def configured(self, context: dg.ComponentLoadContext) -> ConfiguredDestination:
        """Settings validated against the type's model (no secret is read); errors name the file and key."""
        try:
            return configure_destination(self.name, self.type, self.settings, self.from_env)
        except ConfigError as exc:
            raise ConfigError(f"{where(context)}: {exc}") from None

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        # The validated destination itself is the resource: runs open it, reading secrets then.
        return dg.Definitions(resources={self.resource_key: self.configured(context)})
