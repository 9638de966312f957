"""TikTok custom audiences end to end: run_sync against FakeTikTok, asserting its final state."""

import hashlib

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from audience_pipelines.contract import CredentialsError, Target, TerminalError
from audience_pipelines.destinations import destination_type
from audience_pipelines.destinations.tiktok_ads import TikTokAdsSettings
from audience_pipelines.destinations.tiktok_ads.client import TikTokAdsDestination
from audience_pipelines.engine import DestinationError, RunOptions, SnapshotStore, SyncAborted, SyncSpec, run_sync
from audience_pipelines_tests.fakes.tiktok import MAX_ROWS, FakeTikTok

TOKEN = "tt-test-token-s3cr3t"
ADV = "7000000000000000001"
ALL = {"email": "email", "phone": "phone", "device_id": "device"}


def h(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


@pytest.fixture
def tiktok():
    with FakeTikTok(access_token=TOKEN, advertiser_id=ADV) as server:
        yield server


@pytest.fixture
def store(tmp_path):
    return SnapshotStore(tmp_path / "syncs", "t")


def destination(tiktok, token=TOKEN, sleep=None, clock=None, **settings) -> TikTokAdsDestination:
    kwargs = {"sleep": sleep or (lambda s: None)}
    if clock is not None:
        kwargs["clock"] = clock
    return TikTokAdsDestination(TikTokAdsSettings(advertiser_id=ADV, access_token=token, base_url=tiktok.url,
                                                  timeout_s=2, **settings), **kwargs)


def table(rows: dict, columns=("email",)) -> pa.Table:
    return pa.table({"key": pa.array(list(rows), pa.string()),
                     **{c: pa.array([r.get(c) for r in rows.values()], pa.string()) for c in columns}})


def run(tiktok, store, members, run_id, *, target=None, dest=None, identifiers=None, **spec_kw):
    dest = dest or destination(tiktok)
    spec = SyncSpec(name=store.sync, audience="a", destination="tiktok_ads", target=target or Target(name="vip"),
                    identifiers=identifiers or {"email": "email"}, **spec_kw)
    try:
        return run_sync(spec, members, dest, store, RunOptions(run_id=run_id))
    finally:
        dest.close()


def emails(n, start=0) -> dict:
    return {f"k{i}": {"email": f"user{i}@example.com"} for i in range(start, start + n)}


def rows_of(members: dict) -> set:
    return {frozenset({("EMAIL_SHA256", h(r["email"]))}) for r in members.values()}


def mapping(tiktok, since=0):
    return [r for r in tiktok.requests[since:] if r.path == "/segment/mapping/"]


def rejected(result) -> dict[str, str]:
    t = pq.read_table(result.rejected_path)
    return dict(zip(t["key"].to_pylist(), t["operation"].to_pylist()))


MIXED = {
    "k1": {"email": " John.Smith+ads@Gmail.com ", "phone": "+1 415 555 2671",
           "device": "AB12CD34-0000-4000-8000-00000000ABCD"},
    "k2": {"email": "jane.doe@example.org"},
    "k3": {"phone": "+44 20 7946 0958"},
    "k4": {"email": "not-an-email"},  # nothing usable: set aside, never sent
}
MIXED_ROWS = {
    frozenset({("EMAIL_SHA256", h("johnsmith@gmail.com")), ("PHONE_SHA256", h("14155552671")),
               ("GAID_SHA256", h("ab12cd34-0000-4000-8000-00000000abcd"))}),
    frozenset({("EMAIL_SHA256", h("janedoe@example.org"))}),
    frozenset({("PHONE_SHA256", h("442079460958"))}),
}


def test_create_then_find_by_name_with_exact_hashed_rows(tiktok, store, tmp_path):
    members = table(MIXED, columns=("email", "phone", "device"))
    first = run(tiktok, store, members, "r1", identifiers=ALL)
    aid = tiktok.audience_id_by_name("vip")
    assert first.destination_audience_id == aid and tiktok.audiences[aid]["id_type"] == "EMAIL_SHA256"
    assert tiktok.members(aid) == MIXED_ROWS
    assert (first.added, first.failed, first.set_aside) == (3, 0, 1)
    # id_schema lists the schemas present; a row's missing ids go as {} in their positions.
    [sent] = mapping(tiktok)
    assert (sent.action, sent.id_schema, sent.n_rows, sent.code) == (
        "add", ("EMAIL_SHA256", "PHONE_SHA256", "GAID_SHA256"), 3, 0)
    # Another sync with no registry entry finds the audience by name; nothing is created twice.
    other = SnapshotStore(tmp_path / "elsewhere", "t2")
    again = run(tiktok, other, members, "r2", identifiers=ALL)
    assert again.destination_audience_id == aid and list(tiktok.audiences) == [aid]
    assert tiktok.members(aid) == MIXED_ROWS


def test_find_by_name_pages_through_the_list(tiktok, store):
    for i in range(250):
        tiktok.create_audience(f"other {i}")
    aid = tiktok.create_audience("vip")
    result = run(tiktok, store, table(emails(3)), "r1")
    assert result.destination_audience_id == aid and len(tiktok.audiences) == 251
    pages = [r for r in tiktok.requests if r.path == "/dmp/custom_audience/list/"]
    assert len(pages) == 1 + 3  # the access check, then pages 1-3 of 100
    assert tiktok.members(aid) == rows_of(emails(3))


def test_the_audience_type_is_chosen_by_id_type_and_device_ids_by_device_id_type(tiktok, store):
    dest = destination(tiktok, id_type="IDFA_SHA256", device_id_type="IDFA_SHA256")
    result = run(tiktok, store, table({"k1": {"device": "AAAA-bbbb"}}, columns=("device",)), "r1",
                 dest=dest, identifiers={"device_id": "device"})
    aid = result.destination_audience_id
    assert tiktok.audiences[aid]["id_type"] == "IDFA_SHA256"
    assert tiktok.members(aid) == {frozenset({("IDFA_SHA256", h("aaaa-bbbb"))})}
    with pytest.raises(ValidationError, match="set device_id_type to GAID_SHA256"):
        TikTokAdsSettings(advertiser_id=ADV, access_token=TOKEN, id_type="GAID_SHA256", device_id_type="IDFA_SHA256")


def test_target_id_and_an_unknown_id(tiktok, store, tmp_path):
    aid = tiktok.create_audience("made elsewhere")
    result = run(tiktok, store, table(emails(2)), "r1", target=Target(id=aid))
    assert result.destination_audience_id == aid and tiktok.members(aid) == rows_of(emails(2))

    other = SnapshotStore(tmp_path / "syncs", "unknown")
    with pytest.raises(TerminalError) as err:
        run(tiktok, other, table(emails(2)), "r1", target=Target(id="7999"))
    assert "audience 7999 does not exist in advertiser" in str(err.value) and "TikTok code 40007" in str(err.value)
    assert other.manifest() is None and list(tiktok.audiences) == [aid]


def test_removes_and_identifier_changes(tiktok, store):
    base = emails(5)
    run(tiktok, store, table(base), "r1")
    aid = tiktok.audience_id_by_name("vip")
    n = len(tiktok.requests)
    new = {k: v for k, v in base.items() if k != "k0"}
    new["k2"] = {"email": "changed2@example.com"}
    new["k9"] = {"email": "user9@example.com"}
    result = run(tiktok, store, table(new), "r2")
    assert (result.added, result.removed, result.updated, result.failed) == (1, 1, 1, 0)
    assert tiktok.members(aid) == rows_of(new)
    # remove; update = delete the old value, then add the new; add
    assert [(r.action, r.n_rows) for r in mapping(tiktok, n)] == [
        ("delete", 1), ("delete", 1), ("add", 1), ("add", 1)]


def test_a_leaver_sharing_an_email_does_not_take_the_stayer_out(tiktok, store):
    members = {"a": {"email": "same@example.com", "phone": "+14155550001"},
               "b": {"email": "same@example.com", "phone": "+14155550002"},
               "c": {"email": "c@example.com"}}
    cols = ("email", "phone")
    run(tiktok, store, table(members, cols), "r1", identifiers={"email": "email", "phone": "phone"})
    aid = tiktok.audience_id_by_name("vip")
    stay = {k: members[k] for k in ("b", "c")}
    result = run(tiktok, store, table(stay, cols), "r2", identifiers={"email": "email", "phone": "phone"})
    assert (result.removed, result.failed) == (1, 0)
    assert tiktok.members(aid) == {
        frozenset({("EMAIL_SHA256", h("same@example.com")), ("PHONE_SHA256", h("14155550002"))}),
        frozenset({("EMAIL_SHA256", h("c@example.com"))})}


def test_batches_at_the_limit(tiktok, store):
    members = emails(7)
    result = run(tiktok, store, table(members), "r1", dest=destination(tiktok, batch_size=3))
    assert (result.added, result.failed) == (7, 0)
    assert [r.n_rows for r in mapping(tiktok)] == [3, 3, 1]
    assert tiktok.members(result.destination_audience_id) == rows_of(members)
    with pytest.raises(ValidationError):
        TikTokAdsSettings(advertiser_id=ADV, access_token=TOKEN, batch_size=MAX_ROWS + 1)


def test_the_default_limit_sends_1000_rows_a_request(tiktok, store):
    members = {f"p{i}": {"email": f"person{i}@example.com"} for i in range(MAX_ROWS + 1)}
    result = run(tiktok, store, table(members), "r1")
    assert [r.n_rows for r in mapping(tiktok)] == [MAX_ROWS, 1]
    assert tiktok.members(result.destination_audience_id) == rows_of(members)


def test_the_fake_refuses_more_than_the_limit(tiktok):
    aid = tiktok.create_audience("vip")
    row = [{"id": h("x"), "audience_ids": [aid]}]
    body = {"advertiser_ids": [ADV], "action": "add", "id_schema": ["EMAIL_SHA256"], "batch_data": [row] * 1001}
    answer = httpx.post(f"{tiktok.url}/segment/mapping/", json=body, headers={"Access-Token": TOKEN}).json()
    assert (answer["code"], answer["message"]) == (40002, "batch_data: Length must be between 1 and 1000.")
    assert tiktok.members(aid) == set()


@pytest.mark.parametrize("inject, codes", [
    (lambda t: t.inject_throttle(times=2), [40100, 40100, 0]),
    (lambda t: t.inject_busy(times=2), [50002, 50002, 0]),
    (lambda t: t.inject_server_error(times=2, status=503), [50000, 50000, 0]),
], ids=["40100", "system busy", "503"])
def test_throttles_and_server_errors_are_retried(tiktok, store, inject, codes):
    run(tiktok, store, table(emails(3)), "r1")
    aid = tiktok.audience_id_by_name("vip")
    inject(tiktok)
    n = len(tiktok.requests)
    new = {**emails(3), **emails(2, start=10)}
    result = run(tiktok, store, table(new), "r2")
    assert (result.added, result.failed) == (2, 0)
    assert [r.code for r in mapping(tiktok, n)] == codes
    assert tiktok.members(aid) == rows_of(new) and set(store.read()["key"].to_pylist()) == set(new)


def test_giving_up_on_a_throttle_names_tiktoks_code_and_the_time_waited(tiktok, store):
    clock = {"now": 100.0, "waits": []}

    def sleep(seconds):  # fake time: the backoff waits add up without being slept
        clock["waits"].append(seconds)
        clock["now"] += seconds

    tiktok.inject_throttle(times=6)
    with pytest.raises(SyncAborted) as err:
        run(tiktok, store, table(emails(2)), "r1", dest=destination(tiktok, sleep=sleep, clock=lambda: clock["now"]))
    message = str(err.value)
    assert len(clock["waits"]) == 5 and sum(clock["waits"]) > 0
    assert (f"tiktok_ads: gave up after 6 attempts over {sum(clock['waits']):.1f} s; last: HTTP 200 on POST "
            "segment/mapping/: TikTok code 40100: Too many requests. Please retry in some time. (request_id ") \
        in message
    assert tiktok.members(tiktok.audience_id_by_name("vip")) == set() and store.manifest().rows == 0
    again = run(tiktok, store, table(emails(2)), "r2")  # the journalled rows are sent again
    assert (again.added + again.updated, again.failed) == (2, 0)
    assert tiktok.members(again.destination_audience_id) == rows_of(emails(2))


def test_a_refused_batch_fails_its_rows_only_and_they_are_retried(tiktok, store):
    members = emails(6)
    tiktok.refuse_values([h("user3@example.com")])
    first = run(tiktok, store, table(members), "r1", dest=destination(tiktok, batch_size=2))
    aid = first.destination_audience_id
    # TikTok refuses the batch holding k3 whole (k2 with it); the other batches are applied.
    assert (first.added, first.failed) == (4, 2) and rejected(first) == {"k2": "add", "k3": "add"}
    assert "TikTok code 40000" in first.errors_sample[0]["reason"]
    assert tiktok.members(aid) == rows_of({k: v for k, v in members.items() if k not in ("k2", "k3")})
    assert set(store.read()["key"].to_pylist()) == set(members) - {"k2", "k3"}

    tiktok.clear_refused()
    second = run(tiktok, store, table(members), "r2", dest=destination(tiktok, batch_size=2))
    assert (second.added, second.failed) == (2, 0) and tiktok.members(aid) == rows_of(members)


def test_a_refused_token_names_the_setting_and_nothing_is_created(tiktok, store):
    with pytest.raises(CredentialsError) as err:
        run(tiktok, store, table(emails(2)), "r1", dest=destination(tiktok, token="tt-wrong-token-xyz"))
    assert err.value.fatal and "'access_token'" in str(err.value) and "40105" in str(err.value)
    assert "tt-wrong-token-xyz" not in str(err.value)
    assert store.manifest() is None and tiktok.audiences == {}


def test_a_token_revoked_mid_run_stops_the_run_and_the_snapshot_is_kept(tiktok, store):
    run(tiktok, store, table(emails(3)), "r1")
    aid = tiktok.audience_id_by_name("vip")
    before = store.read()

    class Revoked(TikTokAdsDestination):
        def open_session(self, ctx):
            tiktok.revoke_token()
            return super().open_session(ctx)

    dest = Revoked(TikTokAdsSettings(advertiser_id=ADV, access_token=TOKEN, base_url=tiktok.url), sleep=lambda s: 0)
    with pytest.raises(SyncAborted) as err:
        run(tiktok, store, table({**emails(3), **emails(2, start=10)}), "r2", dest=dest)
    chain = f"{err.value} {err.value.__cause__!r}"
    assert isinstance(err.value.__cause__, CredentialsError) and "'access_token'" in chain and TOKEN not in chain
    assert store.read().equals(before) and tiktok.members(aid) == rows_of(emails(3))
    assert [r.code for r in mapping(tiktok)][-1] == 40105 and len(mapping(tiktok)) == 2  # not retried


def test_a_token_tiktok_echoes_back_is_redacted(tiktok, store):
    tiktok.inject_error(40105, f"Access token {TOKEN} has been revoked.", scope="other")
    with pytest.raises(CredentialsError) as err:
        run(tiktok, store, table(emails(2)), "r1")
    assert "Access token [redacted] has been revoked." in str(err.value) and TOKEN not in str(err.value)


def test_no_permission_on_the_advertiser_is_terminal(tiktok, store):
    with pytest.raises(TerminalError) as err:
        run(tiktok, store, table(emails(2)), "r1",
            dest=TikTokAdsDestination(TikTokAdsSettings(advertiser_id="123", access_token=TOKEN, base_url=tiktok.url)))
    assert "may not act on advertiser 123" in str(err.value) and "'advertiser_id'" in str(err.value)
    assert "TikTok code 40001" in str(err.value) and tiktok.audiences == {}


def test_an_unknown_code_rejects_its_batch_and_a_parameter_error_ends_the_run(tiktok, store):
    run(tiktok, store, table(emails(2)), "r1")
    tiktok.inject_error(41234, "Something TikTok did not expect.")
    result = run(tiktok, store, table(emails(4)), "r2")
    assert (result.added, result.failed) == (0, 2)  # retried next run
    dest = destination(tiktok)
    try:
        with pytest.raises(DestinationError) as err:
            dest.mapping("add", tiktok.audience_id_by_name("vip"), pa.table({"key": ["x"], "EMAIL_SHA256": ["nohash"]}))
    finally:
        dest.close()
    assert "TikTok code 40002: batch_data.0.0.id: Must be a lowercase SHA256 hex string." in str(err.value)
    assert err.value.fatal


def test_audience_size_is_read_back_from_cover_num(tiktok, store):
    result = run(tiktok, store, table(emails(5)), "r1")
    aid = result.destination_audience_id
    assert result.audience_size == 5 == tiktok.audiences[aid]["cover_num"]
    stats = destination(tiktok).audience_stats(aid)
    assert (stats.size, stats.match_rate) == (5, None)


def test_the_type_is_registered_and_light():
    dtype = destination_type("tiktok_ads")
    assert dtype.kind_tag == "tiktok" and dtype.account(TikTokAdsSettings(advertiser_id=ADV, access_token="x")) == ADV
    caps = dtype.capabilities(TikTokAdsSettings(advertiser_id=ADV, access_token="x", batch_size=10))
    assert caps.identifier_kinds == {"email", "phone", "device_id"} and caps.max_batch_rows == 10
    assert caps.hashes_identifiers and caps.reports_size and not caps.reports_match_rate and not caps.accepts_fields
