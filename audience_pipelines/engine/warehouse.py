"""Read a query from any SQLAlchemy URL as a stream of Arrow record batches.

DuckDB hands Arrow batches over natively and PostgreSQL streams
`COPY ... TO STDOUT` as CSV into pyarrow's reader, so neither touches rows in
Python. Other dialects fall back to SQLAlchemy's partitioned fetch.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa

BATCH_ROWS = 100_000

# PostgreSQL type OIDs -> Arrow types for the COPY reader; anything else stays text.
_PG_TYPES = {
    16: pa.bool_(), 20: pa.int64(), 21: pa.int64(), 23: pa.int64(), 700: pa.float64(), 701: pa.float64(),
    1700: pa.float64(), 1082: pa.date32(), 1114: pa.timestamp("us"), 1184: pa.timestamp("us", tz="UTC"),
}


def read_batches(engine: sa.Engine, sql: str) -> tuple[pa.Schema | None, Iterator[pa.RecordBatch]]:
    name = engine.dialect.name
    if name == "duckdb":
        return _duckdb(engine, sql)
    if name == "postgresql" and engine.dialect.driver == "psycopg2":
        return _postgres_copy(engine, sql)
    return None, _generic(engine, sql)


def read_table(engine: sa.Engine, sql: str) -> pa.Table:
    schema, batches = read_batches(engine, sql)
    batches = list(batches)
    if not batches:
        if schema is None:
            raise ValueError("query returned no schema")
        return schema.empty_table()
    return pa.Table.from_batches(batches)


def _duckdb(engine: sa.Engine, sql: str):
    raw = engine.raw_connection()
    try:
        con = raw.driver_connection
        reader = con.sql(sql).to_arrow_reader(BATCH_ROWS)
    except Exception:
        raw.close()
        raise

    def gen():
        try:
            yield from reader
        finally:
            raw.close()

    return reader.schema, gen()


def _postgres_copy(engine: sa.Engine, sql: str):
    raw = engine.raw_connection()
    cur = raw.cursor()
    try:
        cur.execute(f"SELECT * FROM ({sql}) AS q LIMIT 0")
        names = [d.name for d in cur.description]
        types = {d.name: _PG_TYPES.get(d.type_code, pa.string()) for d in cur.description}
    except Exception:
        raw.close()
        raise
    schema = pa.schema([(n, types[n]) for n in names])
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        with os.fdopen(write_fd, "wb") as sink:
            try:
                cur.copy_expert(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER true, FORCE_QUOTE *)", sink)
            except BaseException as exc:  # surfaced to the reader below
                failure.append(exc)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()

    def gen():
        try:
            with os.fdopen(read_fd, "rb") as source:
                reader = pacsv.open_csv(
                    source,
                    read_options=pacsv.ReadOptions(block_size=16 << 20),
                    convert_options=pacsv.ConvertOptions(
                        column_types=types, strings_can_be_null=True, quoted_strings_can_be_null=False,
                        true_values=["t", "true"], false_values=["f", "false"], timestamp_parsers=["%Y-%m-%d %H:%M:%S%z", pacsv.ISO8601],
                    ),
                )
                for batch in reader:
                    yield batch.cast(schema) if batch.schema != schema else batch
        except pa.ArrowInvalid:
            thread.join()
            if failure:
                raise failure[0] from None
            raise
        finally:
            thread.join()
            raw.close()
        if failure:
            raise failure[0]

    return schema, gen()


def _generic(engine: sa.Engine, sql: str):
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True).execute(sa.text(sql))
        keys = list(result.keys())
        for part in result.partitions(BATCH_ROWS):
            yield pa.RecordBatch.from_pydict({k: [row[i] for row in part] for i, k in enumerate(keys)})


def query_audience(engine: sa.Engine, sql: str, audience: str, required: list[str]) -> pa.Table:
    """Run an audience query; failures and missing columns name the audience."""
    from audience_pipelines.engine.errors import AudienceError

    try:
        table = read_table(engine, sql)
    except Exception as exc:  # driver errors differ per dialect; the message is what matters
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:500]
        raise AudienceError(f"audience '{audience}': the query failed: {detail}") from exc
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise AudienceError(
            f"audience '{audience}': the query returned no column(s) {missing} "
            f"({table.num_rows} rows, columns {table.column_names})"
        )
    return table
