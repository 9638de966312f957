"""Snapchat Ads customer-list segments end to end: run_sync against FakeSnapchat, asserting its final state."""

import hashlib

import httpx
import pyarrow as pa
import pytest

from audience_pipelines.contract import CredentialsError, Target, TerminalError
from audience_pipelines.destinations.snapchat_ads import SnapchatAds, SnapchatSettings
from audience_pipelines.destinations.snapchat_ads.client import SnapchatAdsDestination
from audience_pipelines.engine import RunOptions, SnapshotStore, SyncAborted, SyncSpec, run_sync
from audience_pipelines_tests.fakes.snapchat import FakeSnapchat

PHONE_VECTOR = "2fd199db6d3fa9fe754886ff1822f2867fcb104a6639495eca25c2978efe4ed4"  # +1(706)-767-5127
EMAIL_VECTOR = "b375b7bbddb3de3298fbc7641063d9f03a38e118aa4480c8ab9f58740982e8bd"  # Person@email.com
IDS = {"email": "email", "phone": "phone"}


def h(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@pytest.fixture
def snap():
    with FakeSnapchat(page_size=2) as server:
        yield server


@pytest.fixture
def store(tmp_path):
    return SnapshotStore(tmp_path / "syncs", "s")


def destination(snap, sleep=None, **overrides) -> SnapchatAdsDestination:
    values = {"ad_account_id": snap.ad_account_id, "client_id": snap.client_id, "client_secret": snap.client_secret,
              "refresh_token": snap.refresh_token, "token_url": snap.token_url, "base_url": snap.url,
              "timeout_s": 5, **overrides}
    return SnapchatAdsDestination(SnapchatSettings(**values), sleep=sleep or (lambda s: None))


def table(rows: dict, columns=("email", "phone")) -> pa.Table:
    return pa.table({"key": pa.array(list(rows), pa.string()),
                     **{c: pa.array([r.get(c) for r in rows.values()], pa.string()) for c in columns}})


def run(snap, store, rows, run_id, *, target=None, dest=None, identifiers=None, batch_size=None,
        columns=("email", "phone")):
    dest = dest or destination(snap)
    spec = SyncSpec(name=store.sync, audience="a", destination="snapchat_ads", target=target or Target(name="vip"),
                    identifiers=identifiers or IDS, batch_size=batch_size)
    try:
        return run_sync(spec, table(rows, columns), dest, store, RunOptions(run_id=run_id))
    finally:
        dest.close()


def people(n, start=0) -> dict:
    return {f"k{i}": {"email": f"user{i}@example.com", "phone": f"+1650253{1000 + i}"} for i in range(start, start + n)}


def held(rows: dict) -> set:
    """The (schema, hash) pairs Snap holds for exactly these rows."""
    out = set()
    for r in rows.values():
        if r.get("email"):
            out.add(("EMAIL_SHA256", h(r["email"].strip().lower())))
        if r.get("phone"):
            out.add(("PHONE_SHA256", h(r["phone"].lstrip("+"))))
    return out


def users_calls(snap) -> list:
    return [(r.method, r.schema, r.n_ids, r.status) for r in snap.requests if r.path.endswith("/users")]


def token_requests(snap) -> int:
    return sum(1 for r in snap.requests if r.path == "/login/oauth2/access_token")


def test_settings_and_capabilities():
    settings = SnapchatSettings(ad_account_id=" acc-1 ", client_id="c", client_secret="s", refresh_token="r")
    assert settings.ad_account_id == "acc-1" and SnapchatAds.account(settings) == "acc-1"
    assert settings.token_url == "https://accounts.snapchat.com/login/oauth2/access_token"
    assert settings.base_url == "https://adsapi.snapchat.com/v1"
    assert (settings.retention_in_days, settings.batch_size) == (9999, 100_000)
    caps = SnapchatAds.capabilities(settings)
    assert caps.identifier_kinds == caps.match_identifiers == {"email", "phone", "device_id"}
    assert caps.max_batch_rows == 100_000 and caps.can_list_audiences and caps.can_create_audiences
    assert caps.hashes_identifiers and caps.requires_identifier and not caps.accepts_fields
    assert caps.reports_size and not caps.reports_match_rate
    assert SnapchatAds.capabilities(settings.model_copy(update={"batch_size": 7})).max_batch_rows == 7
    base = {"ad_account_id": "a", "client_id": "c", "client_secret": "s", "refresh_token": "r"}
    for bad in ({"batch_size": 100_001}, {"batch_size": 0}, {"ad_account_id": " "}, {"ad_account_id": "a/b"},
                {"retention_in_days": 0}):
        with pytest.raises(ValueError):
            SnapchatSettings(**{**base, **bad})


def test_first_run_creates_the_segment_and_a_fresh_client_finds_it(snap, store):
    for i in range(5):  # pages of 2: the client follows next_link
        snap.create_segment(f"other {i}")
    rows = {"k1": {"email": "Person@email.com ", "phone": "+1(706)-767-5127"}, "k2": {"email": "b@example.com"}}
    first = run(snap, store, rows, "r1")
    sid = snap.segment_id_by_name("vip")
    assert first.destination_audience_id == sid and (first.added, first.failed) == (2, 0)
    segment = snap.segments[sid]
    assert (segment["description"], segment["source_type"], segment["retention_in_days"]) == (
        "Managed by audience_pipelines", "FIRST_PARTY", 9999)
    assert snap.members(sid) == {("EMAIL_SHA256", EMAIL_VECTOR), ("EMAIL_SHA256", h("b@example.com")),
                                 ("PHONE_SHA256", PHONE_VECTOR)}
    # One request per schema, duplicates never sent.
    assert users_calls(snap) == [("POST", "EMAIL_SHA256", 2, 200), ("POST", "PHONE_SHA256", 1, 200)]
    assert first.audience_size == 3 and segment["upload_status"] == "COMPLETE"
    assert first.destination_stats["number_uploaded_users"] == 3

    second = run(snap, store, {**rows, "k3": {"email": "c@example.com"}}, "r2")  # a fresh client finds it by name
    assert second.destination_audience_id == sid and len(snap.segments) == 6 and second.added == 1
    assert [s["name"] for s in snap.segments.values()].count("vip") == 1


def test_a_segment_given_by_id_is_used_and_an_unknown_one_is_a_clear_error(snap, store):
    sid = snap.create_segment("by id")
    result = run(snap, store, people(2), "r1", target=Target(id=sid))
    assert result.destination_audience_id == sid and snap.members(sid) == held(people(2))
    for target, why in ((Target(id="424242"), "segment 424242 does not exist"),
                        (Target(id=snap.create_segment("theirs", ad_account_id="other-account")), "E3002"),
                        (Target(id=snap.create_segment("lookalike", source_type="LOOKALIKE")), "not a customer list"),
                        (Target(id="../adaccounts"), "not a Snap segment id")):
        with pytest.raises(TerminalError, match=why):
            run(snap, SnapshotStore(store.dir.parent, "other"), people(1), "r2", target=target)
    assert snap.members(sid) == held(people(2)) and len(snap.segments) == 3


def test_removes_and_an_identifier_change_withdraw_exactly(snap, store):
    base = people(4)
    run(snap, store, base, "r1")
    new = {k: v for k, v in base.items() if k != "k0"}
    new["k2"] = {"email": "changed2@example.com", "phone": base["k2"]["phone"]}
    new["k3"] = {"email": base["k1"]["email"], "phone": base["k3"]["phone"]}  # k3 now shares k1's email
    result = run(snap, store, new, "r2")
    assert (result.removed, result.updated, result.failed) == (1, 2, 0)
    sid = snap.segment_id_by_name("vip")
    assert snap.members(sid) == held(new)
    # The leaver's email and phone went, k2's old email went, k3's old email went; nothing still sent was withdrawn.
    assert sorted(c[:3] for c in users_calls(snap)[2:]) == sorted([
        ("DELETE", "EMAIL_SHA256", 1), ("DELETE", "PHONE_SHA256", 1),
        ("DELETE", "EMAIL_SHA256", 2), ("POST", "EMAIL_SHA256", 2), ("POST", "PHONE_SHA256", 2)])


def test_a_leaver_sharing_an_email_does_not_take_the_stayer_out(snap, store):
    rows = {"a": {"email": "shared@example.com", "phone": "+16502531001"},
            "b": {"email": "shared@example.com", "phone": "+16502531002"}}
    run(snap, store, rows, "r1")
    result = run(snap, store, {"b": rows["b"]}, "r2")
    assert result.removed == 1 and snap.members(snap.segment_id_by_name("vip")) == held({"b": rows["b"]})


def test_batches_stay_at_the_batch_size(snap, store):
    rows = people(6)
    result = run(snap, store, rows, "r1", dest=destination(snap, batch_size=5), identifiers={"email": "email"})
    assert result.added == 6 and [c[2] for c in users_calls(snap)] == [5, 1]
    assert snap.members(snap.segment_id_by_name("vip")) == {("EMAIL_SHA256", h(r["email"])) for r in rows.values()}


@pytest.mark.parametrize("inject, seen", [
    (lambda s: s.inject_throttle(times=2), 429),
    (lambda s: s.inject_server_error(times=2, status=503), 503),
], ids=["429", "503"])
def test_throttles_and_server_errors_are_retried(snap, store, inject, seen):
    waits = []
    inject(snap)
    result = run(snap, store, people(3), "r1", dest=destination(snap, sleep=waits.append),
                 identifiers={"email": "email"})
    assert [c[3] for c in users_calls(snap)] == [seen, seen, 200] and len(waits) == 2
    assert result.added == 3 and snap.members(snap.segment_id_by_name("vip")) == {
        ("EMAIL_SHA256", h(r["email"])) for r in people(3).values()}


def test_a_refused_request_is_narrowed_to_the_rows_to_blame(snap, store):
    snap.reject_values([h("user2@example.com")])
    rows = people(6)
    first = run(snap, store, rows, "r1")
    sid = snap.segment_id_by_name("vip")
    assert (first.added, first.failed) == (5, 1)
    (error,) = first.errors_sample
    assert error["key"] == "k2" and "Snap refused the EMAIL_SHA256 request" in error["reason"]
    assert "Invalid identifier" in error["reason"]
    # Halves were sent again until k2 stood alone: none of k2 is held or committed, the rest went in.
    assert snap.members(sid) == held({k: v for k, v in rows.items() if k != "k2"})
    assert set(store.read()["key"].to_pylist()) == set(rows) - {"k2"}
    snap.clear_rejected_values()
    second = run(snap, store, rows, "r2")
    assert (second.added, second.failed) == (1, 0) and snap.members(sid) == held(rows)


def test_a_row_counts_only_when_every_request_carrying_it_succeeded(snap, store):
    rows = {"both": {"email": "both@example.com", "phone": "+16502531001"},
            "phone": {"phone": "+16502531002"}, "email": {"email": "only@example.com"}}
    snap.inject_unconfirmed(times=1)  # the EMAIL_SHA256 request answers sub_request_status FAILED
    first = run(snap, store, rows, "r1")
    sid = snap.segment_id_by_name("vip")
    assert (first.added, first.failed) == (1, 2)
    assert {e["key"] for e in first.errors_sample} == {"both", "email"}
    assert all("did not confirm the EMAIL_SHA256 upload" in e["reason"] for e in first.errors_sample)
    assert snap.members(sid) == held({"both": {"phone": "+16502531001"}, "phone": rows["phone"]})
    assert store.read()["key"].to_pylist() == ["phone"]
    second = run(snap, store, rows, "r2")
    assert (second.added, second.failed) == (2, 0) and snap.members(sid) == held(rows)


def test_an_expired_access_token_is_renewed_once(snap, store):
    dest = destination(snap)
    dest.check_access()
    snap.expire_access_tokens()
    run(snap, store, people(2), "r1", dest=dest)
    assert token_requests(snap) == 2 and snap.members(snap.segment_id_by_name("vip")) == held(people(2))


def test_a_token_refused_again_after_renewal_names_the_refresh_token(snap, store):
    snap.inject_token_expiry(times=2)
    with pytest.raises(SyncAborted) as err:
        run(snap, store, people(2), "r1")
    assert isinstance(err.value.__cause__, CredentialsError) and "'refresh_token'" in str(err.value)
    assert token_requests(snap) == 2 and snap.members(snap.segment_id_by_name("vip")) == set()
    assert store.read().num_rows == 0


@pytest.mark.parametrize("override, setting", [
    ({"refresh_token": "wrong-refresh-s3cret"}, "'refresh_token'"),
    ({"client_secret": "wrong-client-s3cret"}, "'client_id/client_secret'"),
], ids=["refresh-token", "client-secret"])
def test_bad_credentials_fail_before_anything_is_created(snap, store, override, setting):
    with pytest.raises(CredentialsError) as err:
        run(snap, store, people(2), "r1", dest=destination(snap, **override))
    text = f"{err.value} {err.value.__cause__!r}"
    assert setting in text and "s3cret" not in text
    assert snap.segments == {} and users_calls(snap) == []


def test_a_permission_refusal_is_terminal(snap, store):
    with pytest.raises(TerminalError, match="may not act on ad account wrong-account.*E3002"):
        run(snap, store, people(2), "r1", dest=destination(snap, ad_account_id="wrong-account"))
    assert snap.segments == {}
    snap.inject_permission_denied(times=1)
    with pytest.raises(SyncAborted, match="E3002"):
        run(snap, store, people(2), "r2")
    assert snap.members(snap.segment_id_by_name("vip")) == set() and store.read().num_rows == 0


def test_the_fake_takes_a_removal_with_or_without_the_segment_id(snap):
    sid = snap.create_segment("vip")
    snap.add_members(sid, {("EMAIL_SHA256", h("a@x.io")), ("EMAIL_SHA256", h("b@x.io"))})
    headers = {"Authorization": f"Bearer {snap.issue_access_token()}", "Content-Type": "application/json"}
    for value, extra in ((h("a@x.io"), {}), (h("b@x.io"), {"id": sid})):
        body = {"users": [{"schema": ["EMAIL_SHA256"], "data": [[value]], **extra}]}
        answer = httpx.request("DELETE", f"{snap.url}/segments/{sid}/users", json=body, headers=headers)
        assert answer.status_code == 200 and answer.json()["users"][0]["user"]["number_uploaded_users"] == 1
    assert snap.members(sid) == set()
    two = {"users": [{"schema": ["EMAIL_SHA256", "PHONE_SHA256"], "data": [[h("a"), h("b")]]}]}
    answer = httpx.post(f"{snap.url}/segments/{sid}/users", json=two, headers=headers)
    assert answer.status_code == 400 and answer.json()["request_status"] == "ERROR"
