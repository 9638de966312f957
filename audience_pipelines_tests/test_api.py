"""The REST API served by uvicorn in a thread: the YAML it writes, its refusals, auth, state and history.

Trigger, pause and the code location's reload against a real webserver and daemon are in test_api_e2e.py.
"""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import httpx
import pyarrow as pa
import pytest
import uvicorn
import yaml

from audience_pipelines.api.app import MAX_BODY_BYTES, create_app
from audience_pipelines.api.auth import Tokens, hash_token, read_tokens_file
from audience_pipelines.api.serve import serve
from audience_pipelines.components.load_errors import first_user_error
from audience_pipelines.components.sync import sync_key
from audience_pipelines.engine import ConfigError
from audience_pipelines.engine.history import RunRecord
from audience_pipelines.engine.membership import write_parquet_atomic
from audience_pipelines.resources import AudienceStorage, open_history
from audience_pipelines.webserver import Webserver
from audience_pipelines_tests.dagster_helpers import DEFS, EXAMPLES, project_defs

SYNCS = "/api/v1/audience-syncs"
VIP = {"name": "vip_to_crm", "audience": "high_value_customers", "destination": "crm_table",
       "target": {"name": "vip"}, "identifiers": {"email": "email"}, "fields": {"plan": "plan"}, "schedule": "daily"}
SECRET = "s3cr3t-" + uuid.uuid4().hex


@contextmanager
def serving(app):
    """`app` under uvicorn on a free loopback port; an httpx client on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API server did not start"
        time.sleep(0.05)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A copy of the demo's defs folder (plus the Meta and webhook example), its state folder and a Dagster
    instance; no webserver answers, so reloads and launches report that."""
    defs = tmp_path / "project" / "defs"
    shutil.copytree(DEFS, defs, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(EXAMPLES / "meta_and_webhook", defs / "meta_and_webhook")
    (tmp_path / "dagster_home").mkdir()
    monkeypatch.setenv("AUDIENCE_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("META_ACCESS_TOKEN", SECRET)
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "dagster_home"))
    state = tmp_path / "state"
    app = create_app(defs=defs, state_root=state, webserver=Webserver("http://127.0.0.1:9"),
                     tokens=Tokens(set()), instance=lambda: instance)
    with serving(app) as client:
        yield {"client": client, "defs": defs, "state": state, "instance": instance}


def syncs_yaml(defs: Path) -> list[dict]:
    return [d["attributes"] for d in yaml.safe_load_all((defs / "syncs" / "defs.yaml").read_text()) if d]


def etag(client, name: str) -> str:
    response = client.get(f"{SYNCS}/{name}")
    assert response.status_code == 200, response.text
    return response.headers["etag"]


def test_list_filters_and_pages(project):
    client = project["client"]
    everything = client.get(SYNCS).json()
    names = [s["name"] for s in everything["items"]]
    assert names == sorted(["high_value_to_crm", "churn_risk_to_crm", "newsletter_export", "high_value_to_meta",
                            "churn_risk_to_webhook"])
    assert everything["total"] == 5 and everything["next_offset"] is None
    crm = client.get(SYNCS, params={"destination": "crm_table"}).json()
    assert [s["name"] for s in crm["items"]] == ["churn_risk_to_crm", "high_value_to_crm"]
    churn = client.get(SYNCS, params={"audience": "churn_risk"}).json()
    assert [s["name"] for s in churn["items"]] == ["churn_risk_to_crm", "churn_risk_to_webhook"]
    page = client.get(SYNCS, params={"limit": 2, "offset": 2}).json()
    assert [s["name"] for s in page["items"]] == names[2:4] and page["next_offset"] == 4 and page["total"] == 5
    # The demo's schedules and automation sensors load stopped: every scheduled sync is paused, manual ones active.
    paused = {s["name"] for s in client.get(SYNCS, params={"status": "paused"}).json()["items"]}
    active = {s["name"] for s in client.get(SYNCS, params={"status": "active"}).json()["items"]}
    assert paused == {"high_value_to_crm", "churn_risk_to_crm", "newsletter_export"}
    assert active == {"high_value_to_meta", "churn_risk_to_webhook"}
    bad = client.get(SYNCS, params={"status": "sleeping", "limit": 0})
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_request"
    assert "status" in bad.json()["message"] and "limit" in bad.json()["message"]


def test_get_shows_configuration_and_state(project):
    client = project["client"]
    sync = client.get(f"{SYNCS}/newsletter_export").json()
    assert sync["config"] == syncs_yaml(project["defs"])[2]
    assert sync["defined_in"] == {"file": "defs/syncs/defs.yaml", "document": 3}
    assert sync["status"] == "paused" and sync["trigger"] == {"kind": "schedule", "name":
                                                              "sync_newsletter_export_schedule", "running": False}
    assert sync["next_scheduled_run"] is None and sync["last_run"] is None and sync["last_synced_at"] is None
    # With schedules loading running, its next tick is the next 06:00 UTC.
    settings = project["defs"] / "settings" / "defs.yaml"
    settings.write_text(settings.read_text().replace("schedules: stopped", "schedules: running"))
    sync = client.get(f"{SYNCS}/newsletter_export").json()
    now = dt.datetime.now(dt.timezone.utc)
    expected = now.replace(hour=6, minute=0, second=0, microsecond=0)
    expected += dt.timedelta(days=1) if expected <= now else dt.timedelta()
    assert sync["status"] == "active" and sync["trigger"]["running"] is True
    assert dt.datetime.fromisoformat(sync["next_scheduled_run"]) == expected
    assert client.get(f"{SYNCS}/nope").status_code == 404


def test_create_appends_a_document_that_loads_like_any_other(project):
    client, defs = project["client"], project["defs"]
    before = (defs / "syncs" / "defs.yaml").read_text()
    response = client.post(SYNCS, json=VIP)
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == f"{SYNCS}/vip_to_crm"
    assert response.headers["etag"] == f'"{body["sync"]["version"]}"'
    assert body["code_location"]["reloaded"] is False and "no Dagster webserver answered" in body["code_location"]["error"]
    after = (defs / "syncs" / "defs.yaml").read_text()
    assert after.startswith(before)  # the demo's documents keep their text, comments and layout
    assert syncs_yaml(defs)[-1] == VIP
    sync = client.get(f"{SYNCS}/vip_to_crm").json()
    assert sync["config"] == VIP and sync["defined_in"] == {"file": "defs/syncs/defs.yaml", "document": 4}
    assert sync["destination_type"] == "sql_table" and sync["mode"] == "mirror" and sync["entity"] == "customers"
    # The folder as written loads through Dagster's own loader, with the new sync's asset.
    with project_defs(extra={"syncs/defs.yaml": after}) as definitions:
        assert definitions.resolve_assets_def(sync_key("vip_to_crm")) is not None


def _loading_error(text: str) -> str:
    try:
        with project_defs(extra={"syncs/defs.yaml": text}, examples=("meta_and_webhook",)):
            pass
    except Exception as exc:  # noqa: BLE001
        return str(first_user_error(exc))
    raise AssertionError("the YAML loaded")


@pytest.mark.parametrize("change, key", [
    ({"modee": "mirror"}, "modee"),
    ({"max_removal_share": "lots"}, "max_removal_share"),
    ({"mode": "sometimes"}, "mode"),
    ({"audience": "nope"}, "audience"),
    ({"destination": "nowhere"}, "destination"),
    ({"fields": {"plan": "no_such_column"}}, "fields"),
])
def test_a_sync_that_would_not_load_is_a_422_with_loadings_own_words(project, change, key):
    client, defs = project["client"], project["defs"]
    before = (defs / "syncs" / "defs.yaml").read_text()
    response = client.post(SYNCS, json=VIP | change)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["error"] == "invalid_sync" and error["file"] == "defs/syncs/defs.yaml"
    assert error["document"] == 4 and error["key"] == key
    wanted = yaml.safe_dump({"type": "audience_pipelines.components.AudienceSync", "attributes": VIP | change},
                            sort_keys=False)
    assert error["message"] == _loading_error(before + "---\n" + wanted)
    assert (defs / "syncs" / "defs.yaml").read_text() == before


def test_bad_bodies_are_refused_and_nothing_is_written(project):
    client, defs = project["client"], project["defs"]
    before = {p: p.read_bytes() for p in defs.rglob("*.yaml")}
    cases = [
        (client.post(SYNCS, content=b"{not json", headers={"content-type": "application/json"}), 400, "invalid_json"),
        (client.post(SYNCS, json=[VIP]), 422, "invalid_sync"),
        (client.post(SYNCS, json=VIP | {"name": None}), 422, "invalid_sync"),
        (client.post(SYNCS, json=VIP | {"name": "vip to crm"}), 422, "invalid_sync"),
        (client.post(SYNCS, json=VIP | {"name": "high_value_to_crm"}), 409, "already_exists"),
        (client.post(SYNCS, json=VIP | {"padding": "x" * MAX_BODY_BYTES}), 413, "body_too_large"),
        (client.put(f"{SYNCS}/nope", json=VIP, headers={"if-match": "*"}), 404, "not_found"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.text
        assert response.json()["error"] == code and response.json()["message"]
    assert {p: p.read_bytes() for p in defs.rglob("*.yaml")} == before


def test_update_needs_the_current_version_and_a_stale_writer_loses(project):
    client, defs = project["client"], project["defs"]
    version = etag(client, "newsletter_export")
    weekly = syncs_yaml(defs)[2] | {"schedule": "weekly"}
    missing = client.put(f"{SYNCS}/newsletter_export", json=weekly)
    assert missing.status_code == 428 and missing.json()["version"] == version.strip('"')
    first = client.put(f"{SYNCS}/newsletter_export", json=weekly, headers={"if-match": version})
    assert first.status_code == 200, first.text
    # A second writer who read the same version is refused, and the first writer's change stands.
    second = client.put(f"{SYNCS}/newsletter_export", json=weekly | {"schedule": "hourly"},
                        headers={"if-match": version})
    assert second.status_code == 412 and second.json()["error"] == "version_mismatch"
    assert syncs_yaml(defs)[2] == weekly
    assert first.headers["etag"] == etag(client, "newsletter_export") != version
    assert client.get(f"{SYNCS}/newsletter_export").json()["trigger"]["name"] == "sync_newsletter_export_schedule"
    renamed = client.put(f"{SYNCS}/newsletter_export", json=weekly | {"name": "other"},
                         headers={"if-match": first.headers["etag"]})
    assert renamed.status_code == 422 and renamed.json()["key"] == "name"
    invalid = client.put(f"{SYNCS}/newsletter_export", json=weekly | {"mode": "often"},
                         headers={"if-match": first.headers["etag"]})
    assert invalid.status_code == 422 and invalid.json()["key"] == "mode"
    assert syncs_yaml(defs)[2] == weekly


def test_update_and_delete_wait_for_a_run_in_flight(project):
    client, defs, instance = project["client"], project["defs"], project["instance"]
    run = dg.DagsterRun(job_name="__ASSET_JOB", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED,
                        asset_selection=frozenset({sync_key("high_value_to_crm")}))
    instance.add_run(run)
    before = (defs / "syncs" / "defs.yaml").read_text()
    version = etag(client, "high_value_to_crm")
    assert client.get(f"{SYNCS}/high_value_to_crm").json()["runs_in_flight"] == [run.run_id]
    for response in (client.put(f"{SYNCS}/high_value_to_crm", json=syncs_yaml(defs)[0] | {"mode": "additive"},
                                headers={"if-match": version}),
                     client.delete(f"{SYNCS}/high_value_to_crm", headers={"if-match": version})):
        assert response.status_code == 409 and response.json()["error"] == "run_in_flight"
        assert response.json()["runs"] == [run.run_id]
    assert (defs / "syncs" / "defs.yaml").read_text() == before
    instance.report_run_canceled(run)  # no longer in flight: the change goes through
    assert client.delete(f"{SYNCS}/high_value_to_crm", headers={"if-match": version}).status_code == 200
    assert [s["name"] for s in syncs_yaml(defs)] == ["churn_risk_to_crm", "newsletter_export"]


def test_delete_keeps_the_snapshot_and_the_history(project):
    client, defs, state = project["client"], project["defs"], project["state"]
    state.mkdir(exist_ok=True)
    history = open_history(state)
    started = dt.datetime(2026, 12, 1, 6, tzinfo=dt.timezone.utc)
    history.record(RunRecord(run_id="r1", sync="newsletter_export", started_at=started,
                             finished_at=started + dt.timedelta(seconds=3), status="success", added=5))
    history.close()
    response = client.delete(f"{SYNCS}/newsletter_export", headers={"if-match": etag(client, "newsletter_export")})
    assert response.status_code == 200, response.text
    assert "nothing was removed from destination 'exports'" in response.json()["message"]
    assert "newsletter_export" not in [s["name"] for s in syncs_yaml(defs)]
    assert client.get(f"{SYNCS}/newsletter_export").status_code == 404
    runs = client.get(f"{SYNCS}/newsletter_export/runs").json()
    assert [r["run_id"] for r in runs["items"]] == ["r1"]


def test_runs_are_newest_first_and_paged(project):
    client, state = project["client"], project["state"]
    state.mkdir(exist_ok=True)
    history = open_history(state)
    t0 = dt.datetime(2026, 12, 1, 6, tzinfo=dt.timezone.utc)
    for i, status in enumerate(["success", "partial_failure", "error"]):
        history.record(RunRecord(run_id=f"r{i}", sync="high_value_to_crm", started_at=t0 + dt.timedelta(hours=i),
                                 finished_at=t0 + dt.timedelta(hours=i, seconds=10), status=status, added=10 * i,
                                 removed=i, updated=2, failed=i, duration_s=10.0,
                                 error="boom" if status == "error" else None,
                                 errors_sample=[{"key": "c1", "reason": "bad email"}] if i else []))
    history.close()
    page = client.get(f"{SYNCS}/high_value_to_crm/runs", params={"limit": 2}).json()
    assert [r["run_id"] for r in page["items"]] == ["r2", "r1"] and page["total"] == 3 and page["next_offset"] == 2
    newest = page["items"][0]
    assert newest["status"] == "error" and newest["added"] == 20 and newest["removed"] == 2 and newest["failed"] == 2
    assert newest["error"] == "boom" and newest["errors"] == [{"key": "c1", "reason": "bad email"}]
    assert newest["duration_s"] == 10.0 and newest["finished_at"] == "2026-12-01T08:00:10+00:00"
    rest = client.get(f"{SYNCS}/high_value_to_crm/runs", params={"limit": 2, "offset": 2}).json()
    assert [r["run_id"] for r in rest["items"]] == ["r0"] and rest["next_offset"] is None
    sync = client.get(f"{SYNCS}/high_value_to_crm").json()
    assert sync["last_run"]["run_id"] == "r2"
    assert sync["last_synced_at"] == "2026-12-01T07:00:10+00:00"  # the partial failure got members through
    assert client.get(f"{SYNCS}/nope/runs").status_code == 404


def test_audiences_and_destinations_never_show_a_secret(project):
    client, state = project["client"], project["state"]
    storage = AudienceStorage(home=str(state))
    write_parquet_atomic(pa.table({"key": ["a", "b", "c"]}), storage.membership_path("churn_risk"))
    audiences = {a["name"]: a for a in client.get("/api/v1/audiences").json()["items"]}
    assert audiences["churn_risk"]["member_count"] == 3 and audiences["churn_risk"]["entity"] == "customers"
    assert audiences["churn_risk"]["syncs"] == ["churn_risk_to_crm", "churn_risk_to_webhook"]
    assert dt.datetime.fromisoformat(audiences["churn_risk"]["last_evaluated_at"]) <= dt.datetime.now(dt.timezone.utc)
    assert audiences["high_value_customers"]["member_count"] is None
    destinations = client.get("/api/v1/destinations").json()
    configured = {d["name"]: d for d in destinations["configured"]}
    assert configured["partner_webhook"]["from_env"] == {"url": "AUDIENCE_WEBHOOK_URL",
                                                         "secret": "AUDIENCE_WEBHOOK_SECRET"}
    assert configured["meta_ads"]["type"] == "meta_custom_audiences"
    assert "access_token" not in configured["meta_ads"]["settings"]
    assert {t["type"] for t in destinations["types"]} >= {"meta_custom_audiences", "webhook", "sql_table", "hubspot"}
    seen = "".join(client.get(path).text for path in (
        "/api/v1/destinations", "/api/v1/audiences", SYNCS, f"{SYNCS}/churn_risk_to_webhook", "/api/v1/openapi.json"))
    assert SECRET not in seen


def test_trigger_and_pause_need_the_webserver_and_say_so(project):
    client = project["client"]
    response = client.post(f"{SYNCS}/newsletter_export/trigger")
    assert response.status_code == 502 and "no Dagster webserver answered at http://127.0.0.1:9" in response.json()["message"]
    assert client.post(f"{SYNCS}/nope/trigger").status_code == 404
    assert client.post(f"{SYNCS}/newsletter_export/pause").status_code == 502


def test_one_click_syncs_are_listed_but_changed_through_their_audience(tmp_path):
    defs = tmp_path / "defs"
    shutil.copytree(DEFS, defs, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(EXAMPLES / "ad_platforms", defs / "ad_platforms")
    (tmp_path / "dh").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "dh"))
    app = create_app(defs=defs, state_root=tmp_path / "state", webserver=Webserver("http://127.0.0.1:9"),
                     tokens=Tokens(set()), instance=lambda: instance)
    with serving(app) as client:
        listed = {s["name"]: s for s in client.get(SYNCS, params={"destination": "meta_ads"}).json()["items"]}
        (name, sync), = listed.items()
        assert sync["editable"] is False and sync["defined_in"]["key"] == "activate"
        assert sync["config"]["mode"] == "mirror" and sync["config"]["schedule"] == "daily"
        refused = client.put(f"{SYNCS}/{name}", json=sync["config"], headers={"if-match": "*"})
        assert refused.status_code == 409 and refused.json()["error"] == "declared_by_activate"


def test_tokens(tmp_path, project):
    token = "t-" + uuid.uuid4().hex
    app = create_app(defs=project["defs"], state_root=project["state"], webserver=Webserver("http://127.0.0.1:9"),
                     tokens=Tokens({hash_token(token)}), instance=lambda: project["instance"])
    with serving(app) as client:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {token}"}):
            denied = client.get(SYNCS, headers=headers)
            assert denied.status_code == 401 and denied.json()["error"] == "unauthorized"
            assert denied.headers["www-authenticate"].startswith("Bearer")
            assert client.post(SYNCS, json=VIP, headers=headers).status_code == 401
        assert client.get(SYNCS, headers={"authorization": f"Bearer {token}"}).status_code == 200
        schema = client.get("/api/v1/openapi.json").json()  # the description is public, the data is not
    assert set(schema["paths"]) == {SYNCS, f"{SYNCS}/{{sync_id}}", f"{SYNCS}/{{sync_id}}/trigger",
                                    f"{SYNCS}/{{sync_id}}/runs", f"{SYNCS}/{{sync_id}}/pause",
                                    f"{SYNCS}/{{sync_id}}/resume", "/api/v1/audiences", "/api/v1/destinations"}
    attributes = schema["components"]["schemas"]["AudienceSyncAttributes"]
    assert {"name", "audience", "destination", "mode", "schedule"} <= set(attributes["properties"])
    assert attributes["additionalProperties"] is False
    assert schema["paths"][SYNCS]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"] \
        == "#/components/schemas/AudienceSyncAttributes"
    # A tokens file holds hashes; a plain token there is refused, naming the line.
    good = tmp_path / "tokens"
    good.write_text(f"# ops team\n{hash_token(token)}\n\n")
    assert Tokens.from_environment({}, file=str(good)).accepts(token)
    assert Tokens.from_environment({"AUDIENCE_PIPELINES_API_TOKENS": f" a , {token} "}).accepts(token)
    plain = tmp_path / "plain"
    plain.write_text(f"{hash_token(token)}\n{token}\n")
    with pytest.raises(ConfigError, match="line 2: not a token hash"):
        read_tokens_file(plain)


def test_the_server_will_not_listen_beyond_loopback_without_tokens(monkeypatch):
    monkeypatch.delenv("AUDIENCE_PIPELINES_API_TOKENS", raising=False)
    monkeypatch.delenv("AUDIENCE_PIPELINES_API_TOKENS_FILE", raising=False)
    for host in ("0.0.0.0", "10.1.2.3", "api.example.com"):
        with pytest.raises(ConfigError, match=f"refusing to listen on {host} without tokens"):
            serve(host, 8088)


def test_two_writers_with_the_same_version_one_wins_and_one_is_told(project):
    client, defs = project["client"], project["defs"]
    version = etag(client, "newsletter_export")
    base = syncs_yaml(defs)[2]
    bodies = [base | {"schedule": "weekly"}, base | {"schedule": "hourly"}]
    results: list[httpx.Response] = []

    def put(body):
        results.append(client.put(f"{SYNCS}/newsletter_export", json=body, headers={"if-match": version}))

    threads = [threading.Thread(target=put, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in results) == [200, 412]
    winner = next(r for r in results if r.status_code == 200).json()["sync"]["config"]
    assert syncs_yaml(defs)[2] == winner and winner["schedule"] in ("weekly", "hourly")


def test_documents_are_edited_one_at_a_time(tmp_path):
    from audience_pipelines.api.documents import SyncFiles

    folder = tmp_path / "defs"
    (folder / "syncs").mkdir(parents=True)
    text = ("# syncs of the CRM team\ntype: audience_pipelines.components.AudienceSync\nattributes:\n"
            "  name: a  # first\n  audience: x\n---\n# b is paused\ntype: audience_pipelines.components.AudienceSync\n"
            "attributes: {name: b, audience: y}\n---\ntype: audience_pipelines.components.Audience\n"
            "attributes: {name: x}\n")
    (folder / "syncs" / "defs.yaml").write_text(text)
    files = SyncFiles(folder)
    assert [(d.name, d.document) for d in files.all()] == [("a", 1), ("b", 2)]
    # Replacing the first document keeps the others byte for byte.
    changed = files.replaced(files.find("a"), {"name": "a", "audience": "z"})[Path("syncs/defs.yaml")]
    assert changed.endswith(text[text.index("---\n# b is paused"):])
    assert [d for d in yaml.safe_load_all(changed)][0]["attributes"] == {"name": "a", "audience": "z"}
    removed = files.removed(files.find("b"))[Path("syncs/defs.yaml")]
    assert removed == text.replace("---\n# b is paused\ntype: audience_pipelines.components.AudienceSync\n"
                                   "attributes: {name: b, audience: y}\n", "")
    files.write({Path("syncs/defs.yaml"): removed})
    assert [d.name for d in files.all()] == ["a"] and not list(folder.rglob("*.tmp"))
    # A document on its separator's line, and an explicit end marker, are cut where YAML cuts them.
    odd = folder / "syncs" / "odd.yaml"
    odd.write_text("--- {type: audience_pipelines.components.AudienceSync, attributes: {name: c}}\n"
                   "--- !!str x\n...\n")
    changed = files.replaced(files.find("c"), {"name": "c", "audience": "x"})[Path("syncs/odd.yaml")]
    assert list(yaml.safe_load_all(changed)) == [
        {"type": "audience_pipelines.components.AudienceSync", "attributes": {"name": "c", "audience": "x"}}, "x"]
