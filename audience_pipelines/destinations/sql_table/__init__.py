"""`sql_table`: an audience's members and mapped fields in a table of any SQLAlchemy database."""

from __future__ import annotations

from audience_pipelines.contract import (
    Capabilities, ConfigError, DestinationSettings, DestinationType, SecretInlineAllowed, register,
)
from audience_pipelines.identifiers.kinds import KINDS

SERVER_DIALECTS = ("postgresql", "mysql", "mariadb", "mssql", "oracle", "snowflake", "redshift")


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
        # A server database takes batches on several connections at once; an embedded file
        # (DuckDB, SQLite) admits one writer. Before a run reads its URL, the server's limit applies.
        try:
            url = settings.url.value() if settings is not None else None
        except ConfigError:
            url = None
        embedded = url is not None and not url.startswith(SERVER_DIALECTS)
        # Each batch opens an embedded file anew (another process may write it between batches): fewer, larger ones.
        return Capabilities(identifier_kinds=frozenset(KINDS), max_batch_rows=100_000 if embedded else 10_000,
                            can_list_audiences=True,
                            parallel_batches=4 if url is not None and url.startswith("postgresql") else 1,
                            max_parallel_batches=1 if embedded else 8)

    @classmethod
    def account(cls, settings: SqlTableSettings) -> str:
        # The database as well as the table (two databases may each have one of that name); never credentials.
        import sqlalchemy as sa

        try:
            url = sa.make_url(settings.url.value())
        except (ConfigError, sa.exc.ArgumentError):
            return f"{settings.db_schema or ''}.{settings.table}"
        port = f":{url.port}" if url.port else ""
        database = f"{url.get_backend_name()}://{url.host or ''}{port}/{url.database or ''}"
        return f"{database}#{settings.db_schema or ''}.{settings.table}"
