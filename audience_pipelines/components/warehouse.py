from __future__ import annotations

import dagster as dg

from audience_pipelines.components.yaml_text import Text
from audience_pipelines.resources import DEMO_URL, WarehouseResource


class Warehouse(dg.Component, dg.Model, dg.Resolvable):
    """A warehouse audiences read from: a SQLAlchemy URL, inline or from an environment variable.

    `url: demo` is the embedded DuckDB with synthetic customers, built on first use.
    """

    name: Text = "main"
    url: Text | None = DEMO_URL
    url_env: Text | None = None

    @property
    def resource_key(self) -> str:
        return f"warehouse_{self.name}"

    @property
    def kind(self) -> str:
        if self.url == DEMO_URL or (self.url or "").startswith("duckdb"):
            return "duckdb"
        if (self.url or "").startswith("postgres"):
            return "postgres"
        return "sql"

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        return dg.Definitions(resources={
            self.resource_key: WarehouseResource(name=self.name, url=self.url, url_env=self.url_env)})
