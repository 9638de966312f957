"""FakeMeta's POST /{id}/usersreplace sessions and GET /{id}/sessions behave as Meta documents."""

import time

import httpx
import pytest

from audience_pipelines_tests.fakes import FakeMeta
from audience_pipelines_tests.test_fakes import graph, h, meta  # noqa: F401 - the same fake and client fixtures


def rows(*names) -> set:
    return {frozenset({("EMAIL", h(n))}) for n in names}


@pytest.fixture
def aid(meta, graph):
    """An audience already holding old1 and old2 (added through /users)."""
    aid = meta.create_audience("vip")
    assert users(graph, aid, ["old1", "old2"]).status_code == 200
    return aid


def users(graph, aid, names, method="POST"):
    return graph.request(method, f"/{aid}/users", json={
        "payload": {"schema": "EMAIL_SHA256", "data": [h(n) for n in names]}})


def replace(graph, aid, names, sid=77, seq=1, last=False, **session):
    return graph.post(f"/{aid}/usersreplace", json={
        "payload": {"schema": "EMAIL_SHA256", "data": [h(n) for n in names]},
        "session": {"session_id": sid, "batch_seq": seq, "last_batch_flag": last, **session}})


def error(resp) -> tuple:
    return resp.status_code, resp.json()["error"]["code"], resp.json()["error"]["message"]


def test_three_batch_replace_leaves_exactly_the_uploaded_rows(meta, graph, aid):
    first = replace(graph, aid, ["a", "old1"], seq=1)
    assert first.json() == {"account_id": "1234", "session_id": "77", "num_received": 2,
                            "num_invalid_entries": 0, "invalid_entry_samples": {}}
    # During the session the audience is only what was uploaded so far: old2 is already gone.
    assert meta.members(aid) == rows("a", "old1")
    assert meta.audiences[aid]["approximate_count_lower_bound"] == 2
    assert replace(graph, aid, ["b"], seq=2).status_code == 200
    assert meta.members(aid) == rows("a", "old1", "b")
    assert replace(graph, aid, ["c"], seq=3, last=True).status_code == 200
    assert meta.members(aid) == rows("a", "old1", "b", "c")
    assert meta.replace_sessions(aid) == [{"session_id": 77, "status": "finished",
                                           "batches": [1, 2, 3], "rows_received": 4,
                                           "rows_invalid": 0}]
    # Finished: /users works again, and the ended session cannot be reused.
    assert users(graph, aid, ["d"]).status_code == 200
    status, code, message = error(replace(graph, aid, ["x"], seq=4))
    assert (status, code) == (400, 100) and "Replace session 77 has ended" in message
    assert replace(graph, aid, ["e"], sid=78, seq=1, last=True).status_code == 200
    assert meta.members(aid) == rows("e")


def test_second_session_refused_while_one_is_open(meta, graph, aid):
    replace(graph, aid, ["a"], sid=1)
    status, code, message = error(replace(graph, aid, ["b"], sid=2))
    assert (status, code) == (400, 100) and "Another replace session is in progress" in message
    other = meta.create_audience("other")  # one session per audience, not per account
    assert replace(graph, other, ["z"], sid=2, last=True).status_code == 200
    assert meta.members(aid) == rows("a") and meta.members(other) == rows("z")


def test_repeated_batch_seq_is_idempotent_and_seq_must_increase(meta, graph, aid):
    assert replace(graph, aid, ["a"], seq=1).status_code == 200
    second = replace(graph, aid, ["b", "c"], seq=2)
    retry = replace(graph, aid, ["b", "c"], seq=2)  # e.g. its answer was lost
    assert retry.status_code == 200 and retry.json() == second.json()
    status, code, message = error(replace(graph, aid, ["q"], seq=0))
    assert (status, code) == (400, 100) and "batch_seq" in message  # 0 is not a valid seq
    assert replace(graph, aid, ["d"], seq=4).status_code == 200  # gaps are allowed
    status, code, message = error(replace(graph, aid, ["q"], seq=3))
    assert (status, code) == (400, 100) and "must increase" in message
    assert meta.replace_sessions(aid)[0]["batches"] == [1, 2, 4]
    assert meta.replace_sessions(aid)[0]["rows_received"] == 4  # the retry is not counted
    assert meta.members(aid) == rows("a", "b", "c", "d")


def test_expire_sessions_leaves_the_partial_upload(meta, graph, aid):
    replace(graph, aid, ["a"], seq=1)
    replace(graph, aid, ["b"], seq=2)
    assert meta.expire_sessions() == [77]
    assert meta.members(aid) == rows("a", "b")  # old1/old2 are not coming back
    assert meta.replace_sessions(aid)[0]["status"] == "expired"
    status, code, message = error(replace(graph, aid, ["c"], seq=3, last=True))
    assert (status, code) == (400, 100) and "has ended" in message
    assert users(graph, aid, ["old1"]).status_code == 200  # the audience is writable again
    assert meta.expire_sessions() == []


def test_replace_window_is_checked_against_the_clock():
    with FakeMeta(replace_window_s=0.05) as meta:
        aid = meta.create_audience("x")
        client = httpx.Client(base_url=meta.url, params={"access_token": "test-token"})
        with client:
            replace(client, aid, ["a"])
            time.sleep(0.1)
            assert meta.replace_sessions(aid)[0]["status"] == "expired"
            assert error(replace(client, aid, ["b"], seq=2))[1] == 100
            assert meta.members(aid) == rows("a")


def test_users_refused_during_a_session(meta, graph, aid):
    replace(graph, aid, ["a"])
    for method in ("POST", "DELETE"):
        status, code, message = error(users(graph, aid, ["a"], method=method))
        assert (status, code) == (400, 2650)
        assert message.lower().startswith("failed to update the custom audience")
    assert meta.members(aid) == rows("a")


def test_invalid_entries_counted_not_applied(meta, graph, aid):
    meta.inject_invalid([h("blocked")])
    r = graph.post(f"/{aid}/usersreplace", json={
        "payload": {"schema": ["EMAIL", "EXTERN_ID"],
                    "data": [[h("a"), "u1"], ["Not@Hashed.com", "u2"], [h("blocked"), ""]]},
        "session": {"session_id": "5", "batch_seq": 1, "last_batch_flag": True}}).json()
    assert (r["session_id"], r["num_received"], r["num_invalid_entries"]) == ("5", 3, 2)
    assert set(r["invalid_entry_samples"]) == {"Not@Hashed.com", h("blocked")}
    assert meta.members(aid) == {frozenset({("EMAIL", h("a")), ("EXTERN_ID", "u1")})}
    assert meta.replace_sessions(aid)[0]["rows_invalid"] == 2


def test_session_parameter_is_required_and_checked(meta, graph, aid):
    bare = graph.post(f"/{aid}/usersreplace", json={
        "payload": {"schema": "EMAIL_SHA256", "data": [h("a")]}})
    no_seq = graph.post(f"/{aid}/usersreplace", json={
        "payload": {"schema": "EMAIL_SHA256", "data": [h("a")]}, "session": {"session_id": 1}})
    bad_flag = replace(graph, aid, ["a"], last="maybe")
    missing = replace(graph, "999", ["a"])
    for r in (bare, no_seq, bad_flag, missing):
        assert r.status_code == 400 and r.json()["error"]["code"] == 100
    assert "session" in bare.json()["error"]["message"]
    assert missing.json()["error"]["error_subcode"] == 33
    assert meta.replace_sessions(aid) == [] and meta.members(aid) == rows("old1", "old2")


def test_get_sessions_lists_replace_and_normal_sessions(meta, graph, aid):
    graph.post(f"/{aid}/users", json={  # a normal two-batch session
        "payload": {"schema": "EMAIL_SHA256", "data": [h("n1")]},
        "session": {"session_id": 9, "batch_seq": 1, "last_batch_flag": False}})
    graph.post(f"/{aid}/users", json={
        "payload": {"schema": "EMAIL_SHA256", "data": [h("n2"), "bad"]},
        "session": {"session_id": 9, "batch_seq": 2, "last_batch_flag": True}})
    replace(graph, aid, ["a", "b"], sid=42, estimated_num_total=4)

    data = graph.get(f"/{aid}/sessions").json()["data"]
    assert [s["session_id"] for s in data[:2]] == ["42", "9"]  # newest first
    open_, normal = data[0], data[1]
    assert {k: open_[k] for k in ("num_received", "num_matched", "num_invalid_entries",
                                  "stage", "progress", "end_time")} == {
        "num_received": "2", "num_matched": "2", "num_invalid_entries": "0",
        "stage": "uploading", "progress": "50", "end_time": "0"}
    assert (normal["num_received"], normal["num_invalid_entries"], normal["stage"]) == (
        "3", "1", "finished")
    assert int(open_["start_time"]) > 1_600_000_000

    replace(graph, aid, ["c"], sid=42, seq=2, last=True)
    one = graph.get(f"/{aid}/sessions", params={"session_id": 42}).json()["data"]
    assert len(one) == 1 and (one[0]["stage"], one[0]["progress"]) == ("finished", "100")
    assert int(one[0]["end_time"]) >= int(one[0]["start_time"])


def test_injections_reach_replace_calls(meta, graph, aid):
    meta.inject_throttle(code=80003)  # endpoint="users" covers usersreplace too
    assert error(replace(graph, aid, ["a"]))[1] == 80003
    meta.inject_server_error(endpoint="usersreplace")  # only replace calls
    assert users(graph, aid, ["n"]).status_code == 200
    assert replace(graph, aid, ["a"]).status_code == 500
    assert meta.members(aid) == rows("old1", "old2", "n")  # failed calls started nothing
    assert replace(graph, aid, ["a"], last=True).status_code == 200
    assert meta.members(aid) == rows("a")
    assert [(r.method, r.path.rsplit("/", 1)[1], r.n_rows, r.status)
            for r in meta.requests[-3:]] == [
        ("POST", "users", 1, 200),
        ("POST", "usersreplace", None, 500),  # faulted before the payload was read
        ("POST", "usersreplace", 1, 200)]
