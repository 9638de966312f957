"""End to end against a real dagster-webserver and dagster-daemon on the project's workspace.yaml."""

from __future__ import annotations

import csv
import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from dagster_graphql import DagsterGraphQLClient

from audience_pipelines.webserver import LOCATION, REPOSITORY, Webserver

pytestmark = pytest.mark.slow

REPO = Path(__file__).parents[1]
BIN = Path(sys.executable).parent
HIGH_VALUE = ["audiences", "high_value_customers"]
RUNS = """
query($filter: RunsFilter) {
  runsOrError(filter: $filter) { ... on Runs { results { runId status tags { key value } } } }
}"""
START_SENSOR = """
mutation($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) { __typename ... on Sensor { sensorState { status } } }
}"""
HEALTH = """
{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } }
  workspaceOrError { ... on Workspace { locationEntries { name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout: float = 180, every: float = 1.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - the server may still be starting
            last = exc
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def healthy(web: Webserver) -> bool:
    """The code location loaded without error and every required daemon reports healthy."""
    state = web.query(HEALTH, {})
    entries = state["workspaceOrError"]["locationEntries"]
    loaded = entries and all(e["loadStatus"] == "LOADED" for e in entries)
    errors = [e["locationOrLoadError"] for e in entries
              if e["locationOrLoadError"] and e["locationOrLoadError"]["__typename"] == "PythonError"]
    assert not errors, errors
    daemons = state["instance"]["daemonHealth"]["allDaemonStatuses"]
    return loaded and all(d["healthy"] for d in daemons if d["required"])


def stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to each process group, SIGKILL to any still there after 30 s."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(10)


@pytest.fixture(scope="module")
def dagster(tmp_path_factory):
    """webserver + daemon sharing a fresh DAGSTER_HOME; torn down even when a test fails."""
    root = tmp_path_factory.mktemp("e2e")
    home, data = root / "dagster_home", root / "data"
    home.mkdir()
    data.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "AUDIENCE_PIPELINES_HOME": str(data),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for var in ("AUDIENCE_PIPELINES_WAREHOUSE_URL", "AUDIENCE_PIPELINES_CRM_URL", "AUDIENCE_PIPELINES_HISTORY_URL"):
        env.pop(var, None)
    # Create the instance's storage once: webserver and daemon migrating a fresh SQLite home at the
    # same moment can leave two alembic heads behind.
    subprocess.run([str(BIN / "dagster"), "instance", "migrate"], cwd=REPO, env=env, check=True,
                   capture_output=True, timeout=120)
    logs = [open(root / name, "w") for name in ("webserver.log", "daemon.log")]
    procs = [
        subprocess.Popen([str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                         cwd=REPO, env=env, stdout=logs[0], stderr=subprocess.STDOUT, start_new_session=True),
        subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                         cwd=REPO, env=env, stdout=logs[1], stderr=subprocess.STDOUT, start_new_session=True),
    ]
    started = time.monotonic()
    try:
        web = Webserver(f"http://127.0.0.1:{port}")
        wait_for("code location and daemons", lambda: healthy(web))
        print(f"webserver and daemon healthy after {time.monotonic() - started:.1f}s")
        yield {"web": web, "port": port, "data": data, "env": env,
               "client": DagsterGraphQLClient("127.0.0.1", port_number=port)}
    finally:
        stop(procs)
        for f in logs:
            f.close()
        print(f"end-to-end fixture lived {time.monotonic() - started:.1f}s")


def run_and_wait(dagster, *keys: list[str], run_config=None, timeout: float = 240) -> str:
    client: DagsterGraphQLClient = dagster["client"]
    run_id = client.submit_job_execution("__ASSET_JOB", repository_location_name=LOCATION,
                                         repository_name=REPOSITORY, asset_selection=list(keys),
                                         run_config=run_config or {})
    status = wait_for(f"run {run_id}", lambda: _finished(client, run_id), timeout=timeout)
    assert status == "SUCCESS", f"run {run_id} ended {status}"
    return run_id


def _finished(client, run_id):
    status = client.get_run_status(run_id).value
    return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None


def cli(dagster, *args: str) -> str:
    out = subprocess.run([str(BIN / "audience-pipelines"), *args], cwd=REPO, env=dagster["env"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def crm(dagster) -> dict[str, dt.datetime]:
    con = duckdb.connect(str(dagster["data"] / "demo_crm.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT key, synced_at FROM audience_members WHERE audience = 'high_value_customers'").fetchall()
    finally:
        con.close()
    return dict(rows)


def membership(dagster, audience: str) -> set[str]:
    return set(pq.read_table(dagster["data"] / "audiences" / audience / "membership.parquet")["key"].to_pylist())


def test_automation_backfill_resend_full_resync_pause_and_history(dagster):
    web: Webserver = dagster["web"]
    started = time.monotonic()
    sensor = web.query(START_SENSOR, {"selector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY,
                                                   "sensorName": "sync_high_value_to_crm_automation"}})
    assert sensor["startSensor"]["sensorState"]["status"] == "RUNNING"

    # Materializing the audience makes the automation sensor launch its sync.
    run_and_wait(dagster, HIGH_VALUE)
    members = membership(dagster, "high_value_customers")

    def automated_sync_succeeded():
        runs = web.query(RUNS, {"filter": {"tags": [{"key": "dagster/sensor_name", "value": "sync_high_value_to_crm_automation"}]}})
        return [r for r in runs["runsOrError"]["results"] if r["status"] == "SUCCESS"]

    wait_for("the automation sensor's sync run", automated_sync_succeeded, timeout=180, every=2)
    assert set(crm(dagster)) == members

    # The CLI's backfill resends every member: each row is written again.
    before = dt.datetime.now(dt.timezone.utc)
    out = cli(dagster, "resend", "high_value_to_crm", "--url", web.url, "--wait")
    assert "COMPLETED_SUCCESS" in out and f"{web.url}/runs/b/" in out
    synced = crm(dagster)
    assert set(synced) == members and all(t >= before for t in synced.values())

    # A run with full_resync: true in its config resends every member as well (file destination).
    run_and_wait(dagster, ["audiences", "newsletter_subscribers"], ["syncs", "newsletter_export"])
    config = {"ops": {"syncs__newsletter_export": {"config": {"full_resync": True}}}}
    run_id = run_and_wait(dagster, ["syncs", "newsletter_export"], run_config=config)
    rows = [r["key"] for f in (dagster["data"] / "exports" / "newsletter" / run_id).glob("add-*.csv")
            for r in csv.DictReader(open(f))]
    assert sorted(rows) == sorted(membership(dagster, "newsletter_subscribers"))

    # Pause and resume through the CLI; the schedule's state is what the UI toggle shows.
    cli(dagster, "resume", "newsletter_export", "--url", web.url)
    assert web.schedule_status("sync_newsletter_export_schedule")["status"] == "RUNNING"
    cli(dagster, "pause", "newsletter_export", "--url", web.url)
    assert web.schedule_status("sync_newsletter_export_schedule")["status"] == "STOPPED"
    # An on_audience_update sync pauses through its own automation sensor, the UI's sensor toggle.
    out = cli(dagster, "pause", "high_value_to_crm", "--url", web.url)
    assert "paused (sensor sync_high_value_to_crm_automation stopped)" in out
    assert web.location().sensors["sync_high_value_to_crm_automation"]["status"] == "STOPPED"
    assert web.location().sensors["sync_churn_risk_to_crm_automation"]["status"] == "STOPPED"
    out = cli(dagster, "resume", "high_value_to_crm", "--url", web.url)
    assert "resumed (sensor sync_high_value_to_crm_automation running)" in out
    assert web.location().sensors["sync_high_value_to_crm_automation"]["status"] == "RUNNING"

    # Unknown syncs are named, with the known ones, instead of a GraphQL error.
    for command in ("resend", "pause"):
        out = subprocess.run([str(BIN / "audience-pipelines"), command, "high_value_to_crn", "--url", web.url],
                             cwd=REPO, env=dagster["env"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert "no sync named 'high_value_to_crn' in code location 'audience_pipelines' (known: " \
            "churn_risk_to_crm, high_value_to_crm, newsletter_export)" in out.stderr

    history = cli(dagster, "runs", "high_value_to_crm")
    lines = [line for line in history.splitlines()[1:] if not line.startswith(" ")]
    assert len(lines) == 2 and all(" success " in line for line in lines)
    assert " full_resend " in lines[0] and " first_run " in lines[1]  # newest first: the resend
    print(f"end-to-end scenario took {time.monotonic() - started:.1f}s")


def test_two_runs_of_one_sync_at_once_stay_consistent(dagster):
    client: DagsterGraphQLClient = dagster["client"]
    run_and_wait(dagster, ["audiences", "churn_risk"])
    key = [["syncs", "churn_risk_to_crm"]]
    ids = [client.submit_job_execution("__ASSET_JOB", repository_location_name=LOCATION, repository_name=REPOSITORY,
                                       asset_selection=key) for _ in range(2)]
    statuses = [wait_for(f"run {i}", lambda i=i: _finished(client, i), timeout=240) for i in ids]
    assert statuses == ["SUCCESS", "SUCCESS"]  # the second waited for the sync's pool slot
    history = cli(dagster, "runs", "churn_risk_to_crm")
    lines = [line for line in history.splitlines()[1:] if not line.startswith(" ")]
    assert sorted(int(line.split()[5]) for line in lines) == [0, len(membership(dagster, "churn_risk"))]
    con = duckdb.connect(str(dagster["data"] / "demo_crm.duckdb"), read_only=True)
    held = {r[0] for r in con.execute("SELECT key FROM audience_members WHERE audience = 'churn_risk'").fetchall()}
    con.close()
    assert held == membership(dagster, "churn_risk")
