"""Mailchimp tags end to end: run_sync against the FakeMailchimp server, asserting its final state."""

import datetime as dt
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from audience_pipelines.config import configure_destination
from audience_pipelines.contract import RECORD_ID, ConfigError, CredentialsError, EnvSecret, Target, TerminalError
from audience_pipelines.contract.settings import describe_validation
from audience_pipelines.destinations.mailchimp import MailchimpSettings, api_base_url, data_center
from audience_pipelines.destinations.mailchimp.client import NO_MEMBER, MailchimpDestination
from audience_pipelines.engine import RunOptions, SnapshotStore, SyncAborted, SyncSpec, run_sync
from audience_pipelines.identifiers.mailchimp import subscriber_hash, subscriber_hashes
from audience_pipelines_tests.fakes.mailchimp import DEFAULT_MERGE_FIELDS, FakeMailchimp
from audience_pipelines_tests.people import Sleeps, people_table

KEY = "5ec7e75ec7e75ec7e75ec7e75ec7e7ab-us21"
LIST = "b1g115700d"
FIELDS = {"FNAME": "first_name", "PLAN": "plan", "SIGNUP": "signed_up"}
# Mailchimp's documentation example: the member id of urist.mcvankab@freddiesjokes.com.
HASH_VECTOR = ("urist.mcvankab@freddiesjokes.com", "62eeb292278cc15f5817cb78f7790b08")


@pytest.fixture
def mc():
    fields = DEFAULT_MERGE_FIELDS + (("SIGNUP", "date", False), ("SCORE", "number", False))
    with FakeMailchimp(api_key=KEY, list_id=LIST, merge_fields=fields) as server:
        yield server
    assert server.errors == []  # no bug inside the fake


@pytest.fixture
def store(tmp_path):
    return SnapshotStore(tmp_path / "syncs", "mc")


def destination(mc, key=KEY, sleeps=None, **settings):
    return MailchimpDestination(MailchimpSettings(api_key=key, list_id=LIST, base_url=mc.url, timeout_s=2,
                                                  **settings),
                                sleep=sleeps if sleeps is not None else (lambda s: None))


def table(rows: dict) -> pa.Table:
    """rows: key -> (email, first name, plan[, signup date])."""
    return people_table(rows, ("email", "first_name", "plan"), "signed_up")


def run(mc, store, rows, run_id, *, dest=None, target=None, fields=FIELDS, full_resync=False, members=None,
        **spec_kw):
    dest = dest or destination(mc)
    spec = SyncSpec(name="mc", audience="a", destination="mailchimp", target=target or Target(name="VIP"),
                    identifiers={"email": "email"}, fields=fields, **spec_kw)
    try:
        return run_sync(spec, members if members is not None else table(rows), dest, store,
                        RunOptions(run_id=run_id, full_resync=full_resync))
    finally:
        dest.close()


def merge(mc, email, *tags) -> dict:
    fields = mc.member(email)["merge_fields"]
    return {t: fields[t] for t in tags or ("FNAME", "PLAN", "SIGNUP")}


def record_ids(store) -> dict:
    snap = store.read()
    return dict(zip(snap["key"].to_pylist(), snap[RECORD_ID].to_pylist()))


def since(mc, n):
    return [(r.method, r.path.removeprefix(f"/3.0/lists/{LIST}"), r.n_items) for r in mc.requests[n:]]


def writes(calls):
    return [c for c in calls if c[0] in ("POST", "PUT", "PATCH", "DELETE")]


BASE = {"k1": ("ann@example.com", "Ann", "pro", dt.date(2024, 3, 1)),
        "k2": ("  Bob@Example.com ", "Bob", "free"),
        "k3": ("cy@example.com", None, "free")}


# -- identifiers and settings ----------------------------------------------------------------

def test_subscriber_hash_known_vector():
    email, expected = HASH_VECTOR
    assert subscriber_hash(email) == expected
    assert subscriber_hash("  Urist.McVankab@FreddiesJokes.com ") == expected
    assert subscriber_hashes(pa.array([email, None, "", email.upper()])).to_pylist() == [
        expected, None, None, expected]


def test_the_data_center_comes_from_the_key():
    assert data_center(KEY) == "us21" and data_center("abc-US21") is None and data_center("abc") is None
    assert data_center("abc-evil.com/x") is None  # the suffix becomes a host name: letters and digits only
    assert api_base_url(KEY, None) == "https://us21.api.mailchimp.com/3.0"
    assert api_base_url("no-data-center", "http://proxy.local/3.0/") == "http://proxy.local/3.0"
    dest = MailchimpDestination(MailchimpSettings(api_key=KEY, list_id=LIST))
    assert dest.account() == f"us21.api.mailchimp.com/lists/{LIST}"  # created tags are registered per list
    dest.close()


def test_a_key_without_a_data_center_is_refused_naming_the_setting(monkeypatch, tmp_path):
    secret = "a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4"
    with pytest.raises(ValidationError) as err:  # inline: checked when validated
        MailchimpSettings(api_key=secret, list_id=LIST)
    shown = describe_validation(err.value)
    assert shown.startswith("'api_key': ") and "data center" in shown and secret not in shown
    # From the environment: loading reads no secret; opening names the setting, never the key.
    configured = configure_destination("news", "mailchimp", {"list_id": LIST}, {"api_key": "MC_KEY"})
    with pytest.raises(ConfigError) as err:
        configured.open(tmp_path, environ={"MC_KEY": secret})
    assert "destination 'news' (mailchimp): 'api_key'" in str(err.value) and secret not in str(err.value)
    monkeypatch.setenv("MC_KEY", secret)
    settings = MailchimpSettings(api_key=EnvSecret("MC_KEY"), list_id=LIST)  # not read while validating
    with pytest.raises(ConfigError, match="'api_key'") as err:
        MailchimpDestination(settings)
    assert secret not in str(err.value)
    # With base_url set the key needs no data center.
    MailchimpDestination(MailchimpSettings(api_key=secret, list_id=LIST, base_url="http://127.0.0.1:9/3.0")).close()


def test_status_if_new_defaults_to_transactional():
    assert MailchimpSettings(api_key=KEY, list_id=LIST).status_if_new == "transactional"
    with pytest.raises(ValidationError):
        MailchimpSettings(api_key=KEY, list_id=LIST, status_if_new="cleaned")


# -- first run, diffs, removal --------------------------------------------------------------------

def test_first_run_creates_the_tag_and_members_then_sends_only_changes(mc, store):
    mc.add_member("bob@example.com", status="unsubscribed", FNAME="Robert", LNAME="Builder")
    first = run(mc, store, BASE, "r1")
    sid = mc.segment_id_by_name("VIP")
    assert first.destination_audience_id == str(sid) and mc.tags[sid]["type"] == "static"
    assert (first.added, first.failed, first.audience_size) == (3, 0, 3)
    assert mc.tagged(sid) == {"ann@example.com", "bob@example.com", "cy@example.com"}
    assert merge(mc, "ann@example.com") == {"FNAME": "Ann", "PLAN": "pro", "SIGNUP": "2024-03-01"}
    assert merge(mc, "cy@example.com") == {"FNAME": "", "PLAN": "free", "SIGNUP": ""}
    # New members are on the list as transactional (never subscribed silently); Bob keeps his status.
    assert mc.member("ann@example.com")["status"] == mc.member("cy@example.com")["status"] == "transactional"
    bob = mc.member("bob@example.com")
    assert bob["status"] == "unsubscribed" and bob["merge_fields"]["LNAME"] == "Builder"
    assert bob["merge_fields"]["FNAME"] == "Bob" and len(mc.members()) == 3
    assert record_ids(store) == {k: subscriber_hash(v[0]) for k, v in BASE.items()}
    assert record_ids(store)["k1"] == mc.member("ann@example.com")["id"]
    calls = since(mc, 0)
    assert [c for c in calls if c[1] == "/segments" and c[0] == "POST"] == [("POST", "/segments", None)]
    assert [c[0] for c in calls if "/members/" in c[1]] == ["PUT"] * 3  # below batch_threshold: one PUT each

    n = len(mc.requests)
    second = run(mc, store, BASE, "r2")  # a fresh client finds the tag by name; nothing to send
    assert (second.destination_audience_id, second.unchanged, second.attempted) == (str(sid), 3, 0)
    assert writes(since(mc, n)) == [] and len(mc.tags) == 1


def test_a_leaver_loses_the_tag_and_stays_on_the_list(mc, store):
    run(mc, store, BASE, "r1")
    sid = mc.segment_id_by_name("VIP")
    ann_before = mc.member("ann@example.com")
    n = len(mc.requests)
    new = {"k2": ("bob@example.com", "Bobby", "pro"),  # fields changed
           "k3": ("cy2@example.com", None, "free"),  # email changed: another member
           "k4": ("dee@example.com", "Dee", "free")}
    second = run(mc, store, new, "r2", max_removal_share=1.0)
    assert (second.added, second.removed, second.updated, second.failed) == (1, 1, 2, 0)
    assert mc.tagged(sid) == {"bob@example.com", "cy2@example.com", "dee@example.com"}
    calls = since(mc, n)
    # Tag calls: the leaver out, the updated members in, k3's old email out, the joiner in. No member
    # was looked up, deleted or archived.
    assert [c[2] for c in calls if c[:2] == ("POST", f"/segments/{sid}")] == [1, 2, 1, 1]
    assert not [c for c in calls if c[0] in ("GET", "DELETE") and "/members/" in c[1]]
    # Removal took the tag only: Ann is still on the list with her status and merge fields.
    ann = mc.member("ann@example.com")
    assert (ann["status"], ann["merge_fields"], ann["tags"]) == (ann_before["status"], ann_before["merge_fields"], [])
    assert mc.member("cy@example.com")["status"] == "transactional" and mc.member("cy@example.com")["tags"] == []
    assert merge(mc, "bob@example.com") == {"FNAME": "Bobby", "PLAN": "pro", "SIGNUP": ""}
    assert record_ids(store) == {k: subscriber_hash(e) for k, (e, *_) in new.items()}
    assert second.audience_size == 3


def test_a_leaver_sharing_an_email_with_a_member_keeps_the_tag(mc, store):
    rows = {"a": ("same@example.com", "A", "free"), "b": ("Same@example.com", "B", "free"),
            "c": ("c@example.com", "C", "free")}
    run(mc, store, rows, "r1")
    sid = mc.segment_id_by_name("VIP")
    second = run(mc, store, {k: rows[k] for k in ("b", "c")}, "r2")
    assert (second.removed, second.failed) == (0, 0) and second.shared_not_withdrawn == 1
    assert mc.tagged(sid) == {"same@example.com", "c@example.com"}


def test_removal_by_record_id_when_the_row_has_no_email(mc, store):
    run(mc, store, BASE, "r1")
    sid = str(mc.segment_id_by_name("VIP"))
    dest = destination(mc)
    gone = pa.table({"key": ["k1", "x"], "email": pa.array([None, None], pa.string()),
                     RECORD_ID: [subscriber_hash("ann@example.com"), subscriber_hash("nobody@example.com")]})
    n = len(mc.requests)
    answer = dest.remove(sid, gone, None)
    dest.close()
    assert answer.rejected == {}
    assert [c[:2] for c in since(mc, n)] == [("GET", f"/members/{subscriber_hash('ann@example.com')}"),
                                            ("GET", f"/members/{subscriber_hash('nobody@example.com')}"),
                                            ("POST", f"/segments/{sid}")]
    assert mc.tagged(sid) == {"bob@example.com", "cy@example.com"} and mc.member("ann@example.com") is not None


# -- create_profiles ----------------------------------------------------------------------------------

def test_create_profiles_false_skips_people_not_on_the_list(mc, store):
    mc.add_member("ann@example.com", FNAME="Annie")
    mc.add_member("old@example.com")
    mc.archive_member("old@example.com")
    rows = {**{k: BASE[k] for k in ("k1", "k2")}, "k9": ("old@example.com", "Old", "free")}
    dest = destination(mc, create_profiles=False)
    assert not dest.capabilities.creates_profiles and dest.capabilities.needs_profile
    first = run(mc, store, rows, "r1", dest=dest)
    sid = mc.segment_id_by_name("VIP")
    assert (first.added, first.failed, first.skipped_no_profile) == (1, 0, 2)
    assert sorted(s["key"] for s in first.skipped_sample) == ["k2", "k9"]
    assert {s["reason"] for s in first.skipped_sample} == {NO_MEMBER}
    assert mc.member("bob@example.com") is None and mc.member("old@example.com")["status"] == "archived"
    assert not [r for r in mc.requests if r.method == "PUT" or (r.method, r.path) == ("POST", f"/3.0/lists/{LIST}")]
    assert mc.tagged(sid) == {"ann@example.com"} and set(record_ids(store)) == {"k1"}
    # Fields of a member already on the list are written (PATCH, which never creates one).
    assert merge(mc, "ann@example.com") == {"FNAME": "Ann", "PLAN": "pro", "SIGNUP": "2024-03-01"}
    assert mc.member("ann@example.com")["status"] == "subscribed"

    mc.add_member("bob@example.com")  # put on the list in Mailchimp since
    second = run(mc, store, rows, "r2", dest=destination(mc, create_profiles=False))
    assert (second.added, second.skipped_no_profile, second.failed) == (1, 1, 0)
    assert mc.tagged(sid) == {"ann@example.com", "bob@example.com"}
    assert record_ids(store)["k2"] == subscriber_hash("bob@example.com")


def test_the_syncs_create_profiles_overrides_the_destinations(mc, store):
    mc.add_member("known@example.com", FNAME="Kim")
    rows = {"k1": ("known@example.com", "Kim", "gold"), "k2": ("new@example.com", "Neu", "free")}
    result = run(mc, store, rows, "r1", create_profiles=False)
    assert (result.added, result.skipped_no_profile, result.failed) == (1, 1, 0)
    assert mc.member("new@example.com") is None
    again = run(mc, store, rows, "r2", dest=destination(mc, create_profiles=False), create_profiles=True)
    assert (again.added, again.skipped_no_profile) == (1, 0)
    assert mc.tagged(mc.segment_id_by_name("VIP")) == {"known@example.com", "new@example.com"}
    assert mc.member("new@example.com")["status"] == "transactional"


# -- batch subscribe, limits -----------------------------------------------------------------------------

def test_batch_subscribe_creates_new_members_and_patches_existing_ones(mc, store):
    mc.add_member("p1@example.com", status="unsubscribed", FNAME="Old", LNAME="Kept")
    rows = {f"k{i}": (f"p{i}@example.com", f"P{i}", "free") for i in range(5)}
    dest = destination(mc, batch_size=3, batch_threshold=2, status_if_new="pending")
    result = run(mc, store, rows, "r1", dest=dest)
    sid = mc.segment_id_by_name("VIP")
    assert (result.added, result.failed) == (5, 0) and len(mc.tagged(sid)) == 5
    calls = since(mc, 0)
    assert [c for c in calls if c[:2] == ("POST", "")] == [("POST", "", 3), ("POST", "", 2)]  # batch subscribe
    assert [c[2] for c in calls if c[:2] == ("POST", f"/segments/{sid}")] == [3, 2]
    # The existing member was not in a batch with a status: one PATCH wrote its fields.
    assert [c for c in calls if c[0] in ("PUT", "PATCH")] == [
        ("PATCH", f"/members/{subscriber_hash('p1@example.com')}", 1)]
    p1 = mc.member("p1@example.com")
    assert (p1["status"], p1["merge_fields"]["FNAME"], p1["merge_fields"]["LNAME"]) == ("unsubscribed", "P1", "Kept")
    assert {mc.member(f"p{i}@example.com")["status"] for i in (0, 2, 3, 4)} == {"pending"}


def test_batches_of_500_at_the_limit(mc, store):
    rows = {f"p{i:03d}": (f"person{i}@example.com", None, "free") for i in range(501)}
    result = run(mc, store, rows, "r1", dest=destination(mc, batch_threshold=1), fields={"PLAN": "plan"})
    sid = mc.segment_id_by_name("VIP")
    assert (result.added, result.failed, result.audience_size) == (501, 0, 501)
    calls = since(mc, 0)
    assert [c[2] for c in calls if c[:2] == ("POST", "")] == [500, 1]
    assert [c[2] for c in calls if c[:2] == ("POST", f"/segments/{sid}")] == [500, 1]
    assert len(mc.tagged(sid)) == 501


@pytest.mark.parametrize("threshold", [1, 50], ids=["batch-subscribe", "put"])
def test_members_mailchimp_refuses_are_rejected_and_retried(mc, store, threshold):
    mc.reject_emails(["bob@example.com"])
    first = run(mc, store, BASE, "r1", dest=destination(mc, batch_threshold=threshold))
    sid = mc.segment_id_by_name("VIP")
    assert (first.added, first.failed, first.status) == (2, 1, "partial_failure")
    [row] = pq.read_table(first.rejected_path).to_pylist()
    assert (row["key"], row["operation"]) == ("k2", "add")
    assert row["reason"].startswith("Mailchimp refused the member: ") and "bob@example.com looks fake" in row["reason"]
    assert mc.tagged(sid) == {"ann@example.com", "cy@example.com"} and set(record_ids(store)) == {"k1", "k3"}
    mc.clear_rejected_emails()
    second = run(mc, store, BASE, "r2", dest=destination(mc, batch_threshold=threshold))
    assert (second.added, second.failed) == (1, 0) and len(mc.tagged(sid)) == 3


def test_a_member_deleted_between_upsert_and_tag_is_rejected(mc, store):
    class Deleting(MailchimpDestination):
        def _upsert(self, members):
            refused = super()._upsert(members)
            mc.delete_member("cy@example.com")
            return refused

    dest = Deleting(MailchimpSettings(api_key=KEY, list_id=LIST, base_url=mc.url), sleep=lambda s: None)
    first = run(mc, store, BASE, "r1", dest=dest)
    assert (first.added, first.failed) == (2, 1)
    assert first.errors_sample == [{"key": "k3", "operation": "add", "reason": "Mailchimp did not tag the member: "
                                                                            "it is not on the list"}]
    second = run(mc, store, BASE, "r2")
    assert (second.added, second.failed) == (1, 0) and len(mc.tagged(mc.segment_id_by_name("VIP"))) == 3


# -- fields ------------------------------------------------------------------------------------------------

def test_a_mismatched_or_unknown_field_stops_the_run_before_anything_is_sent(mc, store):
    rows = pa.table({"key": ["k1"], "email": ["ann@example.com"], "signed_up": pa.array([dt.date(2024, 1, 2)]),
                     "plan": ["pro"]})
    with pytest.raises(TerminalError) as err:
        run(mc, store, None, "r1", members=rows, fields={"SCORE": "signed_up", "NOPE": "plan", "PLAN": "plan"})
    text = str(err.value)
    assert "field 'SCORE'" in text and "holds a number" in text and "field 'NOPE'" in text and "PLAN" not in text
    assert mc.members() == {} and mc.tags == {} and store.manifest() is None
    assert [r.method for r in mc.requests] == ["GET", "GET"]  # the list, its merge fields


def test_merge_field_values_take_each_types_form(mc, store):
    rows = pa.table({"key": ["k1", "k2"], "email": ["ann@example.com", "bob@example.com"],
                     "born": pa.array([dt.date(1990, 7, 4), None]), "score": pa.array([42, None], pa.int64()),
                     "joined": pa.array([dt.date(2024, 3, 1), None]), "plan": ["pro", None]})
    fields = {"BIRTHDAY": "born", "SCORE": "score", "SIGNUP": "joined", "PLAN": "plan"}
    result = run(mc, store, None, "r1", members=rows, fields=fields)
    assert (result.added, result.failed) == (2, 0)
    assert merge(mc, "ann@example.com", *fields) == {"BIRTHDAY": "07/04", "SCORE": 42, "SIGNUP": "2024-03-01",
                                                     "PLAN": "pro"}
    assert merge(mc, "bob@example.com", *fields) == {"BIRTHDAY": "", "SCORE": "", "SIGNUP": "", "PLAN": ""}


# -- throttles, errors, credentials ------------------------------------------------------------------------

@pytest.mark.parametrize("inject", [
    lambda mc: mc.inject_throttle(times=2, scope="segments"),
    lambda mc: mc.inject_bare_forbidden(times=2, scope="members"),
    lambda mc: mc.inject_server_error(times=2, status=502, scope="members"),
], ids=["429", "bare-403", "502"])
def test_throttles_and_server_errors_are_retried(mc, store, inject):
    inject(mc)
    sleeps = Sleeps()
    result = run(mc, store, BASE, "r1", dest=destination(mc, sleeps=sleeps))
    assert (result.added, result.failed) == (3, 0) and len(sleeps) == 2
    assert len(mc.tagged(mc.segment_id_by_name("VIP"))) == 3


def test_more_connections_than_mailchimp_allows_are_retried(store):
    with FakeMailchimp(api_key=KEY, list_id=LIST, max_connections=2) as mc:
        mc.inject_delay(0.15, times=2, scope="members")  # hold connections open while others arrive
        rows = {f"k{i}": (f"p{i}@example.com", f"P{i}", "free") for i in range(8)}
        dest = destination(mc, concurrency=4, sleeps=lambda s: time.sleep(0.1))  # backoff, shortened
        result = run(mc, store, rows, "r1", dest=dest, fields={"PLAN": "plan"})
        assert (result.added, result.failed) == (8, 0) and len(mc.tagged(mc.segment_id_by_name("VIP"))) == 8
        assert 429 in {r.status for r in mc.requests}


@pytest.mark.parametrize("key", ["0badc0de0badc0de0badc0de0badc0de-us21", KEY.replace("-us21", "-us6")],
                         ids=["revoked", "wrong-data-center"])
def test_a_refused_key_stops_before_anything_is_sent(mc, store, key):
    with pytest.raises(CredentialsError) as err:
        run(mc, store, BASE, "r1", dest=destination(mc, key=key))
    assert "'api_key'" in str(err.value) and key not in str(err.value) and key[:32] not in str(err.value)
    assert mc.members() == {} and mc.tags == {} and store.manifest() is None
    assert {r.status for r in mc.requests} == {401} and len(mc.requests) == 1


def test_a_key_without_permission_stops_the_run_naming_the_setting(mc, store):
    run(mc, store, BASE, "r1")
    mc.inject_forbidden(times=1, scope="segments")
    sleeps = Sleeps()
    with pytest.raises(SyncAborted) as err:
        run(mc, store, {**BASE, "k4": ("dee@example.com", "Dee", "free")}, "r2", dest=destination(mc, sleeps=sleeps))
    assert isinstance(err.value.__cause__, CredentialsError) and sleeps == []  # not retried
    assert "'api_key'" in str(err.value) and "User does not have access" in str(err.value)
    assert mc.tagged(mc.segment_id_by_name("VIP")) == {"ann@example.com", "bob@example.com", "cy@example.com"}


def test_an_unknown_list_is_a_clear_error(mc, store):
    dest = MailchimpDestination(MailchimpSettings(api_key=KEY, list_id="nosuchlist", base_url=mc.url),
                                sleep=lambda s: None)
    with pytest.raises(TerminalError, match="no audience \\(list\\) 'nosuchlist'.*'list_id'"):
        run(mc, store, BASE, "r1", dest=dest)


# -- tags: by id, by name, size ----------------------------------------------------------------------------

def test_target_id_that_does_not_exist_then_one_made_elsewhere(mc, store):
    with pytest.raises(TerminalError, match="no tag 999 in audience"):
        run(mc, store, BASE, "r1", target=Target(id="999"))
    assert mc.tags == {} and mc.members() == {} and store.manifest() is None
    sid = mc.create_segment("made elsewhere")
    result = run(mc, store, BASE, "r2", target=Target(id=str(sid)))
    assert result.destination_audience_id == str(sid) and len(mc.tagged(sid)) == 3


def test_a_saved_segment_is_refused(mc, store):
    sid = mc.create_segment("Engaged", kind="saved")
    with pytest.raises(TerminalError, match="saved segment"):
        run(mc, store, BASE, "r1", target=Target(id=str(sid)))
    assert mc.members() == {} and store.manifest() is None


def test_a_tag_created_by_another_run_meanwhile_is_used(mc):
    dest = destination(mc)
    assert dest.find_audience("VIP") is None
    sid = mc.create_segment("VIP")  # appeared after this client's lookup found nothing
    assert dest.create_audience("VIP") == str(sid) and len(mc.tags) == 1
    dest.close()


def test_tags_are_found_across_pages_and_size_is_read_back(mc):
    for i in range(1004):
        mc.create_segment(f"tag {i}")
    sid = mc.create_segment("VIP")
    mc.add_member("a@example.com")
    mc.add_member("b@example.com")
    mc.tag(sid, "a@example.com", "b@example.com")
    dest = destination(mc)
    assert dest.find_audience("VIP") == str(sid)
    pages = [r for r in mc.requests if r.path.endswith("/segments")]
    assert len(pages) == 2
    assert dest.audience_stats(str(sid)).size == 2
    dest.close()
