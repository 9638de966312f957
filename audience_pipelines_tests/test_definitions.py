"""The real definitions, loaded from the shipped YAML, materialized on the embedded demo."""

from __future__ import annotations

import duckdb
import dagster as dg
import pyarrow.parquet as pq
import pytest

from audience_pipelines.definitions import defs as load_defs
from audience_pipelines_tests.dagster_helpers import materialize, metadata

SYNCS = ["syncs/high_value_to_crm", "syncs/churn_risk_to_crm", "syncs/newsletter_export"]


def test_definitions_load_without_touching_warehouse_or_network(home):
    defs = load_defs()
    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert {"audiences/high_value_customers", "audiences/churn_risk", "audiences/newsletter_subscribers"} <= keys
    assert set(SYNCS) <= keys
    sync = defs.resolve_assets_def(dg.AssetKey(["syncs", "high_value_to_crm"]))
    spec = next(iter(sync.specs))
    assert spec.group_name == "syncs"
    assert list(spec.deps)[0].asset_key == dg.AssetKey(["audiences", "high_value_customers"])
    assert "mode: mirror" in spec.description and "crm_table" in spec.description
    assert "lifetime_value" in spec.description
    assert not (home / "demo_warehouse.duckdb").exists()  # loading reads nothing


def expected_high_value(home) -> set[str]:
    con = duckdb.connect(str(home / "demo_warehouse.duckdb"), read_only=True)
    rows = con.execute("""
        SELECT customer_id FROM customers WHERE lifetime_value > 1000 AND customer_id IS NOT NULL
        GROUP BY customer_id HAVING count(*) = 1""").fetchall()
    con.close()
    return {r[0] for r in rows}


def crm_members(home, audience: str) -> dict[str, tuple]:
    con = duckdb.connect(str(home / "demo_crm.duckdb"), read_only=True)
    rows = con.execute("SELECT key, email, plan FROM audience_members WHERE audience = ?", [audience]).fetchall()
    con.close()
    return {r[0]: r[1:] for r in rows}


@pytest.mark.slow  # a demo-sized run (over 10 s); test_small_demo.py keeps this path in the fast loop
def test_demo_materializes_and_second_run_sends_nothing(home):
    defs = load_defs()
    instance = dg.DagsterInstance.ephemeral()
    first = materialize(defs, instance=instance)
    assert first.success
    audience = metadata(first, "audiences/high_value_customers")
    expected = expected_high_value(home)
    assert audience["dagster/row_count"] == len(expected)
    assert audience["null_keys"] + audience["duplicate_key_rows"] == audience["set_aside"] > 0
    sync = metadata(first, "syncs/high_value_to_crm")
    assert sync["run_kind"] == "first_run" and sync["sync_mode"] == "mirror" and sync["rows_added"] == len(expected) and sync["rows_failed"] == 0
    held = crm_members(home, "high_value_customers")
    assert set(held) == expected
    # Emails land normalised: trimmed and lower-case, or null where malformed.
    assert all(e is None or (e == e.strip().lower() and "@" in e) for e, _ in held.values())
    membership = pq.read_table(home / "audiences" / "high_value_customers" / "membership.parquet")
    assert set(membership["key"].to_pylist()) == expected
    checks = {e.check_name: e.passed for e in first.get_asset_check_evaluations()}
    assert checks["key_quality"] and checks["failure_rate_below_threshold"]
    export = list((home / "exports" / "newsletter").rglob("add-*.csv"))
    assert export, "file destination wrote no CSV"

    second = materialize(defs, instance=instance)
    assert second.success
    for key in SYNCS:
        m = metadata(second, key)
        assert (m["rows_added"], m["rows_removed"], m["rows_updated"]) == (0, 0, 0), key
        assert m["run_kind"] == "diff"
    assert crm_members(home, "high_value_customers") == held


@pytest.mark.slow  # a demo-sized run (over 10 s); test_small_demo.py keeps this path in the fast loop
def test_backfill_tag_and_full_resync_config_resend_every_member(home):
    defs = load_defs()
    instance = dg.DagsterInstance.ephemeral()
    materialize(defs, "audiences/high_value_customers", "syncs/high_value_to_crm", instance=instance)
    backfill = materialize(defs, "syncs/high_value_to_crm", instance=instance, tags={"dagster/backfill": "bf1"})
    m = metadata(backfill, "syncs/high_value_to_crm")
    assert m["run_kind"] == "full_resend" and m["rows_resent"] == len(expected_high_value(home)) and m["rows_added"] == 0
    config = {"ops": {"syncs__high_value_to_crm": {"config": {"full_resync": True}}}}
    resync = materialize(defs, "syncs/high_value_to_crm", instance=instance, run_config=config)
    assert metadata(resync, "syncs/high_value_to_crm")["rows_resent"] == m["rows_resent"]


def test_sync_before_its_audience_fails_clearly(home):
    result = materialize(load_defs(), "syncs/high_value_to_crm", instance=dg.DagsterInstance.ephemeral(),
                         raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert "audience 'high_value_customers' has not been materialized yet" in failure.message
