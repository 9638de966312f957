"""LinkedIn Matched Audiences end to end: run_sync against FakeLinkedIn, asserting its final state."""

import hashlib

import pyarrow as pa
import pytest

from audience_pipelines.contract import Target
from audience_pipelines.destinations.linkedin_ads import LinkedInAds, LinkedInSettings
from audience_pipelines.destinations.linkedin_ads.client import LinkedInAdsDestination
from audience_pipelines.engine import (
    CredentialsError, DestinationError, RunOptions, SnapshotStore, SyncAborted, SyncSpec, run_sync,
)
from audience_pipelines_tests.fakes.linkedin import FakeLinkedIn

TOKEN = "AQV-test-member-token-s3cr3t"
ACCOUNT = "5123"
AID = "38400000-8cf0-11bd-b23e-10b96e40000d"


def h(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


@pytest.fixture
def fake():
    with FakeLinkedIn(access_token=TOKEN, ad_account_id=ACCOUNT) as server:
        yield server
        assert not server.errors, server.errors[0]


@pytest.fixture
def store(tmp_path):
    return SnapshotStore(tmp_path, "li")


class Clock:
    """Fake time: sleeping moves it on, nothing is slept."""

    def __init__(self):
        self.now, self.waits = 1000.0, []

    def sleep(self, seconds):
        self.waits.append(seconds)
        self.now += seconds

    def __call__(self):
        return self.now


def destination(fake, clock=None, **settings):
    clock = clock or Clock()
    return LinkedInAdsDestination(
        LinkedInSettings(**{"ad_account_id": ACCOUNT, "access_token": TOKEN, "base_url": fake.url, "timeout_s": 2,
                            "token_url": fake.token_url, **settings}), sleep=clock.sleep, clock=clock)


def table(rows: dict, columns=("email",)) -> pa.Table:
    return pa.table({"key": pa.array(list(rows), pa.string()),
                     **{c: pa.array([r.get(c) for r in rows.values()], pa.string()) for c in columns}})


def run(fake, store, members, run_id, *, target=None, dest=None, identifiers=None, **spec_kw):
    dest = dest or destination(fake)
    spec = SyncSpec(name="li", audience="a", destination="linkedin_ads", target=target or Target(name="vip"),
                    identifiers=identifiers or {"email": "email"}, **spec_kw)
    try:
        return run_sync(spec, members, dest, store, RunOptions(run_id=run_id))
    finally:
        dest.close()


def people(n, start=0) -> dict:
    return {f"k{i}": {"email": f"user{i}@example.com"} for i in range(start, start + n)}


def held(rows: dict) -> set:
    return {frozenset({("SHA256_EMAIL", h(r["email"]))}) for r in rows.values()}


def users_requests(fake):
    return [r for r in fake.requests if r.path.endswith("/users")]


def test_settings_and_capabilities():
    settings = LinkedInSettings(ad_account_id="urn:li:sponsoredAccount:5123", access_token="t")
    assert settings.ad_account_id == ACCOUNT and LinkedInAds.account(settings) == "urn:li:sponsoredAccount:5123"
    assert (settings.linkedin_version, settings.batch_size, settings.creation_wait_s) == ("202509", 5000, 5.0)
    caps = LinkedInAds.capabilities(settings)
    assert caps.identifier_kinds == {"email", "device_id", "first_name", "last_name", "country"}
    assert caps.match_identifiers == {"email", "device_id"} and caps.requires_identifier
    assert caps.reports_size and caps.reports_match_rate and caps.can_list_audiences and not caps.accepts_fields
    for bad in ({"ad_account_id": "act_12"}, {"linkedin_version": "2025-09"}, {"batch_size": 5001},
                {"access_token": None}, {"refresh_token": "r"}, {"segment_type": "COMPANY"}):
        with pytest.raises(ValueError):
            LinkedInSettings(**{"ad_account_id": ACCOUNT, "access_token": "t", **bad})
    LinkedInSettings(ad_account_id=ACCOUNT, refresh_token="r", client_id="c", client_secret="s")


def test_first_run_creates_a_user_segment_waits_and_sends_exact_elements(fake, store):
    rows = {
        "k1": {"email": " John@Example.com ", "aid": AID.upper(), "fn": " José ", "ln": "O'Brien", "country": "us"},
        "k2": {"email": "jane@example.org"},
        "k3": {"aid": AID.replace("3", "4")},
        "k4": {"fn": "Only", "ln": "Names", "country": "gb"},  # extras alone identify nobody: set aside
        "k5": {"email": "not-an-email", "fn": "Bad"},  # set aside too
    }
    ids = {"email": "email", "device_id": "aid", "first_name": "fn", "last_name": "ln", "country": "country"}
    clock = Clock()
    result = run(fake, store, table(rows, ("email", "aid", "fn", "ln", "country")), "r1", identifiers=ids,
                 dest=destination(fake, clock))
    sid = fake.segment_id_by_name("vip")
    assert result.destination_audience_id == sid
    segment = fake.segments[sid]
    assert (segment["type"], segment["accessPolicy"], segment["sourcePlatform"], segment["account"]) == (
        "USER", "PRIVATE", "API", "urn:li:sponsoredAccount:5123")
    assert fake.members(sid) == {
        frozenset({("SHA256_EMAIL", h("john@example.com")), ("GOOGLE_AID", AID), ("firstName", "josé"),
                   ("lastName", "o'brien"), ("country", "US")}),
        frozenset({("SHA256_EMAIL", h("jane@example.org"))}),
        frozenset({("GOOGLE_AID", AID.replace("3", "4"))}),
    }
    assert (result.added, result.failed, result.set_aside) == (3, 0, 2)
    assert {s["key"] for s in result.set_aside_sample} == {"k4", "k5"}
    assert clock.waits == [5.0]  # LinkedIn's wait after creating a segment, before users
    assert [(r.n_elements, r.status) for r in users_requests(fake)] == [(3, 200)]
    assert segment["destinations"][0]["status"] == "READY"

    again = run(fake, store, table(rows, ("email", "aid", "fn", "ln", "country")), "r2", identifiers=ids)
    assert again.destination_audience_id == sid and len(fake.segments) == 1 and again.attempted == 0


def test_find_by_name_pages_through_the_account_finder(fake, store):
    for i in range(250):
        fake.create_segment(f"other {i}")
    fake.create_segment("vip", type="COMPANY", account="urn:li:sponsoredAccount:999")  # another account's
    sid = fake.create_segment("vip")
    clock = Clock()
    result = run(fake, store, table(people(3)), "r1", dest=destination(fake, clock))
    assert result.destination_audience_id == sid and fake.members(sid) == held(people(3))
    finder = [r for r in fake.requests if r.path.endswith("/dmpSegments") and r.method == "GET"]
    assert [r.status for r in finder] == [200] * 4  # the access check, then pages of 100
    assert clock.waits == []  # not created by this client: no wait


def test_the_account_urn_is_url_encoded_in_the_finder(fake):
    dest = destination(fake)
    request = dest.http._client.build_request("GET", dest._finder(0, 100))
    assert b"account=urn%3Ali%3AsponsoredAccount%3A5123&start=0&count=100" in request.url.raw_path
    dest.close()


def test_a_name_taken_by_a_company_segment_is_refused(fake, store):
    fake.create_segment("vip", type="COMPANY")
    with pytest.raises(DestinationError, match="COMPANY segment"):
        run(fake, store, table(people(2)), "r1")
    assert len(fake.segments) == 1 and store.manifest() is None


def test_target_id_and_an_unknown_id(fake, store):
    sid = fake.create_segment("made elsewhere")
    result = run(fake, store, table(people(2)), "r1", target=Target(id=f"urn:li:dmpSegment:{sid}"))
    assert fake.members(sid) == held(people(2)) and result.audience_size == 2

    other = SnapshotStore(store.dir.parent, "li-unknown")
    with pytest.raises(DestinationError) as err:
        run(fake, other, table(people(2)), "r1", target=Target(id="9999999999"))
    assert err.value.fatal and "9999999999" in str(err.value) and "does not exist" in str(err.value)
    assert other.manifest() is None and list(fake.segments) == [sid]


def test_removes_and_an_identifier_change(fake, store):
    run(fake, store, table(people(5)), "r1")
    sid = fake.segment_id_by_name("vip")
    n = len(fake.requests)
    new = {k: v for k, v in people(5).items() if k != "k0"}
    new["k2"] = {"email": "changed2@example.com"}
    new["k9"] = {"email": "user9@example.com"}
    result = run(fake, store, table(new), "r2")
    assert (result.added, result.removed, result.updated, result.failed) == (1, 1, 1, 0)
    assert fake.members(sid) == held(new)
    assert [r.n_elements for r in fake.requests[n:] if r.path.endswith("/users")] == [1, 1, 1, 1]


def test_batches_at_the_limit(fake, store):
    rows = people(5_001)
    result = run(fake, store, table(rows), "r1")
    assert (result.added, result.failed) == (5_001, 0)
    assert [(r.n_elements, r.status) for r in users_requests(fake)] == [(5_000, 200), (1, 200)]
    assert fake.members(result.destination_audience_id) == held(rows)


def test_a_smaller_batch_size(fake, store):
    result = run(fake, store, table(people(7)), "r1", dest=destination(fake, batch_size=3))
    assert [r.n_elements for r in users_requests(fake)] == [3, 3, 1]
    assert fake.members(result.destination_audience_id) == held(people(7))


@pytest.mark.parametrize("inject, statuses", [
    (lambda f: f.inject_throttle(times=2), [429, 429, 200]),
    (lambda f: f.inject_server_error(times=2, status=503), [503, 503, 200]),
], ids=["429", "503"])
def test_throttles_and_server_errors_are_retried(fake, store, inject, statuses):
    run(fake, store, table(people(3)), "r1")
    sid = fake.segment_id_by_name("vip")
    inject(fake)
    n = len(fake.requests)
    result = run(fake, store, table(people(5)), "r2")
    assert (result.added, result.failed) == (2, 0)
    assert [r.status for r in fake.requests[n:] if r.path.endswith("/users")] == statuses
    assert fake.members(sid) == held(people(5))


def test_giving_up_on_throttles_keeps_the_snapshot_and_the_next_run_converges(fake, store):
    run(fake, store, table(people(3)), "r1")
    before = store.read()
    fake.inject_throttle(times=6)
    with pytest.raises(SyncAborted, match="gave up after 6 attempts.*HTTP 429 on POST dmpSegments/.*/users: "
                                          "LinkedIn TOO_MANY_REQUESTS"):
        run(fake, store, table(people(5)), "r2")
    assert store.read().equals(before)
    run(fake, store, table(people(5)), "r3")
    assert fake.members(fake.segment_id_by_name("vip")) == held(people(5))


def test_element_statuses_reject_exactly_their_rows(fake, store):
    rows = people(6)
    fake.reject_values([h("user1@example.com"), h("user4@example.com")])
    result = run(fake, store, table(rows), "r1")
    sid = result.destination_audience_id
    assert (result.added, result.failed) == (4, 2)
    assert {e["key"]: e["reason"] for e in result.errors_sample} == {
        k: "LinkedIn element status 400: Invalid idValue for idType SHA256_EMAIL" for k in ("k1", "k4")}
    assert fake.members(sid) == held({k: v for k, v in rows.items() if k not in ("k1", "k4")})
    assert set(store.read()["key"].to_pylist()) == set(rows) - {"k1", "k4"}
    fake.clear_rejected_values()
    again = run(fake, store, table(rows), "r2")
    assert (again.added, again.failed) == (2, 0) and fake.members(sid) == held(rows)


def test_a_short_answer_applies_nothing_it_does_not_name(fake, store, monkeypatch):
    from audience_pipelines_tests.fakes import linkedin as fake_module

    original = fake_module.FakeLinkedIn._users
    monkeypatch.setattr(fake_module.FakeLinkedIn, "_users",
                        lambda self, req, sid: {"elements": original(self, req, sid)["elements"][:2]})
    result = run(fake, store, table(people(3)), "r1")
    assert (result.added, result.failed) == (2, 1)
    assert result.errors_sample[0]["key"] == "k2" and "no status" in result.errors_sample[0]["reason"]
    assert set(store.read()["key"].to_pylist()) == {"k0", "k1"}


def test_a_404_just_after_creation_is_retried_for_a_bounded_time(fake, store):
    fake.not_ready_requests = 2
    clock = Clock()
    result = run(fake, store, table(people(2)), "r1", dest=destination(fake, clock))
    assert [r.status for r in users_requests(fake)] == [404, 404, 200]
    assert clock.waits == [5.0, 5.0, 5.0] and fake.members(result.destination_audience_id) == held(people(2))

    fake.not_ready_requests = 100
    other = SnapshotStore(store.dir.parent, "li-never-ready")
    with pytest.raises(SyncAborted, match="does not exist .* for 20 s after it was created"):
        run(fake, other, table(people(2)), "r1", target=Target(name="never ready"),
            dest=destination(fake, Clock(), creation_retry_s=20))
    assert fake.members(fake.segment_id_by_name("never ready")) == set()


def test_a_404_on_a_segment_not_just_created_is_not_retried(fake, store):
    sid = fake.create_segment("vip")
    run(fake, store, table(people(2)), "r1")
    with fake._lock:  # deleted on LinkedIn between two runs' lookups and sends
        fake._not_ready[sid] = 5
    n = len(fake.requests)
    with pytest.raises(SyncAborted, match=f"DMP segment {sid} does not exist"):
        run(fake, store, table(people(3)), "r2")
    assert [r.status for r in fake.requests[n:] if r.path.endswith("/users")] == [404]


def test_a_refused_token_is_a_credentials_error_naming_the_setting(fake, store):
    with pytest.raises(CredentialsError) as err:
        run(fake, store, table(people(2)), "r1", dest=destination(fake, access_token="AQV-wrong-s3cr3t"))
    message = str(err.value)
    assert "'access_token'" in message and "INVALID_ACCESS_TOKEN" in message and "AQV-wrong-s3cr3t" not in message
    assert fake.segments == {} and store.manifest() is None and users_requests(fake) == []


def test_a_viewer_or_a_missing_scope_is_terminal(fake, store):
    fake.role = "VIEWER"
    with pytest.raises(DestinationError) as err:
        run(fake, store, table(people(2)), "r1")
    assert err.value.fatal and err.value.status == 403 and "VIEWER" in str(err.value)
    assert fake.segments == {}
    fake.role, fake.has_scope = "CAMPAIGN_MANAGER", False
    with pytest.raises(DestinationError, match="rw_dmp_segments") as err:
        run(fake, store, table(people(2)), "r1")
    assert err.value.fatal and TOKEN not in str(err.value)


def test_a_refresh_token_is_exchanged_and_renewed_once_after_a_401(fake, store):
    refreshing = {"access_token": None, "refresh_token": fake.refresh_token, "client_id": fake.client_id,
                  "client_secret": fake.client_secret}
    run(fake, store, table(people(2)), "r1", dest=destination(fake, **refreshing))
    dest = destination(fake, **refreshing)
    dest.oauth.get()  # a token that expires before LinkedIn's 60 days are up
    fake.expire_access_tokens()
    run(fake, store, table(people(4)), "r2", dest=dest)
    assert fake.members(fake.segment_id_by_name("vip")) == held(people(4))
    assert [r.status for r in fake.requests if r.path.endswith("/accessToken")] == [200, 200, 200]

    fake.refresh_token = "rotated"
    revoked = destination(fake, **{**refreshing, "refresh_token": "old-s3cr3t"})
    with pytest.raises(CredentialsError, match="'refresh_token'") as err:
        run(fake, store, table(people(5)), "r3", dest=revoked)
    assert "old-s3cr3t" not in str(err.value)


def test_audience_size_and_match_rate_are_read_back(fake, store):
    rows = people(4)
    fake.known_ids = {h("user0@example.com"), h("user1@example.com"), h("user2@example.com")}
    result = run(fake, store, table(rows), "r1")
    assert (result.audience_size, result.match_rate, result.match_rate_basis) == (3, 0.75, "reported by the platform")
    segment = fake.segments[result.destination_audience_id]
    assert (segment["audienceSize"], segment["matchedCount"]) == (4, 3)
