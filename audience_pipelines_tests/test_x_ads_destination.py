"""X (Twitter) Ads custom audiences end to end: run_sync against FakeXAds, asserting its final state."""

import hashlib
import json
import re

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audience_pipelines.contract import Target
from audience_pipelines.destinations.x_ads import XAdsSettings
from audience_pipelines.destinations.x_ads.client import DESCRIPTION, XAdsDestination, throttle_delay
from audience_pipelines.destinations.x_ads.oauth1 import OAuth1, base_string, signature
from audience_pipelines.engine import (
    CredentialsError, DestinationError, RunOptions, SnapshotStore, SyncAborted, SyncSpec, run_sync,
)
from audience_pipelines_tests.fakes.x_ads import FakeXAds


def h(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@pytest.fixture
def x():
    with FakeXAds() as server:
        yield server
        assert server.errors == []  # no bug inside the fake


@pytest.fixture
def store(tmp_path):
    return SnapshotStore(tmp_path, "x")


def settings(x: FakeXAds, **kw) -> XAdsSettings:
    return XAdsSettings(**{
        "account_id": x.account_id, "consumer_key": x.consumer_key, "consumer_secret": x.consumer_secret,
        "access_token": x.access_token, "access_token_secret": x.access_token_secret, "base_url": x.url,
        "timeout_s": 2, **kw})


def destination(x: FakeXAds, sleep=lambda s: None, **kw) -> XAdsDestination:
    return XAdsDestination(settings(x, **kw), sleep=sleep)


def table(rows: dict, columns=("email", "ext")) -> pa.Table:
    return pa.table({"key": pa.array(list(rows), pa.string()),
                     **{c: pa.array([r.get(c) for r in rows.values()], pa.string()) for c in columns}})


def run(x, store, members: pa.Table, run_id, *, target=None, dest=None, identifiers=None, **spec_kw):
    dest = dest or destination(x)
    spec = SyncSpec(name="x", audience="a", destination="x_ads", target=target or Target(name="vip"),
                    identifiers=identifiers or {"email": "email", "external_id": "ext"}, **spec_kw)
    try:
        return run_sync(spec, members, dest, store, RunOptions(run_id=run_id))
    finally:
        dest.close()


def simple(n, start=0) -> dict:
    return {f"k{i}": {"email": f"user{i}@example.com", "ext": f"u{i}"} for i in range(start, start + n)}


def user(**keys) -> frozenset:
    """A user as FakeXAds holds it: (key, value) pairs."""
    return frozenset((k, v) for k, v in keys.items() if v)


def users_of(rows: dict) -> set:
    return {user(email=h(r["email"]), partner_user_id=r["ext"]) for r in rows.values()}


def users_calls(x, operation=None):
    return [r for r in x.requests if r.path.endswith("/users") and (operation is None or r.operation == operation)]


def rejected_rows(result) -> dict[str, str]:
    t = pq.read_table(result.rejected_path)
    return dict(zip(t["key"].to_pylist(), t["operation"].to_pylist()))


# -- OAuth 1.0a ----------------------------------------------------------------------------------

# X's "Creating a signature" example. Its current page shows https://api.x.com/1.1/statuses/update.json
# but the signature it prints was computed, and only reproduces, with the original URL below.
DOC_URL = "https://api.twitter.com/1/statuses/update.json"
DOC = {"consumer_key": "xvz1evFS4wEEPTGEFPHBog", "consumer_secret": "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw",
       "token": "370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb",
       "token_secret": "LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE",
       "nonce": "kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg", "timestamp": 1318622958}
DOC_BASE = ("POST&https%3A%2F%2Fapi.twitter.com%2F1%2Fstatuses%2Fupdate.json&include_entities%3Dtrue%26"
            "oauth_consumer_key%3Dxvz1evFS4wEEPTGEFPHBog%26oauth_nonce%3DkYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg%26"
            "oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D1318622958%26oauth_token%3D370773112-"
            "GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb%26oauth_version%3D1.0%26status%3DHello%2520Ladies%2520%252B"
            "%2520Gentlemen%252C%2520a%2520signed%2520OAuth%2520request%2521")
DOC_SIGNATURE = "tnnArxj06cWHq44gCs1OSKk/jLY="


def test_signature_base_string_and_signature_match_x_docs():
    params = [("status", "Hello Ladies + Gentlemen, a signed OAuth request!"), ("include_entities", "true"),
              ("oauth_consumer_key", DOC["consumer_key"]), ("oauth_nonce", DOC["nonce"]),
              ("oauth_signature_method", "HMAC-SHA1"), ("oauth_timestamp", str(DOC["timestamp"])),
              ("oauth_token", DOC["token"]), ("oauth_version", "1.0")]
    base = base_string("POST", DOC_URL, params)
    assert base == DOC_BASE
    assert signature(base, DOC["consumer_secret"], DOC["token_secret"]) == DOC_SIGNATURE


def test_signed_request_collects_query_and_form_params():
    auth = OAuth1(DOC["consumer_key"], DOC["consumer_secret"], DOC["token"], DOC["token_secret"],
                  nonce=lambda: DOC["nonce"], clock=lambda: DOC["timestamp"])
    request = httpx.Request("POST", f"{DOC_URL}?include_entities=true", headers={
        "Content-Type": "application/x-www-form-urlencoded"},
        content=b"status=Hello%20Ladies%20%2b%20Gentlemen%2c%20a%20signed%20OAuth%20request%21")
    header = next(auth.sync_auth_flow(request)).headers["Authorization"]
    assert header == ('OAuth oauth_consumer_key="xvz1evFS4wEEPTGEFPHBog", '
                      'oauth_nonce="kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg", '
                      'oauth_signature="tnnArxj06cWHq44gCs1OSKk%2FjLY%3D", oauth_signature_method="HMAC-SHA1", '
                      'oauth_timestamp="1318622958", oauth_token="370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb", '
                      'oauth_version="1.0"')
    # A JSON body is not part of the signature; the same URL signs the same with or without one.
    json_request = httpx.Request("POST", f"{DOC_URL}?include_entities=true", json=[{"a": 1}])
    bare = httpx.Request("POST", f"{DOC_URL}?include_entities=true")
    assert next(auth.sync_auth_flow(json_request)).headers["Authorization"] == \
        next(auth.sync_auth_flow(bare)).headers["Authorization"]


def test_the_fake_refuses_unsigned_replayed_and_wrongly_signed_requests(x):
    auth = OAuth1(x.consumer_key, x.consumer_secret, x.access_token, x.access_token_secret)
    with httpx.Client(base_url=x.url) as client:
        url = f"/12/accounts/{x.account_id}"
        assert client.get(url).status_code == 401
        signed = client.build_request("GET", url)
        signed.headers["Authorization"] = next(auth.sync_auth_flow(signed)).headers["Authorization"]
        assert client.send(signed).status_code == 200
        replay = client.send(signed)  # same nonce and timestamp again
        assert replay.status_code == 401 and replay.json()["errors"][0]["code"] == "UNAUTHORIZED_ACCESS"
        wrong = OAuth1(x.consumer_key, "not-the-secret", x.access_token, x.access_token_secret)
        assert client.get(url, auth=wrong).status_code == 401
        assert client.get(url, auth=auth).status_code == 200


# -- audiences -----------------------------------------------------------------------------------

ALL = {"email": "email", "phone": "phone", "user_id": "xid", "device_id": "idfa", "external_id": "ext"}
FULL = {
    "k1": {"email": " John@Example.com ", "phone": "+1 415 555 2671", "xid": "143567",
           "idfa": "4B61639E-47CC-4056-A16A-C8217E029462", "ext": "u-1"},
    "k2": {"email": "jane@example.org"},
    "k3": {"xid": "@jack"},  # not an X user id, nothing else: set aside
    "k4": {"ext": "u-4"},
}
EXPECTED = {
    user(email=h("john@example.com"), phone_number=h("+14155552671"), twitter_id=h("143567"),
         device_id=h("4b61639e-47cc-4056-a16a-c8217e029462"), partner_user_id="u-1"),
    user(email=h("jane@example.org")),
    user(partner_user_id="u-4"),
}


def test_create_then_find_and_the_exact_users_sent(x, store):
    first = run(x, store, table(FULL, columns=tuple(ALL.values())), "r1", identifiers=ALL)
    aid = x.audience_id_by_name("vip")
    assert aid is not None and first.destination_audience_id == aid
    assert x.audiences[aid]["description"] == DESCRIPTION and x.audiences[aid]["audience_type"] == "CRM"
    [create] = [r for r in x.requests if r.method == "POST" and r.path.endswith("/custom_audiences")]
    assert create.query == {"name": "vip", "description": DESCRIPTION} and create.n_bytes == 0
    assert x.members(aid) == EXPECTED
    assert (first.added, first.failed, first.set_aside, first.audience_size) == (3, 0, 1, 3)
    assert [(r.operation, r.n_users, r.status) for r in users_calls(x)] == [("Update", 3, 200)]

    # A new sync (its own snapshot, no registry entry) finds the audience by name instead of creating one.
    other = run(x, SnapshotStore(store.dir.parent / "other", "x"), table(FULL, columns=tuple(ALL.values())),
                "r2", identifiers=ALL)
    assert other.destination_audience_id == aid and len(x.audiences) == 1 and x.members(aid) == EXPECTED


def test_find_by_name_matches_exactly_through_cursor_pages(x, store):
    for i in range(450):
        x.create_audience(f"vip {i}")  # share the prefix: q returns them all
    x.create_audience("VIP")
    deleted = x.create_audience("vip")
    x.delete_audience(deleted)
    aid = x.create_audience("vip")
    result = run(x, store, table(simple(2)), "r1")
    assert result.destination_audience_id == aid and x.members(aid) == users_of(simple(2))
    lists = [r for r in x.requests if r.method == "GET" and r.path.endswith("/custom_audiences")]
    assert [r.query.get("q") for r in lists] == ["vip"] * 3 and [r.query.get("count") for r in lists] == ["200"] * 3
    assert "cursor" not in lists[0].query and all("cursor" in r.query for r in lists[1:])
    assert not [r for r in x.requests if r.method == "POST" and r.path.endswith("/custom_audiences")]


def test_a_name_with_reserved_characters_is_created_and_found(x, store):
    name = "VIP & friends + co/é=1 100%"
    result = run(x, store, table(simple(1)), "r1", target=Target(name=name))
    assert x.audience_id_by_name(name) == result.destination_audience_id
    again = run(x, SnapshotStore(store.dir.parent / "other", "x"), table(simple(1)), "r2", target=Target(name=name))
    assert again.destination_audience_id == result.destination_audience_id and len(x.audiences) == 1


def test_creating_a_name_taken_meanwhile_uses_that_audience(x):
    dest = destination(x)
    assert dest.find_audience("vip") is None
    aid = x.create_audience("vip")  # another process got there first
    assert dest.create_audience("vip") == aid and len(x.audiences) == 1
    posts = [r.status for r in x.requests if r.method == "POST" and r.path.endswith("/custom_audiences")]
    assert posts == [400]  # X refused the duplicate name
    dest.close()


def test_phone_format_setting_reaches_the_users_sent(x, store):
    rows = {"k1": {"phone": "+1 415 555 2671"}}
    digits = run(x, store, table(rows, columns=("phone",)), "r1", identifiers={"phone": "phone"},
                 dest=destination(x, phone_format="digits"))
    assert x.members(digits.destination_audience_id) == {user(phone_number=h("14155552671"))}


def test_target_id_unknown_deleted_and_unusable_audiences(x, store):
    aid = x.create_audience("made elsewhere")
    result = run(x, store, table(simple(2)), "r1", target=Target(id=aid))
    assert result.destination_audience_id == aid and x.members(aid) == users_of(simple(2))

    gone = x.create_audience("gone")
    x.delete_audience(gone)
    web = x.create_audience("site visitors", audience_type="WEB")
    shared = x.create_audience("shared", permission_level="READ_ONLY", owner_account_id="other1")
    for target, words in (("zz999", "does not exist in account 18ce54d4x5t"), (gone, "was deleted"),
                          (web, "is a WEB audience"), (shared, "read-only"), ("a/b", "is not an X custom audience id")):
        other = SnapshotStore(store.dir.parent, f"x-{target.replace('/', '')}")
        with pytest.raises(DestinationError) as err:
            run(x, other, table(simple(2)), "r1", target=Target(id=target))
        assert err.value.fatal and target in str(err.value) and words in str(err.value)
        assert other.manifest() is None
    assert x.members(gone) == x.members(web) == x.members(shared) == set()


def test_unknown_account_is_named(x, store):
    with pytest.raises(DestinationError) as err:
        run(x, store, table(simple(1)), "r1", dest=destination(x, account_id="nope1"))
    assert err.value.fatal and "account nope1 (setting 'account_id')" in str(err.value)
    assert x.audiences == {}


# -- members -------------------------------------------------------------------------------------

def test_removes_and_identifier_change_withdraw_old_values(x, store):
    run(x, store, table(simple(5)), "r1")
    aid = x.audience_id_by_name("vip")
    n = len(x.requests)
    new = {k: v for k, v in simple(5).items() if k != "k0"}
    new["k2"] = {"email": "changed2@example.com", "ext": "u2"}
    new["k9"] = {"email": "user9@example.com", "ext": "u9"}
    result = run(x, store, table(new), "r2")
    assert (result.added, result.removed, result.updated, result.failed) == (1, 1, 1, 0)
    assert x.members(aid) == users_of(new)
    # remove k0; update k2 = Delete its old email (its partner id is still sent), then Update; add k9
    assert [(r.operation, r.n_users) for r in x.requests[n:] if r.path.endswith("/users")] == [
        ("Delete", 1), ("Delete", 1), ("Update", 1), ("Update", 1)]


def test_batches_at_the_user_limit(x, store):
    members = {f"p{i}": {"email": f"person{i}@example.com"} for i in range(2_501)}
    result = run(x, store, table(members, columns=("email",)), "r1", identifiers={"email": "email"})
    assert (result.added, result.failed) == (2_501, 0)
    assert [(r.operation, r.n_users, r.status) for r in users_calls(x)] == [("Update", 2_500, 200), ("Update", 1, 200)]
    assert x.members(result.destination_audience_id) == {user(email=h(r["email"])) for r in members.values()}


def test_a_small_batch_size_and_the_body_cap_split_requests(x, store):
    result = run(x, store, table(simple(7)), "r1", dest=destination(x, batch_size=3))
    assert [r.n_users for r in users_calls(x)] == [3, 3, 1]
    assert x.members(result.destination_audience_id) == users_of(simple(7))

    other = SnapshotStore(store.dir.parent / "cap", "x")
    rows = simple(250, start=100)
    second = run(x, other, table(rows), "r2", target=Target(name="capped"), dest=destination(x, max_body_bytes=10_000))
    calls = users_calls(x)[3:]
    assert len(calls) == 3 and sum(r.n_users for r in calls) == 250
    assert all(r.n_bytes <= 10_000 for r in calls) and calls[0].n_bytes > 9_000
    assert x.members(second.destination_audience_id) == users_of(rows)


@pytest.mark.parametrize("header", ["x-account-rate-limit", "x-rate-limit"])
def test_throttle_waits_until_the_reset_then_applies(x, store, header):
    waits = []
    run(x, store, table(simple(2)), "r1")
    x.inject_throttle(times=2, reset_in=30, header=header)
    n = len(x.requests)
    result = run(x, store, table(simple(4)), "r2", dest=destination(x, sleep=waits.append))
    assert (result.added, result.failed) == (2, 0)
    assert [r.status for r in x.requests[n:] if r.path.endswith("/users")] == [429, 429, 200]
    assert len(waits) == 2 and all(28 <= w <= 30 for w in waits)  # until the reset, not a backoff guess
    assert x.members(result.destination_audience_id) == users_of(simple(4))


def test_throttle_delay_reads_x_headers():
    def response(status, **headers):
        return httpx.Response(status, headers={k.replace("_", "-"): v for k, v in headers.items()})

    assert throttle_delay(response(429, x_rate_limit_reset="1030"), now=1000.0) == 30
    assert throttle_delay(response(429, x_rate_limit_reset="990"), now=1000.0) == 0
    # Both windows given: the one that ran out decides.
    assert throttle_delay(response(429, x_rate_limit_reset="1300", x_rate_limit_remaining="12",
                                   x_account_rate_limit_reset="1045", x_account_rate_limit_remaining="0"),
                          now=1000.0) == 45
    assert throttle_delay(response(429), now=1000.0) is None  # no reset said: back off
    assert throttle_delay(response(503, x_rate_limit_reset="1030"), now=1000.0) is None
    assert throttle_delay(response(200, x_rate_limit_reset="1030", x_rate_limit_remaining="0"), now=1000.0) is None


@pytest.mark.parametrize("status, retry_after", [(503, 7), (500, None)])
def test_server_errors_are_retried(x, store, status, retry_after):
    waits = []
    x.inject_server_error(times=2, status=status, retry_after=retry_after)
    result = run(x, store, table(simple(3)), "r1", dest=destination(x, sleep=waits.append))
    assert (result.added, result.failed) == (3, 0)
    assert [r.status for r in users_calls(x)] == [status, status, 200]
    if retry_after:
        assert waits == [7, 7]
    assert x.members(result.destination_audience_id) == users_of(simple(3))


def test_giving_up_names_xs_error_without_secrets(x, store):
    x.inject_throttle(times=6)
    with pytest.raises(SyncAborted) as err:
        run(x, store, table(simple(2)), "r1")
    aid = x.audience_id_by_name("vip")
    message = str(err.value)
    assert re.search(r"x_ads: gave up after 6 attempts over [0-9.]+ s; last: HTTP 429 on POST "
                     rf"accounts/{x.account_id}/custom_audiences/{aid}/users: X TOO_MANY_REQUESTS: "
                     r"Rate limit exceeded", message)
    chain = f"{message} {err.value.__cause__!r}"
    assert not any(s in chain for s in (x.consumer_secret, x.access_token, x.access_token_secret))
    assert x.members(aid) == set()


@pytest.mark.parametrize("name_users", [True, False], ids=["named", "operation-only"])
def test_rows_x_refuses_are_mapped_to_those_rows_and_the_rest_applied(x, store, name_users):
    members = simple(40)
    bad = {"k3", "k17", "k31"}
    x.reject_values([h(members[k]["email"]) for k in bad], name_users=name_users)
    first = run(x, store, table(members), "r1")
    aid = first.destination_audience_id
    assert (first.added, first.failed) == (37, 3) and rejected_rows(first) == dict.fromkeys(bad, "add")
    assert all("INVALID_PARAMETER" in e["reason"] for e in first.errors_sample)
    assert x.members(aid) == users_of({k: v for k, v in members.items() if k not in bad})
    assert set(store.read()["key"].to_pylist()) == set(members) - bad
    if name_users:  # refused once, then the other 37 sent again at once
        assert [(r.n_users, r.status) for r in users_calls(x)] == [(40, 400), (37, 200)]

    x.clear_rejected_values()
    second = run(x, store, table(members), "r2")
    assert (second.added, second.failed) == (3, 0) and x.members(aid) == users_of(members)


def test_removals_x_refuses_stay_held_and_are_retried(x, store):
    members = simple(10)
    aid = run(x, store, table(members), "r1").destination_audience_id
    stay = {k: v for k, v in members.items() if k not in ("k0", "k1", "k2")}
    x.reject_values(["u1"])
    second = run(x, store, table(stay), "r2", max_removal_share=1.0)
    assert (second.removed, second.failed) == (2, 1) and rejected_rows(second) == {"k1": "remove"}
    assert x.members(aid) == users_of({**stay, "k1": members["k1"]})
    x.clear_rejected_values()
    third = run(x, store, table(stay), "r3", max_removal_share=1.0)
    assert (third.removed, third.failed) == (1, 0) and x.members(aid) == users_of(stay)


def test_an_update_whose_old_values_x_refuses_to_withdraw_is_retried(x, store):
    members = simple(4)
    aid = run(x, store, table(members), "r1").destination_audience_id
    moved = {**members, "k2": {"email": "new2@example.com", "ext": "u2"}}
    x.reject_values([h("user2@example.com")])
    second = run(x, store, table(moved), "r2")
    assert (second.updated, second.failed) == (0, 1) and rejected_rows(second) == {"k2": "update"}
    assert "old values not withdrawn: X INVALID_PARAMETER" in second.errors_sample[0]["reason"]
    x.clear_rejected_values()
    third = run(x, store, table(moved), "r3")
    assert (third.updated, third.failed) == (1, 0) and x.members(aid) == users_of(moved)


def test_success_count_short_fails_the_batch_and_the_next_run_sends_it_again(x, store):
    x.inject_miscount(times=1)
    first = run(x, store, table(simple(4)), "r1")
    aid = first.destination_audience_id
    assert (first.added, first.failed) == (0, 4) and "success_count 3 and total_count 4" in \
        first.errors_sample[0]["reason"]
    assert store.read_pending() is None and store.read().num_rows == 0
    second = run(x, store, table(simple(4)), "r2")
    assert (second.added, second.failed) == (4, 0) and x.members(aid) == users_of(simple(4))


# -- credentials ---------------------------------------------------------------------------------

@pytest.mark.parametrize("wrong", [{"consumer_secret": "wrong-consumer-s3cret"},
                                   {"access_token_secret": "wrong-token-s3cret"},
                                   {"access_token": "999-wrong-access-token"}])
def test_bad_credentials_stop_before_anything_is_sent(x, store, wrong):
    with pytest.raises(CredentialsError) as err:
        run(x, store, table(simple(3)), "r1", dest=destination(x, **wrong))
    message = str(err.value)
    assert err.value.fatal and "UNAUTHORIZED_ACCESS" in message
    assert "'consumer_key', 'consumer_secret', 'access_token' and 'access_token_secret'" in message
    assert not any(secret in message for secret in (*wrong.values(), x.consumer_secret, x.access_token_secret))
    assert store.manifest() is None and x.audiences == {} and users_calls(x) == []


class _RevokedAfterResolve(XAdsDestination):
    fake: FakeXAds

    def open_session(self, ctx):
        self.fake.revoke()
        return super().open_session(ctx)


def test_access_revoked_mid_run_aborts_keeps_the_snapshot_and_is_not_retried(x, store):
    run(x, store, table(simple(3)), "r1")
    aid = x.audience_id_by_name("vip")
    manifest, before = store.manifest(), store.read()
    dest = _RevokedAfterResolve(settings(x), sleep=lambda s: None)
    dest.fake = x
    with pytest.raises(SyncAborted) as err:
        run(x, store, table(simple(5)), "r2", dest=dest)
    assert "access_token_secret" in str(err.value) and x.access_token_secret not in str(err.value)
    assert store.manifest().snapshot_file == manifest.snapshot_file and store.read().equals(before)
    assert [r.status for r in users_calls(x)] == [200, 401]
    assert x.members(aid) == users_of(simple(3))


# -- size ----------------------------------------------------------------------------------------

def test_audience_size_is_null_until_x_processed_it(tmp_path):
    with FakeXAds(auto_process=False) as x:
        store = SnapshotStore(tmp_path, "x")
        first = run(x, store, table(simple(5)), "r1")
        aid = first.destination_audience_id
        assert first.audience_size is None and first.match_rate is None
        x.process(aid)
        dest = destination(x)
        assert dest.audience_stats(aid).size == 5 and dest.audience_stats(aid).match_rate is None
        dest.close()
        second = run(x, store, table(simple(3)), "r2", max_removal_share=1.0)
        assert second.audience_size == 5  # X has not processed the removals yet
        x.process()
        assert x.audiences[aid]["audience_size"] == 3


# -- the fake refuses what X refuses -------------------------------------------------------------

def test_the_fake_checks_shapes_and_limits_like_x(x):
    dest = destination(x)
    aid = x.create_audience("shapes")
    path = f"accounts/{x.account_id}/custom_audiences/{aid}/users"

    def post(body, content_type="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return dest.http.request("POST", path, content=data, auth=dest._auth, headers={"Content-Type": content_type})

    ok_user = {"email": [h("a@example.com")]}
    too_many = [{"operation_type": "Update", "params": {"users": [ok_user]}}] * 2_501
    assert post(too_many).json()["errors"][0]["message"] == "The maximum batch size of 2500 operations was exceeded"
    unhashed = post([{"operation_type": "Update", "params": {"users": [ok_user, {"email": ["a@example.com"]}]}}])
    assert unhashed.status_code == 400 and unhashed.json()["operation_errors"] == [[{
        "code": "INVALID_PARAMETER", "parameter": "params.users[1].email",
        "message": "email must be SHA-256 hashed, in lowercase hex"}]]
    assert post([{"operation_type": "Add", "params": {"users": [ok_user]}}]).status_code == 400
    assert post([{"operation_type": "Update", "params": {"users": [ok_user]}}], "text/plain").status_code == 400
    assert post(b"[" + b" " * 5_000_000 + b"]").status_code == 400
    assert x.members(aid) == set()
    assert post([{"operation_type": "Update", "params": {"users": [ok_user]}}]).json()["data"] == {
        "success_count": 1, "total_count": 1}
    # Create reads name from the query, never a body.
    create = dest.http.request("POST", f"accounts/{x.account_id}/custom_audiences", json={"name": "body"},
                               auth=dest._auth)
    assert create.status_code == 400 and create.json()["errors"][0]["code"] == "MISSING_PARAMETER"
    dest.close()
