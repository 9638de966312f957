"""The `sql_table` client.

One table can hold many audiences: rows are keyed by (audience, key). Adds and
updates are upserts (INSERT ... ON CONFLICT on PostgreSQL, DuckDB and SQLite;
delete + insert in one transaction elsewhere, or on a table without a unique
(audience, key)), so resending is harmless.

A batch reaches PostgreSQL by COPY into a temporary table and DuckDB as a registered
Arrow table, each upserted from there by one statement; other databases get
multi-row INSERTs.
"""

from __future__ import annotations

import datetime as dt
import io
import random
import time
import uuid
from collections.abc import Callable

import pyarrow as pa
import pyarrow.csv as pa_csv
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from audience_pipelines.contract import (
    KEY, AudienceStats, BatchContext, BatchDestination, BatchResult, RowsRefused, sent_columns,
)
from audience_pipelines.destinations.sql_table import SqlTable, SqlTableSettings

AUDIENCE_COL = "audience"
LOCK_WAIT_S = 120.0
SYNCED_AT_COL = "synced_at"
MAX_BOUND_PARAMETERS = 30_000  # per statement; PostgreSQL allows 65,535, SQLite 32,766


def _sql_type(t: pa.DataType) -> sa.types.TypeEngine:
    if pa.types.is_boolean(t):
        return sa.Boolean()
    if pa.types.is_integer(t):
        return sa.BigInteger()
    if pa.types.is_floating(t):
        return sa.Float()
    if pa.types.is_decimal(t):
        return sa.Numeric(t.precision, t.scale)
    if pa.types.is_date(t):
        return sa.Date()
    if pa.types.is_timestamp(t):
        return sa.DateTime(timezone=t.tz is not None)
    return sa.Text()


def _locked_by_other_process(exc: Exception) -> bool:
    return "Could not set lock on file" in str(exc)


def with_file_lock_retry(fn: Callable[[], object], wait_s: float = LOCK_WAIT_S):
    """Run `fn`, waiting while another process holds an embedded database file."""
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        try:
            return fn()
        except sa.exc.DBAPIError as exc:
            if not _locked_by_other_process(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay + random.uniform(0, delay))
        delay = min(delay * 2, 2.0)


def _refused_by_rows(write: Callable[[str, pa.Table], BatchResult], audience_id: str, rows: pa.Table) -> BatchResult:
    """A constraint or a value the database refuses rolls the whole batch back: say so by kind."""
    try:
        return write(audience_id, rows)
    except (sa.exc.IntegrityError, sa.exc.DataError) as exc:
        detail = str(exc.orig or exc).strip().splitlines()[0][:300]
        raise RowsRefused(f"the database refused the row: {detail}") from None


def _duplicate_key(exc: sa.exc.IntegrityError) -> bool:
    """The table already holds one of the batch's (audience, key)s (PostgreSQL 23505, DuckDB's wording)."""
    return getattr(exc.orig, "pgcode", None) == "23505" or "Duplicate key" in str(exc.orig)


def _copy_csv(raw, statement: str, table: pa.Table) -> None:
    """COPY ... FROM STDIN with the table as CSV (unquoted empty: NULL; strings always quoted)."""
    buffer = io.BytesIO()
    pa_csv.write_csv(table, buffer, pa_csv.WriteOptions(include_header=False))
    buffer.seek(0)
    cursor = raw.cursor()
    try:
        if hasattr(cursor, "copy_expert"):  # psycopg2
            cursor.copy_expert(statement, buffer)
        else:  # psycopg 3
            with cursor.copy(statement) as copy:
                copy.write(buffer.getvalue())
    finally:
        cursor.close()


class SqlTableDestination(BatchDestination[SqlTableSettings]):
    destination_type = SqlTable

    def __init__(self, settings: SqlTableSettings):
        super().__init__(settings)
        url = sa.make_url(settings.url.value())
        # An embedded DuckDB file admits one writing process: open it per batch, not per run.
        self.engine = sa.create_engine(url, poolclass=NullPool) if url.get_backend_name() == "duckdb" \
            else sa.create_engine(url)
        self._known: set[str] | None = None  # columns the table is known to have
        self._keyed: bool | None = None  # has a unique (audience, key), so ON CONFLICT works
        self._adds_conflict = False  # an add met a key the table holds: upsert adds from then on

    def _columns_for(self, rows: pa.Table) -> list[str]:
        return [KEY, *sent_columns(rows)]

    def _clause(self, columns: list[str]) -> sa.TableClause:
        # A lightweight table clause: no reflection, which some dialects do poorly.
        return sa.table(self.settings.table, *(sa.column(c) for c in columns), schema=self.settings.db_schema)

    def _existing_columns(self) -> list[str] | None:
        if not sa.inspect(self.engine).has_table(self.settings.table, schema=self.settings.db_schema):
            return None
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(sa.text("*")).select_from(self._clause([])).limit(0)).keys())

    def _ensure_columns(self, rows: pa.Table) -> None:
        """Create the table, or add the columns a changed mapping needs, from the rows' schema."""
        wanted = self._columns_for(rows)
        if self._known is not None and set(wanted) <= self._known:
            return
        existing = self._existing_columns()
        if existing is None:
            cols = [sa.Column(AUDIENCE_COL, sa.Text(), primary_key=True),
                    sa.Column(KEY, sa.Text(), primary_key=True)]
            cols += [sa.Column(c, _sql_type(rows.schema.field(c).type)) for c in wanted if c != KEY]
            cols.append(sa.Column(SYNCED_AT_COL, sa.DateTime(timezone=True)))
            md = sa.MetaData(schema=self.settings.db_schema)
            md.create_all(self.engine, tables=[sa.Table(self.settings.table, md, *cols)], checkfirst=True)
            self._keyed = True
            existing = [AUDIENCE_COL, KEY, *wanted, SYNCED_AT_COL]
        missing = [c for c in wanted if c not in existing]
        if missing:
            prep = self.engine.dialect.identifier_preparer
            qual = prep.quote(self.settings.table) if not self.settings.db_schema else \
                f"{prep.quote_schema(self.settings.db_schema)}.{prep.quote(self.settings.table)}"
            with self.engine.begin() as conn:
                for c in missing:
                    typ = _sql_type(rows.schema.field(c).type).compile(dialect=self.engine.dialect)
                    conn.execute(sa.text(f"ALTER TABLE {qual} ADD COLUMN {prep.quote(c)} {typ}"))
        self._known = set(existing) | set(missing)

    def _delete(self, conn, audience_id: str, keys: list[str]) -> None:
        t = self._clause([AUDIENCE_COL, KEY])
        conn.execute(sa.delete(t).where(t.c[AUDIENCE_COL] == audience_id, t.c[KEY].in_(keys)))

    def add(self, audience_id: str, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        return with_file_lock_retry(lambda: _refused_by_rows(
            lambda a, r: self._upsert(a, r, ctx.operation), audience_id, rows))

    def _on_conflict(self, records: list[dict]):
        """INSERT ... VALUES ... ON CONFLICT (audience, key) DO UPDATE, where the dialect has it.

        One multi-row statement per chunk: executemany runs ON CONFLICT row by row (50x slower
        on DuckDB), and a chunk stays under every dialect's limit on bound parameters.
        """
        name = self.engine.dialect.name
        if not records:
            return None
        if name in ("postgresql", "duckdb"):
            from sqlalchemy.dialects.postgresql import insert
        elif name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            return None
        columns = list(records[0])
        per_statement = max(1, MAX_BOUND_PARAMETERS // len(columns))
        statements = []
        for lo in range(0, len(records), per_statement):
            stmt = insert(self._clause(columns)).values(records[lo:lo + per_statement])
            statements.append(stmt.on_conflict_do_update(
                index_elements=[AUDIENCE_COL, KEY],
                set_={c: stmt.excluded[c] for c in columns if c not in (AUDIENCE_COL, KEY)}))
        return statements

    def _upsert(self, audience_id: str, rows: pa.Table, operation: str = "update") -> BatchResult:
        self._ensure_columns(rows)
        cols = self._columns_for(rows)
        now = dt.datetime.now(dt.timezone.utc)
        if self._keyed is not False and self._bulk_upsert(audience_id, rows.select(cols), now, operation):
            return BatchResult()
        records = rows.select(cols).to_pylist()
        for r in records:
            r[AUDIENCE_COL] = audience_id
            r[SYNCED_AT_COL] = now
        # An update in place: delete + insert would break (or cascade through) foreign keys
        # other tables hold on the row, and show triggers a delete.
        statements = self._on_conflict(records) if self._keyed is not False else None
        if statements:
            try:
                with self.engine.begin() as conn:
                    for stmt in statements:
                        conn.execute(stmt)
                self._keyed = True
                return BatchResult()
            except sa.exc.ProgrammingError:
                if self._keyed:
                    raise
                self._keyed = False  # a table made elsewhere, without a unique (audience, key)
        with self.engine.begin() as conn:
            self._delete(conn, audience_id, rows[KEY].to_pylist())
            conn.execute(sa.insert(self._clause([AUDIENCE_COL, *cols, SYNCED_AT_COL])), records)
        return BatchResult()

    def _bulk_upsert(self, audience_id: str, rows: pa.Table, now: dt.datetime, operation: str) -> bool:
        """Upsert the batch from Arrow in one statement (PostgreSQL, DuckDB); False where this does not apply.

        Adds to a table known to have a unique (audience, key) are first tried as a plain INSERT,
        which PostgreSQL runs about 1.6x faster than ON CONFLICT; a key the table already holds
        (a resend, a retried batch) rolls that back and the batch is upserted instead, as is every
        later add of this client. Without that key nothing would refuse a duplicate row.
        """
        name = self.engine.dialect.name
        if name not in ("postgresql", "duckdb") or any(pa.types.is_nested(f.type) for f in rows.schema):
            return False
        prep = self.engine.dialect.identifier_preparer
        target = prep.quote(self.settings.table) if not self.settings.db_schema else \
            f"{prep.quote_schema(self.settings.db_schema)}.{prep.quote(self.settings.table)}"
        staged = f"audience_batch_{uuid.uuid4().hex[:12]}"
        columns = ", ".join(prep.quote(c) for c in rows.column_names)
        updates = ", ".join(f"{prep.quote(c)} = excluded.{prep.quote(c)}"
                            for c in [*rows.column_names, SYNCED_AT_COL] if c not in (AUDIENCE_COL, KEY))
        # The audience and the time are bound once, not repeated in every row (formatting
        # a timestamp per row cost more than all the other columns together). In a bound
        # statement a quoted identifier holding ':' must not read as a parameter.
        esc = lambda sql: sql.replace(":", "\\:")  # noqa: E731
        insert = (f"INSERT INTO {esc(target)} ({prep.quote(AUDIENCE_COL)}, {esc(columns)}, "
                  f"{prep.quote(SYNCED_AT_COL)}) SELECT :audience, {esc(columns)}, :synced_at FROM {staged}")
        upsert = (f"{insert} ON CONFLICT ({prep.quote(AUDIENCE_COL)}, {prep.quote(KEY)}) "
                  f"DO UPDATE SET {esc(updates)}")
        stage = (staged, columns, target)
        if operation == "add" and self._keyed and not self._adds_conflict:
            try:
                self._write_staged(rows, stage, insert, audience_id, now)
                return True
            except sa.exc.IntegrityError as exc:
                if not _duplicate_key(exc):
                    raise
                self._adds_conflict = True
        try:
            self._write_staged(rows, stage, upsert, audience_id, now)
        except sa.exc.ProgrammingError:
            if self._keyed:
                raise
            self._keyed = False  # no unique (audience, key) to conflict on: the row-by-row path
            return False
        self._keyed = True
        return True

    def _write_staged(self, rows: pa.Table, stage: tuple[str, str, str], statement: str, audience_id: str,
                      now: dt.datetime) -> None:
        """Stage the batch (a registered Arrow table on DuckDB, COPY into a temporary table on
        PostgreSQL) and run `statement` over it, in one transaction."""
        staged, columns, target = stage
        dbapi = self.engine.dialect.dbapi
        refused = tuple(e for e in (getattr(dbapi, "DataError", None), getattr(dbapi, "IntegrityError", None))
                        if isinstance(e, type) and issubclass(e, BaseException))
        with self.engine.begin() as conn:
            raw = conn.connection.dbapi_connection
            if self.engine.dialect.name == "duckdb":
                # The view goes with the connection, which is closed after each batch (NullPool).
                raw.register(staged, rows)
            else:
                conn.exec_driver_sql(f"CREATE TEMP TABLE {staged} ON COMMIT DROP AS SELECT {columns} "
                                     f"FROM {target} WITH NO DATA")
                try:
                    _copy_csv(raw, f"COPY {staged} ({columns}) FROM STDIN WITH (FORMAT csv)", rows)
                except refused as exc:
                    # COPY runs on the driver's cursor, outside SQLAlchemy's wrapping of errors.
                    raise RowsRefused("the database refused the row: "
                                      f"{str(exc).strip().splitlines()[0][:300]}") from None
            conn.execute(sa.text(statement), {"audience": audience_id, "synced_at": now})

    def remove(self, audience_id: str, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        return with_file_lock_retry(lambda: _refused_by_rows(self._delete_rows, audience_id, rows))

    def _delete_rows(self, audience_id: str, rows: pa.Table) -> BatchResult:
        if self._existing_columns() is None:
            return BatchResult()
        with self.engine.begin() as conn:
            self._delete(conn, audience_id, rows[KEY].to_pylist())
        return BatchResult()

    def audience_stats(self, audience_id: str) -> AudienceStats:
        return AudienceStats(size=with_file_lock_retry(lambda: self._count(audience_id)))

    def _count(self, audience_id: str) -> int:
        if self._existing_columns() is None:
            return 0
        t = self._clause([AUDIENCE_COL])
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(t).where(t.c[AUDIENCE_COL] == audience_id)).scalar_one()

    def close(self) -> None:
        self.engine.dispose()
