"""HubSpot lists end to end: run_sync against the FakeHubSpot server, asserting its final state."""

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audience_pipelines.contract import RECORD_ID, BatchContext, CredentialsError, Target, TerminalError
from audience_pipelines.destinations.hubspot import HubSpotSettings
from audience_pipelines.destinations.hubspot.client import HubSpotDestination
from audience_pipelines.engine import RunOptions, SnapshotStore, SyncAborted, SyncSpec, run_sync
from audience_pipelines_tests.fakes.hubspot import DEFAULT_CONTACT_PROPERTIES, FakeHubSpot
from audience_pipelines_tests.people import Sleeps, people_table

TOKEN = "pat-na1-test-token-s3cr3t"
UPSERT = "/crm/v3/objects/contacts/batch/upsert"
READ = "/crm/v3/objects/contacts/batch/read"
FIELDS = {"firstname": "first_name", "plan": "plan", "signup_date": "signed_up"}


@pytest.fixture
def hs():
    with FakeHubSpot(access_token=TOKEN,
                     contact_properties={**DEFAULT_CONTACT_PROPERTIES, "signup_date": "date"}) as server:
        yield server


@pytest.fixture
def store(tmp_path):
    return SnapshotStore(tmp_path / "syncs", "hs")


def destination(hs, token=TOKEN, sleeps=None, cls=HubSpotDestination, **settings):
    return cls(HubSpotSettings(access_token=token, base_url=hs.url, timeout_s=2, **settings),
               sleep=sleeps if sleeps is not None else (lambda s: None))


def table(rows: dict) -> pa.Table:
    """rows: key -> (email, first name, plan[, signup date])."""
    return people_table(rows, ("email", "first_name", "plan"), "signed_up")


def run(hs, store, rows, run_id, *, dest=None, target=None, fields=FIELDS, full_resync=False, **spec_kw):
    dest = dest or destination(hs)
    spec = SyncSpec(name="hs", audience="a", destination="hubspot", target=target or Target(name="VIP"),
                    identifiers={"email": "email"}, fields=fields, **spec_kw)
    try:
        return run_sync(spec, table(rows), dest, store, RunOptions(run_id=run_id, full_resync=full_resync))
    finally:
        dest.close()


def props(hs, email) -> dict:
    contact = hs.contact_by_email(email)
    return {k: v for k, v in contact["properties"].items() if k in ("email", "firstname", "plan", "signup_date")}


def record_ids(store) -> dict:
    snap = store.read()
    return dict(zip(snap["key"].to_pylist(), snap[RECORD_ID].to_pylist()))


def since(hs, n):
    return [(r.method, r.path, r.n_items) for r in hs.requests[n:]]


BASE = {"k1": ("ann@example.com", "Ann", "pro", dt.date(2024, 3, 1)),
        "k2": ("  Bob@Example.com ", "Bob", "free"),
        "k3": ("cy@example.com", None, "free")}


def test_first_run_creates_list_and_contacts_then_sends_only_changes(hs, store):
    bob = hs.create_contact("bob@example.com", lastname="Builder", firstname="Robert")
    first = run(hs, store, BASE, "r1")
    lid = hs.list_id_by_name("VIP")
    assert first.destination_audience_id == lid and hs.lists[lid]["processingType"] == "MANUAL"
    assert (first.added, first.failed, first.audience_size) == (3, 0, 3)
    assert hs.member_emails(lid) == {"ann@example.com", "bob@example.com", "cy@example.com"}
    assert props(hs, "ann@example.com") == {"email": "ann@example.com", "firstname": "Ann", "plan": "pro",
                                            "signup_date": "2024-03-01"}
    assert props(hs, "cy@example.com") == {"email": "cy@example.com", "firstname": "", "plan": "free",
                                           "signup_date": ""}
    # The existing contact was updated, not duplicated; what was not mapped is left alone.
    assert hs.contact_by_email("bob@example.com")["id"] == bob and len(hs.contacts) == 3
    assert hs.contacts[bob]["firstname"] == "Bob" and hs.contacts[bob]["lastname"] == "Builder"
    ids = {k: hs.contact_by_email(e.strip().lower())["id"] for k, (e, *_) in BASE.items()}
    assert record_ids(store) == ids and hs.members(lid) == set(ids.values())
    assert first.destination_stats["contacts_created"] == 2
    assert [(r.method, r.path) for r in hs.requests if r.path == "/crm/v3/lists"] == [("POST", "/crm/v3/lists")]

    n = len(hs.requests)
    second = run(hs, store, BASE, "r2")  # a fresh client finds the list by name; nothing to send
    assert (second.destination_audience_id, second.unchanged, second.attempted) == (lid, 3, 0)
    assert not [r for r in since(hs, n) if r[0] in ("POST", "PUT")] and len(hs.lists) == 1


def test_leaver_removed_by_record_id_and_changes_update_the_contact(hs, store):
    run(hs, store, BASE, "r1")
    lid = hs.list_id_by_name("VIP")
    ann = hs.contact_by_email("ann@example.com")["id"]
    old_bob = hs.contact_by_email("bob@example.com")["id"]
    n = len(hs.requests)
    new = {"k2": ("bob@example.com", "Bobby", "pro"),  # fields changed
           "k3": ("cy2@example.com", None, "free"),  # email changed: a new contact
           "k4": ("dee@example.com", "Dee", "free")}
    second = run(hs, store, new, "r2", max_removal_share=1.0)
    assert (second.added, second.removed, second.updated, second.failed) == (1, 1, 2, 0)
    assert hs.member_emails(lid) == {"bob@example.com", "cy2@example.com", "dee@example.com"}
    calls = since(hs, n)
    assert ("PUT", f"/crm/v3/lists/{lid}/memberships/remove", 1) in calls
    # The leaver left by its kept record id: no lookup, no search, no contact deleted.
    assert not [c for c in calls if c[1] == READ or "search" in c[1] or c[0] == "DELETE"]
    assert props(hs, "ann@example.com")["firstname"] == "Ann" and ann in hs.contacts
    assert hs.contact_by_email("bob@example.com")["id"] == old_bob
    assert props(hs, "bob@example.com") == {"email": "bob@example.com", "firstname": "Bobby", "plan": "pro",
                                            "signup_date": ""}
    assert hs.contact_by_email("cy@example.com") is not None  # the old contact stays, out of the list
    assert record_ids(store) == {k: hs.contact_by_email(e)["id"] for k, (e, *_) in new.items()}


def test_leaver_sharing_a_contact_with_a_member_stays_in_the_list(hs, store):
    rows = {"a": ("same@example.com", "A", "free"), "b": ("Same@example.com", "B", "free"),
            "c": ("c@example.com", "C", "free")}
    run(hs, store, rows, "r1")
    lid = hs.list_id_by_name("VIP")
    second = run(hs, store, {k: rows[k] for k in ("b", "c")}, "r2")
    assert (second.removed, second.failed) == (0, 0) and second.shared_not_withdrawn == 1
    assert hs.member_emails(lid) == {"same@example.com", "c@example.com"}
    assert set(record_ids(store)) == {"b", "c"}


def test_create_profiles_false_skips_members_without_a_contact(hs, store):
    hs.create_contact("ann@example.com", firstname="Annie")
    rows = {k: BASE[k] for k in ("k1", "k2")}
    dest = destination(hs, create_profiles=False)
    assert not dest.capabilities.creates_profiles and dest.capabilities.needs_profile
    first = run(hs, store, rows, "r1", dest=dest)
    lid = hs.list_id_by_name("VIP")
    assert (first.added, first.failed, first.skipped_no_profile) == (1, 0, 1)
    assert first.skipped_sample == [{"key": "k2", "reason": "no HubSpot contact with this email "
                                                            "(create_profiles is false)"}]
    assert hs.contact_by_email("bob@example.com") is None and len(hs.contacts) == 1
    assert not [r for r in hs.requests if r.path == UPSERT]
    assert hs.member_emails(lid) == {"ann@example.com"} and set(record_ids(store)) == {"k1"}
    # The existing contact gets the mapped fields, by id (no upsert that could create one).
    assert hs.contacts[hs.contact_by_email("ann@example.com")["id"]]["firstname"] == "Ann"

    hs.create_contact("bob@example.com")  # created in HubSpot since
    second = run(hs, store, rows, "r2", dest=destination(hs, create_profiles=False))
    assert (second.added, second.skipped_no_profile, second.failed) == (1, 0, 0)
    assert hs.member_emails(lid) == {"ann@example.com", "bob@example.com"}
    assert record_ids(store)["k2"] == hs.contact_by_email("bob@example.com")["id"]


def test_contacts_deleted_in_hubspot(hs, store):
    run(hs, store, BASE, "r1")
    lid = hs.list_id_by_name("VIP")
    ann = hs.contact_by_email("ann@example.com")["id"]
    cy = hs.contact_by_email("cy@example.com")["id"]
    hs.delete_contact(ann)  # a leaver whose contact is gone: it is in no list, so removed
    hs.delete_contact(cy)  # a member whose contact is gone: a full resend creates it again
    stay = {k: BASE[k] for k in ("k2", "k3")}
    second = run(hs, store, stay, "r2", full_resync=True)
    assert (second.removed, second.failed) == (1, 0)
    new_cy = hs.contact_by_email("cy@example.com")["id"]
    assert new_cy != cy and hs.member_emails(lid) == {"bob@example.com", "cy@example.com"}
    assert set(record_ids(store)) == {"k2", "k3"}

    # When k3 leaves, its kept id may be the deleted contact's: the contact now holding its
    # email is found and taken out.
    third = run(hs, store, {"k2": BASE["k2"]}, "r3")
    assert (third.removed, third.failed) == (1, 0)
    assert hs.member_emails(lid) == {"bob@example.com"} and new_cy in hs.contacts


class _DeletesAfterUpsert(HubSpotDestination):
    """A contact is deleted in HubSpot between the upsert and the membership call."""

    doomed: set

    def _upsert(self, rows, emails, result):
        found = super()._upsert(rows, emails, result)
        for email in self.doomed & set(found):
            self.fake.delete_contact(found[email])
        return found


def test_membership_of_a_contact_deleted_meanwhile_is_rejected_and_retried(hs, store):
    dest = destination(hs, cls=_DeletesAfterUpsert)
    dest.fake, dest.doomed = hs, {"cy@example.com"}
    first = run(hs, store, BASE, "r1", dest=dest)
    lid = first.destination_audience_id
    assert (first.added, first.failed) == (2, 1)
    assert first.errors_sample[0]["key"] == "k3" and "no longer exists in HubSpot" in first.errors_sample[0]["reason"]
    assert set(record_ids(store)) == {"k1", "k2"}
    second = run(hs, store, BASE, "r2")
    assert (second.added, second.failed) == (1, 0)
    assert hs.member_emails(lid) == {"ann@example.com", "bob@example.com", "cy@example.com"}


def test_contact_hubspot_refuses_is_rejected_and_retried(hs, store):
    hs.reject_emails(["bob@example.com"], message="Email address {email} is invalid")
    first = run(hs, store, BASE, "r1")
    lid = first.destination_audience_id
    assert (first.added, first.failed, first.status) == (2, 1, "partial_failure")
    assert pq.read_table(first.rejected_path).to_pylist() == [
        {"key": "k2", "operation": "add",
         "reason": "HubSpot refused the contact: Email address bob@example.com is invalid"}]
    assert hs.member_emails(lid) == {"ann@example.com", "cy@example.com"} and set(record_ids(store)) == {"k1", "k3"}
    hs.clear_rejected_emails()
    second = run(hs, store, BASE, "r2")
    assert (second.added, second.failed) == (1, 0) and len(hs.member_emails(lid)) == 3


@pytest.mark.parametrize("inject, waits", [
    (lambda hs: hs.inject_rate_limit(times=2, policy="TEN_SECONDLY_ROLLING", scope="upsert"), [10.0, 10.0]),
    (lambda hs: hs.inject_rate_limit(times=1, policy="SECONDLY", scope="memberships"), [1.0]),
    (lambda hs: hs.inject_locked(times=1, scope="memberships"), [2.0]),
], ids=["ten-secondly", "secondly", "locked"])
def test_throttles_are_waited_out(hs, store, inject, waits):
    inject(hs)
    sleeps = Sleeps()
    result = run(hs, store, BASE, "r1", dest=destination(hs, sleeps=sleeps))
    assert (result.added, result.failed) == (3, 0) and sleeps == waits
    assert len(hs.member_emails(result.destination_audience_id)) == 3


def test_rate_window_header_sets_the_wait(tmp_path):
    clock = {"now": 0.0}
    sleeps = []

    def sleep(seconds):  # fake time: waiting moves the fake's rolling window on
        sleeps.append(seconds)
        clock["now"] += seconds

    with FakeHubSpot(access_token=TOKEN, rate_limit=3, rate_window=4.0, clock=lambda: clock["now"]) as hs:
        store = SnapshotStore(tmp_path / "syncs", "hs")
        result = run(hs, store, BASE, "r1", dest=destination(hs, sleeps=sleep), fields={})
        assert (result.added, result.failed) == (3, 0) and len(hs.member_emails(result.destination_audience_id)) == 3
    assert sleeps and set(sleeps) == {4.0}  # X-HubSpot-RateLimit-Interval-Milliseconds: 4000


def test_daily_limit_stops_the_run_without_retrying(hs, store):
    run(hs, store, {"k1": BASE["k1"]}, "r1")
    before = store.read()
    hs.inject_rate_limit(times=1, policy="DAILY", scope="upsert")
    n = len(hs.requests)
    with pytest.raises(SyncAborted, match="daily API limit") as err:
        run(hs, store, BASE, "r2")
    assert isinstance(err.value.__cause__, TerminalError)
    assert [r.status for r in hs.requests[n:] if r.path == UPSERT] == [429]
    assert store.read().equals(before)
    third = run(hs, store, BASE, "r3")  # the unanswered rows of r2 are sent again
    assert (third.added + third.updated, third.failed) == (2, 0)
    assert len(hs.member_emails(third.destination_audience_id)) == 3


def test_bad_token_stops_before_anything_is_sent(hs, store):
    with pytest.raises(CredentialsError) as err:
        run(hs, store, BASE, "r1", dest=destination(hs, token="pat-na1-wrong-token"))
    assert "'access_token'" in str(err.value) and "pat-na1-wrong-token" not in str(err.value)
    assert hs.contacts == {} and hs.lists == {} and store.manifest() is None
    assert {r.status for r in hs.requests} == {401} and len(hs.requests) == 1


def test_missing_scopes_are_named():
    lists_only = {"crm.lists.read", "crm.lists.write", "crm.objects.contacts.read"}
    with FakeHubSpot(access_token=TOKEN, scopes={"crm.objects.contacts.write"}) as hs:
        with pytest.raises(CredentialsError, match="crm.lists.read"):
            destination(hs).check_access()
    with FakeHubSpot(access_token=TOKEN, scopes=lists_only) as hs:
        dest = destination(hs)
        dest.check_access()
        lid = dest.create_audience("VIP")
        with pytest.raises(CredentialsError, match=r"lacks the scope\(s\) crm.objects.contacts.write"):
            dest.add(lid, table({"k1": BASE["k1"]}).select(["key", "email"]), BatchContext("s", "r", "add", 1, True))
        assert hs.members(lid) == set() and TOKEN not in repr(dest.settings)


def test_unknown_property_stops_the_run_naming_it_before_anything_is_created(hs, store):
    with pytest.raises(TerminalError) as err:
        run(hs, store, BASE, "r1", fields={"favourite_colour": "plan"})
    assert "field 'favourite_colour': the platform has no property 'favourite_colour'" in str(err.value)
    assert str(err.value).startswith("sync 'hs': hubspot: 1 mapped field(s)")
    assert hs.contacts == {} and hs.lists == {} and store.manifest() is None


def test_a_column_of_the_wrong_kind_for_a_property_stops_the_run_naming_it(hs, store):
    # `signed_up` holds dates; HubSpot's `lifetime_value` holds numbers.
    with pytest.raises(TerminalError) as err:
        run(hs, store, BASE, "r1", fields={"lifetime_value": "signed_up", "plan": "plan"})
    assert ("field 'lifetime_value': a date column (date32[day]) cannot go to property 'lifetime_value', which "
            "holds a number") in str(err.value)
    assert f"(mapped: 'lifetime_value' from column 'signed_up'; {len(BASE)} member(s) not sent" in str(err.value)
    assert hs.contacts == {} and hs.lists == {}


def test_target_id_that_does_not_exist(hs, store):
    with pytest.raises(TerminalError, match="HubSpot list 999 does not exist"):
        run(hs, store, BASE, "r1", target=Target(id="999"))
    assert hs.lists == {} and hs.contacts == {} and store.manifest() is None

    lid = hs.create_list("made elsewhere")
    result = run(hs, store, BASE, "r2", target=Target(id=lid))
    assert result.destination_audience_id == lid and len(hs.member_emails(lid)) == 3


@pytest.mark.parametrize("target", ["name", "id"])
def test_dynamic_list_is_refused(hs, store, target):
    lid = hs.create_list("VIP", processing_type="DYNAMIC")
    with pytest.raises(TerminalError, match="DYNAMIC list"):
        run(hs, store, BASE, "r1", target=Target(name="VIP") if target == "name" else Target(id=lid))
    assert hs.contacts == {} and list(hs.lists) == [lid] and store.manifest() is None


def test_list_created_by_another_run_meanwhile_is_used(hs):
    dest, same, other = destination(hs), destination(hs), destination(hs, token="pat-na1-other-portal")
    lid = hs.create_list("VIP")  # appeared after this client's lookup found nothing
    assert dest.create_audience("VIP") == lid and len(hs.lists) == 1
    # Created lists are registered per portal, told apart by the token without showing it.
    assert dest.account() == same.account() != other.account() and TOKEN not in dest.account()
    for d in (dest, same, other):
        d.close()


def test_batches_of_100_and_snapshot_rows_without_record_ids(hs, store):
    rows = {f"p{i}": (f"person{i}@example.com", f"P{i}", "free") for i in range(230)}
    result = run(hs, store, rows, "r1")
    lid = result.destination_audience_id
    assert (result.added, result.failed, result.audience_size) == (230, 0, 230)
    assert [r.n_items for r in hs.requests if r.path == UPSERT] == [100, 100, 30]

    # A snapshot from before record ids were kept: removal looks the contact up by email first.
    dest = destination(hs)
    gone = pa.table({"key": ["p1", "p2", "x"], "email": ["person1@example.com", "person2@example.com",
                                                         "nobody@example.com"]})
    n = len(hs.requests)
    answer = dest.remove(lid, gone, None)
    dest.close()
    assert answer.rejected == {} and [c[1] for c in since(hs, n)] == [READ, f"/crm/v3/lists/{lid}/memberships/remove"]
    assert len(hs.members(lid)) == 228 and hs.contact_by_email("person1@example.com") is not None


def test_the_syncs_create_profiles_overrides_the_destinations(hs, store):
    hs.create_contact("known@example.com", firstname="Kim")
    rows = {"k1": ("known@example.com", "Kim", "gold"), "k2": ("new@example.com", "Neu", "free")}
    # The destination creates profiles by default; this sync says not to.
    result = run(hs, store, rows, "r1", create_profiles=False)
    assert (result.added, result.skipped_no_profile, result.failed) == (1, 1, 0)
    assert hs.contact_by_email("new@example.com") is None
    assert hs.member_emails(hs.list_id_by_name("VIP")) == {"known@example.com"}
    # And the other way round: a destination that skips, a sync that creates.
    again = run(hs, store, rows, "r2", dest=destination(hs, create_profiles=False), create_profiles=True)
    assert (again.added, again.skipped_no_profile) == (1, 0)
    assert hs.member_emails(hs.list_id_by_name("VIP")) == {"known@example.com", "new@example.com"}
