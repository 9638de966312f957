"""Braze end to end: run_sync against the FakeBraze server, asserting its final state."""

import datetime as dt

import httpx
import pyarrow as pa
import pytest

from audience_pipelines.contract import RECORD_ID, CredentialsError, DestinationError, Target, TerminalError
from audience_pipelines.destinations.braze import BrazeSettings
from audience_pipelines.destinations.braze.client import BrazeDestination, cohort_id_for
from audience_pipelines.engine import RunOptions, SnapshotStore, SyncSpec, run_sync
from audience_pipelines_tests.fakes.braze import FakeBraze
from audience_pipelines_tests.people import people_table

KEYS = {"api_key": "rest-key-s3cr3t-0001", "partner_api_key": "partner-key-s3cr3t-0002",
        "client_secret": "import-key-s3cr3t-0003"}
PARTNER = "audience_pipelines"
TRACK, EXPORT = "/users/track", "/users/export/ids"
COHORTS, USERS = f"/partners/{PARTNER}/cohorts", f"/partners/{PARTNER}/cohorts/users"
FIELDS = {"first_name": "first_name", "plan": "plan", "dob": "born"}
IDS = {"external_id": "user_id", "email": "email"}


class Clock:
    """Wall clock shared by the fake's rate windows and the client's sleeps."""

    def __init__(self, now=1_700_000_000.0):
        self.now, self.sleeps = now, []

    def time(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(round(seconds, 3))
        self.now += seconds


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def bz(clock):
    with FakeBraze(partner_name=PARTNER, wall_clock=clock.time, **KEYS) as server:
        yield server


@pytest.fixture
def store(tmp_path):
    return SnapshotStore(tmp_path / "syncs", "bz")


def destination(bz, clock, **settings):
    return BrazeDestination(BrazeSettings(**{"rest_endpoint": bz.url, "partner_name": PARTNER, "timeout_s": 2,
                                             **KEYS, **settings}), sleep=clock.sleep, wall_clock=clock.time)


def table(rows: dict) -> pa.Table:
    """rows: key -> (user id, email, first name, plan[, born])."""
    return people_table(rows, ("user_id", "email", "first_name", "plan"), "born")


def run(bz, clock, store, rows, run_id, *, dest=None, fields=FIELDS, identifiers=IDS, members=None, **spec_kw):
    dest = dest or destination(bz, clock)
    spec = SyncSpec(name="bz", audience="a", destination="braze", target=spec_kw.pop("target", Target(name="VIP")),
                    identifiers=identifiers, fields=fields, **spec_kw)
    try:
        return run_sync(spec, members if members is not None else table(rows), dest, store,
                        RunOptions(run_id=run_id, full_resync=spec_kw.get("full_resync", False)))
    finally:
        dest.close()


def cohort(bz, name="VIP") -> dict:
    """Members of the named cohort: external id or (alias name, label) -> attributes."""
    cid = bz.cohort_id_by_name(name)
    return {u["external_id"] or (u["user_aliases"][0]["alias_name"], u["user_aliases"][0]["alias_label"]):
            u["attributes"] for u in bz.members(cid)}


def record_ids(store) -> dict:
    snap = store.read()
    return dict(zip(snap["key"].to_pylist(), snap[RECORD_ID].to_pylist()))


def since(bz, n):
    return [(r.path, r.n_items, r.status) for r in bz.requests[n:]]


BASE = {"k1": ("u1", "ann@example.com", "Ann", "pro", dt.date(1990, 3, 1)),
        "k2": ("u2", None, "Bob", "free"),
        "k3": (None, "cy@example.com", None, "free")}


def test_first_run_tracks_users_and_fills_the_cohort_then_sends_only_changes(bz, clock, store):
    first = run(bz, clock, store, BASE, "r1")
    cid = bz.cohort_id_by_name("VIP")
    assert first.destination_audience_id == cid == cohort_id_for("VIP")
    assert (first.added, first.failed, first.audience_size) == (3, 0, None)
    assert cohort(bz) == {
        "u1": {"email": "ann@example.com", "first_name": "Ann", "plan": "pro", "dob": "1990-03-01"},
        "u2": {"first_name": "Bob", "plan": "free"},  # nulls clear (here: leave unset) the attribute
        ("cy@example.com", "email"): {"email": "cy@example.com", "plan": "free"},
    }
    assert record_ids(store) == {"k1": "external_id:u1", "k2": "external_id:u2", "k3": "alias:email:cy@example.com"}
    track = [r.body for r in bz.requests if r.path == TRACK and r.body["attributes"]]
    assert track[0]["attributes"][2] == {"user_alias": {"alias_name": "cy@example.com", "alias_label": "email"},
                                         "_update_existing_only": False, "email": "cy@example.com",
                                         "first_name": None, "plan": "free", "dob": None}
    changes = [r.body["cohort_changes"] for r in bz.requests if r.path == USERS and r.body["cohort_id"] == cid]
    assert changes == [[{"user_ids": ["u1", "u2"], "aliases": [{"alias_name": "cy@example.com",
                                                                  "alias_label": "email"}]}]]
    assert [r.body["name"] for r in bz.requests if r.path == COHORTS] == ["VIP"]

    n = len(bz.requests)
    second = run(bz, clock, store, BASE, "r2")  # a fresh client: the registry names the cohort
    assert (second.destination_audience_id, second.unchanged, second.attempted) == (cid, 3, 0)
    assert not [p for p, _, _ in since(bz, n) if p == COHORTS] and len(bz.cohorts) == 1
    assert not [r for r in bz.requests[n:] if r.path == TRACK and r.body["attributes"]]


def test_removal_uses_the_record_id_and_keeps_the_user(bz, clock, store):
    run(bz, clock, store, BASE, "r1")
    n = len(bz.requests)
    second = run(bz, clock, store, {"k2": BASE["k2"]}, "r2", max_removal_share=1.0)
    assert (second.removed, second.failed) == (2, 0)
    assert cohort(bz) == {"u2": {"first_name": "Bob", "plan": "free"}}
    calls = since(bz, n)
    removal = [r.body["cohort_changes"] for r in bz.requests[n:] if r.path == USERS and r.body["cohort_changes"]]
    assert [{"user_ids": ["u1"], "aliases": [{"alias_name": "cy@example.com", "alias_label": "email"}],
             "should_remove": True}] in removal
    # No lookup, no export, no deletion: the leavers' users are still there with their attributes.
    assert not [c for c in calls if c[0] in (EXPORT, "/users/delete")]
    assert not [r for r in bz.requests[n:] if r.path == TRACK and r.body["attributes"]]
    assert bz.user(external_id="u1")["attributes"] == {"email": "ann@example.com", "first_name": "Ann",
                                                       "plan": "pro", "dob": "1990-03-01"}
    assert bz.user(alias=("cy@example.com", "email"))["attributes"]["plan"] == "free"
    assert set(record_ids(store)) == {"k2"}


def test_removal_do_nothing_never_touches_the_cohort(bz, clock, store):
    run(bz, clock, store, BASE, "r1")
    n = len(bz.requests)
    second = run(bz, clock, store, {"k2": BASE["k2"]}, "r2", removal="do_nothing")
    assert second.removed == 0 and set(cohort(bz)) == {"u1", "u2", ("cy@example.com", "email")}
    assert not [r for r in bz.requests[n:] if r.path == USERS and r.body["cohort_changes"]]


def test_changed_identifiers_move_the_member_to_its_new_user(bz, clock, store):
    run(bz, clock, store, BASE, "r1")
    new = {"k1": ("u1", "ann@new.example.com", "Ann", "max", dt.date(1990, 3, 1)),  # email changed: same user
           "k2": BASE["k2"],
           "k3": (None, "cy2@example.com", None, "free")}  # alias changed: a new user
    second = run(bz, clock, store, new, "r2")
    assert (second.updated, second.failed) == (2, 0)
    members = cohort(bz)
    assert set(members) == {"u1", "u2", ("cy2@example.com", "email")}
    assert members["u1"]["email"] == "ann@new.example.com" and members["u1"]["plan"] == "max"
    assert bz.user(alias=("cy@example.com", "email")) is not None  # the old user stays, out of the cohort
    assert record_ids(store)["k3"] == "alias:email:cy2@example.com"


def test_a_leaver_sharing_a_user_with_a_member_stays_in_the_cohort(bz, clock, store):
    rows = {"a": ("same", "a@example.com", "A", "free"), "b": ("same", "b@example.com", "B", "free"),
            "c": ("c1", None, "C", "free")}
    run(bz, clock, store, rows, "r1")
    second = run(bz, clock, store, {k: rows[k] for k in ("b", "c")}, "r2")
    assert second.failed == 0 and set(cohort(bz)) == {"same", "c1"}
    assert set(record_ids(store)) == {"b", "c"}


def test_create_profiles_false_skips_members_without_a_user(bz, clock, store):
    bz.create_user(external_id="u1", first_name="Annie")
    bz.create_user(alias=("cy@example.com", "email"))
    dest = destination(bz, clock, create_profiles=False)
    assert not dest.capabilities.creates_profiles and dest.capabilities.needs_profile
    first = run(bz, clock, store, BASE, "r1", dest=dest)
    assert (first.added, first.failed, first.skipped_no_profile) == (2, 0, 1)
    assert first.skipped_sample == [{"key": "k2", "reason": "no Braze user with this external id "
                                                            "(create_profiles is false)"}]
    assert bz.user(external_id="u2") is None and len(bz.users) == 2
    assert set(cohort(bz)) == {"u1", ("cy@example.com", "email")} and set(record_ids(store)) == {"k1", "k3"}
    # Existing users get the mapped fields, in Update Only mode: nothing could create a user.
    assert cohort(bz)["u1"]["first_name"] == "Ann"
    sent = [o for r in bz.requests if r.path == TRACK for o in r.body["attributes"]]
    assert sent and all(o["_update_existing_only"] is True for o in sent)

    bz.create_user(external_id="u2")  # created in Braze since
    second = run(bz, clock, store, BASE, "r2", dest=destination(bz, clock, create_profiles=False))
    assert (second.added, second.skipped_no_profile, second.failed) == (1, 0, 0)
    assert set(cohort(bz)) == {"u1", "u2", ("cy@example.com", "email")}


def test_the_sync_may_override_create_profiles(bz, clock, store):
    first = run(bz, clock, store, BASE, "r1", create_profiles=False)
    assert (first.added, first.skipped_no_profile) == (0, 3) and bz.users == {}


def test_batches_at_the_limits(bz, clock, store):
    rows = {f"k{i:03d}": (f"u{i}", None, None, "free") for i in range(76)}
    result = run(bz, clock, store, rows, "r1")
    assert (result.added, result.failed) == (76, 0) and len(cohort(bz)) == 76
    assert [n for p, n, _ in since(bz, 0) if p == TRACK and n] == [75, 1]
    assert [n for p, n, _ in since(bz, 0) if p == USERS and n] == [75, 1]
    # Existence checks go 50 ids a request.
    n = len(bz.requests)
    more = {f"j{i:03d}": (f"u{i}", None, None, "gold") for i in range(60)}
    run(bz, clock, SnapshotStore(store.root, "other"), more, "r2", dest=destination(bz, clock, create_profiles=False))
    assert [k for p, k, _ in since(bz, n) if p == EXPORT] == [50, 10]
    # Past the limit Braze refuses the request as a whole.
    too_many = httpx.post(bz.url + TRACK, headers={"Authorization": f"Bearer {KEYS['api_key']}"},
                          json={"attributes": [{"external_id": f"x{i}"} for i in range(76)]})
    assert (too_many.status_code, too_many.json()["message"]) == (400, "Max Input Length Exceeded")


def test_a_throttle_is_waited_out_until_the_window_resets(bz, clock, store):
    bz.inject_rate_limit(times=2, scope="track", reset_in=2)
    result = run(bz, clock, store, BASE, "r1")
    assert result.failed == 0 and len(cohort(bz)) == 3
    assert [s for p, _, s in since(bz, 0) if p == TRACK] == [429, 429, 400, 201]  # probe throttled twice
    assert clock.sleeps == [2.0, 2.0]


def test_each_endpoint_is_paced_by_its_own_window(clock, store):
    with FakeBraze(partner_name=PARTNER, wall_clock=clock.time, rate_limits={"track": (2, 3.0)}, **KEYS) as bz:
        clock.now = 1_700_000_002.0  # one second into a 3-second window
        rows = {f"k{i}": (f"u{i}", None, None, "free") for i in range(4)}
        result = run(bz, clock, store, rows, "r1", dest=destination(bz, clock, batch_size=1))
        assert result.failed == 0 and len(cohort(bz)) == 4
        # The probe and the first batch spend the window, so the second batch waits 2 s for its reset,
        # the fourth a whole window; the cohort endpoint, unlimited, never waits.
        assert not [s for _, _, s in since(bz, 0) if s == 429]
        assert clock.sleeps == [2.0, 3.0]


def test_5xx_is_retried(bz, clock, store):
    bz.inject_server_error(times=2, status=503, scope="cohorts")
    result = run(bz, clock, store, BASE, "r1")
    assert result.failed == 0 and len(cohort(bz)) == 3


def test_refused_attributes_objects_are_mapped_to_their_rows(bz, clock, store):
    bz.reject_values(["u2", "dee@example.com"], "'external_id' is not valid")
    rows = {**BASE, "k4": (None, "dee@example.com", "Dee", "free"), "k5": ("u5", None, None, "free")}
    result = run(bz, clock, store, rows, "r1")
    assert (result.added, result.failed) == (3, 2)
    assert sorted((e["key"], e["reason"]) for e in result.errors_sample) == [
        ("k2", "Braze refused the user's attributes: 'external_id' is not valid"),
        ("k4", "Braze refused the user's attributes: 'external_id' is not valid")]
    assert set(cohort(bz)) == {"u1", "u5", ("cy@example.com", "email")}
    assert set(record_ids(store)) == {"k1", "k3", "k5"}

    bz.clear_rejected_values()  # the next run sends them again
    again = run(bz, clock, store, rows, "r2")
    assert (again.added, again.failed) == (2, 0) and len(cohort(bz)) == 5


def test_a_batch_braze_refuses_whole_names_every_row(bz, clock, store):
    bz.reject_values(["u1", "u2"])
    result = run(bz, clock, store, {k: BASE[k] for k in ("k1", "k2")}, "r1")
    assert (result.added, result.failed) == (0, 2) and cohort(bz) == {}
    assert [s for p, n, s in since(bz, 0) if p == TRACK and n] == [400]  # the fatal answer, not narrowed
    assert {e["reason"] for e in result.errors_sample} == {"Braze refused the user's attributes: "
                                                           "'u1' is not a valid user identifier",
                                                           "Braze refused the user's attributes: "
                                                           "'u2' is not a valid user identifier"}


@pytest.mark.parametrize(("setting", "named"), [
    ("api_key", "'api_key'"), ("partner_api_key", "'partner_api_key'"), ("client_secret", "'client_secret'")])
def test_credentials_errors_name_the_setting_not_the_secret(bz, clock, store, setting, named):
    wrong = f"wrong-{setting}-s3cr3t"
    with pytest.raises(CredentialsError) as err:
        run(bz, clock, store, BASE, "r1", dest=destination(bz, clock, **{setting: wrong}))
    text = str(err.value)
    assert named in text and wrong not in text and "s3cr3t" not in text
    assert bz.cohorts == {} and bz.users == {} and store.manifest() is None


def test_a_field_braze_cannot_hold_stops_the_run_before_anything_is_sent(bz, clock, store):
    members = table(BASE).append_column("score", pa.array([1.5, 2.0, 3.0]))
    with pytest.raises(TerminalError) as err:
        run(bz, clock, store, BASE, "r1", fields={"dob": "score", "plan": "plan"}, members=members)
    assert "field 'dob'" in str(err.value) and "field 'plan'" not in str(err.value)
    assert bz.users == {} and bz.cohorts == {}
    assert not [r for r in bz.requests if r.path == USERS and r.body["cohort_changes"]]
    with pytest.raises(TerminalError, match="external_id"):
        run(bz, clock, store, BASE, "r1", fields={"external_id": "plan"})
    # Custom attributes are free-form: any kind goes.
    ok = run(bz, clock, store, BASE, "r2", fields={"score": "score", "born_on": "born"}, members=members)
    assert ok.failed == 0 and cohort(bz)["u1"] == {"email": "ann@example.com", "score": 1.5, "born_on": "1990-03-01"}


def test_a_target_id_is_taken_only_in_the_form_this_client_creates(bz, clock, store):
    dest = destination(bz, clock)
    with pytest.raises(TerminalError, match="'9999' is not a cohort id this project creates"):
        dest.check_audience("9999")
    dest.check_audience(cohort_id_for("VIP"))
    assert dest.find_audience("VIP") is None and dest.audience_stats(cohort_id_for("VIP")) is None
    assert cohort_id_for("VIP") == cohort_id_for("VIP") != cohort_id_for("vip")
    result = run(bz, clock, store, BASE, "r1", target=Target(id=cohort_id_for("Made earlier")))
    assert result.failed == 0 and len(bz.members(cohort_id_for("Made earlier"))) == 3


def test_a_lost_create_names_the_same_cohort_again(bz, clock, store):
    bz.inject_lost_answer_on("POST", r"/cohorts$")
    with pytest.raises(DestinationError, match="not sent again"):
        run(bz, clock, store, BASE, "r1")
    run(bz, clock, store, BASE, "r2")
    assert [c["name"] for c in bz.cohorts.values()] == ["VIP"] and len(cohort(bz)) == 3


def test_values_go_in_braze_forms(bz, clock, store):
    at = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
    members = table({"k1": BASE["k1"]}).append_column("seen", pa.array([at], pa.timestamp("us", "UTC")))
    run(bz, clock, store, {}, "r1", fields={"dob": "born", "last_seen": "seen"}, members=members)
    assert cohort(bz)["u1"] == {"email": "ann@example.com", "dob": "1990-03-01",
                                "last_seen": "2024-05-06T07:08:09.000Z"}


def test_a_pre_hashed_email_cannot_name_a_user(bz, clock, store):
    hashed = "a" * 64
    result = run(bz, clock, store, {"k1": (None, hashed, None, "free"), "k2": (None, "b@example.com", None, "free")},
                 "r1")
    assert result.set_aside == 1 and set(cohort(bz)) == {("b@example.com", "email")}


def test_the_throttle_signal_is_the_window_reset(bz, clock):
    dest = destination(bz, clock)
    reset = {"X-RateLimit-Limit": "3000", "X-RateLimit-Remaining": "0"}
    assert dest._throttle_delay(httpx.Response(429, headers={**reset, "X-RateLimit-Reset": str(clock.now + 2.5)})) \
        == 2.5
    # Lower-cased over HTTP/2; a reset already past or missing leaves it to Retry-After or backoff.
    assert dest._throttle_delay(httpx.Response(429, headers={"x-ratelimit-reset": str(clock.now + 1)})) == 1
    assert dest._throttle_delay(httpx.Response(429, headers={**reset, "X-RateLimit-Reset": str(clock.now - 1)})) \
        is None
    assert dest._throttle_delay(httpx.Response(429, headers={"Retry-After": "7"})) is None
    assert dest._throttle_delay(httpx.Response(400, headers={**reset, "X-RateLimit-Reset": str(clock.now + 9)})) \
        is None
    dest.close()


def test_revoked_keys_stop_the_next_run_before_anything_is_sent(bz, clock, store):
    run(bz, clock, store, BASE, "r1")
    snapshot, n = store.read(), len(bz.requests)
    bz.revoke("client_secret")  # the data import key was regenerated in the dashboard
    with pytest.raises(CredentialsError) as err:
        run(bz, clock, store, {"k9": ("u9", None, None, "free")}, "r2")
    assert "'client_secret'" in str(err.value) and KEYS["client_secret"] not in str(err.value)
    assert bz.user(external_id="u9") is None and store.read().equals(snapshot)
    assert not [r for r in bz.requests[n:] if r.body and (r.body.get("attributes") or r.body.get("cohort_changes"))]
