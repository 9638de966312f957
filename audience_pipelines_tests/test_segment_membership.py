"""Segment membership through the real YAML: an entity sync sends every customer with the list of audiences
they are in to a table, and the field follows a member who leaves an audience (DuckDB and PostgreSQL)."""

from __future__ import annotations

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from audience_pipelines.components.load_errors import first_user_error
from audience_pipelines.demo import create_demo_warehouse
from audience_pipelines.engine.segments import segment_membership
from audience_pipelines.resources import AudienceStorage
from audience_pipelines_tests.dagster_helpers import (
    demo_in_postgres, materialize, metadata, partitioned_without_whole_reads, project_defs,
)

SYNC = "syncs/customer_segments"
AUDIENCES = ["churn_risk", "high_value_customers", "newsletter_subscribers"]
YAML = """
type: audience_pipelines.components.Destination
attributes:
  name: segments_table
  type: sql_table
  settings: {url: "duckdb:///{data_dir}/segments.duckdb", table: customer_segments}
---
type: audience_pipelines.components.AudienceSync
attributes:
  name: customer_segments
  entity: customers
  destination: segments_table
  fields: {segments: audience_membership, plan: plan}
"""


def test_membership_lists_are_sorted_names_and_empty_for_none():
    keys = pa.array(["a", "b", "c", "d"])
    got = segment_membership(keys, {"vip": pa.array(["a", "c"]), "churn": pa.array(["c", "d", "zz"]),
                                    "empty": pa.array([], pa.string())})
    assert got.to_pylist() == ["vip", "", "churn;vip", "churn"]
    assert segment_membership(keys, {}).to_pylist() == ["", "", "", ""]


def expected_segments(storage: AudienceStorage, keys: list[str]) -> dict[str, str]:
    held = {a: set(pq.read_table(storage.membership_path(a), columns=["key"])["key"].to_pylist()) for a in AUDIENCES}
    return {k: ";".join(a for a in AUDIENCES if k in held[a]) for k in keys}


def run_all(defs, instance, *keys):
    return materialize(defs, *(f"audiences/{a}" for a in AUDIENCES), *keys, instance=instance)


def table_rows(url_or_path) -> dict[str, str]:
    with duckdb.connect(str(url_or_path), read_only=True) as con:
        return dict(con.execute("SELECT key, segments FROM customer_segments").fetchall())


def test_an_entity_sync_keeps_each_customers_audiences_current(home):
    warehouse = create_demo_warehouse(home / "demo_warehouse.duckdb", rows=2_000)
    storage = AudienceStorage()
    with project_defs(extra={"segments/defs.yaml": YAML}) as defs:
        key = dg.AssetKey(SYNC.split("/"))
        assert {d.path[-1] for d in defs.resolve_assets_def(key).asset_deps[key]} \
            == set(AUDIENCES)  # lineage: the entity sync follows every audience of the entity
        instance = dg.DagsterInstance.ephemeral()
        first = metadata(run_all(defs, instance, SYNC), SYNC)
        rows = table_rows(home / "segments.duckdb")
        with duckdb.connect(str(warehouse), read_only=True) as con:
            customers = {k for k, in con.execute("SELECT customer_id FROM customers WHERE customer_id IS NOT NULL "
                                                 "GROUP BY 1 HAVING count(*) = 1").fetchall()}
        assert set(rows) == customers and first["rows_added"] == len(customers)  # every record, not one audience
        assert rows == expected_segments(storage, sorted(customers))
        assert "" in rows.values() and any(v.count(";") == 2 for v in rows.values())
        # A member leaves one audience: only their field changes, at the next run.
        leaver = next(k for k, v in sorted(rows.items()) if "high_value_customers" in v)
        with duckdb.connect(str(warehouse)) as con:
            con.execute("UPDATE customers SET lifetime_value = 5 WHERE customer_id = ?", [leaver])
        second = metadata(run_all(defs, instance, SYNC), SYNC)
        assert (second["rows_updated"], second["rows_added"], second["rows_removed"]) == (1, 0, 0)
        after = table_rows(home / "segments.duckdb")
        assert "high_value_customers" not in after[leaver] and after[leaver] == rows[leaver].replace(
            "high_value_customers", "").replace(";;", ";").strip(";")
        assert {k: v for k, v in after.items() if k != leaver} == {k: v for k, v in rows.items() if k != leaver}


def test_an_audience_sync_joins_each_members_audiences_a_partition_at_a_time(home, monkeypatch):
    # Key-hash partitions of about 8 members: each partition of the members is matched against the same
    # partition of every audience, and the membership is never read whole.
    create_demo_warehouse(home / "demo_warehouse.duckdb", rows=2_000)
    partitioned_without_whole_reads(monkeypatch, 8)
    yaml = YAML.replace("  entity: customers\n", "  audience: high_value_customers\n")
    with project_defs(extra={"segments/defs.yaml": yaml}) as defs:
        result = metadata(run_all(defs, dg.DagsterInstance.ephemeral(), SYNC), SYNC)
    storage = AudienceStorage()
    members = pq.read_table(storage.membership_path("high_value_customers"), columns=["key"])["key"].to_pylist()
    rows = table_rows(home / "segments.duckdb")
    assert len(members) > 16 * 8 and result["rows_added"] == len(members)
    assert rows == expected_segments(storage, members)
    assert {v.count(";") for v in rows.values()} >= {0, 1, 2}  # some in one audience, some in two, some in all


def test_an_entity_sync_names_exactly_one_source(home):
    create_demo_warehouse(home / "demo_warehouse.duckdb", rows=500)
    both = YAML.replace("  entity: customers\n", "  entity: customers\n  audience: churn_risk\n")
    with pytest.raises(Exception) as err:
        with project_defs(extra={"segments/defs.yaml": both}):
            pass
    assert ("sync 'customer_segments': give exactly one of 'audience' (its members) or 'entity' (every record of "
            "it: an entity sync)") in str(first_user_error(err.value))


@pytest.mark.postgres
def test_segment_membership_from_a_postgres_warehouse_to_a_postgres_table(home, pg_schema, monkeypatch, tmp_path):
    url, _ = pg_schema
    engine = demo_in_postgres(url, tmp_path, rows=1_500)
    monkeypatch.setenv("AUDIENCE_PIPELINES_WAREHOUSE_URL", url)
    yaml = YAML.replace('settings: {url: "duckdb:///{data_dir}/segments.duckdb", table: customer_segments}',
                        "settings: {table: customer_segments}\n  from_env: {url: SEGMENTS_URL}")
    monkeypatch.setenv("SEGMENTS_URL", url)
    with project_defs(extra={"segments/defs.yaml": yaml}) as defs:
        instance = dg.DagsterInstance.ephemeral()
        run_all(defs, instance, SYNC)
        with engine.connect() as conn:
            rows = dict(conn.execute(sa.text("SELECT key, segments FROM customer_segments")).fetchall())
        assert rows == expected_segments(AudienceStorage(), sorted(rows)) and len(rows) > 1000
        leaver = next(k for k, v in sorted(rows.items()) if "churn_risk" in v)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE customers SET plan = 'free' WHERE customer_id = :k"), {"k": leaver})
        m = metadata(run_all(defs, instance, SYNC), SYNC)
        with engine.connect() as conn:
            now = conn.execute(sa.text("SELECT segments, plan FROM customer_segments WHERE key = :k"),
                               {"k": leaver}).one()
    assert "churn_risk" not in now[0] and now[1] == "free" and m["rows_updated"] == 1
    engine.dispose()
