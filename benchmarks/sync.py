"""A sync end to end, phase by phase: warehouse read, audience materialization, the sync run.

    python benchmarks/sync.py --rows N --destination sql_table|webhook|meta_custom_audiences
        [--warehouse duckdb|postgres] [--table-db duckdb|postgres] [--pg-url URL] [--parallel-batches K]

A warehouse table of N + N/50 people is written to DuckDB (a file) or PostgreSQL (a schema of its
own, dropped at the end). Two runs follow, each done as the Dagster assets do it:

1. read: the audience's SQL through the engine's warehouse reader (DuckDB as Arrow, PostgreSQL by
   COPY), `query_audience`;
2. materialize: `build_membership` (null and duplicate keys set aside), the membership written as
   the audience asset writes it (`write_membership`: with its key hash, clustered by partition);
3. sync: `run_sync` on that file, as the sync asset passes it (read a key-hash partition at a time;
   identifiers normalised and hashed, the diff against the snapshot, batches sent, what was
   accepted committed).

The first run syncs all N members; the rerun's audience has lost 2% of them and gained 2% others.
HTTP destinations talk to their fake server, run in a process of its own (this script, with
--serve). Each line gives seconds and rows/s (members in the audience / seconds) per phase and in
total; the sync phase of the rerun also gives rows sent per second. The destination's final state is
checked against the rerun's audience (exit 1 on a mismatch). With the table in PostgreSQL, a last
line gives the server's own floor: one COPY of the first sync's rows into an empty keyed table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).parents[1]))

from audience_pipelines.contract import Target  # noqa: E402
from audience_pipelines.destinations import destination_type  # noqa: E402
from audience_pipelines.engine import RunOptions, SnapshotStore, SyncSpec, run_sync  # noqa: E402
from audience_pipelines.engine.membership import build_membership, write_membership  # noqa: E402
from audience_pipelines.engine.partitions import ClusteredFile  # noqa: E402
from audience_pipelines.engine.warehouse import query_audience  # noqa: E402

DEFAULT_PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
COLUMNS = ["customer_id", "email", "plan", "lifetime_value", "country"]
PLANS = np.array(["free", "starter", "pro", "enterprise"])
COUNTRIES = np.array(["US", "GB", "DE", "FR", "IE", "NL", "ES", "IT", "SE", "CA"])
WEBHOOK_SECRET = "whsec_bench"
META_TOKEN = "EAAB-bench"


def people(n: int) -> pa.Table:
    seq = np.arange(n, dtype=np.int64)
    return pa.table({
        "seq": seq,
        "customer_id": pa.array(np.char.add("cus_", np.char.zfill(seq.astype(str), 9)).astype(object)),
        "email": pa.array(np.char.add(np.char.add("person", seq.astype(str)), "@example.com").astype(object)),
        "plan": pa.array(PLANS[seq % len(PLANS)].astype(object)),
        "lifetime_value": pa.array((seq % 5000) * 1.25),
        "country": pa.array(COUNTRIES[seq % len(COUNTRIES)].astype(object)),
    })


# --------------------------------------------------------------------------- the fake, in its own process

def serve(kind: str) -> None:
    """Run a fake server until stdin closes; print its origin, then the members it holds."""
    from audience_pipelines_tests.fakes import FakeMeta, FakeWebhook

    fake = FakeWebhook(secret=WEBHOOK_SECRET) if kind == "webhook" else FakeMeta(access_token=META_TOKEN)
    fake.keep_log = False  # the members it holds are checked; a log of every request would outgrow memory
    with fake:
        print(json.dumps({"url": fake.url}), flush=True)
        sys.stdin.read()
        if kind == "webhook":
            held = sorted(fake.members.get("vip", {}))
        else:
            aid = fake.audience_id_by_name("vip")
            held = sorted(fake.member_values(aid, "EXTERN_ID")) if aid else []
    print(json.dumps({"held": held}), flush=True)


# --------------------------------------------------------------------------- warehouse and destination

def warehouse(kind: str, data: pa.Table, tmp: Path, pg_url: str, schema: str):
    import sqlalchemy as sa

    if kind == "duckdb":
        import duckdb

        path = tmp / "warehouse.duckdb"
        with duckdb.connect(str(path)) as con:
            con.register("people", data)
            con.execute("CREATE TABLE customers AS SELECT * FROM people")
        return sa.create_engine(f"duckdb:///{path}", poolclass=sa.pool.NullPool)
    import pyarrow.csv as pa_csv

    url = sa.make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"})
    engine = sa.create_engine(url)
    buffer = io.BytesIO()
    pa_csv.write_csv(data, buffer, pa_csv.WriteOptions(include_header=False))
    buffer.seek(0)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE customers (seq bigint, customer_id text, email text, plan text, "
                             "lifetime_value double precision, country text)")
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.copy_expert("COPY customers FROM STDIN WITH (FORMAT csv)", buffer)
        cursor.close()
    return engine


def open_destination(kind: str, url: str | None, tmp: Path, table_db: str, pg_url: str, schema: str):
    dtype = destination_type(kind)
    if kind == "sql_table":
        import sqlalchemy as sa

        db = f"duckdb:///{tmp / 'crm.duckdb'}" if table_db == "duckdb" else sa.make_url(pg_url).update_query_dict(
            {"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
        settings = {"url": db, "table": "audience_members"}
    elif kind == "webhook":
        settings = {"url": url, "secret": WEBHOOK_SECRET, "timeout_s": 120, "batch_size": 1000}
    else:
        settings = {"ad_account_id": "1234", "access_token": META_TOKEN, "base_url": url, "timeout_s": 120}
    return dtype.open(dtype.settings_model(**settings)), settings


def postgres_floor(pg_url: str, schema: str, data: pa.Table) -> float:
    """Seconds PostgreSQL itself takes to load the rows the first sync sends: one COPY of them,
    already formatted, into an empty table shaped and keyed like the destination's. No sync can
    load them faster into that server; it shares this machine's cores with the sync."""
    import datetime as dt

    import pyarrow.csv as pa_csv
    import sqlalchemy as sa

    rows = pa.table({"audience": pa.array(["vip"] * data.num_rows), "key": data["customer_id"],
                     "email": data["email"], "plan": data["plan"], "country": data["country"],
                     "lifetime_value": data["lifetime_value"],
                     "synced_at": pa.array([dt.datetime.now(dt.timezone.utc).isoformat()] * data.num_rows)})
    buffer = io.BytesIO()
    pa_csv.write_csv(rows, buffer, pa_csv.WriteOptions(include_header=False))
    buffer.seek(0)
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE TABLE "{schema}".floor (audience text, key text, email text, plan text, '
                             "country text, lifetime_value double precision, synced_at timestamptz, "
                             "PRIMARY KEY (audience, key))")
    started = time.perf_counter()
    with engine.begin() as conn:
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.copy_expert(f'COPY "{schema}".floor FROM STDIN WITH (FORMAT csv)', buffer)
        cursor.close()
    took = time.perf_counter() - started
    engine.dispose()
    return took


def held_in_table(settings: dict) -> list[str]:
    import sqlalchemy as sa

    engine = sa.create_engine(settings["url"], poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        keys = [r[0] for r in conn.exec_driver_sql("SELECT key FROM audience_members WHERE audience = 'vip'")]
    engine.dispose()
    return sorted(keys)


# --------------------------------------------------------------------------- the runs

def one_run(engine, lo: int, hi: int, tmp: Path, spec: SyncSpec, store: SnapshotStore, destination,
            run_id: str, parallel: int | None) -> tuple[dict[str, float], int, int]:
    times = {}
    started = time.perf_counter()
    sql = f"SELECT {', '.join(COLUMNS)} FROM customers WHERE seq >= {lo} AND seq < {hi}"
    rows = query_audience(engine, sql, "bench", COLUMNS)
    times["read"] = time.perf_counter() - started
    mark = time.perf_counter()
    membership = build_membership("bench", rows, "customer_id")
    members = ClusteredFile(write_membership(membership.table, tmp / "audiences" / "bench" / "membership.parquet",
                                             membership.key_hash))
    times["materialize"] = time.perf_counter() - mark
    mark = time.perf_counter()
    result = run_sync(spec, members, destination, store, RunOptions(
        run_id=run_id, parallel_batches=parallel, progress=lambda line: print(f"  {run_id}: {line}", file=sys.stderr, flush=True)))
    times["sync"] = time.perf_counter() - mark
    times["total"] = time.perf_counter() - started
    return times, members.rows, result.added + result.removed + result.updated


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--destination", choices=["sql_table", "webhook", "meta_custom_audiences"],
                        default="sql_table")
    parser.add_argument("--warehouse", choices=["duckdb", "postgres"], default="duckdb")
    parser.add_argument("--table-db", choices=["duckdb", "postgres"], default="postgres",
                        help="sql_table: the database holding the table")
    parser.add_argument("--pg-url", default=os.environ.get("AUDIENCE_PIPELINES_TEST_PG_URL", DEFAULT_PG_URL))
    parser.add_argument("--parallel-batches", type=int, help="batches in flight (default: the destination's)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0

    n, churn = args.rows, args.rows // 50
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    fake = None
    uses_pg = args.warehouse == "postgres" or (args.destination == "sql_table" and args.table_db == "postgres")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if uses_pg:
            import sqlalchemy as sa

            with sa.create_engine(args.pg_url).begin() as conn:
                conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        t0 = time.perf_counter()
        engine = warehouse(args.warehouse, people(n + churn), tmp, args.pg_url, schema)
        print(f"warehouse ({args.warehouse}) of {n + churn:,} people written in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr, flush=True)
        url = None
        if args.destination != "sql_table":
            fake = subprocess.Popen([sys.executable, __file__, "--serve", args.destination], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)
            url = json.loads(fake.stdout.readline())["url"]
        identifiers = {"email": "email", "external_id": "key"} if args.destination == "meta_custom_audiences" \
            else {"email": "email"}
        fields = {} if args.destination == "meta_custom_audiences" else {"plan": "plan", "country": "country",
                                                                          "lifetime_value": "lifetime_value"}
        spec = SyncSpec(name="bench", audience="bench", destination=args.destination, target=Target(name="vip"),
                        identifiers=identifiers, fields=fields)
        store = SnapshotStore(tmp / "syncs", "bench")
        where = args.destination + (f" ({args.table_db})" if args.destination == "sql_table" else " (fake, own process)")
        print(f"N={n:,} warehouse={args.warehouse} destination={where}")
        try:
            for label, lo, hi in (("first sync", 0, n), ("2% churn", churn, n + churn)):
                destination, settings = open_destination(args.destination, url, tmp, args.table_db, args.pg_url,
                                                          schema)
                try:
                    times, members, sent = one_run(engine, lo, hi, tmp, spec, store, destination, label,
                                                   args.parallel_batches)
                finally:
                    destination.close()
                phases = "  ".join(f"{p} {s:6.2f} s {members / s:>11,.0f} rows/s" for p, s in times.items())
                print(f"{label:<10} {members:>11,} members, {sent:>10,} sent  {phases}"
                      f"  (sent/s in sync: {sent / times['sync']:,.0f})", flush=True)
            if args.destination == "sql_table":
                held = held_in_table(settings)
                if args.table_db == "postgres":
                    floor = postgres_floor(args.pg_url, schema, people(n))
                    print(f"postgres floor: one COPY of the {n:,} rows, preformatted, into an empty keyed table "
                          f"took {floor:.2f} s ({n / floor:,.0f} rows/s)")
            else:
                fake.stdin.close()
                held = json.loads(fake.stdout.readline())["held"]
                fake.wait(30)
                fake = None
        finally:
            if fake is not None:
                fake.kill()
            if uses_pg:
                with sa.create_engine(args.pg_url).begin() as conn:
                    conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        expected = [f"cus_{i:09d}" for i in range(churn, n + churn)]
        if held != expected:
            print(f"MISMATCH: the destination holds {len(held):,} members, the audience {len(expected):,}",
                  file=sys.stderr)
            return 1
        print(f"checked: the destination holds exactly the {len(expected):,} members of the rerun")
    return 0


if __name__ == "__main__":
    sys.exit(main())
