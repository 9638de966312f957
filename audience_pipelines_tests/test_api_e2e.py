"""The REST API end to end: `audience-pipelines api` over a real dagster-webserver and dagster-daemon.

Everything runs on a temporary copy of the project (package, pyproject.toml, workspace.yaml,
dagster.yaml) with PYTHONPATH pointing at it, so the API's writes to defs/syncs/defs.yaml land in the
copy and the repository's own definitions are never touched.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import httpx
import pyarrow.parquet as pq
import pytest
import yaml
from dagster_graphql import DagsterGraphQLClient

from audience_pipelines.webserver import LOCATION, REPOSITORY, Webserver
from audience_pipelines_tests.test_e2e import free_port, healthy, stop, wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).parents[1]
BIN = Path(sys.executable).parent
SYNCS = "/api/v1/audience-syncs"
SYNC_TYPE = "audience_pipelines.components.AudienceSync"
DEMO_SYNCS = ["churn_risk_to_crm", "high_value_to_crm", "newsletter_export"]
VIP = {"name": "vip_to_crm", "audience": "high_value_customers", "destination": "crm_table",
       "target": {"name": "vip"}, "identifiers": {"email": "email"}, "fields": {"plan": "plan"}, "schedule": "daily"}
ALL_RUNS = "{ runsOrError { ... on Runs { results { runId status tags { key value } } } } }"


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """webserver + daemon + `audience-pipelines api` on a temporary copy of the project."""
    root = tmp_path_factory.mktemp("api_e2e").resolve()
    shutil.copytree(REPO / "audience_pipelines", root / "audience_pipelines",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "workspace.yaml", "dagster.yaml"):
        shutil.copy(REPO / name, root / name)
    home, data = root / "dagster_home", root / "data"
    home.mkdir()
    data.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    token = secrets.token_urlsafe(24)
    env = {**os.environ, "DAGSTER_HOME": str(home), "AUDIENCE_PIPELINES_HOME": str(data),
           "AUDIENCE_PIPELINES_API_TOKENS": token,
           "PYTHONPATH": os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for var in ("AUDIENCE_PIPELINES_WAREHOUSE_URL", "AUDIENCE_PIPELINES_CRM_URL", "AUDIENCE_PIPELINES_HISTORY_URL",
                "DAGSTER_WEBSERVER_URL"):
        env.pop(var, None)
    # The subprocesses import the copy, not the editable install's checkout.
    where = subprocess.run([sys.executable, "-c", "import audience_pipelines; print(audience_pipelines.__file__)"],
                           cwd=root, env=env, check=True, capture_output=True, text=True, timeout=60)
    assert Path(where.stdout.strip()).resolve() == root / "audience_pipelines" / "__init__.py", where.stdout
    subprocess.run([str(BIN / "dagster"), "instance", "migrate"], cwd=root, env=env, check=True,
                   capture_output=True, timeout=120)
    web_port, api_port = free_port(), free_port()
    web_url, api_url = f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{api_port}"
    logs = {name: open(root / f"{name}.log", "w") for name in ("webserver", "daemon", "api")}
    procs: list[subprocess.Popen] = []
    started = time.monotonic()

    def start(name: str, *args: str) -> None:
        procs.append(subprocess.Popen([str(BIN / args[0]), *args[1:]], cwd=root, env=env, stdout=logs[name],
                                      stderr=subprocess.STDOUT, start_new_session=True))

    try:
        start("webserver", "dagster-webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(web_port))
        start("daemon", "dagster-daemon", "run", "-w", "workspace.yaml")
        web = Webserver(web_url)
        wait_for("code location and daemons", lambda: healthy(web), timeout=180)
        start("api", "audience-pipelines", "api", "--host", "127.0.0.1", "--port", str(api_port), "--url", web_url)

        def api_up():
            assert procs[-1].poll() is None, (root / "api.log").read_text()
            return httpx.get(f"{api_url}/api/v1/health", timeout=5).status_code == 200

        wait_for("the API", api_up, timeout=120, every=0.5)
        print(f"webserver, daemon and API up after {time.monotonic() - started:.1f}s")
        yield {"api": api_url, "token": token, "root": root, "data": data, "env": env, "web_url": web_url,
               "web": web, "defs_yaml": root / "audience_pipelines" / "defs" / "syncs" / "defs.yaml",
               "client": DagsterGraphQLClient("127.0.0.1", port_number=web_port)}
    finally:
        stop(list(reversed(procs)))  # the API first, then the daemon and the webserver
        for f in logs.values():
            f.close()
        print(f"API end-to-end fixture lived {time.monotonic() - started:.1f}s")


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _finished(client: DagsterGraphQLClient, run_id: str) -> str | None:
    status = client.get_run_status(run_id).value
    return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None


def _destination(data: Path, audience: str) -> dict[str, dt.datetime]:
    """key -> synced_at of the CRM table's rows for `audience` (empty before anything was written)."""
    path = data / "demo_crm.duckdb"
    if not path.exists():
        return {}
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "audience_members" not in tables:
            return {}
        return dict(con.execute("SELECT key, synced_at FROM audience_members WHERE audience = ?", [audience]).fetchall())
    finally:
        con.close()


def _membership(data: Path, audience: str) -> set[str]:
    return set(pq.read_table(data / "audiences" / audience / "membership.parquet")["key"].to_pylist())


def _dagster_runs(web: Webserver) -> list[dict]:
    return web.query(ALL_RUNS, {})["runsOrError"]["results"]


def test_sync_lifecycle_over_http(api):
    started = time.monotonic()
    web: Webserver = api["web"]
    defs_yaml: Path = api["defs_yaml"]
    original_text = defs_yaml.read_bytes()
    original = _docs(defs_yaml)
    assert [d["attributes"]["name"] for d in original] == ["high_value_to_crm", "churn_risk_to_crm",
                                                           "newsletter_export"]

    # 1. Auth: no token, a wrong token -> 401 JSON; the right one lists the three demo syncs.
    anonymous = httpx.get(f"{api['api']}{SYNCS}", timeout=30)
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "unauthorized", anonymous.text
    assert anonymous.headers["www-authenticate"].lower().startswith("bearer")
    wrong = httpx.get(f"{api['api']}{SYNCS}", headers={"Authorization": "Bearer not-the-token"}, timeout=30)
    assert wrong.status_code == 401 and "error" in wrong.json()
    http = httpx.Client(base_url=api["api"], headers={"Authorization": f"Bearer {api['token']}"}, timeout=180)
    try:
        listed = http.get(SYNCS)
        assert listed.status_code == 200, listed.text
        assert listed.json()["total"] == 3
        assert [s["id"] for s in listed.json()["items"]] == DEMO_SYNCS

        # 2. The sync needs its audience's membership: materialize the audience through Dagster.
        client: DagsterGraphQLClient = api["client"]
        audience_run = client.submit_job_execution(
            "__ASSET_JOB", repository_location_name=LOCATION, repository_name=REPOSITORY,
            asset_selection=[["audiences", "high_value_customers"]], run_config={})
        status = wait_for(f"audience run {audience_run}", lambda: _finished(client, audience_run), timeout=240)
        assert status == "SUCCESS", f"audience run {audience_run} ended {status}"
        members = _membership(api["data"], "high_value_customers")
        assert members

        # 3. Create. Bad and duplicate creates first change nothing on disk.
        bad = http.post(SYNCS, json=VIP | {"audience": "nope"})
        assert bad.status_code == 422, bad.text
        assert bad.json()["error"] == "invalid_sync" and bad.json()["file"] == "defs/syncs/defs.yaml"
        assert bad.json()["key"] == "audience" and bad.json()["document"] == 4
        assert defs_yaml.read_bytes() == original_text

        created = http.post(SYNCS, json=VIP)
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["code_location"]["reloaded"] is True, body["code_location"]
        assert body["warnings"] == []
        assert created.headers["location"] == f"{SYNCS}/vip_to_crm"
        assert created.headers["etag"] == f'"{body["sync"]["version"]}"'
        docs = _docs(defs_yaml)
        assert docs[:3] == original and docs[3] == {"type": SYNC_TYPE, "attributes": VIP}
        assert defs_yaml.read_bytes().startswith(original_text)  # the demo's documents keep their bytes
        after_create = defs_yaml.read_bytes()

        duplicate = http.post(SYNCS, json=VIP)
        assert duplicate.status_code == 409 and duplicate.json()["error"] == "already_exists", duplicate.text
        assert defs_yaml.read_bytes() == after_create

        assert "vip_to_crm" in web.location().syncs
        assert "sync_vip_to_crm_schedule" in web.location().schedules
        got = http.get(f"{SYNCS}/vip_to_crm")
        assert got.status_code == 200, got.text
        sync = got.json()
        etag = got.headers["etag"]
        assert etag == f'"{sync["version"]}"' == created.headers["etag"]
        assert sync["config"] == VIP and sync["editable"] is True
        assert sync["defined_in"] == {"file": "defs/syncs/defs.yaml", "document": 4}
        assert sync["audience"] == "high_value_customers" and sync["destination"] == "crm_table"
        assert sync["destination_type"] == "sql_table" and sync["mode"] == "mirror"
        # The demo's settings say `schedules: stopped`: a new daily schedule loads STOPPED, so the sync
        # starts out paused, with no next scheduled run.
        assert sync["trigger"] == {"kind": "schedule", "name": "sync_vip_to_crm_schedule", "running": False}
        assert sync["status"] == "paused" and sync["next_scheduled_run"] is None
        assert web.schedule_status("sync_vip_to_crm_schedule")["status"] == "STOPPED"
        assert sync["last_run"] is None and sync["last_synced_at"] is None and sync["runs_in_flight"] == []
        assert _destination(api["data"], "vip") == {}

        # 4. Trigger a run; it writes every member to the destination and its history.
        runs_before = {r["runId"] for r in _dagster_runs(web)}
        launched = http.post(f"{SYNCS}/vip_to_crm/trigger")
        assert launched.status_code == 202, launched.text
        run_id = launched.json()["run_id"]
        assert run_id and run_id in launched.json()["url"] and launched.json()["url"].startswith(api["web_url"])
        assert launched.json()["sync"] == "vip_to_crm" and launched.json()["full_resync"] is False
        status = wait_for(f"sync run {run_id}", lambda: _finished(client, run_id), timeout=240)
        assert status == "SUCCESS", f"sync run {run_id} ended {status}"
        run = next(r for r in _dagster_runs(web) if r["runId"] == run_id)
        assert {"key": "audience/trigger", "value": "api"} in run["tags"]
        assert {r["runId"] for r in _dagster_runs(web)} - runs_before == {run_id}

        def settled():
            s = http.get(f"{SYNCS}/vip_to_crm").json()
            return s if not s["runs_in_flight"] and s["last_run"] else None

        sync = wait_for("the sync's state after its run", settled, timeout=60)
        assert sync["last_run"]["run_id"] == run_id and sync["last_run"]["status"] == "success"
        assert sync["last_synced_at"] is not None
        synced = _destination(api["data"], "vip")
        assert set(synced) == members
        history = http.get(f"{SYNCS}/vip_to_crm/runs")
        assert history.status_code == 200, history.text
        assert history.json()["total"] == 1 and len(history.json()["items"]) == 1
        first = history.json()["items"][0]
        assert first["run_id"] == run_id and first["status"] == "success"
        assert first["added"] == len(members) and first["removed"] == 0 and first["failed"] == 0

        # 5. Update: If-Match is required and must be current; the change starts no run.
        fields = {"plan": "plan", "country": "country"}
        changed = VIP | {"fields": fields}
        missing = http.put(f"{SYNCS}/vip_to_crm", json=changed)
        assert missing.status_code == 428 and missing.json()["error"] == "if_match_required", missing.text
        assert missing.json()["version"] == sync["version"]
        stale = http.put(f"{SYNCS}/vip_to_crm", json=changed, headers={"If-Match": '"0123456789abcdef"'})
        assert stale.status_code == 412 and stale.json()["error"] == "version_mismatch", stale.text
        assert defs_yaml.read_bytes() == after_create
        dagster_runs = len(_dagster_runs(web))
        updated = http.put(f"{SYNCS}/vip_to_crm", json=changed, headers={"If-Match": etag})
        assert updated.status_code == 200, updated.text
        assert updated.json()["code_location"]["reloaded"] is True
        assert updated.json()["sync"]["config"] == changed
        new_etag = updated.headers["etag"]
        assert new_etag != etag and new_etag == f'"{updated.json()["sync"]["version"]}"'
        docs = _docs(defs_yaml)
        assert docs[:3] == original and docs[3] == {"type": SYNC_TYPE, "attributes": changed}
        time.sleep(5)  # long enough for a run to be queued, were one started
        assert len(_dagster_runs(web)) == dagster_runs
        assert not [r for r in _dagster_runs(web) if r["status"] in ("QUEUED", "NOT_STARTED", "STARTING",
                                                                      "STARTED", "CANCELING")]
        sync = http.get(f"{SYNCS}/vip_to_crm").json()
        assert sync["runs_in_flight"] == [] and sync["last_run"]["run_id"] == run_id
        assert http.get(f"{SYNCS}/vip_to_crm/runs").json()["total"] == 1
        assert _destination(api["data"], "vip") == synced  # same keys, same synced_at

        # 6. Pause (already paused by the demo's settings), resume, pause again: the schedule's toggle.
        paused = http.post(f"{SYNCS}/vip_to_crm/pause")
        assert paused.status_code == 200, paused.text
        assert paused.json()["changed"] is False and paused.json()["trigger"] == "sync_vip_to_crm_schedule"
        assert paused.json()["sync"]["status"] == "paused" and paused.json()["sync"]["next_scheduled_run"] is None
        assert web.schedule_status("sync_vip_to_crm_schedule")["status"] == "STOPPED"
        resumed = http.post(f"{SYNCS}/vip_to_crm/resume")
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["changed"] is True and resumed.json()["trigger"] == "sync_vip_to_crm_schedule"
        assert resumed.json()["sync"]["status"] == "active" and resumed.json()["sync"]["trigger"]["running"] is True
        assert web.schedule_status("sync_vip_to_crm_schedule")["status"] == "RUNNING"
        now = dt.datetime.now(dt.timezone.utc)
        expected = now.replace(hour=6, minute=0, second=0, microsecond=0)  # daily: 06:00 UTC
        expected += dt.timedelta(days=1) if expected <= now else dt.timedelta()
        assert dt.datetime.fromisoformat(resumed.json()["sync"]["next_scheduled_run"]) == expected
        assert http.get(SYNCS, params={"status": "active"}).json()["items"][0]["id"] == "vip_to_crm"
        paused = http.post(f"{SYNCS}/vip_to_crm/pause")
        assert paused.status_code == 200 and paused.json()["changed"] is True, paused.text
        assert paused.json()["sync"]["status"] == "paused" and paused.json()["sync"]["next_scheduled_run"] is None
        assert web.schedule_status("sync_vip_to_crm_schedule")["status"] == "STOPPED"
        assert http.get(f"{SYNCS}/vip_to_crm").headers["etag"] == new_etag  # pausing is not an edit

        # 7. Delete: a stale version loses; the current one removes the document and nothing else.
        stale = http.delete(f"{SYNCS}/vip_to_crm", headers={"If-Match": etag})
        assert stale.status_code == 412 and stale.json()["error"] == "version_mismatch", stale.text
        deleted = http.delete(f"{SYNCS}/vip_to_crm", headers={"If-Match": new_etag})
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["deleted"] == "vip_to_crm" and deleted.json()["code_location"]["reloaded"] is True
        assert _docs(defs_yaml) == original
        assert defs_yaml.read_bytes() == original_text  # the demo's documents, byte for byte
        location = web.location()
        assert "vip_to_crm" not in location.syncs and "sync_vip_to_crm_schedule" not in location.schedules
        assert sorted(location.syncs) == DEMO_SYNCS
        assert _destination(api["data"], "vip") == synced  # a delete removes no member
        gone = http.get(f"{SYNCS}/vip_to_crm")
        assert gone.status_code == 404 and gone.json()["error"] == "not_found", gone.text
        assert [s["id"] for s in http.get(SYNCS).json()["items"]] == DEMO_SYNCS
        kept = http.get(f"{SYNCS}/vip_to_crm/runs")
        assert kept.status_code == 200, kept.text
        assert kept.json()["total"] == 1 and kept.json()["items"][0]["run_id"] == run_id
    finally:
        http.close()
    print(f"API lifecycle took {time.monotonic() - started:.1f}s")


def readme_examples() -> str:
    """The README's block of curl lines, as written."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("<!-- api-examples")
    block = text[text.index("```bash\n", start) + len("```bash\n"):]
    return block[:block.index("```")]


def test_the_readme_curl_lines_run_as_written(api):
    """After the lifecycle test: the sync is created again (its snapshot says the destination holds its members)."""
    script = readme_examples()
    assert script.count("curl ") >= 14 and "API=${API:-http://127.0.0.1:8088/api/v1}" in script
    http = httpx.Client(base_url=api["api"], headers={"Authorization": f"Bearer {api['token']}"}, timeout=60)
    runs_before = http.get(f"{SYNCS}/vip_to_crm/runs").json()["total"]
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=420,
                         env={**api["env"], "API": api["api"] + "/api/v1", "TOKEN": api["token"]})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert '"name":"vip_to_crm"' in out.stdout and '"deleted":"vip_to_crm"' in out.stdout
    assert '"openapi":' in out.stdout and api["token"] not in out.stdout + out.stderr
    # Two runs went through (a diff and a full resend); the sync is deleted and its members stay.
    runs = http.get(f"{SYNCS}/vip_to_crm/runs").json()
    assert runs["total"] == runs_before + 2
    assert [(r["status"], r["run_kind"]) for r in runs["items"][:2]] == [("success", "full_resend"), ("success", "diff")]
    assert "vip_to_crm" not in [d["attributes"]["name"] for d in _docs(api["defs_yaml"]) if d.get("type") == SYNC_TYPE]
    assert set(_destination(api["data"], "vip")) == _membership(api["data"], "high_value_customers")
