"""`sql_table`: an audience's members and mapped fields in a table of any SQLAlchemy database."""

from __future__ import annotations

from audience_pipelines.contract import (
    Capabilities, DestinationSettings, DestinationType, SecretInlineAllowed, register,
)
from audience_pipelines.identifiers.kinds import KINDS


class SqlTableSettings(DestinationSettings):
    url: SecretInlineAllowed  # may carry a password: from the environment, or inline for a local file
    table: str
    db_schema: str | None = None


@register
class SqlTable(DestinationType):
    name = "sql_table"
    settings_model = SqlTableSettings
    kind_tag = "sql"
    client = "audience_pipelines.destinations.sql_table.client:SqlTableDestination"
    summary = "rows keyed by (audience, key) in a table of any SQLAlchemy database"

    @classmethod
    def capabilities(cls, settings=None):
        return Capabilities(identifier_kinds=frozenset(KINDS), max_batch_rows=10_000, can_list_audiences=True)

    @classmethod
    def account(cls, settings: SqlTableSettings) -> str:
        return f"{settings.db_schema or ''}.{settings.table}"
