"""The fake destination servers behave as destination-apis.md §1 and §10 describe."""

import hashlib
import json

import httpx
import pytest

from audience_pipelines_tests.fakes import FakeMeta, FakeWebhook, sign


def h(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@pytest.fixture
def meta():
    with FakeMeta() as server:
        yield server


@pytest.fixture
def graph(meta):
    with httpx.Client(base_url=meta.url, params={"access_token": "test-token"}) as client:
        yield client


def users(graph, aid, payload, method="POST"):
    return graph.request(method, f"/{aid}/users", json={"payload": payload})


def test_meta_auth(meta):
    for kwargs in ({}, {"params": {"access_token": "nope"}}):
        err = httpx.get(f"{meta.url}/act_1234/customaudiences", **kwargs).json()["error"]
        assert (err["code"], err["error_subcode"], err["type"]) == (190, 460, "OAuthException")
        assert err["message"] == "Invalid OAuth access token." and err["fbtrace_id"]
    assert meta.requests[0].status == 400
    bearer = httpx.get(f"{meta.url}/act_1234/customaudiences",
                       headers={"Authorization": "Bearer test-token"})
    assert bearer.status_code == 200 and bearer.json() == {"data": []}


def test_meta_create_and_list_paging(meta, graph):
    ids = [graph.post("/act_1234/customaudiences", data={
        "name": f"aud {i}", "subtype": "CUSTOM", "description": "d",
        "customer_file_source": "USER_PROVIDED_ONLY"}).json()["id"] for i in range(3)]
    assert all(i.isdigit() for i in ids) and len(set(ids)) == 3
    assert meta.audience_id_by_name("aud 1") == ids[1]
    assert meta.audiences[ids[0]]["customer_file_source"] == "USER_PROVIDED_ONLY"

    page1 = graph.get("/act_1234/customaudiences",
                      params={"fields": "name,operation_status", "limit": 2}).json()
    assert page1["data"] == [{"id": i, "name": f"aud {n}", "operation_status": {
        "code": 200, "description": "Normal"}} for n, i in enumerate(ids[:2])]
    page2 = httpx.get(page1["paging"]["next"]).json()  # next URL carries token and cursor
    assert [a["id"] for a in page2["data"]] == ids[2:] and "next" not in page2["paging"]

    bad_source = graph.post("/act_1234/customaudiences", json={
        "name": "x", "customer_file_source": "SOMETHING"})
    no_name = graph.post("/act_1234/customaudiences", json={"subtype": "CUSTOM"})
    other_act = graph.get("/act_999/customaudiences")
    for r in (bad_source, no_name, other_act):
        assert r.status_code == 400 and r.json()["error"]["code"] == 100
    assert other_act.json()["error"]["error_subcode"] == 33 and len(meta.audiences) == 3


def test_meta_add_remove_state(meta, graph):
    aid = meta.create_audience("vip")
    a, b, c = h("a@example.com"), h("b@example.com"), h("c@example.com")
    r = users(graph, aid, {"schema": ["EMAIL", "PHONE", "EXTERN_ID"],
                           "data": [[a, h("15551234567"), "u1"], [b, "", "u2"]],
                           "session": {"session_id": 9, "batch_seq": 1, "last_batch_flag": True}})
    assert r.json() == {"audience_id": aid, "session_id": "9", "num_received": 2,
                        "num_invalid_entries": 0, "invalid_entry_samples": {}}
    # Single-key schema as a form-encoded JSON string: stored under the multi-key name.
    form = {"payload": json.dumps({"schema": "EMAIL_SHA256", "data": [c, c]})}
    assert graph.post(f"/{aid}/users", data=form).json()["num_received"] == 2
    assert meta.member_values(aid, "EMAIL") == {a, b, c}
    assert frozenset({"EMAIL": b, "EXTERN_ID": "u2"}.items()) in meta.members(aid)

    gone = users(graph, aid, {"schema": ["EMAIL", "EXTERN_ID"], "data": [[b, "u2"], [h("z"), ""]]},
                 method="DELETE")
    assert gone.status_code == 200 and meta.member_values(aid, "EMAIL") == {a, c}
    got = graph.get(f"/{aid}", params={"fields": "approximate_count_lower_bound,name"}).json()
    assert got == {"id": aid, "name": "vip", "approximate_count_lower_bound": 2}
    assert [(q.method, q.n_rows, q.status) for q in meta.requests] == [
        ("POST", 2, 200), ("POST", 2, 200), ("DELETE", 2, 200), ("GET", None, 200)]
    missing = users(graph, "999", {"schema": "EMAIL_SHA256", "data": [a]}).json()["error"]
    assert (missing["code"], missing["error_subcode"]) == (100, 33)


def test_meta_invalid_entries_counted_not_stored(meta, graph):
    aid = meta.create_audience("x")
    meta.inject_invalid(["blocked-id"])
    good = h("ok@example.com")
    r = users(graph, aid, {"schema": ["EMAIL", "EXTERN_ID"], "data": [
        [good, "u1"],
        ["Not@Hashed.com", "u2"],          # malformed hashed value
        [good.upper(), ""],                # uppercase hex is malformed too
        ["", ""],                          # no value at all
        [h("x@example.com"), "blocked-id"],
    ]}).json()
    assert (r["num_received"], r["num_invalid_entries"]) == (5, 4)
    assert r["invalid_entry_samples"]["Not@Hashed.com"].startswith("EMAIL")
    assert meta.members(aid) == {frozenset({"EMAIL": good, "EXTERN_ID": "u1"}.items())}


def test_meta_rejects_bad_payloads(meta, graph):
    aid = meta.create_audience("x")
    too_many = users(graph, aid, {"schema": "EMAIL_SHA256", "data": [h("a")] * 10_001})
    short_row = users(graph, aid, {"schema": ["EMAIL", "PHONE"], "data": [[h("a")]]})
    bad_field = users(graph, aid, {"schema": ["EMAIL", "SHOE_SIZE"], "data": [[h("a"), "9"]]})
    for r in (too_many, short_row, bad_field):
        assert r.status_code == 400 and r.json()["error"]["code"] == 100
    assert "10000" in too_many.json()["error"]["message"]
    assert meta.requests[0].n_rows == 10_001 and meta.members(aid) == set()


def test_meta_injected_faults(meta, graph):
    aid = meta.create_audience("x")
    payload = {"schema": "EMAIL_SHA256", "data": [h("a")]}
    meta.inject_throttle(times=1, code=80003)
    meta.inject_server_error(times=1)
    assert graph.get(f"/{aid}").status_code == 200  # faults target the users endpoint only
    throttled = users(graph, aid, payload)
    err = throttled.json()["error"]
    assert (throttled.status_code, err["code"], err["is_transient"]) == (400, 80003, True)
    buc = json.loads(throttled.headers["X-Business-Use-Case-Usage"])
    assert buc["1234"][0]["estimated_time_to_regain_access"] == 0
    failed = users(graph, aid, payload)
    assert failed.status_code == 500 and failed.json()["error"]["code"] == 2
    assert meta.members(aid) == set()
    assert users(graph, aid, payload).status_code == 200 and len(meta.members(aid)) == 1

    meta.inject_delay(0.5)
    with pytest.raises(httpx.ReadTimeout):
        graph.post(f"/{aid}/users", json={"payload": payload}, timeout=0.1)


@pytest.fixture
def hook():
    with FakeWebhook() as server:
        yield server


def body(seq=1, **rows):
    return json.dumps({"audience": {"id": "aud1", "name": "VIP"},
                       "batch": {"run_id": "r1", "seq": seq, "last": True},
                       **rows, "sent_at": "2025-01-01T00:00:00Z"}).encode()


def post(hook, raw, key="k1", secret="whsec_test"):
    return httpx.post(hook.url, content=raw, headers={
        "Content-Type": "application/json", "Idempotency-Key": key,
        "X-Signature": sign(secret, raw), "X-Timestamp": "1735689600"})


def test_webhook_signature_and_key_required(hook):
    raw = body(added=[{"id": "1"}])
    assert post(hook, raw, secret="wrong").status_code == 401
    assert post(hook, raw, key="").status_code == 400
    assert hook.members == {} and hook.batches_applied == []
    assert [r.status for r in hook.requests] == [401, 400]
    assert hook.requests[0].headers["idempotency-key"] == "k1"


def test_webhook_apply_replay_and_key_reuse(hook):
    raw = body(added=[{"id": "1", "email": "a@x.com"}, {"id": "2"}])
    first = post(hook, raw)
    again = post(hook, raw)
    assert (first.status_code, again.status_code, again.content) == (200, 200, first.content)
    assert hook.replays == 1 and len(hook.batches_applied) == 1
    assert len(hook.rows_received("added")) == 2  # the replay was not applied again
    assert hook.members == {"aud1": {"1": {"id": "1", "email": "a@x.com"}, "2": {"id": "2"}}}
    assert post(hook, body(seq=2, added=[{"id": "3"}])).status_code == 422
    assert hook.requests[1].replayed and hook.member_ids("aud1") == {"1", "2"}


def test_webhook_per_row_results_and_rejections(hook):
    post(hook, body(added=[{"id": "1"}, {"id": "2"}]), key="a")
    hook.reject_ids(["4"], error="invalid email")
    raw = body(seq=2, added=[{"id": "3"}, {"id": "4"}],
               updated=[{"id": "1", "email": "new@x.com"}], removed=[{"id": "2"}])
    r = post(hook, raw, key="b")
    assert r.json()["results"] == [
        {"index": 0, "id": "3", "status": "ok", "error": None},
        {"index": 1, "id": "4", "status": "rejected", "error": "invalid email"},
        {"index": 2, "id": "1", "status": "ok", "error": None},
        {"index": 3, "id": "2", "status": "ok", "error": None},
    ]
    assert hook.members["aud1"] == {"1": {"id": "1", "email": "new@x.com"}, "3": {"id": "3"}}
    assert hook.batches_applied[1]["rejected"] == 1

    hook.respond_without_results(True)
    assert post(hook, body(seq=3, added=[{"id": "5"}]), key="c").json() == {}
    assert "5" in hook.member_ids("aud1")


def test_webhook_injected_status_and_delay(hook):
    hook.inject_status(429, times=2, retry_after=0)
    raw = body(added=[{"id": "1"}])
    for _ in range(2):
        r = post(hook, raw)
        assert (r.status_code, r.headers["Retry-After"]) == (429, "0")
    assert hook.members == {}
    assert post(hook, raw).status_code == 200 and hook.replays == 0  # 429s were not stored
    too_big = body(added=[{"id": str(i)} for i in range(1001)])
    assert post(hook, too_big, key="big").status_code == 413

    hook.inject_delay(0.5)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(hook.url, content=b"{}", timeout=0.1)
