"""Webhook destination end to end: run_sync against the FakeWebhook server, asserting its final state."""

import hashlib
import json
import time

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audience_pipelines.contract import Target
from audience_pipelines.destinations.webhook import WebhookSettings
from audience_pipelines.destinations.webhook.client import WebhookDestination
from audience_pipelines.engine import RunOptions, SnapshotStore, SyncAborted, SyncSpec, run_sync
from audience_pipelines_tests.fakes import FakeWebhook, sign

SECRET = "whsec_test"


@pytest.fixture
def hook():
    # The path ends in "/" only to step around the bug shown by test_posts_to_the_configured_url_exactly
    # (the client POSTs to `url + "/"`); every other test here is about sync behaviour.
    with FakeWebhook(secret=SECRET, path="/hook/") as server:
        yield server


@pytest.fixture
def store(tmp_path):
    return SnapshotStore(tmp_path, "s")


def table(rows: dict) -> pa.Table:
    """rows: key -> (email, plan)."""
    return pa.table({"key": pa.array(list(rows), pa.string()),
                     "email": pa.array([e for e, _ in rows.values()], pa.string()),
                     "plan": pa.array([p for _, p in rows.values()], pa.string())})


def expected(rows: dict) -> dict:
    """The fake's state for `rows`: id -> row as sent (email trimmed and lowercased)."""
    return {k: {"id": k, "email": e.strip().lower() if e else None, "plan": p} for k, (e, p) in rows.items()}


def run(hook, store, rows, run_id, *, secret=SECRET, timeout_s=2.0, name="s", **spec_kw):
    dest = WebhookDestination(WebhookSettings(url=hook.url, secret=secret, timeout_s=timeout_s))
    spec = SyncSpec(name=name, audience="a", destination="hook", target=Target(name="vip"),
                    identifiers={"email": "email"}, fields={"plan": "plan"}, **spec_kw)
    try:
        return run_sync(spec, table(rows), dest, store, RunOptions(run_id=run_id))
    finally:
        dest.close()


def idem_key(sync, run_id, seq):
    return hashlib.sha256(f"{sync}:{run_id}:{seq}".encode()).hexdigest()


def snapshot_keys(store) -> set:
    return set(store.read()["key"].to_pylist())


def clear_rejections(hook):
    hook.clear_rejections()



def test_posts_to_the_configured_url_exactly(store):
    with FakeWebhook(secret=SECRET, path="/hook") as exact:
        result = run(exact, store, {"k1": ("a@example.com", "free")}, "r1")
        assert [r.path for r in exact.requests] == ["/hook"]
        assert (result.added, result.failed) == (1, 0) and exact.member_ids("vip") == {"k1"}


BASE = {f"k{i}": (f"user{i}@example.com", "free") for i in range(1, 7)}
BASE["k6"] = ("  Mixed.Case@Example.COM ", "pro")


def test_first_run_sends_all_then_only_changes(hook, store):
    first = run(hook, store, BASE, "r1")
    assert (first.run_kind, first.added, first.failed, first.set_aside) == ("first_run", 6, 0, 0)
    assert hook.members == {"vip": expected(BASE)}
    assert hook.members["vip"]["k6"]["email"] == "mixed.case@example.com"
    assert snapshot_keys(store) == set(BASE)

    new = {k: v for k, v in BASE.items() if k != "k1"}
    new["k2"] = ("user2@example.com", "pro")  # field change
    new["k3"] = ("changed3@example.com", "free")  # identifier change
    new["k7"] = ("user7@example.com", "free")
    second = run(hook, store, new, "r2")
    assert (second.run_kind, second.added, second.removed, second.updated, second.unchanged, second.failed) == (
        "diff", 1, 1, 2, 3, 0)
    assert hook.members == {"vip": expected(new)}
    # Only the changes travelled: exactly these rows, once each.
    assert hook.rows_received("added")[6:] == [expected(new)["k7"]]
    assert sorted(hook.rows_received("updated"), key=lambda r: r["id"]) == [expected(new)["k2"], expected(new)["k3"]]
    assert hook.rows_received("removed") == [expected(BASE)["k1"]]
    assert snapshot_keys(store) == set(new) and store.manifest().rows == 6

    n_requests = len(hook.requests)
    third = run(hook, store, new, "r3")
    assert (third.unchanged, third.attempted) == (6, 0)
    assert len(hook.requests) == n_requests and hook.members == {"vip": expected(new)}


def test_signature_is_valid_and_wrong_secret_aborts_without_commit(hook, store):
    run(hook, store, BASE, "r1")
    for req in hook.requests:
        raw = json.dumps(req.body, separators=(",", ":")).encode()  # the client's own serialisation
        assert req.status == 200 and req.headers["x-signature"] == sign(SECRET, raw)
        assert req.headers["x-timestamp"].isdigit()
    manifest = store.manifest()
    before = store.read()

    new = {**BASE, "k7": ("user7@example.com", "free")}
    with pytest.raises(SyncAborted) as err:
        run(hook, store, new, "r2", secret="whsec_WRONG_value")
    assert "whsec_WRONG_value" not in str(err.value) and "whsec_WRONG_value" not in str(err.value.__cause__)
    assert "secret" in str(err.value)
    assert hook.requests[-1].status == 401 and len(hook.requests) == 2  # a 401 is not retried
    assert hook.members == {"vip": expected(BASE)}
    assert store.manifest().snapshot_file == manifest.snapshot_file and store.read().equals(before)

    # k7's batch got no acceptance: the next run sends it (as an add, or as a resend of a pending row).
    third = run(hook, store, new, "r3")
    assert (third.added + third.updated, third.failed) == (1, 0)
    assert hook.members == {"vip": expected(new)} and snapshot_keys(store) == set(new)


def test_rejected_rows_are_recorded_and_retried_next_run(hook, store):
    hook.reject_ids(["k2", "k4"], error="invalid email")
    first = run(hook, store, BASE, "r1")
    assert (first.added, first.failed, first.status) == (4, 2, "partial_failure")
    rejected = pq.read_table(first.rejected_path).to_pylist()
    assert sorted(rejected, key=lambda r: r["key"]) == [
        {"key": "k2", "operation": "add", "reason": "invalid email"},
        {"key": "k4", "operation": "add", "reason": "invalid email"}]
    assert {e["key"] for e in first.errors_sample} == {"k2", "k4"}
    assert set(hook.members["vip"]) == set(BASE) - {"k2", "k4"}
    assert snapshot_keys(store) == set(BASE) - {"k2", "k4"}

    clear_rejections(hook)
    n_added = len(hook.rows_received("added"))
    second = run(hook, store, BASE, "r2")
    assert (second.added, second.failed, second.unchanged, second.rejected_path) == (2, 0, 4, None)
    retried = hook.rows_received("added")[n_added:]
    assert sorted(r["id"] for r in retried) == ["k2", "k4"]  # exactly the rejected rows
    assert hook.members == {"vip": expected(BASE)} and snapshot_keys(store) == set(BASE)

    # A rejected remove keeps the member in the snapshot, so the next run removes it again.
    hook.reject_ids(["k1"], error="locked")
    smaller = {k: v for k, v in BASE.items() if k != "k1"}
    third = run(hook, store, smaller, "r3")
    assert (third.removed, third.failed) == (0, 1)
    assert pq.read_table(third.rejected_path).to_pylist() == [{"key": "k1", "operation": "remove", "reason": "locked"}]
    assert "k1" in hook.members["vip"] and "k1" in snapshot_keys(store)
    clear_rejections(hook)
    fourth = run(hook, store, smaller, "r4")
    assert (fourth.removed, fourth.failed) == (1, 0)
    assert hook.members == {"vip": expected(smaller)} and snapshot_keys(store) == set(smaller)


@pytest.mark.parametrize("named_by", [("id",), ()], ids=["by-id", "unnamed"])
def test_rejections_that_do_not_give_an_index_are_found(hook, store, named_by):
    rows = {f"k{i}": (f"u{i}@example.com", "gold") for i in range(20)}
    hook.reject_ids(["k3", "k17"], error="invalid email")
    hook.name_results_by(*named_by)
    first = run(hook, store, rows, "r1")
    assert (first.added, first.failed) == (18, 2)
    assert {r["key"]: r["reason"] for r in pq.read_table(first.rejected_path).to_pylist()} == {
        "k3": "invalid email" if named_by else "webhook did not apply the row: invalid email",
        "k17": "invalid email" if named_by else "webhook did not apply the row: invalid email"}
    assert snapshot_keys(store) == set(rows) - {"k3", "k17"}
    assert hook.replays == 0  # every part sent again had a key of its own
    clear_rejections(hook)
    second = run(hook, store, rows, "r2")
    assert (second.added, second.failed) == (2, 0) and hook.members == {"vip": expected(rows)}


def test_throttles_and_server_errors_are_retried(hook, store):
    hook.inject_status(503, times=1)  # no Retry-After: jittered backoff (first attempt: <= 0.5 s)
    hook.inject_status(429, times=2, retry_after=0)
    hook.inject_status(503, times=1, retry_after=0)
    result = run(hook, store, BASE, "r1")
    assert (result.added, result.failed) == (6, 0)
    assert [r.status for r in hook.requests] == [503, 429, 429, 503, 200]
    assert len({r.headers["idempotency-key"] for r in hook.requests}) == 1  # the same batch each time
    assert hook.members == {"vip": expected(BASE)} and len(hook.batches_applied) == 1


def test_retries_exhausted_abort_and_next_run_converges(hook, store):
    run(hook, store, BASE, "r1")
    before = store.read()
    new = {**BASE, "k7": ("user7@example.com", "free"), "k8": ("user8@example.com", "pro")}
    hook.inject_status(503, times=6, retry_after=0)
    with pytest.raises(SyncAborted, match="gave up after 6 attempts"):
        run(hook, store, new, "r2")
    assert hook.members == {"vip": expected(BASE)} and store.read().equals(before)
    third = run(hook, store, new, "r3")
    assert (third.added + third.updated, third.failed) == (2, 0)
    assert hook.members == {"vip": expected(new)} and snapshot_keys(store) == set(new)


def test_non_fatal_http_error_rejects_only_its_batch(hook, store):
    rows = {f"m{i:04d}": (f"m{i}@example.com", "free") for i in range(1500)}
    hook.inject_status(422, times=1)  # permanent 4xx on the first batch only
    first = run(hook, store, rows, "r1")
    assert (first.added, first.failed) == (500, 1000)
    rejected = pq.read_table(first.rejected_path)
    assert rejected.num_rows == 1000 and set(rejected["reason"].to_pylist()) == {
        "webhook answered HTTP 422: {\"error\": \"injected failure\"}"}
    assert len(hook.members["vip"]) == 500 and store.manifest().rows == 500
    second = run(hook, store, rows, "r2")
    assert (second.added, second.failed) == (1000, 0)
    assert set(rejected["key"].to_pylist()) == {r["id"] for r in hook.rows_received("added")[500:]}
    assert hook.members == {"vip": expected(rows)}


def wait_for_requests(hook, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while len(hook.requests) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    return hook.requests


def test_timeout_is_retried_and_the_late_original_is_a_replay(hook, store):
    hook.inject_delay(0.8)  # longer than timeout_s: the client gives up, the server still handles it
    result = run(hook, store, BASE, "r1", timeout_s=0.3)
    assert (result.added, result.failed) == (6, 0)
    reqs = wait_for_requests(hook, 2)
    assert len(reqs) == 2 and {r.headers["idempotency-key"] for r in reqs} == {idem_key("s", "r1", 1)}
    assert hook.replays == 1 and len(hook.batches_applied) == 1  # applied once, recognised once
    assert len(hook.rows_received("added")) == 6 and hook.members == {"vip": expected(BASE)}


def test_batches_of_at_most_1000_with_stable_idempotency_keys(hook, store):
    rows = {f"m{i:04d}": (f"m{i}@example.com", "free" if i % 2 else "pro") for i in range(2500)}
    result = run(hook, store, rows, "r1")
    assert result.added == 2500
    applied = hook.batches_applied
    assert [(b["seq"], b["added"], b["last"], b["run_id"]) for b in applied] == [
        (1, 1000, False, "r1"), (2, 1000, False, "r1"), (3, 500, True, "r1")]
    assert [b["idempotency_key"] for b in applied] == [idem_key("s", "r1", s) for s in (1, 2, 3)]
    assert all(len(r.body["added"]) <= 1000 for r in hook.requests)
    assert hook.members == {"vip": expected(rows)}

    # Replaying batch 1 exactly as sent is recognised and not applied again.
    first = hook.requests[0]
    raw = json.dumps(first.body, separators=(",", ":")).encode()
    again = httpx.post(hook.url, content=raw, headers={
        "Content-Type": "application/json", "Idempotency-Key": first.headers["idempotency-key"],
        "X-Signature": sign(SECRET, raw)})
    assert again.status_code == 200 and hook.replays == 1 and len(hook.batches_applied) == 3
    assert len(hook.rows_received("added")) == 2500

    # A later run uses its own keys (no collision with r1), and the spec's batch_size lowers the cap.
    changed = {k: (e, "gold") for k, (e, _) in list(rows.items())[:900]}
    store2 = SnapshotStore(store.dir.parent, "s-small")
    run(hook, store2, rows, "x1", name="s-small", batch_size=400)
    assert [b["added"] for b in hook.batches_applied[3:]] == [400] * 6 + [100]
    second = run(hook, store, {**rows, **changed}, "r2")
    assert second.updated == 900 and hook.replays == 1
    assert [b["idempotency_key"] for b in hook.batches_applied[-1:]] == [idem_key("s", "r2", 1)]
    assert hook.members["vip"] == expected({**rows, **changed})


@pytest.mark.parametrize("mode, removal", [
    ("mirror", "remove"), ("additive", "remove"), ("subtractive", "remove"), ("mirror", "do_nothing")])
def test_sync_modes(hook, store, mode, removal):
    run(hook, store, BASE, "r1")
    new = {k: v for k, v in BASE.items() if k != "k1"}
    new["k2"] = ("user2@example.com", "pro")
    new["k7"] = ("user7@example.com", "free")
    result = run(hook, store, new, "r2", mode=mode, removal=removal)
    sends_removes = mode != "additive" and removal == "remove"
    sends_adds = mode != "subtractive"
    held = {**BASE, **(new if sends_adds else {})}
    if sends_removes:
        held.pop("k1")
    assert hook.members == {"vip": expected(held)}
    assert (result.added, result.updated, result.removed) == (int(sends_adds), int(sends_adds), int(sends_removes))
    assert result.skipped == (0 if sends_adds else 2) + (0 if sends_removes else 1)
    assert hook.rows_received("removed") == ([expected(BASE)["k1"]] if sends_removes else [])
    assert len(hook.rows_received("added")) == 6 + int(sends_adds)
    assert snapshot_keys(store) == set(held)  # the snapshot tracks what the destination holds
    snap = {r["key"]: r["plan"] for r in store.read().to_pylist()}
    assert snap["k2"] == held["k2"][1]
