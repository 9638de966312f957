"""Pinterest Ads customer lists end to end: run_sync against FakePinterest, asserting its final state."""

import hashlib

import pyarrow as pa
import pytest

from audience_pipelines.contract import CredentialsError, Target, TerminalError
from audience_pipelines.destinations.pinterest_ads import PinterestAds, PinterestSettings
from audience_pipelines.destinations.pinterest_ads.client import PLACEHOLDER, PinterestAdsDestination
from audience_pipelines.engine import RunOptions, SnapshotStore, SyncAborted, SyncSpec, run_sync
from audience_pipelines_tests.fakes.pinterest import FakePinterest

TOKEN = "pina_test-s3cr3t-token"
EMAIL_VECTOR = "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"  # sha256("test@example.com")


def h(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


@pytest.fixture
def pin():
    with FakePinterest(access_token=TOKEN) as server:
        yield server


@pytest.fixture
def store(tmp_path):
    return SnapshotStore(tmp_path / "syncs", "p")


def settings(pin, **overrides) -> PinterestSettings:
    values = {"ad_account_id": pin.ad_account_id, "access_token": TOKEN, "base_url": pin.url, "timeout_s": 5,
              **overrides}
    return PinterestSettings(**values)


def destination(pin, sleep=None, **overrides) -> PinterestAdsDestination:
    return PinterestAdsDestination(settings(pin, **overrides), sleep=sleep or (lambda s: None))


def refreshing(pin, **overrides) -> PinterestAdsDestination:
    values = {"access_token": None, "refresh_token": pin.refresh_token, "client_id": pin.client_id,
              "client_secret": pin.client_secret, "token_url": pin.token_url, **overrides}
    return destination(pin, **values)


def emails(n, start=0) -> dict:
    return {f"k{i}": f"user{i}@example.com" for i in range(start, start + n)}


def table(rows: dict, column="email") -> pa.Table:
    return pa.table({"key": pa.array(list(rows), pa.string()), column: pa.array(list(rows.values()), pa.string())})


def run(pin, store, rows: dict, run_id, *, target=None, dest=None, identifiers=None, column="email"):
    dest = dest or destination(pin)
    spec = SyncSpec(name=store.sync, audience="a", destination="pinterest_ads", target=target or Target(name="vip"),
                    identifiers=identifiers or {"email": column})
    try:
        return run_sync(spec, table(rows, column), dest, store, RunOptions(run_id=run_id))
    finally:
        dest.close()


def hashed(rows: dict) -> set[str]:
    return {h(v.strip().lower()) for v in rows.values()}


def patches(pin, since=0) -> list[tuple[str, int, int]]:
    """(operation_type, records, status) of each member request."""
    return [(r.operation, r.n_records, r.status) for r in pin.requests[since:]
            if r.method == "PATCH" and "/customer_lists/" in r.path]


def test_settings_and_capabilities():
    s = PinterestSettings(ad_account_id=" 549755885175 ", access_token="t")
    assert (s.ad_account_id, s.list_type, s.batch_size, s.create_audience) == ("549755885175", "EMAIL", 10_000, True)
    assert s.base_url == "https://api.pinterest.com/v5" and s.token_url == "https://api.pinterest.com/v5/oauth/token"
    assert PinterestAds.account(s) == "549755885175"
    caps = PinterestAds.capabilities(s)
    assert caps.identifier_kinds == {"email"} and caps.match_identifiers == {"email"}
    assert caps.max_batch_rows == 10_000 and caps.hashes_identifiers and caps.reports_size
    assert caps.can_list_audiences and caps.can_create_audiences and not caps.accepts_fields
    assert PinterestAds.capabilities(s.model_copy(update={"list_type": "MAID"})).identifier_kinds == {"device_id"}
    PinterestSettings(ad_account_id="1", refresh_token="r", client_id="c", client_secret="s")
    for bad in ({"ad_account_id": "act_12"}, {"ad_account_id": "1" * 19}, {"batch_size": 50_001},
                {"access_token": None}, {"refresh_token": "r"}, {"list_type": "PHONE"}):
        with pytest.raises(ValueError):
            PinterestSettings(**{"ad_account_id": "1", "access_token": "t", **bad})


def test_first_run_creates_the_list_and_its_audience_once(pin, store):
    rows = {"t1": " Test@Example.com ", **emails(3)}
    first = run(pin, store, rows, "r1")
    lid = pin.list_id_by_name("vip")
    assert first.destination_audience_id == lid and (first.added, first.failed) == (4, 0)
    assert pin.members(lid) == {EMAIL_VECTOR, *hashed(emails(3))} and pin.unusable(lid) == []
    # Created holding the placeholder (Pinterest requires records), which went straight out again.
    assert [(r.method, r.operation, r.n_records) for r in pin.requests if r.operation] == [
        ("POST", "CREATE", 1), ("PATCH", "REMOVE", 1), ("PATCH", "ADD", 4)]
    assert PLACEHOLDER not in pin.members(lid)
    listed = pin.customer_lists[lid]
    assert (listed["num_batches"], listed["num_uploaded_user_records"], listed["num_removed_user_records"]) == (3, 5, 1)
    (audience,) = pin.audiences_of(lid)
    assert (audience["name"], audience["rule"], audience["description"]) == (
        "vip", {"customer_list_id": lid}, "Managed by audience_pipelines")
    assert (audience["size"], audience["status"]) == (4, "TOO_SMALL")
    assert first.audience_size == 4 and first.destination_stats == {"records_added": 4}

    # A fresh client finds both again: no second list, no second audience.
    second = run(pin, store, {**rows, **emails(2, start=10)}, "r2")
    assert second.destination_audience_id == lid and (second.added, second.failed) == (2, 0)
    assert len(pin.customer_lists) == 1 and len(pin.audiences) == 1
    assert pin.members(lid) == {EMAIL_VECTOR, *hashed(emails(3)), *hashed(emails(2, start=10))}


def test_an_existing_list_is_found_by_name_across_pages_and_wrapped(pin, store):
    for i in range(300):
        pin.create_customer_list(f"other {i}", [h(f"o{i}@example.com")])
    lid = pin.create_customer_list("vip", [h("old@example.com")])
    result = run(pin, store, emails(2), "r1")
    assert result.destination_audience_id == lid and len(pin.customer_lists) == 301
    lookups = [r for r in pin.requests if r.method == "GET" and r.path.endswith("/customer_lists")]
    assert len(lookups) == 3  # check_access, then two pages of 250
    assert pin.members(lid) == {h("old@example.com"), *hashed(emails(2))}  # a first run adds, never clears
    assert [a["name"] for a in pin.audiences_of(lid)] == ["vip"]


def test_an_audience_already_wrapping_the_list_is_kept(pin, store):
    lid = pin.create_customer_list("vip", [h("old@example.com")])
    aid = pin.create_audience("vip (made by hand)", lid)
    pin.create_audience("vip", pin.create_customer_list("another list"))  # same name, other list
    run(pin, store, emails(2), "r1")
    assert [a["id"] for a in pin.audiences_of(lid)] == [aid] and len(pin.audiences) == 2


def test_without_create_audience_only_the_list_is_made(pin, store):
    result = run(pin, store, emails(3), "r1", dest=destination(pin, create_audience=False))
    assert pin.audiences == {} and pin.members(pin.list_id_by_name("vip")) == hashed(emails(3))
    assert result.audience_size is None


def test_a_refused_audience_is_tried_again_by_later_runs(pin, store):
    pin.refuse_small_audiences = True
    first = run(pin, store, emails(60), "r1")
    lid = first.destination_audience_id
    assert pin.members(lid) == hashed(emails(60)) and pin.audiences == {} and first.audience_size is None
    # Refused again before the adds, then made once the run's 60 more members are in.
    second = run(pin, store, emails(120), "r2")
    assert (second.added, second.failed) == (60, 0)
    (audience,) = pin.audiences_of(lid)
    assert (audience["name"], audience["size"], audience["status"], second.audience_size) == ("vip", 120, "READY", 120)
    run(pin, store, emails(121), "r3")
    assert len(pin.audiences) == 1


def test_a_list_is_used_by_id(pin, store):
    lid = pin.create_customer_list("by id", [h("old@example.com")])
    result = run(pin, store, emails(2), "r1", target=Target(id=lid))
    assert result.destination_audience_id == lid and len(pin.customer_lists) == 1
    assert pin.members(lid) == {h("old@example.com"), *hashed(emails(2))}
    assert [a["name"] for a in pin.audiences_of(lid)] == ["by id"]


@pytest.mark.parametrize("target_id, says", [
    ("9999999999", "customer list 9999999999 does not exist in ad account 549755885175"),
    ("vip-list", "'vip-list' is not a customer list id"),
])
def test_an_unknown_list_id_is_a_clear_error_and_creates_nothing(pin, store, target_id, says):
    with pytest.raises(TerminalError, match=says):
        run(pin, store, emails(2), "r1", target=Target(id=target_id))
    assert pin.customer_lists == {} and pin.audiences == {} and store.manifest() is None


def test_a_wrong_ad_account_names_the_setting(pin, store):
    with pytest.raises(TerminalError, match="ad account 12345 \\(the setting 'ad_account_id'\\) was not found") as err:
        run(pin, store, emails(2), "r1", dest=destination(pin, ad_account_id="12345"))
    assert "AdAccount not found." in str(err.value) and pin.customer_lists == {}


def test_removes_and_an_identifier_change_are_exact(pin, store):
    run(pin, store, emails(5), "r1")
    lid = pin.list_id_by_name("vip")
    n = len(pin.requests)
    new = {k: v for k, v in emails(5).items() if k != "k0"} | {"k2": "changed2@example.com", "k9": "user9@example.com"}
    result = run(pin, store, new, "r2")
    assert (result.added, result.removed, result.updated, result.failed) == (1, 1, 1, 0)
    assert pin.members(lid) == hashed(new)
    # remove k0; update k2 (old value out, new in); add k9
    assert patches(pin, n) == [("REMOVE", 1, 200), ("REMOVE", 1, 200), ("ADD", 1, 200), ("ADD", 1, 200)]
    assert result.audience_size == 5


def test_batches_stop_at_the_batch_size(pin, store):
    result = run(pin, store, emails(7), "r1", dest=destination(pin, batch_size=3))
    assert (result.added, result.failed) == (7, 0)
    assert [n for op, n, _ in patches(pin) if op == "ADD"] == [3, 3, 1]
    assert pin.members(result.destination_audience_id) == hashed(emails(7))
    store2 = SnapshotStore(store.root, "limit")
    again = run(pin, store2, emails(4, start=100), "r2", target=Target(name="limit"),
                dest=destination(pin, batch_size=3))
    assert [n for op, n, _ in patches(pin) if op == "ADD"][-2:] == [3, 1]  # limit + 1 rows: two requests
    assert pin.members(again.destination_audience_id) == hashed(emails(4, start=100))


def test_throttles_are_retried_honouring_retry_after(pin, store):
    run(pin, store, emails(2), "r1")
    n, slept = len(pin.requests), []
    pin.inject_throttle(times=3, retry_after=7)
    result = run(pin, store, emails(4), "r2", dest=destination(pin, sleep=slept.append))
    assert (result.added, result.failed) == (2, 0) and slept == [7, 7, 7]
    assert patches(pin, n) == [(None, None, 429)] * 3 + [("ADD", 2, 200)]  # refused before its body was read
    assert pin.members(result.destination_audience_id) == hashed(emails(4))


def test_server_errors_are_retried(pin, store):
    run(pin, store, emails(2), "r1")
    n = len(pin.requests)
    pin.inject_server_error(times=2, status=503)
    result = run(pin, store, emails(4), "r2")
    assert (result.added, result.failed) == (2, 0)
    assert [s for _, _, s in patches(pin, n)] == [503, 503, 200]
    assert pin.members(result.destination_audience_id) == hashed(emails(4))


def test_throttles_past_the_retries_stop_the_run_and_the_next_converges(pin, store):
    run(pin, store, emails(2), "r1")
    lid, before = pin.list_id_by_name("vip"), store.read()
    pin.inject_throttle(times=6)
    with pytest.raises(SyncAborted, match="gave up after 6 attempts.*Pinterest error code 8: This request exceeded"):
        run(pin, store, emails(4), "r2")
    assert pin.members(lid) == hashed(emails(2)) and store.read().equals(before)
    third = run(pin, store, emails(4), "r3")
    assert (third.added + third.updated, third.failed) == (2, 0) and pin.members(lid) == hashed(emails(4))


def test_a_refused_batch_is_narrowed_to_the_rows_to_blame(pin, store):
    run(pin, store, emails(4), "r1")
    lid = pin.list_id_by_name("vip")
    pin.refuse_values([h("user5@example.com"), h("user1@example.com")])
    result = run(pin, store, {k: v for k, v in emails(8).items() if k != "k1"}, "r2")
    # k1 could not be removed and k5 not added; the other adds went through.
    assert (result.added, result.removed, result.failed) == (3, 0, 2)
    assert {e["key"] for e in result.errors_sample} == {"k1", "k5"}
    assert all("Pinterest refused the batch" in e["reason"] for e in result.errors_sample)
    assert pin.members(lid) == hashed(emails(8)) - {h("user5@example.com")}
    assert "k5" not in store.read()["key"].to_pylist() and "k1" in store.read()["key"].to_pylist()
    pin.clear_refused_values()
    again = run(pin, store, {k: v for k, v in emails(8).items() if k != "k1"}, "r3")
    assert (again.added, again.removed, again.failed) == (1, 1, 0)
    assert pin.members(lid) == hashed(emails(8)) - {h("user1@example.com")}


def test_a_refused_token_names_the_setting_and_sends_nothing(pin, store):
    run(pin, store, emails(2), "r1")
    n = len(pin.requests)
    with pytest.raises(CredentialsError, match="the setting 'access_token' was refused") as err:
        run(pin, store, emails(4), "r2", dest=destination(pin, access_token="pina_revoked-s3cr3t"))
    assert "pina_revoked-s3cr3t" not in str(err.value) and "Authentication failed." in str(err.value)
    assert patches(pin, n) == [] and pin.members(pin.list_id_by_name("vip")) == hashed(emails(2))


def test_a_refreshed_token_is_exchanged_with_basic_auth_and_renewed_once(pin, store):
    first = run(pin, store, emails(2), "r1", dest=refreshing(pin))
    assert pin.members(first.destination_audience_id) == hashed(emails(2))
    assert sum(r.path.endswith("/oauth/token") for r in pin.requests) == 1
    dest = refreshing(pin)
    dest.check_access()
    pin.revoke_access_tokens()  # the token this client holds is now refused: it is exchanged again
    result = run(pin, store, emails(4), "r2", dest=dest)
    assert (result.added, result.failed) == (2, 0)
    assert sum(r.path.endswith("/oauth/token") for r in pin.requests) == 3


@pytest.mark.parametrize("override, setting", [
    ({"refresh_token": "pinr_revoked-s3cr3t"}, "'refresh_token'"),
    ({"client_secret": "wrong-s3cr3t"}, "'client_id/client_secret'"),
])
def test_a_refused_refresh_names_the_setting(pin, store, override, setting):
    with pytest.raises(CredentialsError, match=setting) as err:
        run(pin, store, emails(2), "r1", dest=refreshing(pin, **override))
    assert "s3cr3t" not in str(err.value) and pin.customer_lists == {}


def test_audience_size_is_read_back(pin, store):
    dest = destination(pin)
    first = run(pin, store, emails(3), "r1")
    lid = first.destination_audience_id
    (audience,) = pin.audiences_of(lid)
    pin.set_audience_size(audience["id"], 250_000)
    assert dest.audience_stats(lid).size == 250_000 and dest.audience_stats(lid).match_rate is None
    pin.set_audience_size(audience["id"], None)  # not counted yet
    assert dest.audience_stats(lid).size is None
    dest.close()


def test_maid_lists_get_hashed_lowercase_device_ids(pin, store):
    maids = {"k1": "AB12CD34-0000-4000-8000-00000000ABCD", "k2": "6d92078a-8246-4ba4-ae5b-76104861e7dc"}
    result = run(pin, store, maids, "r1", dest=destination(pin, list_type="MAID"),
                 identifiers={"device_id": "maid"}, column="maid")
    lid = result.destination_audience_id
    assert pin.members(lid) == {"4ce232bc11007c5fea80bded062f824e2543907c42fa1b776cd1c789407edbc1",
                                h("6d92078a-8246-4ba4-ae5b-76104861e7dc")}
    create = next(r for r in pin.requests if r.operation == "CREATE")
    assert create.status == 200 and pin.unusable(lid) == []
