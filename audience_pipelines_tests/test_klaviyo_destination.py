"""Klaviyo lists end to end: run_sync against the FakeKlaviyo server, asserting its final state."""

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audience_pipelines.contract import RECORD_ID, CredentialsError, Target, TerminalError
from audience_pipelines.destinations.klaviyo import KlaviyoSettings
from audience_pipelines.destinations.klaviyo.client import KlaviyoDestination
from audience_pipelines.engine import RunOptions, SnapshotStore, SyncAborted, SyncSpec, run_sync
from audience_pipelines_tests.fakes.klaviyo import FakeKlaviyo
from audience_pipelines_tests.people import people_table

KEY = "pk_test_s3cr3t_0123456789abcdef"
JOBS = "/api/profile-bulk-import-jobs"
PROFILES = "/api/profiles"
FIELDS = {"first_name": "first_name", "city": "city", "plan": "plan", "signup_date": "signed_up"}
IDS = {"email": "email", "phone": "phone"}


@pytest.fixture
def kv():
    with FakeKlaviyo(api_key=KEY) as server:
        yield server


@pytest.fixture
def store(tmp_path):
    return SnapshotStore(tmp_path / "syncs", "kv")


class Sleeps(list):
    """A fake sleep paired with a fake clock: waiting moves the clock on."""

    now = 0.0

    def __call__(self, seconds):
        self.append(seconds)
        self.now += seconds

    def clock(self):
        return self.now


def destination(kv, key=KEY, sleeps=None, **settings):
    sleeps = sleeps if sleeps is not None else Sleeps()
    values = {"api_key": key, "base_url": kv.url, "timeout_s": 2, "poll_interval_s": 1, "poll_timeout_s": 30,
              **settings}
    return KlaviyoDestination(KlaviyoSettings(**values), sleep=sleeps, clock=sleeps.clock)


def table(rows: dict) -> pa.Table:
    """rows: key -> (email, phone, first name, city, plan[, signup date])."""
    return people_table(rows, ("email", "phone", "first_name", "city", "plan"), "signed_up")


def run(kv, store, rows, run_id, *, dest=None, target=None, fields=FIELDS, members=None, **spec_kw):
    dest = dest or destination(kv)
    spec = SyncSpec(name="kv", audience="a", destination="klaviyo", target=target or Target(name="VIP"),
                    identifiers=IDS, fields=fields, **spec_kw)
    try:
        return run_sync(spec, members if members is not None else table(rows), dest, store, RunOptions(run_id=run_id))
    finally:
        dest.close()


def record_ids(store) -> dict:
    snap = store.read()
    return dict(zip(snap["key"].to_pylist(), snap[RECORD_ID].to_pylist()))


def since(kv, n):
    return [(r.method, r.path.rstrip("/"), r.n_items, r.status) for r in kv.requests[n:]]


def job_sizes(kv, n=0):
    return [r.n_items for r in kv.requests[n:] if r.method == "POST" and r.path == JOBS and r.status == 202]


BASE = {"k1": ("ann@example.com", "+16502531001", "Ann", "Paris", "pro", dt.date(2024, 3, 1)),
        "k2": ("  Bob@Example.com ", None, "Bob", None, "free"),
        "k3": ("cy@example.com", "+16502531003", None, "Oslo", "free")}


def test_first_run_creates_the_list_and_profiles_with_their_fields(kv, store):
    bob = kv.create_profile(email="bob@example.com", last_name="Builder", properties={"team": "red"})
    first = run(kv, store, BASE, "r1")
    lid = kv.list_id_by_name("VIP")
    assert first.destination_audience_id == lid
    assert (first.added, first.failed, first.audience_size) == (3, 0, 3)
    assert kv.member_emails(lid) == {"ann@example.com", "bob@example.com", "cy@example.com"}
    ann = kv.profile_by_email("ann@example.com")
    assert (ann["phone_number"], ann["first_name"], ann["location"]) == ("+16502531001", "Ann", {"city": "Paris"})
    assert ann["properties"] == {"plan": "pro", "signup_date": "2024-03-01"}
    # The existing profile was updated, not duplicated; what was not mapped is left alone.
    assert kv.profile_id(email="bob@example.com") == bob and len(kv.profiles) == 3
    assert kv.profiles[bob]["last_name"] == "Builder" and kv.profiles[bob]["first_name"] == "Bob"
    assert kv.profiles[bob]["properties"] == {"team": "red", "plan": "free", "signup_date": None}
    # The snapshot keeps each member's profile id.
    assert record_ids(store) == {k: kv.profile_id(email=v[0].strip().lower()) for k, v in BASE.items()}
    assert job_sizes(kv) == [3] and first.destination_stats["import_jobs"] == 1
    assert [(r.method, r.path) for r in kv.requests if r.method == "POST" and "lists" in r.path] == \
        [("POST", "/api/lists")]
    # Every call carries the key and the revision.
    assert {(r.headers["revision"], r.headers["authorization"]) for r in kv.requests} == \
        {("2026-07-15", f"Klaviyo-API-Key {KEY}")}

    n = len(kv.requests)
    second = run(kv, store, BASE, "r2")  # a fresh client finds the list by name; nothing to send
    assert (second.destination_audience_id, second.unchanged, second.attempted) == (lid, 3, 0)
    assert not [c for c in since(kv, n) if c[0] in ("POST", "DELETE")] and len(kv.lists) == 1


def test_a_leaver_leaves_the_list_by_its_kept_id_and_its_profile_stays(kv, store):
    run(kv, store, BASE, "r1")
    lid = kv.list_id_by_name("VIP")
    ann = kv.profile_id(email="ann@example.com")
    before = kv.profiles[ann]
    n = len(kv.requests)
    second = run(kv, store, {k: BASE[k] for k in ("k2", "k3")}, "r2")
    assert (second.removed, second.failed, second.audience_size) == (1, 0, 2)
    assert kv.member_emails(lid) == {"bob@example.com", "cy@example.com"}
    calls = since(kv, n)
    assert ("DELETE", f"/api/lists/{lid}/relationships/profiles", 1, 204) in calls
    # No search: the profile id came from the snapshot. Only the list left; nothing was suppressed or deleted.
    assert not [c for c in calls if c[1] == PROFILES or c[1].startswith(JOBS)]
    assert kv.profiles[ann] == before and before["properties"] == {"plan": "pro", "signup_date": "2024-03-01"}


def test_a_leaver_sharing_a_profile_with_a_member_never_takes_that_member_out(kv, store):
    # k1 and k9 share an email, so Klaviyo holds one profile for both; k9 also has a phone of its own.
    rows = {"k1": BASE["k1"], "k9": ("ann@example.com", "+16502531009", "Ann", "Paris", "pro")}
    run(kv, store, rows, "r1")
    lid = kv.list_id_by_name("VIP")
    shared = kv.profile_id(email="ann@example.com")
    assert record_ids(store) == {"k1": shared, "k9": shared}
    second = run(kv, store, {"k1": BASE["k1"]}, "r2")
    # k9 leaves: its email is still k1's, so it is withdrawn by its own phone, not by the shared
    # profile's kept id; the member who stays stays in the list.
    assert second.failed == 0 and shared in kv.members(lid)
    assert kv.member_emails(lid) == {"ann@example.com"}


def test_a_changed_email_lists_the_new_profile_and_withdraws_the_old(kv, store):
    run(kv, store, BASE, "r1")
    lid = kv.list_id_by_name("VIP")
    old_cy = kv.profile_id(email="cy@example.com")
    new = {**BASE, "k2": ("bob@example.com", None, "Bobby", "Rome", "pro"), "k3": ("cy2@example.com", None, None,
                                                                                 "Oslo", "free")}
    second = run(kv, store, new, "r2")
    assert (second.updated, second.failed) == (2, 0)
    assert kv.member_emails(lid) == {"ann@example.com", "bob@example.com", "cy2@example.com"}
    assert old_cy in kv.profiles and old_cy not in kv.members(lid)
    bob = kv.profile_by_email("bob@example.com")
    assert (bob["first_name"], bob["location"], bob["properties"]["plan"]) == ("Bobby", {"city": "Rome"}, "pro")
    assert record_ids(store)["k3"] == kv.profile_id(email="cy2@example.com") != old_cy


def test_create_profiles_false_skips_members_without_a_profile(kv, store):
    ann = kv.create_profile(email="ann@example.com", first_name="Annie")
    rows = {k: BASE[k] for k in ("k1", "k2")}
    dest = destination(kv, create_profiles=False)
    assert not dest.capabilities.creates_profiles and dest.capabilities.needs_profile
    first = run(kv, store, rows, "r1", dest=dest)
    lid = kv.list_id_by_name("VIP")
    assert (first.added, first.failed, first.skipped_no_profile) == (1, 0, 1)
    assert first.skipped_sample == [{"key": "k2", "reason": "no Klaviyo profile with this identifier "
                                                            "(create_profiles is false)"}]
    # Bob was never sent: the job held Ann alone, by her id, so it could create nobody.
    assert job_sizes(kv) == [1] and list(kv.profiles) == [ann] and kv.members(lid) == {ann}
    assert kv.profiles[ann]["first_name"] == "Ann" and record_ids(store) == {"k1": ann}

    # The sync's own choice overrides the destination's: this run creates Bob.
    again = run(kv, store, rows, "r2", dest=destination(kv, create_profiles=False), create_profiles=True)
    assert (again.added, again.skipped_no_profile) == (1, 0)
    assert kv.member_emails(lid) == {"ann@example.com", "bob@example.com"}


def test_batches_at_the_limits(kv, store):
    rows = {f"p{i:04d}": (f"person{i}@example.com", None, f"P{i}", None, "free") for i in range(1001)}
    first = run(kv, store, rows, "r1", dest=destination(kv, batch_size=400))
    lid = first.destination_audience_id
    assert (first.added, first.failed, first.audience_size) == (1001, 0, 1001)
    assert job_sizes(kv) == [400, 400, 201]
    # Lookups of the new profiles' ids: at most 100 emails a request.
    assert max(r.n_items for r in kv.requests if r.path == PROFILES) == 100
    n = len(kv.requests)
    gone = run(kv, store, {}, "r2", members=table({}), max_removal_share=1.0)
    assert (gone.removed, gone.failed) == (1001, 0) and kv.members(lid) == set() and len(kv.profiles) == 1001
    assert [c[2] for c in since(kv, n) if c[0] == "DELETE"] == [1000, 1]


def test_jobs_stay_under_5_mb_and_a_profile_over_100_kb_is_refused(kv, store):
    rows = {f"b{i:02d}": (f"big{i}@example.com", None, None, None, "x" * 90_000) for i in range(60)}
    rows["huge"] = ("huge@example.com", None, None, None, "y" * 110_000)
    result = run(kv, store, rows, "r1")
    assert (result.added, result.failed) == (60, 1)
    assert sorted(job_sizes(kv), reverse=True) == [58, 2]
    assert result.errors_sample == [{"key": "huge", "operation": "add", "reason": "the profile is 110,147 bytes; "
                                     "Klaviyo takes at most 102,400 per profile"}]
    assert len(kv.members(result.destination_audience_id)) == 60


def test_a_job_is_polled_until_complete(store):
    with FakeKlaviyo(api_key=KEY, running_polls=3) as kv:
        sleeps = Sleeps()
        result = run(kv, store, BASE, "r1", dest=destination(kv, sleeps=sleeps, poll_interval_s=2.5))
        assert (result.added, result.failed) == (3, 0) and sleeps == [2.5, 2.5, 2.5]
        polls = [r for r in kv.requests if r.method == "GET" and r.path.startswith(JOBS)]
        assert len(polls) == 4 and len(kv.members(result.destination_audience_id)) == 3
        assert list(kv.jobs.values())[0]["status"] == "complete"


def test_a_job_outliving_the_batch_wait_is_settled_by_the_finish(store):
    with FakeKlaviyo(api_key=KEY, running_polls=4) as kv:
        # The batch waits 2 s (3 polls); the finish polls again and sees it end.
        result = run(kv, store, BASE, "r1", dest=destination(kv, poll_timeout_s=2))
        lid = result.destination_audience_id
        assert (result.added, result.failed) == (3, 0) and len(kv.members(lid)) == 3
        assert store.read_pending() is None and store.read_session() is None
        # Pending rows have no record id yet: a leaver is looked up by its identifiers.
        assert set(record_ids(store).values()) == {None}
        n = len(kv.requests)
        second = run(kv, store, {k: BASE[k] for k in ("k2", "k3")}, "r2")
        assert (second.removed, second.failed) == (1, 0)
        assert [c[0] for c in since(kv, n) if c[1] == PROFILES] == ["GET"]  # by its email
        assert kv.member_emails(lid) == {"bob@example.com", "cy@example.com"}


def test_a_job_still_running_at_the_end_is_journalled_and_recovered_next_run(store):
    with FakeKlaviyo(api_key=KEY, running_polls=1000) as kv:
        result = run(kv, store, BASE, "r1", dest=destination(kv, poll_timeout_s=3))
        lid = result.destination_audience_id
        assert (result.added, result.failed) == (0, 0)
        assert any("has not finished applying" in note for note in result.notes)
        (job,) = kv.jobs
        assert store.read_session()["state"] == {"jobs": [job]} and store.read_pending().num_rows == 3
        kv.complete_jobs()  # the job ends while no run is looking
        kv.running_polls = 0
        again = run(kv, store, BASE, "r2")  # the journalled rows are sent again
        assert (again.added + again.updated, again.failed) == (3, 0)
        assert any(f"import job(s) ended ({job} complete)" in note for note in again.notes)
        assert store.read_session() is None and store.read_pending() is None
        assert len(kv.members(lid)) == 3 and None not in record_ids(store).values()


@pytest.mark.parametrize("name_errors", ["pointer", "payload"])
def test_profiles_klaviyo_refuses_are_rejected_and_retried(store, name_errors):
    with FakeKlaviyo(api_key=KEY, name_errors=name_errors) as kv:
        kv.reject_values(["bob@example.com"], detail="Invalid email address")
        first = run(kv, store, BASE, "r1")
        lid = first.destination_audience_id
        assert (first.added, first.failed, first.status) == (2, 1, "partial_failure")
        assert pq.read_table(first.rejected_path).to_pylist() == [
            {"key": "k2", "operation": "add", "reason": "Klaviyo refused the profile: invalid: Invalid email address"}]
        assert kv.member_emails(lid) == {"ann@example.com", "cy@example.com"} and set(record_ids(store)) == {"k1", "k3"}
        kv.clear_rejected_values()
        second = run(kv, store, BASE, "r2")
        assert (second.added, second.failed) == (1, 0) and len(kv.members(lid)) == 3


def test_failures_klaviyo_only_counts_are_narrowed_to_their_rows(store):
    with FakeKlaviyo(api_key=KEY, name_errors="none") as kv:
        kv.reject_values(["cy@example.com"])
        rows = {**BASE, "k4": ("dee@example.com", None, "Dee", None, "free")}
        result = run(kv, store, rows, "r1")
        assert (result.added, result.failed) == (3, 1) and result.errors_sample[0]["key"] == "k3"
        assert result.destination_stats["isolation_requests"] > 0
        assert kv.member_emails(result.destination_audience_id) == {"ann@example.com", "bob@example.com",
                                                                    "dee@example.com"}


def test_a_failed_job_fails_its_batch_and_the_next_run_sends_it_again(kv, store):
    kv.inject_job_failure()
    first = run(kv, store, BASE, "r1")
    lid = first.destination_audience_id
    assert (first.added, first.failed) == (0, 3) and kv.members(lid) == set()
    assert "ended failed" in first.errors_sample[0]["reason"]
    second = run(kv, store, BASE, "r2")
    assert (second.added, second.failed) == (3, 0) and len(kv.members(lid)) == 3


@pytest.mark.parametrize("retry_after, waits", [(3, [3.0, 3.0]), (None, [1.0, 1.0])], ids=["header", "detail"])
def test_throttles_are_waited_out(kv, store, retry_after, waits):
    kv.inject_throttle(times=2, retry_after=retry_after, scope="jobs")
    sleeps = Sleeps()
    result = run(kv, store, BASE, "r1", dest=destination(kv, sleeps=sleeps))
    assert (result.added, result.failed) == (3, 0) and sleeps == waits
    assert [r.status for r in kv.requests if r.path == JOBS] == [429, 429, 202]


def test_server_errors_are_retried(kv, store):
    kv.inject_server_error(times=2, status=502, scope="jobs")
    result = run(kv, store, BASE, "r1")
    assert (result.added, result.failed) == (3, 0) and len(kv.members(result.destination_audience_id)) == 3
    assert [r.status for r in kv.requests if r.path == JOBS] == [502, 502, 202]


def test_a_daily_limit_stops_the_run_at_once(store):
    with FakeKlaviyo(api_key=KEY, list_creations_per_day=0) as kv:
        with pytest.raises(TerminalError, match="only in 43200 s"):
            run(kv, store, BASE, "r1")
        assert [r.status for r in kv.requests if r.method == "POST"] == [429]
        assert kv.lists == {} and store.manifest() is None


def test_a_bad_key_stops_before_anything_is_sent(kv, store):
    with pytest.raises(CredentialsError) as err:
        run(kv, store, BASE, "r1", dest=destination(kv, key="pk_wrong_key_987"))
    assert "'api_key'" in str(err.value) and "pk_wrong_key_987" not in str(err.value)
    assert kv.profiles == {} and kv.lists == {} and store.manifest() is None
    assert [r.status for r in kv.requests] == [401]


def test_a_key_without_the_scopes_is_named(store):
    with FakeKlaviyo(api_key=KEY, scopes={"lists:read", "lists:write", "profiles:read"}) as kv:
        with pytest.raises(SyncAborted) as err:
            run(kv, store, BASE, "r1")
        cause = err.value.__cause__
        assert isinstance(cause, CredentialsError) and "'api_key'" in str(cause) and "profiles:write" in str(cause)
        assert KEY not in str(err.value) and kv.profiles == {}


def test_a_mapped_field_of_the_wrong_kind_stops_the_run_before_anything_is_sent(kv, store):
    # `signed_up` holds dates; Klaviyo's `latitude` holds numbers. Custom properties take anything.
    with pytest.raises(TerminalError) as err:
        run(kv, store, BASE, "r1", fields={"latitude": "signed_up", "plan": "plan", "anything": "signed_up"})
    assert ("field 'latitude': a date column (date32[day]) cannot go to property 'latitude', which holds a number"
            in str(err.value)) and "'anything'" not in str(err.value)
    assert kv.lists == {} and kv.profiles == {} and store.manifest() is None
    assert not [r for r in kv.requests if r.method != "GET"]


def test_a_field_named_like_an_identifier_is_refused(kv, store):
    with pytest.raises(TerminalError, match="'phone_number'"):
        run(kv, store, BASE, "r1", fields={"phone_number": "plan"})
    assert kv.lists == {} and kv.profiles == {}


def test_a_target_id_that_does_not_exist(kv, store):
    with pytest.raises(TerminalError, match="list nope42 does not exist"):
        run(kv, store, BASE, "r1", target=Target(id="nope42"))
    assert kv.lists == {} and kv.profiles == {} and store.manifest() is None
    lid = kv.create_list("made elsewhere")
    result = run(kv, store, BASE, "r2", target=Target(id=lid))
    assert result.destination_audience_id == lid and len(kv.members(lid)) == 3


def test_find_by_name_follows_pages_and_takes_the_oldest(kv):
    first, *_ = [kv.create_list("dup") for _ in range(12)]
    kv.create_list("other")
    dest = destination(kv)
    n = len(kv.requests)
    assert dest.find_audience("dup") == first and dest.find_audience("missing") is None
    assert [r.query.get("page[cursor]") is not None for r in kv.requests[n:]] == [False, True, False]
    assert dest.create_audience("new") == kv.list_id_by_name("new")
    dest.close()


def test_a_kept_revision_setting_is_sent(kv):
    dest = destination(kv, revision="2025-10-15")
    dest.check_access()
    dest.close()
    assert [r.headers["revision"] for r in kv.requests] == ["2025-10-15"]
    with pytest.raises(ValueError):
        KlaviyoSettings(api_key=KEY, revision="october")
