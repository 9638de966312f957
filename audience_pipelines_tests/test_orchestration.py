"""Schedules, automation, pools and run history, with Dagster's own test helpers."""

from __future__ import annotations

import datetime as dt
import warnings

import dagster as dg
import pyarrow.parquet as pq
import pytest

from audience_pipelines.cli import main as cli
from audience_pipelines.definitions import defs as load_defs
from audience_pipelines.engine.dispatch import Progress
from audience_pipelines.engine.history import RunHistory, RunRecord
from audience_pipelines.resources import open_history
from audience_pipelines_tests.dagster_helpers import materialize, metadata, project_defs

AUDIENCE = """type: audience_pipelines.components.Audience
attributes: {{name: aud_{name}, entity: customers, filter: "lifetime_value > 0", schedule: {audience}}}
"""
SYNC = """type: audience_pipelines.components.AudienceSync
attributes: {{name: sync_{name}, audience: aud_{name}, destination: crm_table, schedule: {sync}}}
"""


def extra(name: str, audience: str, sync: str) -> dict[str, str]:
    return {f"x_{name}/defs.yaml": AUDIENCE.format(name=name, audience=audience) + "---\n"
            + SYNC.format(name=name, sync=sync)}


@pytest.mark.parametrize("choice, when, cron", [
    ("every_15_minutes", dt.datetime(2026, 3, 2, 10, 15), "*/15 * * * *"),
    ("hourly", dt.datetime(2026, 3, 2, 10, 0), "0 * * * *"),
    ("daily", dt.datetime(2026, 3, 2, 6, 0), "0 6 * * *"),
    ("weekly", dt.datetime(2026, 3, 2, 6, 0), "0 6 * * 1"),  # a Monday
    ('{cron: "30 8 * * 2", timezone: Europe/Paris}', dt.datetime(2026, 3, 3, 8, 30), "30 8 * * 2"),
])
def test_each_schedule_choice_targets_its_sync(home, choice, when, cron):
    with project_defs(extra=extra("s", "every_15_minutes", choice)) as defs:
        schedule = defs.resolve_schedule_def("sync_sync_s_schedule")
        assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
        tz = dt.timezone.utc if "Paris" not in choice else __import__("zoneinfo").ZoneInfo("Europe/Paris")
        ctx = dg.build_schedule_context(scheduled_execution_time=when.replace(tzinfo=tz))
        data = schedule.evaluate_tick(ctx)
        assert len(data.run_requests) == 1
        job = defs.resolve_job_def(schedule.job_name)
        assert job.asset_layer.executable_asset_keys == {dg.AssetKey(["syncs", "sync_s"])}
        assert schedule.cron_schedule == cron
        assert schedule.execution_timezone == ("Europe/Paris" if "Paris" in choice else "UTC")


def test_manual_and_on_audience_update_create_no_schedule(home):
    with project_defs(extra={**extra("m", "manual", "manual"), **extra("u", "daily", "on_audience_update")}) as defs:
        names = {s.name for s in defs.schedules}
        assert "sync_sync_m_schedule" not in names and "audience_aud_m_schedule" not in names
        assert "sync_sync_u_schedule" not in names and "audience_aud_u_schedule" in names
        spec = next(iter(defs.resolve_assets_def(dg.AssetKey(["syncs", "sync_u"])).specs))
        assert spec.automation_condition is not None
        sensor = defs.resolve_sensor_def("sync_sync_u_automation")
        assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
        assert "sync_sync_m_automation" not in {s.name for s in defs.sensors}


def test_settings_start_schedules_running(home):
    settings = {"settings/defs.yaml": "type: audience_pipelines.components.Settings\nattributes: {schedules: running}\n"}
    with project_defs(extra={**settings, **extra("r", "daily", "daily")}, drop=("settings",)) as defs:
        assert defs.resolve_schedule_def("sync_sync_r_schedule").default_status == dg.DefaultScheduleStatus.RUNNING
        sensor = defs.resolve_sensor_def("sync_high_value_to_crm_automation")
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_sync_faster_than_its_audience_warns_naming_both(home):
    with pytest.warns(UserWarning, match=r"sync 'sync_f' runs hourly but its audience 'aud_f' is evaluated daily"):
        with project_defs(extra=extra("f", "daily", "hourly")):
            pass
    with pytest.warns(UserWarning, match=r"audience 'aud_g' is evaluated never on a schedule"):
        with project_defs(extra=extra("g", "manual", "daily")):
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with project_defs(extra=extra("h", "hourly", "daily")):
            pass


def test_automation_requests_the_sync_after_its_audience_updates(home):
    defs = load_defs()
    instance = dg.DagsterInstance.ephemeral()
    selection = dg.AssetSelection.assets(dg.AssetKey(["syncs", "high_value_to_crm"]))
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection)
    assert first.total_requested == 0  # the audience was never materialized
    materialize(defs, "audiences/high_value_customers", instance=instance)
    second = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection,
                                               cursor=first.cursor)
    assert second.get_num_requested(dg.AssetKey(["syncs", "high_value_to_crm"])) == 1
    materialize(defs, "syncs/high_value_to_crm", instance=instance)
    third = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection,
                                              cursor=second.cursor)
    assert third.total_requested == 0


def test_syncs_have_pools_and_resend_job_is_tagged(home):
    pool = {"dest/defs.yaml": """type: audience_pipelines.components.Destination
attributes: {name: shared_dest, type: file, settings: {path: /tmp/x}, pool: meta_rate_limit}
---
type: audience_pipelines.components.AudienceSync
attributes: {name: pooled, audience: churn_risk, destination: shared_dest}
"""}
    with project_defs(extra=pool) as defs:
        assert defs.resolve_assets_def(dg.AssetKey(["syncs", "pooled"])).op.pool == "meta_rate_limit"
        assert defs.resolve_assets_def(dg.AssetKey(["syncs", "churn_risk_to_crm"])).op.pool == "sync_churn_risk_to_crm"
        job = defs.resolve_job_def("resend_full_membership")
        assert job.tags["audience/full_resync"] == "true"


@pytest.mark.slow  # a demo-sized run (over 10 s); test_small_demo.py keeps this path in the fast loop
def test_resend_job_resends_and_history_records_success_and_failure(home, capsys):
    defs = load_defs()
    instance = dg.DagsterInstance.ephemeral()
    materialize(defs, "audiences/high_value_customers", "syncs/high_value_to_crm", instance=instance)
    job = defs.resolve_job_def("resend_full_membership")
    resend = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey(["syncs", "high_value_to_crm"])])
    resent = metadata(resend, "syncs/high_value_to_crm")["rows_resent"]
    assert resent > 0
    # An empty audience trips the guard: a failed run is recorded with its error.
    path = home / "audiences" / "high_value_customers" / "membership.parquet"
    pq.write_table(pq.read_table(path).slice(0, 0), path)
    failed = materialize(defs, "syncs/high_value_to_crm", instance=instance, raise_on_error=False)
    assert not failed.success
    history = open_history(home)
    records = history.list("high_value_to_crm")
    history.close()
    assert [r.status for r in records] == ["error", "success", "success"]
    assert records[1].run_kind == "full_resend" and records[1].resent == resent
    assert "mass-removal guard" in records[0].error
    assert cli(["runs", "high_value_to_crm"]) == 0
    out = capsys.readouterr().out
    assert out.count(" success ") == 2 and "error:" in out


def test_forget_deletes_the_snapshot_of_a_sync_gone_from_yaml_only_when_confirmed(home, capsys):
    gone = {"gone/defs.yaml": """type: audience_pipelines.components.AudienceSync
attributes: {name: churn_copy, audience: churn_risk, destination: exports, target: {name: churn_copy}}
"""}
    with project_defs(extra=gone) as defs:
        materialize(defs, "audiences/churn_risk", "syncs/churn_copy", instance=dg.DagsterInstance.ephemeral())
    folder = home / "syncs" / "churn_copy"
    assert cli(["forget", "churn_copy"]) == 1 and folder.exists()
    assert cli(["forget", "churn_copy", "--yes"]) == 0 and not folder.exists()


def test_progress_reports_rows_rate_and_time_left():
    lines = []

    class Options:
        progress = staticmethod(lines.append)
        progress_interval_s = 0.0

    progress = Progress(total=3000, options=Options)
    time = __import__("time")
    time.sleep(0.01)
    progress.batch_done(1000)
    progress.batch_done(2000)
    progress.finish(True)
    assert lines[0].startswith("sent 1,000/3,000 rows (33%), ") and "rows/s" in lines[0]
    assert "s left" in lines[0] and lines[2].startswith("sent 3,000/3,000 rows in")


def test_history_on_postgres(pg_schema):
    url, _ = pg_schema
    history = RunHistory(url)
    from audience_pipelines.engine.history import RunRecord

    now = dt.datetime.now(dt.timezone.utc)
    history.record(RunRecord(run_id="r1", sync="s", started_at=now, finished_at=now, status="success", added=3))
    history.record(RunRecord(run_id="r1", sync="s", started_at=now, finished_at=now, status="error", error="boom"))
    records = history.list("s")
    history.close()
    # Both attempts of the step are kept, the latest first.
    assert [(r.run_id, r.attempt, r.status, r.error) for r in records] == [
        ("r1", 2, "error", "boom"), ("r1", 1, "success", None)]


@pytest.mark.slow  # a demo-sized run (over 10 s); test_small_demo.py keeps this path in the fast loop
def test_deleting_a_sync_from_yaml_keeps_its_members_and_snapshot(home):
    import duckdb

    small = {"gone/defs.yaml": """type: audience_pipelines.components.Audience
attributes: {name: top_spenders, entity: customers, filter: "lifetime_value > 5000"}
---
type: audience_pipelines.components.AudienceSync
attributes: {name: top_to_crm, audience: top_spenders, destination: crm_table}
"""}

    def held() -> int:
        con = duckdb.connect(str(home / "demo_crm.duckdb"), read_only=True)
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
    assert (home / "syncs" / "top_to_crm" / "manifest.json").exists()


@pytest.mark.slow  # a demo-sized run (over 10 s); test_small_demo.py keeps this path in the fast loop
def test_history_keeps_every_sync_of_a_run_and_every_attempt(home, capsys):
    defs = load_defs()
    instance = dg.DagsterInstance.ephemeral()
    both = ("audiences/high_value_customers", "audiences/churn_risk", "syncs/high_value_to_crm",
            "syncs/churn_risk_to_crm")
    first = materialize(defs, *both, instance=instance)
    second = materialize(defs, *both, instance=instance)
    history = open_history(home)
    try:
        for sync in ("high_value_to_crm", "churn_risk_to_crm"):
            records = history.list(sync)
            assert [(r.run_id, r.run_kind, r.status) for r in records] == [
                (second.run_id, "diff", "success"), (first.run_id, "first_run", "success")], sync
        # A retried step adds an attempt instead of replacing the first one.
        now = dt.datetime.now(dt.timezone.utc)
        again = history.record(RunRecord(run_id=second.run_id, sync="churn_risk_to_crm", started_at=now,
                                         finished_at=now, status="error", error="retried"))
        assert again.attempt == 2
        assert [(r.attempt, r.status) for r in history.list("churn_risk_to_crm")[:2]] == [(2, "error"), (1, "success")]
    finally:
        history.close()
    assert cli(["runs", "high_value_to_crm"]) == 0
    out = capsys.readouterr().out
    assert "run_kind" in out and "sync_mode" in out and out.count(" mirror ") == 2 and " first_run " in out


def test_history_of_the_first_layout_is_migrated(home):
    import sqlalchemy as sa

    url = f"sqlite:///{home / 'old.sqlite'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE audience_sync_runs (run_id VARCHAR(64) PRIMARY KEY, sync VARCHAR(200) "
                             "NOT NULL, started_at DATETIME NOT NULL, finished_at DATETIME NOT NULL, status VARCHAR(20)"
                             " NOT NULL, mode VARCHAR(10), added BIGINT, removed BIGINT, updated BIGINT, resent BIGINT,"
                             " failed BIGINT, set_aside BIGINT, skipped BIGINT, duration_s FLOAT, "
                             "destination_audience_id VARCHAR(200), error TEXT, errors_sample TEXT, rejected_path TEXT)"))
        conn.execute(sa.text("INSERT INTO audience_sync_runs (run_id, sync, started_at, finished_at, status, mode, "
                             "added) VALUES ('r0', 's', '2026-01-01 00:00:00', '2026-01-01 00:01:00', 'success', "
                             "'full', 5)"))
    engine.dispose()
    history = RunHistory(url)
    now = dt.datetime.now(dt.timezone.utc)
    history.record(RunRecord(run_id="r0", sync="t", started_at=now, finished_at=now, status="success"))
    records = {r.sync: r for r in history.list()}
    history.close()
    assert (records["s"].run_kind, records["s"].added, records["s"].attempt) == ("full", 5, 1)
    assert records["t"].run_id == "r0"  # same run, another sync: its own row


def test_a_failed_run_is_recorded_on_the_asset_with_what_got_through(home):
    defs = load_defs()
    instance = dg.DagsterInstance.ephemeral()
    materialize(defs, "audiences/high_value_customers", "syncs/high_value_to_crm", instance=instance)
    path = home / "audiences" / "high_value_customers" / "membership.parquet"
    pq.write_table(pq.read_table(path).slice(0, 0), path)
    failed = materialize(defs, "syncs/high_value_to_crm", instance=instance, raise_on_error=False)
    assert not failed.success
    key = dg.AssetKey(["syncs", "high_value_to_crm"])
    records = instance.fetch_observations(key, limit=10).records
    assert len(records) == 1 and records[0].run_id == failed.run_id
    seen = {k: v.value for k, v in records[0].asset_observation.metadata.items()}
    assert seen["status"] == "error" and seen["run_kind"] == "diff" and seen["rows_added"] == 0
    # Nothing was sent: the guard stopped the run before dispatch.
    assert (seen["rows_removed"], seen["membership_rows"]) == (0, 0)
    assert "mass-removal guard" in seen["error"]
    # The message says exactly how to allow the removal.
    assert '{"ops": {"syncs__high_value_to_crm": {"config": {"allow_mass_removal": true}}}}' in seen["error"]
    assert "dagster asset materialize -m audience_pipelines.definitions --select syncs/high_value_to_crm" \
        in seen["error"]


def test_a_first_run_that_fails_is_recorded_as_a_first_run(home):
    defs = load_defs()
    failed = materialize(defs, "syncs/high_value_to_crm", instance=dg.DagsterInstance.ephemeral(),
                         raise_on_error=False)
    assert not failed.success
    history = open_history(home)
    [record] = history.list("high_value_to_crm")
    history.close()
    assert (record.status, record.run_kind, record.sync_mode) == ("error", "first_run", "mirror")


@pytest.mark.slow  # a demo-sized run (over 10 s); test_small_demo.py keeps this path in the fast loop
def test_forget_refuses_a_sync_still_defined_unless_forced(home, capsys):
    defs = load_defs()
    materialize(defs, "audiences/churn_risk", "syncs/churn_risk_to_crm", instance=dg.DagsterInstance.ephemeral())
    folder = home / "syncs" / "churn_risk_to_crm"
    assert cli(["forget", "churn_risk_to_crm", "--yes"]) == 1 and folder.exists()
    assert "sync 'churn_risk_to_crm' is still defined in YAML" in capsys.readouterr().err
    assert cli(["forget", "churn_risk_to_crm", "--yes", "--force"]) == 0 and not folder.exists()
    assert "warning: sync 'churn_risk_to_crm' is still defined" in capsys.readouterr().err


def test_description_reads_as_written_and_shows_the_schedule_warning(home):
    with pytest.warns(UserWarning):
        with project_defs(extra=extra("w", "daily", "hourly")) as defs:
            described = defs.resolve_assets_def(dg.AssetKey(["syncs", "sync_w"])).descriptions_by_key
            text = described[dg.AssetKey(["syncs", "sync_w"])]
            assert "**Warning:** sync 'sync_w' runs hourly but its audience 'aud_w' is evaluated daily" in text
            churn = defs.resolve_assets_def(dg.AssetKey(["syncs", "churn_risk_to_crm"]))
            text = churn.descriptions_by_key[dg.AssetKey(["syncs", "churn_risk_to_crm"])]
    assert "- mode: additive (adds and updates; never removes)" in text
    assert "removal" not in text and "mass-removal" not in text  # they do not apply to additive
    assert "- identifiers: `email`" in text and "{" not in text
    assert "- schedule: whenever its audience is materialized (on_audience_update)" in text
    with project_defs() as defs:
        high = defs.resolve_assets_def(dg.AssetKey(["syncs", "high_value_to_crm"]))
        text = high.descriptions_by_key[dg.AssetKey(["syncs", "high_value_to_crm"])]
        assert high.metadata_by_key[dg.AssetKey(["syncs", "high_value_to_crm"])]["sync_mode"] == "mirror"
    assert "- mass-removal guard: a run may remove at most 50% of the members held" in text
    assert "- phone numbers without a country code: region from column `country`" in text
    assert "Warning" not in text


@pytest.mark.slow  # a demo-sized run (over 10 s); test_small_demo.py keeps this path in the fast loop
def test_invalid_identifiers_say_what_happened_to_those_members(home):
    defs = load_defs()
    result = materialize(defs, "audiences/churn_risk", "syncs/churn_risk_to_crm", instance=dg.DagsterInstance.ephemeral())
    m = metadata(result, "syncs/churn_risk_to_crm")
    invalid = m["invalid_identifiers_not_sent"]["email"]
    # The table destination keys rows by member: a bad email is left out, the member is still sent.
    assert invalid["members"] > 0 and invalid["set_aside"] == 0 and invalid["sent_without_it"] == invalid["members"]
    assert m["rows_set_aside"] == 0


def test_runs_from_another_directory_fails_naming_where_it_looked(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("AUDIENCE_PIPELINES_HOME", str(missing))
    monkeypatch.chdir(tmp_path)
    assert cli(["runs", "high_value_to_crm"]) == 2
    err = capsys.readouterr().err
    assert f"no audience_pipelines state at {missing}" in err and "AUDIENCE_PIPELINES_HOME" in err
    assert not missing.exists()  # nothing created
