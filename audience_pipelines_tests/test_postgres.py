"""PostgreSQL as the warehouse and as a sql_table destination, through the real YAML definitions."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from audience_pipelines.definitions import defs as load_defs
from audience_pipelines.demo import create_demo_warehouse
from audience_pipelines_tests.dagster_helpers import demo_in_postgres, materialize, metadata, project_defs

# Without a server these fail under CI=true and are skipped otherwise (the pg_url fixture).
pytestmark = pytest.mark.postgres

AUDIENCE = "audiences/high_value_customers"
SYNC = "syncs/high_value_to_crm"


@pytest.fixture
def pg_project(home, pg_schema, monkeypatch, tmp_path):
    """Demo customers copied into a PostgreSQL schema that is both warehouse and CRM."""
    url, schema = pg_schema
    engine = demo_in_postgres(url, tmp_path, rows=3000)
    monkeypatch.setenv("AUDIENCE_PIPELINES_WAREHOUSE_URL", url)
    monkeypatch.setenv("AUDIENCE_PIPELINES_CRM_URL", url)
    yield engine
    engine.dispose()


def sql_set(engine, query: str) -> set:
    with engine.connect() as conn:
        return {r[0] for r in conn.execute(sa.text(query))}


EXPECTED = """SELECT customer_id FROM customers WHERE lifetime_value > 1000 AND customer_id IS NOT NULL
              GROUP BY customer_id HAVING count(*) = 1"""
HELD = "SELECT key FROM audience_members WHERE audience = 'high_value_customers'"
DEFS_ENTITY = Path(__file__).parents[1] / "audience_pipelines" / "defs" / "entities" / "defs.yaml"


def test_postgres_warehouse_to_postgres_table_with_changes(pg_project, home):
    engine = pg_project
    defs = load_defs()
    instance = dg.DagsterInstance.ephemeral()
    first = materialize(defs, AUDIENCE, SYNC, instance=instance)
    expected = sql_set(engine, EXPECTED)
    assert len(expected) > 50
    assert metadata(first, SYNC)["rows_added"] == len(expected)
    assert sql_set(engine, HELD) == expected
    membership = pq.read_table(home / "audiences" / "high_value_customers" / "membership.parquet")
    assert membership.schema.field("lifetime_value").type == pa.float64()
    assert pa.types.is_timestamp(membership.schema.field("last_purchase_at").type)
    assert membership.schema.field("marketing_opt_in").type == pa.bool_()

    leaving = sorted(expected)[:5]
    changed = sorted(expected)[5:7]
    with engine.begin() as conn:
        joining = [r[0] for r in conn.execute(sa.text(
            "SELECT customer_id FROM customers WHERE lifetime_value < 500 AND customer_id IS NOT NULL "
            "GROUP BY customer_id HAVING count(*) = 1 ORDER BY customer_id LIMIT 3"))]
        conn.execute(sa.text("UPDATE customers SET lifetime_value = 10 WHERE customer_id = ANY(:ids)"),
                     {"ids": leaving})
        conn.execute(sa.text("UPDATE customers SET plan = 'enterprise-plus' WHERE customer_id = ANY(:ids)"),
                     {"ids": changed})
        conn.execute(sa.text("UPDATE customers SET lifetime_value = 5000 WHERE customer_id = ANY(:ids)"),
                     {"ids": joining})
    second = materialize(defs, AUDIENCE, SYNC, instance=instance)
    m = metadata(second, SYNC)
    assert (m["rows_added"], m["rows_removed"], m["rows_updated"]) == (3, 5, 2)
    assert sql_set(engine, HELD) == sql_set(engine, EXPECTED)
    with engine.connect() as conn:
        plans = {r[0]: r[1] for r in conn.execute(sa.text(
            "SELECT key, plan FROM audience_members WHERE key = ANY(:ids)"), {"ids": changed})}
    assert plans == {k: "enterprise-plus" for k in changed}


def test_empty_audience_is_stopped_by_the_mass_removal_guard(pg_project, home):
    engine = pg_project
    defs = load_defs()
    instance = dg.DagsterInstance.ephemeral()
    materialize(defs, AUDIENCE, SYNC, instance=instance)
    held = sql_set(engine, HELD)
    manifest = (home / "syncs" / "high_value_to_crm" / "manifest.json").read_text()
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE customers SET lifetime_value = 0"))
    blocked = materialize(defs, AUDIENCE, SYNC, instance=instance, raise_on_error=False)
    assert not blocked.success
    message = blocked.get_step_failure_events()[0].step_failure_data.error.message
    assert f"would remove {len(held)} of the {len(held)} members" in message
    assert "mass-removal guard" in message and "Nothing was sent" in message
    events = [r.dagster_event for r in instance.all_logs(blocked.run_id) if r.dagster_event]
    guard = [e.event_specific_data for e in events
             if e.event_type_value == "ASSET_CHECK_EVALUATION" and e.event_specific_data.check_name == "mass_removal_guard"]
    assert len(guard) == 1 and not guard[0].passed and guard[0].metadata["would_remove"].value == len(held)
    assert sql_set(engine, HELD) == held
    assert (home / "syncs" / "high_value_to_crm" / "manifest.json").read_text() == manifest
    allowed = materialize(defs, SYNC, instance=instance,
                          run_config={"ops": {"syncs__high_value_to_crm": {"config": {"allow_mass_removal": True}}}})
    assert metadata(allowed, SYNC)["rows_removed"] == len(held)
    assert sql_set(engine, HELD) == set()


def test_failing_query_and_missing_column_name_the_audience(pg_project, home):
    engine = pg_project
    defs = load_defs()
    instance = dg.DagsterInstance.ephemeral()
    materialize(defs, AUDIENCE, instance=instance)
    path = home / "audiences" / "high_value_customers" / "membership.parquet"
    before = path.read_bytes()
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE customers DROP COLUMN phone"))
    result = materialize(defs, AUDIENCE, instance=instance, raise_on_error=False)
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "audience 'high_value_customers'" in message and "phone" in message
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE customers"))
    result = materialize(defs, AUDIENCE, instance=instance, raise_on_error=False)
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "audience 'high_value_customers': the query failed" in message and "customers" in message
    assert path.read_bytes() == before  # the last good membership is untouched


def test_entity_in_a_schema_off_the_search_path_reads_with_a_qualified_table(pg_url, pg_schema, home,
                                                                            monkeypatch, tmp_path):
    """`table: <schema>.customers` reads a schema the connection does not search by default."""
    _, schema = pg_schema
    source = create_demo_warehouse(tmp_path / "src.duckdb", rows=3000)
    con = duckdb.connect(str(source), read_only=True)
    customers = con.sql("SELECT * FROM customers").to_arrow_table()
    con.close()
    engine = sa.create_engine(pg_url)  # default search_path: the schema is not on it
    try:
        customers.to_pandas().to_sql("customers", engine, schema=schema, index=False)
        with engine.connect() as conn:
            assert schema not in conn.execute(sa.text("SELECT current_schemas(false)")).scalar_one()
            expected = {r[0] for r in conn.execute(sa.text(EXPECTED.replace("FROM customers",
                                                                             f"FROM {schema}.customers")))}
        monkeypatch.setenv("AUDIENCE_PIPELINES_WAREHOUSE_URL", pg_url)
        entity = DEFS_ENTITY.read_text().replace("table: customers", f"table: {schema}.customers")
        assert f"table: {schema}.customers" in entity
        with project_defs(extra={"entities/defs.yaml": entity}) as defs:
            result = materialize(defs, AUDIENCE, SYNC, instance=dg.DagsterInstance.ephemeral())
        membership = pq.read_table(home / "audiences" / "high_value_customers" / "membership.parquet")
        assert len(expected) > 50 and set(membership["key"].to_pylist()) == expected
        assert metadata(result, SYNC)["rows_added"] == len(expected)
    finally:
        engine.dispose()


def test_preview_and_test_sync_on_postgres(pg_project, home, capsys):
    from audience_pipelines.cli import main as cli

    engine = pg_project
    with dg.DagsterInstance.get() as instance:  # the instance the CLI runs its preview job on
        materialize(load_defs(), AUDIENCE, SYNC, instance=instance)
    held = sql_set(engine, HELD)
    leaving = sorted(held)[:4]
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE customers SET lifetime_value = 10 WHERE customer_id = ANY(:ids)"),
                     {"ids": leaving})
    with dg.DagsterInstance.get() as instance:
        materialize(load_defs(), AUDIENCE, instance=instance)
    capsys.readouterr()
    assert cli(["preview", "high_value_to_crm"]) == 0
    out = capsys.readouterr().out
    assert f"remove 4, update 0, add 0, unchanged {len(held) - 4:,}" in out
    assert sql_set(engine, HELD) == held  # nothing sent
    one = sorted(held)[10]
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audience_members WHERE key = :k"), {"k": one})
    assert cli(["test-sync", "high_value_to_crm", "--key", one]) == 0
    assert f"  {one}: resent (unchanged)" in capsys.readouterr().out
    assert sql_set(engine, HELD) == held  # back, and the leavers were not removed by the test
