"""The demo project through Dagster on a 2,000-row warehouse: the fast-loop counterparts of the
demo-sized tests in test_definitions.py and test_orchestration.py, which are marked slow."""

from __future__ import annotations

import dagster as dg
import duckdb
import pytest

from audience_pipelines.cli import main as cli
from audience_pipelines.components.sync import SyncRunConfig, is_full_resync
from audience_pipelines.definitions import defs as load_defs
from audience_pipelines.demo import create_demo_warehouse
from audience_pipelines.resources import open_history
from audience_pipelines_tests.dagster_helpers import materialize, metadata, project_defs

SYNC = "syncs/high_value_to_crm"


@pytest.fixture
def small_demo(home):
    """The demo's warehouse file, built small before the demo would build its 120,000 rows."""
    create_demo_warehouse(home / "demo_warehouse.duckdb", rows=2_000)
    return home


@pytest.mark.parametrize("full_resync, tags, full", [
    (False, {}, False),
    (False, {"dagster/backfill": "bf1"}, True),
    (False, {"audience/full_resync": "true"}, True),
    (False, {"audience/full_resync": "false"}, False),
    (True, {}, True),
])
def test_is_full_resync(full_resync, tags, full):
    assert is_full_resync(SyncRunConfig(full_resync=full_resync), tags) is full


def test_first_run_diff_and_each_kind_of_full_resend(small_demo, capsys):
    defs = load_defs()
    instance = dg.DagsterInstance.ephemeral()
    first = metadata(materialize(defs, "audiences/high_value_customers", SYNC, instance=instance), SYNC)
    members = first["rows_added"]
    assert first["run_kind"] == "first_run" and members > 0
    second = metadata(materialize(defs, SYNC, instance=instance), SYNC)
    assert (second["run_kind"], second["rows_added"], second["rows_removed"], second["rows_updated"]) == (
        "diff", 0, 0, 0)
    resends = {
        "job": defs.resolve_job_def("resend_full_membership").execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey(["syncs", "high_value_to_crm"])]),
        "backfill": materialize(defs, SYNC, instance=instance, tags={"dagster/backfill": "bf1"}),
        "config": materialize(defs, SYNC, instance=instance,
                              run_config={"ops": {"syncs__high_value_to_crm": {"config": {"full_resync": True}}}}),
    }
    for how, result in resends.items():
        m = metadata(result, SYNC)
        assert (m["run_kind"], m["rows_resent"], m["rows_added"]) == ("full_resend", members, 0), how
    history = open_history(small_demo)
    try:
        kinds = [r.run_kind for r in history.list("high_value_to_crm")]
    finally:
        history.close()
    assert kinds == ["full_resend"] * 3 + ["diff", "first_run"]
    capsys.readouterr()
    assert cli(["runs", "high_value_to_crm"]) == 0
    out = capsys.readouterr().out
    assert out.count(" full_resend ") == 3 and out.count(" diff ") == 1 and out.count(" first_run ") == 1


def test_forget_refuses_a_sync_still_defined_unless_forced(small_demo, capsys):
    materialize(load_defs(), "audiences/churn_risk", "syncs/churn_risk_to_crm", instance=dg.DagsterInstance.ephemeral())
    folder = small_demo / "syncs" / "churn_risk_to_crm"
    assert cli(["forget", "churn_risk_to_crm", "--yes"]) == 1 and folder.exists()
    assert "sync 'churn_risk_to_crm' is still defined in YAML" in capsys.readouterr().err
    assert cli(["forget", "churn_risk_to_crm", "--yes", "--force"]) == 0 and not folder.exists()


def test_invalid_identifiers_say_what_happened_to_those_members(small_demo):
    result = materialize(load_defs(), "audiences/churn_risk", "syncs/churn_risk_to_crm",
                         instance=dg.DagsterInstance.ephemeral())
    m = metadata(result, "syncs/churn_risk_to_crm")
    invalid = m["invalid_identifiers_not_sent"]["email"]
    # The table destination keys rows by member: a bad email is left out, the member is still sent.
    assert invalid["members"] > 0 and invalid["set_aside"] == 0 and invalid["sent_without_it"] == invalid["members"]
    assert m["rows_set_aside"] == 0


def test_deleting_a_sync_from_yaml_keeps_its_members_and_snapshot(small_demo):
    small = {"gone/defs.yaml": """type: audience_pipelines.components.Audience
attributes: {name: top_spenders, entity: customers, filter: "lifetime_value > 2000"}
---
type: audience_pipelines.components.AudienceSync
attributes: {name: top_to_crm, audience: top_spenders, destination: crm_table}
"""}

    def held() -> int:
        con = duckdb.connect(str(small_demo / "demo_crm.duckdb"), read_only=True)
        try:
            return con.execute("SELECT count(*) FROM audience_members WHERE audience = 'top_spenders'").fetchall()[0][0]
        finally:
            con.close()

    instance = dg.DagsterInstance.ephemeral()
    with project_defs(extra=small) as defs:
        materialize(defs, "audiences/top_spenders", "syncs/top_to_crm", instance=instance)
    before = held()
    assert before > 0
    with project_defs() as defs:  # the sync's YAML is gone
        assert dg.AssetKey(["syncs", "top_to_crm"]) not in defs.resolve_all_asset_keys()
        materialize(defs, "audiences/high_value_customers", "syncs/high_value_to_crm", instance=instance)
    assert held() == before
    assert (small_demo / "syncs" / "top_to_crm" / "manifest.json").exists()


def test_preview_and_test_sync_from_the_cli_leave_the_snapshot_and_show_in_dagster(small_demo, capsys):
    import duckdb as _duckdb  # the demo CRM table, read back

    with dg.DagsterInstance.get() as instance:  # the project's instance (DAGSTER_HOME): what the CLI uses
        materialize(load_defs(), "audiences/high_value_customers", SYNC, instance=instance)
    store = small_demo / "syncs" / "high_value_to_crm"
    manifest = (store / "manifest.json").read_bytes()
    crm = small_demo / "demo_crm.duckdb"

    def crm_rows():
        with _duckdb.connect(str(crm), read_only=True) as con:
            return con.execute("SELECT key, email, plan FROM audience_members ORDER BY key").fetchall()

    held = crm_rows()
    # Two members leave the audience in the warehouse: the preview shows their removal, sends nothing.
    leavers = [k for k, _, _ in held[:2]]
    with _duckdb.connect(str(small_demo / "demo_warehouse.duckdb")) as con:
        con.execute(f"UPDATE customers SET lifetime_value = 5 WHERE customer_id IN ({', '.join(repr(k) for k in leavers)})")
    with dg.DagsterInstance.get() as instance:
        materialize(load_defs(), "audiences/high_value_customers", instance=instance)
    capsys.readouterr()
    assert cli(["preview", "high_value_to_crm", "--rows", "2"]) == 0
    out = capsys.readouterr().out
    assert "sync 'high_value_to_crm': diff run to audience high_value_customers" in out
    assert "remove 2, update 0, add 0" in out and "mass-removal guard: passes: 2 of" in out
    assert f"'key': '{leavers[0]}'" in out
    assert crm_rows() == held and (store / "manifest.json").read_bytes() == manifest
    # A test sync of one named member: sent to the real table, reported, not committed.
    joiner = str(min(k for k, _, _ in held if k not in leavers))
    with _duckdb.connect(str(crm)) as con:
        con.execute(f"DELETE FROM audience_members WHERE key = '{joiner}'")
    assert cli(["test-sync", "high_value_to_crm", "--key", joiner]) == 0
    out = capsys.readouterr().out
    assert f"  {joiner}: resent (unchanged)" in out and "not committed" in out
    assert joiner in {k for k, _, _ in crm_rows()} and (store / "manifest.json").read_bytes() == manifest
    assert cli(["test-sync", "high_value_to_crm", "--key", "no-such-key"]) == 1
    assert "1 key(s) are not members of audience 'high_value_customers'" in capsys.readouterr().err
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs(dg.RunsFilter(job_name="preview_high_value_to_crm"))
        assert [r.status for r in runs] == [dg.DagsterRunStatus.FAILURE] + [dg.DagsterRunStatus.SUCCESS] * 2
        observations = instance.fetch_observations(dg.AssetKey(["syncs", "high_value_to_crm"]), limit=10).records
        assert {o.asset_observation.description for o in observations} >= {"Preview (nothing sent)", "Test sync"}
