"""Meta Custom Audiences end to end: run_sync against the FakeMeta server, asserting its final state."""

import hashlib
import hmac
import json

import pyarrow as pa
import pytest

from audience_pipelines.contract import Target
from audience_pipelines.destinations.meta_custom_audiences import MetaSettings
from audience_pipelines.destinations.meta_custom_audiences.client import MetaCustomAudiencesDestination
from audience_pipelines.engine import (
    CredentialsError, DestinationError, RunOptions, SnapshotStore, SyncAborted, SyncSpec, run_sync,
)
from audience_pipelines.engine.audiences import AudienceRegistry
from audience_pipelines.engine.spec import REGISTRY_DIR
from audience_pipelines_tests.fakes import FakeMeta
from audience_pipelines_tests.memory_destination import Crash

TOKEN = "EAAB-test-token-s3cr3t"
COLUMNS = {"email": "email", "phone": "phone", "first_name": "fn", "last_name": "ln", "country": "country",
           "zip": "zip", "city": "city", "state": "state", "external_id": "ext", "device_id": "madid"}


def h(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


@pytest.fixture
def meta():
    with FakeMeta(access_token=TOKEN, ad_account_id="1234") as server:
        yield server


@pytest.fixture
def store(tmp_path):
    return SnapshotStore(tmp_path, "m")


def destination(meta, token=TOKEN):
    return MetaCustomAudiencesDestination(
        MetaSettings(ad_account_id="1234", access_token=token, base_url=meta.url, timeout_s=2),
        sleep=lambda s: None)


def table(rows: dict, columns=("email", "ext")) -> pa.Table:
    """rows: key -> {column: value}; missing columns are null."""
    return pa.table({"key": pa.array(list(rows), pa.string()),
                     **{c: pa.array([r.get(c) for r in rows.values()], pa.string()) for c in columns}})


def run(meta, store, members: pa.Table, run_id, *, target=None, dest=None, identifiers=None, full=False,
        partition_rows=None, **spec_kw):
    dest = dest or destination(meta)
    spec = SyncSpec(name="m", audience="a", destination="meta", target=target or Target(name="vip"),
                    identifiers=identifiers or {"email": "email", "external_id": "ext"}, **spec_kw)
    try:
        return run_sync(spec, members, dest, store, RunOptions(run_id=run_id, full_resync=full,
                                                               partition_rows=partition_rows))
    finally:
        dest.close()


# Members spread over many key-hash partitions: identifiers shared across partitions still hold.
PARTITIONS = pytest.mark.parametrize("partition_rows", [None, 1], ids=["one partition", "a partition per member"])


def row(**fields) -> frozenset:
    """A member as FakeMeta stores it: the non-empty (FIELD, value) pairs."""
    return frozenset((f, v) for f, v in fields.items() if v)


def simple(n, start=0) -> dict:
    return {f"k{i}": {"email": f"user{i}@example.com", "ext": f"u{i}"} for i in range(start, start + n)}


def simple_rows(rows: dict) -> set:
    return {row(EMAIL=h(r["email"]), EXTERN_ID=r["ext"]) for r in rows.values()}


def users_requests(meta, method=None):
    return [r for r in meta.requests if r.path.endswith("/users") and (method is None or r.method == method)]


FULL = {
    "k1": {"email": " John@Example.com ", "phone": "+1 415 555 2671", "fn": "José", "ln": "O'Brien",
           "country": "us", "zip": "94103-1234", "city": "San Francisco", "state": "CA", "ext": "u-1",
           "madid": "AB12CD34-0000-4000-8000-00000000ABCD"},
    "k2": {"email": "jane@example.org", "ext": "u-2"},
    "k3": {"phone": "+1 650 253 0000"},
    "k4": {"email": "not-an-email"},  # no usable identifier: set aside
    "k5": {"ext": "u-5"},
    "k6": {"email": "", "phone": "12"},  # blank email, invalid phone: set aside
}
EXPECTED = {
    row(EMAIL=h("john@example.com"), PHONE=h("14155552671"), FN=h("josé"), LN=h("obrien"), COUNTRY=h("us"),
        ZIP=h("94103"), CT=h("sanfrancisco"), ST=h("ca"), EXTERN_ID="u-1",
        MADID="ab12cd34-0000-4000-8000-00000000abcd"),
    row(EMAIL=h("jane@example.org"), EXTERN_ID="u-2"),
    row(PHONE=h("16502530000")),
    row(EXTERN_ID="u-5"),
}


def test_find_or_create_and_hashed_rows(meta, store):
    members = table(FULL, columns=tuple(COLUMNS.values()))
    first = run(meta, store, members, "r1", identifiers=COLUMNS)
    aid = meta.audience_id_by_name("vip")
    assert aid is not None and first.destination_audience_id == aid
    assert meta.audiences[aid]["customer_file_source"] == "USER_PROVIDED_ONLY"
    assert meta.audiences[aid]["subtype"] == "CUSTOM"
    assert meta.members(aid) == EXPECTED
    assert (first.added, first.failed, first.set_aside, first.audience_size) == (4, 0, 2, 4)
    assert {s["key"] for s in first.set_aside_sample} == {"k4", "k6"}
    assert first.invalid_identifiers == {"email": 1, "phone": 1}
    # Set-aside rows never leave the process.
    assert sum(r.n_rows for r in users_requests(meta)) == 4
    assert set(store.read()["key"].to_pylist()) == {"k1", "k2", "k3", "k5"}

    second = run(meta, store, members, "r2", identifiers=COLUMNS)  # a fresh client finds the audience
    assert second.destination_audience_id == aid and meta.audience_id_by_name("vip") == aid
    assert len(meta.audiences) == 1 and second.unchanged == 4 and second.attempted == 0
    # The second run finds it in the registry of created audiences and only checks that it still exists.
    assert [r.method for r in meta.requests if r.path.endswith("/customaudiences")] == ["GET", "POST"]
    assert [(e.name, e.id, e.created) for e in AudienceRegistry(store.root / REGISTRY_DIR).entries(
        "meta_custom_audiences")] == [("vip", aid, True)]
    assert meta.members(aid) == EXPECTED


def test_find_by_name_pages_through_the_list(meta, store):
    for i in range(250):
        meta.create_audience(f"other {i}")
    aid = meta.create_audience("vip")
    result = run(meta, store, table(simple(3)), "r1")
    assert result.destination_audience_id == aid and len(meta.audiences) == 251
    assert [r.method for r in meta.requests if r.path.endswith("/customaudiences")] == ["GET", "GET"]
    assert meta.members(aid) == simple_rows(simple(3))


def test_removes_and_identifier_change(meta, store):
    base = simple(5)
    run(meta, store, table(base), "r1")
    aid = meta.audience_id_by_name("vip")
    n = len(meta.requests)
    new = {k: v for k, v in base.items() if k != "k0"}
    new["k2"] = {"email": "changed2@example.com", "ext": "u2"}
    new["k9"] = {"email": "user9@example.com", "ext": "u9"}
    result = run(meta, store, table(new), "r2")
    assert (result.added, result.removed, result.updated, result.failed) == (1, 1, 1, 0)
    assert meta.members(aid) == simple_rows(new)
    assert row(EMAIL=h("user2@example.com"), EXTERN_ID="u2") not in meta.members(aid)  # old hash gone
    sent = [(r.method, r.n_rows) for r in meta.requests[n:] if r.path.endswith("/users")]
    assert sent == [("DELETE", 1), ("DELETE", 1), ("POST", 1), ("POST", 1)]  # remove, update (-old +new), add
    assert result.audience_size == 5


def test_batches_of_at_most_10000(meta, store):
    emails = [f"person{i}@example.com" for i in range(25_000)]
    members = pa.table({"key": [f"p{i}" for i in range(25_000)], "email": emails})
    result = run(meta, store, members, "r1", identifiers={"email": "email"})
    assert (result.added, result.failed) == (25_000, 0)
    assert [(r.method, r.n_rows, r.status) for r in users_requests(meta)] == [
        ("POST", 10_000, 200), ("POST", 10_000, 200), ("POST", 5_000, 200)]
    aid = result.destination_audience_id
    assert meta.members(aid) == {row(EMAIL=h(e)) for e in emails}
    assert result.destination_stats == {"num_received": 25_000, "num_invalid_entries": 0}


@pytest.mark.parametrize("inject", [
    lambda m: m.inject_throttle(times=2, code=80003),
    lambda m: m.inject_throttle(times=2, code=17),
    lambda m: m.inject_throttle(times=2, code=613),
    lambda m: m.inject_server_error(times=2, status=500),
], ids=["80003", "17", "613", "500"])
def test_throttles_and_server_errors_are_retried(meta, store, inject):
    run(meta, store, table(simple(3)), "r1")
    aid = meta.audience_id_by_name("vip")
    inject(meta)
    new = {**simple(3), **simple(2, start=10)}
    n = len(meta.requests)
    result = run(meta, store, table(new), "r2")
    assert (result.added, result.failed) == (2, 0)
    assert [r.status for r in meta.requests[n:] if r.path.endswith("/users")] in ([400, 400, 200], [500, 500, 200])
    assert meta.members(aid) == simple_rows(new) and set(store.read()["key"].to_pylist()) == set(new)


def test_retries_exhausted_abort_and_next_run_converges(meta, store):
    run(meta, store, table(simple(3)), "r1")
    aid = meta.audience_id_by_name("vip")
    before = store.read()
    new = {**simple(3), **simple(2, start=10)}
    meta.inject_throttle(times=6, code=80003)
    with pytest.raises(SyncAborted, match="gave up after 6 attempts"):
        run(meta, store, table(new), "r2")
    assert meta.members(aid) == simple_rows(simple(3)) and store.read().equals(before)
    third = run(meta, store, table(new), "r3")
    assert (third.added + third.updated, third.failed) == (2, 0)
    assert meta.members(aid) == simple_rows(new)


@pytest.mark.parametrize("code, platform_says", [
    (80003, "Meta error code 80003: There have been too many calls to this ad-account. Wait a bit and try again."),
    (17, "Meta error code 17 (subcode 2446079): User request limit reached"),
    (613, "Meta error code 613 (subcode 1487742): There have been too many calls from this ad-account. "
          "Wait a bit and try again."),
], ids=["80003", "17", "613"])
def test_giving_up_on_a_throttle_names_metas_code_attempts_and_time(meta, store, code, platform_says):
    app_secret = "app-s3cret-value"
    proof = hmac.new(app_secret.encode(), TOKEN.encode(), hashlib.sha256).hexdigest()
    clock = {"now": 1000.0, "waits": []}

    def sleep(seconds):  # fake time: the backoff waits add up without being slept
        clock["waits"].append(seconds)
        clock["now"] += seconds

    dest = MetaCustomAudiencesDestination(
        MetaSettings(ad_account_id="1234", access_token=TOKEN, app_secret=app_secret, base_url=meta.url, timeout_s=2),
        sleep=sleep, clock=lambda: clock["now"])
    meta.inject_throttle(times=6, code=code)
    with pytest.raises(SyncAborted) as err:
        run(meta, store, table(simple(2)), "r1", dest=dest)
    aid = meta.audience_id_by_name("vip")
    message = str(err.value)
    assert len(clock["waits"]) == 5 and sum(clock["waits"]) > 0
    assert (f"meta_custom_audiences: gave up after 6 attempts over {sum(clock['waits']):.1f} s; "
            f"last: HTTP 400 on POST {aid}/users: {platform_says}") in message
    assert [r.status for r in users_requests(meta)] == [400] * 6
    chain = f"{message} {err.value.__cause__!r}"
    assert TOKEN not in chain and app_secret not in chain and proof not in chain


def test_a_secret_meta_echoes_back_is_redacted(meta, store):
    meta.inject_throttle(times=6, code=4, message=f"Application request limit reached (access_token={TOKEN})")
    with pytest.raises(SyncAborted) as err:
        run(meta, store, table(simple(2)), "r1")
    chain = f"{err.value} {err.value.__cause__!r}"
    assert "Meta error code 4 (subcode 1504022): Application request limit reached (access_token=[redacted])" in chain
    assert TOKEN not in chain


def test_invalid_entries_are_counted(meta, store):
    rows = simple(4)
    meta.inject_invalid([h("user1@example.com"), "u3"])
    result = run(meta, store, table(rows), "r1")
    assert result.destination_stats["num_received"] == 4 and result.destination_stats["num_invalid_entries"] == 2
    assert meta.members(result.destination_audience_id) == simple_rows({k: rows[k] for k in ("k0", "k2")})


def assert_holds(meta, store, aid, members: dict) -> None:
    """Meta holds exactly `members` and the snapshot agrees."""
    assert meta.members(aid) == simple_rows(members)
    assert set(store.read()["key"].to_pylist()) == set(members)


def rejected_rows(result) -> dict[str, str]:
    import pyarrow.parquet as pq
    t = pq.read_table(result.rejected_path)
    return dict(zip(t["key"].to_pylist(), t["operation"].to_pylist()))


@pytest.mark.parametrize("samples", [10, 0], ids=["ten-samples", "counts-only"])
def test_adds_meta_did_not_apply_fail_and_are_retried(meta, store, samples):
    members = simple(482)
    bad = {f"k{i}" for i in range(1, 482, 10)}  # 49 members
    meta.inject_invalid([members[k]["ext"] for k in bad], samples=samples)
    first = run(meta, store, table(members), "r1")
    aid = first.destination_audience_id
    assert (first.added, first.failed) == (433, 49)
    assert rejected_rows(first) == dict.fromkeys(bad, "add")
    assert all("Meta" in e["reason"] for e in first.errors_sample)
    assert set(store.read()["key"].to_pylist()) == set(members) - bad
    assert meta.members(aid) == simple_rows({k: v for k, v in members.items() if k not in bad})

    meta.clear_invalid()
    second = run(meta, store, table(members), "r2")
    assert (second.added, second.failed) == (49, 0)
    assert_holds(meta, store, aid, members)


def test_removes_meta_did_not_apply_fail_and_are_retried(meta, store):
    members = simple(40)
    first = run(meta, store, table(members), "r1")
    aid = first.destination_audience_id
    leavers = {f"k{i}" for i in range(20)}
    stuck = {f"k{i}" for i in range(0, 20, 2)}  # 10 removals Meta does not apply
    meta.inject_invalid([members[k]["ext"] for k in stuck], samples=3)
    stay = {k: v for k, v in members.items() if k not in leavers}
    second = run(meta, store, table(stay), "r2", max_removal_share=1.0)
    assert (second.removed, second.failed) == (10, 10)
    assert rejected_rows(second) == dict.fromkeys(stuck, "remove")
    assert set(store.read()["key"].to_pylist()) == set(stay) | stuck  # still held: retried next run
    assert meta.members(aid) == simple_rows(stay) | simple_rows({k: members[k] for k in stuck})

    meta.clear_invalid()
    third = run(meta, store, table(stay), "r3", max_removal_share=1.0)
    assert (third.removed, third.failed) == (10, 0)
    assert_holds(meta, store, aid, stay)


def test_update_whose_new_values_meta_did_not_apply_is_retried(meta, store):
    members = simple(6)
    first = run(meta, store, table(members), "r1")
    aid = first.destination_audience_id
    changed = {**members, "k1": {"email": "new1@example.com", "ext": "u1"},
               "k4": {"email": "new4@example.com", "ext": "u4"}}
    meta.inject_invalid([h("new4@example.com")], samples=0)
    second = run(meta, store, table(changed), "r2")
    assert (second.updated, second.failed) == (1, 1) and rejected_rows(second) == {"k4": "update"}
    meta.clear_invalid()
    third = run(meta, store, table(changed), "r3")
    assert (third.updated, third.failed) == (1, 0)
    assert meta.members(aid) == simple_rows(changed)


def test_received_fewer_rows_than_sent_is_not_committed(meta, store, monkeypatch):
    """An answer that counts fewer rows received than sent names none of them: the engine finds them."""
    members = simple(8)
    original = FakeMeta._users

    def drops_k5(self, req, params, aid, remove):
        payload = json.loads(req.body)["payload"]
        kept = [r for r in payload["data"] if r[1] != "u5"]
        req.body = json.dumps({**json.loads(req.body), "payload": {**payload, "data": kept}}).encode()
        answer = original(self, req, {**params, "payload": {**payload, "data": kept}}, aid, remove)
        return {**answer, "num_received": len(kept)}

    monkeypatch.setattr(FakeMeta, "_users", drops_k5)
    first = run(meta, store, table(members), "r1")
    assert (first.added, first.failed) == (7, 1) and rejected_rows(first) == {"k5": "add"}
    assert "num_received" in first.errors_sample[0]["reason"]
    monkeypatch.setattr(FakeMeta, "_users", original)
    second = run(meta, store, table(members), "r2")
    assert (second.added, second.failed) == (1, 0)
    assert meta.members(first.destination_audience_id) == simple_rows(members)


def test_bad_token_stops_before_anything_is_committed(meta, store):
    with pytest.raises(CredentialsError) as err:  # raised opening the audience, before any send
        run(meta, store, table(simple(3)), "r1", dest=destination(meta, token="EAAB-wrong-token-xyz"))
    assert err.value.fatal and "190" in str(err.value)
    assert "EAAB-wrong-token-xyz" not in str(err.value)
    assert store.manifest() is None and meta.audiences == {}


class _RevokedAfterResolve(MetaCustomAudiencesDestination):
    """The token stops working between resolving the audience and sending (revoked mid-run)."""

    fake: FakeMeta

    def open_session(self, ctx):
        self.fake.access_token = "rotated"
        return super().open_session(ctx)


def test_token_revoked_mid_run_aborts_and_keeps_the_snapshot(meta, store):
    run(meta, store, table(simple(3)), "r1")
    aid = meta.audience_id_by_name("vip")
    manifest, before = store.manifest(), store.read()
    dest = _RevokedAfterResolve(MetaSettings(ad_account_id="1234", access_token=TOKEN, base_url=meta.url,
                                             timeout_s=2), sleep=lambda s: None)
    dest.fake = meta
    with pytest.raises(SyncAborted) as err:
        run(meta, store, table({**simple(3), **simple(2, start=10)}), "r2", dest=dest)
    chain = f"{err.value} {err.value.__cause__!r}"
    assert TOKEN not in chain and "190" in chain
    assert store.manifest().snapshot_file == manifest.snapshot_file and store.read().equals(before)
    assert meta.members(aid) == simple_rows(simple(3))
    assert [r.status for r in users_requests(meta)][-1] == 400 and len(users_requests(meta)) == 2  # not retried


def test_target_id(meta, store):
    aid = meta.create_audience("made elsewhere")
    result = run(meta, store, table(simple(2)), "r1", target=Target(id=aid))
    assert result.destination_audience_id == aid and meta.members(aid) == simple_rows(simple(2))

    other = SnapshotStore(store.dir.parent, "m-unknown")
    with pytest.raises(DestinationError) as err:
        run(meta, other, table(simple(2)), "r1", target=Target(id="999999"))
    assert err.value.fatal and "999999" in str(err.value) and "does not exist" in str(err.value)
    assert other.manifest() is None and list(meta.audiences) == [aid]


@PARTITIONS
def test_removing_a_duplicate_keeps_the_shared_row(meta, store, partition_rows):
    # Two customer records with the same email hash to the same Meta row; only one leaves the audience.
    run(meta, store, table({"a": {"email": "same@example.com"}, "b": {"email": "Same@Example.com"},
                            "c": {"email": "c@example.com"}}), "r1", partition_rows=partition_rows, identifiers={"email": "email"})
    aid = meta.audience_id_by_name("vip")
    run(meta, store, table({"b": {"email": "Same@Example.com"}, "c": {"email": "c@example.com"}}), "r2", partition_rows=partition_rows,
        identifiers={"email": "email"})
    assert set(store.read()["key"].to_pylist()) == {"b", "c"}
    assert meta.members(aid) == {row(EMAIL=h("same@example.com")), row(EMAIL=h("c@example.com"))}


def shared_email_members(n: int) -> dict:
    """n customers; c0 and c1 share an email, each with a phone of their own."""
    rows = {f"c{i}": {"email": f"c{i}@example.com", "phone": f"+1415555{i:04d}"} for i in range(n)}
    rows["c1"]["email"] = rows["c0"]["email"]
    return rows


def meta_rows(rows: dict) -> set:
    return {row(EMAIL=h(r["email"]), PHONE=h(r["phone"].lstrip("+"))) if r.get("phone") else row(EMAIL=h(r["email"]))
            for r in rows.values()}


EMAIL_PHONE = {"email": "email", "phone": "phone"}


@PARTITIONS
def test_leaver_sharing_an_email_does_not_take_the_stayer_out(meta, store, partition_rows):
    members = shared_email_members(171)
    first = run(meta, store, table(members, columns=("email", "phone")), "r1", partition_rows=partition_rows, identifiers=EMAIL_PHONE)
    aid = first.destination_audience_id
    assert len(meta.members(aid)) == 171
    n = len(meta.requests)
    stay = {k: v for k, v in members.items() if k != "c1"}
    second = run(meta, store, table(stay, columns=("email", "phone")), "r2", partition_rows=partition_rows, identifiers=EMAIL_PHONE)
    assert meta.members(aid) == meta_rows(stay) and len(meta.members(aid)) == 170
    assert (second.removed, second.failed, second.shared_not_withdrawn) == (1, 0, 0)
    # The removal carried only the leaver's own phone.
    deletes = [r for r in meta.requests[n:] if r.path.endswith("/users") and r.method == "DELETE"]
    assert [d.n_rows for d in deletes] == [1]


@PARTITIONS
def test_leaver_whose_identifiers_are_all_still_sent_is_not_withdrawn(meta, store, partition_rows):
    members = {"a": {"email": "same@example.com"}, "b": {"email": "same@example.com", "phone": "+14155550001"},
               "c": {"email": "c@example.com"}}
    first = run(meta, store, table(members, columns=("email", "phone")), "r1", partition_rows=partition_rows, identifiers=EMAIL_PHONE)
    aid = first.destination_audience_id
    n = len(meta.requests)
    stay = {k: members[k] for k in ("b", "c")}
    second = run(meta, store, table(stay, columns=("email", "phone")), "r2", partition_rows=partition_rows, identifiers=EMAIL_PHONE)
    assert (second.removed, second.shared_not_withdrawn, second.failed) == (0, 1, 0)
    assert not [r for r in meta.requests[n:] if r.method == "DELETE"]
    assert set(store.read()["key"].to_pylist()) == {"b", "c"}
    assert row(EMAIL=h("same@example.com"), PHONE=h("14155550001")) in meta.members(aid)
    assert any("not withdrawn" in note for note in second.notes)


@PARTITIONS
def test_identifier_change_withdraws_only_the_old_value(meta, store, partition_rows):
    members = {"a": {"email": "a@example.com", "phone": "+14155550001"},
               "b": {"email": "b@example.com", "phone": "+14155550002"}}
    run(meta, store, table(members, columns=("email", "phone")), "r1", partition_rows=partition_rows, identifiers=EMAIL_PHONE)
    aid = meta.audience_id_by_name("vip")
    moved = {**members, "a": {"email": "a@example.com", "phone": "+14155550009"},
             "b": {"email": "a@example.com", "phone": "+14155550002"}}  # b now shares a's email
    second = run(meta, store, table(moved, columns=("email", "phone")), "r2", partition_rows=partition_rows, identifiers=EMAIL_PHONE)
    assert (second.updated, second.failed) == (2, 0)
    assert meta.members(aid) == meta_rows(moved)


# -- full resends as usersreplace sessions ------------------------------------------------------

def replace_requests(meta):
    return [r for r in meta.requests if r.path.endswith("/usersreplace")]


class _DiesMidReplace(MetaCustomAudiencesDestination):
    """The process dies after `after` replace batches were answered."""

    def __init__(self, *a, after: int, **kw):
        super().__init__(*a, **kw)
        self.after = after

    def open_session(self, ctx):
        session = super().open_session(ctx)
        send, calls = session.send, []

        def dying(*a, **kw):
            result = send(*a, **kw)
            calls.append(1)
            if len(calls) >= self.after:
                raise Crash("killed mid-replace")
            return result
        session.send = dying
        return session


def test_full_resend_of_a_mirror_sync_replaces_the_audience_in_one_session(meta, store):
    run(meta, store, table(simple(6)), "r1")
    aid = meta.audience_id_by_name("vip")
    deletes_before = len(users_requests(meta, "DELETE"))
    result = run(meta, store, table(simple(4, start=2)), "r2", full=True, batch_size=2)
    assert result.replaced and result.removed == 2 and result.failed == 0
    assert meta.members(aid) == simple_rows(simple(4, start=2))
    assert len(users_requests(meta, "DELETE")) == deletes_before  # departed members dropped by the replace
    [session] = meta.replace_sessions(aid)
    assert session["status"] == "finished" and session["batches"] == [1, 2, 3]  # two batches, then the close
    assert store.read_session() is None and set(store.read()["key"].to_pylist()) == set(simple(4, start=2))


def _killed_mid_replace(meta, store) -> str:
    """Six members, then a full resend killed after its first replace batch; the audience's id."""
    run(meta, store, table(simple(6)), "r1")
    dest = _DiesMidReplace(MetaSettings(ad_account_id="1234", access_token=TOKEN, base_url=meta.url),
                           sleep=lambda s: None, after=1)
    with pytest.raises(Crash):
        run(meta, store, table(simple(6)), "r2", dest=dest, full=True, batch_size=2)
    return meta.audience_id_by_name("vip")


def test_a_run_killed_mid_replace_is_carried_on_by_the_next_run(meta, store):
    aid = _killed_mid_replace(meta, store)
    # Half-replaced at Meta: only the first batch is there. The journal says so.
    assert len(meta.members(aid)) == 2 and store.read_session()["state"]["kind"] == "replace"
    result = run(meta, store, table(simple(6)), "r3", batch_size=2)  # a plain diff run
    assert result.replaced and any("still open" in n for n in result.notes)
    assert meta.members(aid) == simple_rows(simple(6))
    [session] = meta.replace_sessions(aid)  # the same session, carried on and closed
    assert session["status"] == "finished" and store.read_session() is None


def test_a_replace_meta_ended_before_it_was_closed_is_redone_in_a_new_session(meta, store):
    aid = _killed_mid_replace(meta, store)
    meta.expire_sessions(aid)  # Meta's 90 minutes passed
    assert len(meta.members(aid)) == 2
    result = run(meta, store, table(simple(6)), "r3", batch_size=2)
    assert result.replaced and any("ended before it was closed" in n for n in result.notes)
    assert meta.members(aid) == simple_rows(simple(6))
    assert [s["status"] for s in meta.replace_sessions(aid)] == ["expired", "finished"]


def test_additive_full_resend_never_replaces(meta, store):
    run(meta, store, table(simple(4)), "r1")
    aid = meta.audience_id_by_name("vip")
    result = run(meta, store, table(simple(2)), "r2", full=True, mode="additive")
    assert not result.replaced and replace_requests(meta) == []
    assert meta.members(aid) == simple_rows(simple(4))


def test_a_replace_left_open_stays_journalled_when_the_sync_no_longer_replaces(meta, store):
    aid = _killed_mid_replace(meta, store)
    # The sync became additive: this run cannot carry the replace on, so it must not forget it.
    run(meta, store, table(simple(6)), "r3", mode="additive")
    assert store.read_session()["state"]["kind"] == "replace"
    result = run(meta, store, table(simple(6)), "r4", batch_size=2)  # mirror again: the replace is finished
    assert result.replaced and meta.members(aid) == simple_rows(simple(6)) and store.read_session() is None
