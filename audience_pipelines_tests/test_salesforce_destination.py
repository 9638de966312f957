"""Salesforce campaigns end to end: run_sync against the FakeSalesforce server, asserting its final state."""

import datetime as dt
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audience_pipelines.contract import RECORD_ID, BatchContext, CredentialsError, Target, TerminalError
from audience_pipelines.destinations.salesforce import SalesforceSettings
from audience_pipelines.destinations.salesforce.bulk import saved_from_error_text
from audience_pipelines.destinations.salesforce.client import SOQL_BUDGET, SalesforceDestination, _in_lists, soql_string
from audience_pipelines.engine import RunOptions, SnapshotStore, SyncAborted, SyncSpec, run_sync
from audience_pipelines_tests.fakes.salesforce import FakeSalesforce
from audience_pipelines_tests.people import Sleeps

FIELDS = {"FirstName": "first_name", "Plan__c": "plan"}
BASE = {"k1": ("ann@example.com", "Ann", "pro"), "k2": ("  Bob@Example.com ", "Bob", "free"),
        "k3": ("cy@example.com", None, "free")}


@pytest.fixture
def sf():
    with FakeSalesforce() as server:
        yield server


@pytest.fixture
def store(tmp_path):
    return SnapshotStore(tmp_path / "syncs", "sf")


def destination(sf, sleeps=None, cls=SalesforceDestination, **settings):
    values = {"instance_url": sf.instance_url, "token_url": sf.token_url, "client_id": sf.client_id,
              "client_secret": sf.client_secret, "refresh_token": sf.refresh_token, "timeout_s": 2,
              "poll_interval_s": 0, **settings}
    return cls(SalesforceSettings(**values), sleep=sleeps if sleeps is not None else (lambda s: None))


def table(rows: dict, signed_up=None) -> pa.Table:
    """rows: key -> (email, first name, plan)."""
    cols = {"key": pa.array(list(rows), pa.string()),
            "email": pa.array([v[0] for v in rows.values()], pa.string()),
            "first_name": pa.array([v[1] for v in rows.values()], pa.string()),
            "plan": pa.array([v[2] for v in rows.values()], pa.string())}
    if signed_up is not None:
        cols["signed_up"] = pa.array(signed_up)
    return pa.table(cols)


def run(sf, store, rows, run_id, *, dest=None, target=None, fields=FIELDS, full_resync=False, signed_up=None,
        **spec_kw):
    dest = dest or destination(sf)
    spec = SyncSpec(name="sf", audience="a", destination="salesforce", target=target or Target(name="VIP"),
                    identifiers={"email": "email"}, fields=fields, **spec_kw)
    try:
        return run_sync(spec, table(rows, signed_up), dest, store, RunOptions(run_id=run_id, full_resync=full_resync))
    finally:
        dest.close()


def lead(sf, email) -> dict:
    found = sf.person_by_email(email)
    return {k: found.get(k) for k in ("Email", "FirstName", "LastName", "Company", "Plan__c")}


def record_ids(store) -> dict:
    snap = store.read()
    return dict(zip(snap["key"].to_pylist(), snap[RECORD_ID].to_pylist()))


def since(sf, n):
    return sf.requests[n:]


def writes(requests, scope):
    return [(r.method, r.n_items) for r in requests if r.scope == scope and r.method != "GET"]


def test_first_run_creates_the_campaign_and_leads_then_sends_only_changes(sf, store):
    bob = sf.create("Lead", Email="bob@example.com", LastName="Builder", Company="Acme", FirstName="Robert")
    first = run(sf, store, BASE, "r1")
    cid = sf.campaign_id_by_name("VIP")
    assert first.destination_audience_id == cid and sf.campaigns[cid]["IsActive"] is True
    assert (first.added, first.failed, first.audience_size) == (3, 0, 3)
    assert sf.member_emails(cid) == {"ann@example.com", "bob@example.com", "cy@example.com"}
    # New Leads: mapped fields plus the required defaults; the existing one updated, not duplicated.
    assert lead(sf, "ann@example.com") == {"Email": "ann@example.com", "FirstName": "Ann", "LastName": "[not provided]",
                                           "Company": "[not provided]", "Plan__c": "pro"}
    assert lead(sf, "bob@example.com") == {"Email": "bob@example.com", "FirstName": "Bob", "LastName": "Builder",
                                           "Company": "Acme", "Plan__c": "free"}
    assert sf.person_by_email("bob@example.com")["Id"] == bob and len(sf.leads) == 3
    members = sf.members(cid)
    assert record_ids(store) == {k: members[sf.person_by_email(e.strip().lower())["Id"]] for k, (e, *_) in BASE.items()}
    assert {m["Status"] for m in sf.campaign_members.values()} == {"Sent"}
    stats = first.destination_stats
    assert (stats["profiles_created"], stats["profiles_updated"]) == (2, 1)
    assert stats["api_limit"] == 15_000 and 0 < stats["api_usage"] <= sf.api_used

    n = len(sf.requests)
    second = run(sf, store, BASE, "r2")  # a fresh client finds the campaign by name; nothing to send
    assert (second.destination_audience_id, second.unchanged, second.attempted) == (cid, 3, 0)
    assert not [r for r in since(sf, n) if r.method != "GET" and r.scope != "token"] and len(sf.campaigns) == 1


def test_removal_deletes_the_campaign_member_by_record_id_and_keeps_the_lead(sf, store):
    run(sf, store, BASE, "r1")
    cid = sf.campaign_id_by_name("VIP")
    ann = sf.person_by_email("ann@example.com")["Id"]
    ann_member = record_ids(store)["k1"]
    n = len(sf.requests)
    second = run(sf, store, {k: BASE[k] for k in ("k2", "k3")}, "r2")
    assert (second.removed, second.failed) == (1, 0)
    calls = since(sf, n)
    assert [(r.method, r.path) for r in calls if r.method == "DELETE"] == [("DELETE", "/composite/sobjects")]
    assert not [r for r in calls if r.soql and ("Lead" in r.soql or "CampaignMember" in r.soql)]  # no search
    assert sf.deleted_by_api == [ann_member]
    assert sf.member_emails(cid) == {"bob@example.com", "cy@example.com"}
    assert lead(sf, "ann@example.com")["Plan__c"] == "pro" and sf.person(ann)["FirstName"] == "Ann"


def test_changed_fields_update_the_lead_and_a_changed_email_moves_the_membership(sf, store):
    run(sf, store, BASE, "r1")
    cid = sf.campaign_id_by_name("VIP")
    old_cy = sf.person_by_email("cy@example.com")["Id"]
    old_member = record_ids(store)["k3"]
    new = {"k1": BASE["k1"], "k2": ("bob@example.com", "Bobby", "pro"), "k3": ("cy2@example.com", "Cy", "free")}
    second = run(sf, store, new, "r2")
    assert (second.added, second.removed, second.updated, second.failed) == (0, 0, 2, 0)
    assert lead(sf, "bob@example.com")["FirstName"] == "Bobby" and lead(sf, "bob@example.com")["Plan__c"] == "pro"
    assert sf.member_emails(cid) == {"ann@example.com", "bob@example.com", "cy2@example.com"}
    assert sf.deleted_by_api == [old_member] and sf.person(old_cy) is not None  # the old Lead stays
    assert record_ids(store)["k3"] == sf.members(cid)[sf.person_by_email("cy2@example.com")["Id"]]


def test_create_profiles_false_skips_and_counts_members_without_a_lead(sf, store):
    sf.create("Lead", Email="ann@example.com", LastName="Lee", Company="Acme")
    rows = {k: BASE[k] for k in ("k1", "k2")}
    dest = destination(sf, create_profiles=False)
    assert not dest.capabilities.creates_profiles and dest.capabilities.needs_profile
    first = run(sf, store, rows, "r1", dest=dest)
    cid = sf.campaign_id_by_name("VIP")
    assert (first.added, first.failed, first.skipped_no_profile) == (1, 0, 1)
    assert first.skipped_sample == [{"key": "k2", "reason": "no Salesforce Lead with this email "
                                                            "(create_profiles is false)"}]
    assert sf.person_by_email("bob@example.com") is None and len(sf.leads) == 1
    assert sf.member_emails(cid) == {"ann@example.com"} and set(record_ids(store)) == {"k1"}
    assert lead(sf, "ann@example.com")["Plan__c"] == "pro"  # mapped fields go to a Lead found, created or not

    sf.create("Lead", Email="bob@example.com", LastName="Builder", Company="Acme")  # created in Salesforce since
    second = run(sf, store, rows, "r2", dest=destination(sf, create_profiles=False))
    assert (second.added, second.skipped_no_profile, second.failed) == (1, 0, 0)
    assert sf.member_emails(cid) == {"ann@example.com", "bob@example.com"}


def test_the_syncs_create_profiles_overrides_the_destinations(sf, store):
    rows = {k: BASE[k] for k in ("k1", "k2")}
    first = run(sf, store, rows, "r1", create_profiles=False)
    assert (first.added, first.skipped_no_profile) == (0, 2) and sf.leads == {}
    second = run(sf, store, rows, "r2", dest=destination(sf, create_profiles=False), create_profiles=True)
    assert (second.added, second.skipped_no_profile) == (2, 0) and len(sf.leads) == 2


def test_contacts_with_their_own_required_defaults(sf, store):
    dest = destination(sf, person_object="Contact", required_defaults={"LastName": "Unknown"},
                       member_status="Responded")
    result = run(sf, store, BASE, "r1", dest=dest, fields={"LastName": "first_name"})
    cid = result.destination_audience_id
    assert (result.added, result.failed, result.audience_size) == (3, 0, 3) and sf.leads == {}
    assert {c["Email"]: c["LastName"] for c in sf.contacts.values()} == {
        "ann@example.com": "Ann", "bob@example.com": "Bob", "cy@example.com": "Unknown"}  # no name: the default
    assert all(m["ContactId"] and "LeadId" not in m and m["Status"] == "Responded"
               for m in sf.campaign_members.values())
    assert set(sf.members(cid)) == set(sf.contacts)


def test_a_person_already_in_the_campaign_is_accepted_with_that_member_id(sf, store):
    cid = sf.create("Campaign", Name="VIP", IsActive=True)
    ann = sf.create("Lead", Email="ann@example.com", LastName="Lee", Company="Acme")
    existing = sf.create("CampaignMember", CampaignId=cid, LeadId=ann, Status="Responded")
    result = run(sf, store, BASE, "r1")
    assert (result.destination_audience_id, result.added, result.failed) == (cid, 3, 0)
    assert record_ids(store)["k1"] == existing and sf.campaign_members[existing]["Status"] == "Responded"
    assert len(sf.members(cid)) == 3


def test_per_record_refusals_are_mapped_to_their_rows_and_retried(sf, store):
    sf.reject_emails(["bob@example.com"], message="Emails at example.com need approval")
    first = run(sf, store, BASE, "r1")
    cid = first.destination_audience_id
    assert (first.added, first.failed, first.status) == (2, 1, "partial_failure")
    assert pq.read_table(first.rejected_path).to_pylist() == [
        {"key": "k2", "operation": "add", "reason": "Salesforce refused to create the Lead: "
                  "FIELD_CUSTOM_VALIDATION_EXCEPTION: Emails at example.com need approval"}]
    assert sf.member_emails(cid) == {"ann@example.com", "cy@example.com"} and set(record_ids(store)) == {"k1", "k3"}
    sf.clear_rejected_emails()
    second = run(sf, store, BASE, "r2")
    assert (second.added, second.failed) == (1, 0) and len(sf.member_emails(cid)) == 3


def test_collections_carry_200_records_a_request(sf, store):
    rows = {f"p{i}": (f"person{i}@example.com", f"P{i}", "free") for i in range(450)}
    result = run(sf, store, rows, "r1")
    assert (result.added, result.failed, result.audience_size) == (450, 0, 450)
    assert writes(sf.requests, "people") == [("POST", 200), ("POST", 200), ("POST", 50)]
    assert writes(sf.requests, "members") == [("POST", 200), ("POST", 200), ("POST", 50)]
    assert not sf.jobs  # under bulk_threshold (2,000): no Bulk API job


def test_bulk_api_jobs_from_the_threshold_on(sf, store):
    sf.running_polls = 3
    rows = {f"p{i}": (f"person{i}@example.com", f"P{i}", "free") for i in range(120)}
    seeded = sf.create("Campaign", Name="VIP", IsActive=True)
    p7 = sf.create("Lead", Email="person7@example.com", LastName="Seven", Company="Acme")
    already = sf.create("CampaignMember", CampaignId=seeded, LeadId=p7)
    dest = destination(sf, bulk_threshold=100)
    first = run(sf, store, rows, "r1", dest=dest)
    assert (first.added, first.failed, first.audience_size) == (120, 0, 120)
    [job] = sf.jobs.values()
    assert (job["object"], job["operation"], job["state"]) == ("CampaignMember", "insert", "JobComplete")
    assert (job["numberRecordsProcessed"], job["numberRecordsFailed"]) == (120, 1)  # p7 was a member already
    assert not writes(sf.requests, "members") and first.destination_stats["bulk_jobs"] == 1
    members = sf.members(seeded)
    # Results come back in no set order: each row still gets its own person's CampaignMember id.
    assert record_ids(store) == {k: members[sf.person_by_email(e)["Id"]] for k, (e, *_) in rows.items()}
    assert record_ids(store)["p7"] == already

    sf.refuse_member_deletes(["person3@example.com"])
    stay = {k: v for k, v in rows.items() if int(k[1:]) >= 110}
    second = run(sf, store, stay, "r2", dest=destination(sf, bulk_threshold=100), max_removal_share=1.0)
    jobs = list(sf.jobs.values())
    assert (jobs[-1]["operation"], jobs[-1]["numberRecordsProcessed"]) == ("delete", 110)
    assert (second.removed, second.failed) == (109, 1)
    assert second.errors_sample == [{"key": "p3", "operation": "remove", "reason": (
        f"Salesforce refused to delete CampaignMember {record_ids(store)['p3']}: INSUFFICIENT_ACCESS_OR_READONLY: "
        "insufficient access rights on object id")}]
    assert sf.member_emails(seeded) == {"person3@example.com"} | {e for e, *_ in stay.values()}
    assert len(sf.leads) == 120  # no Lead deleted


def test_a_bulk_upload_whose_answer_was_lost_is_never_sent_again(sf, store):
    rows = {f"p{i}": (f"person{i}@example.com", None, "free") for i in range(5)}
    sf.inject_lost_answer_on("PUT", r"/jobs/ingest/\w+/batches$")
    sf.inject_lost_answer_on("PATCH", r"/jobs/ingest/\w+$")  # the close is applied, its answer lost
    result = run(sf, store, rows, "r1", dest=destination(sf, bulk_threshold=1))
    assert (result.added, result.failed) == (5, 0)
    first, second = sf.jobs.values()
    assert (first["state"], first["uploads"]) == ("Aborted", 1)  # its upload arrived, but the job never ran
    assert (second["state"], second["uploads"], second["numberRecordsProcessed"]) == ("JobComplete", 1, 5)
    assert len(sf.members(result.destination_audience_id)) == 5


def test_a_lost_answer_to_a_lead_creation_is_not_sent_again_and_the_next_run_finds_the_leads(sf, store):
    sf.inject_lost_answer(scope="people")
    first = run(sf, store, BASE, "r1")
    assert (first.added, first.failed) == (0, 3) and "not sent again" in first.errors_sample[0]["reason"]
    assert len(sf.leads) == 3  # created, though the answer never came
    second = run(sf, store, BASE, "r2")
    assert (second.added, second.failed) == (3, 0) and len(sf.leads) == 3
    assert len(sf.members(second.destination_audience_id)) == 3


class _RacedByAnotherRun(SalesforceDestination):
    """Another run creates the same Lead between this run's lookup and its create."""

    def find_people(self, emails):
        found = super().find_people(emails)
        if "bob@example.com" in emails and "bob@example.com" not in found:
            self.other = self.fake.create("Lead", Email="bob@example.com", LastName="Other", Company="Run")
        return found


def test_leads_created_twice_by_racing_runs_settle_on_the_oldest(sf, store):
    dest = destination(sf, cls=_RacedByAnotherRun)
    dest.fake = sf
    result = run(sf, store, BASE, "r1", dest=dest)
    assert (result.added, result.failed) == (3, 0) and result.destination_stats["duplicates_removed"] == 1
    [bob] = [lid for lid, lead_ in sf.leads.items() if lead_["Email"] == "bob@example.com"]
    assert bob == dest.other and sf.person(bob)["FirstName"] == "Bob"  # the sync's fields written to it
    assert bob in sf.members(result.destination_audience_id) and len(sf.leads) == 3
    assert len(sf.deleted_by_api) == 1 and sf.deleted_by_api[0].startswith("00Q")  # only its own duplicate


def test_the_concurrent_request_limit_is_waited_out_and_5xx_retried(sf, store):
    sf.inject_request_limit(times=2, kind="concurrent", scope="members")
    sf.inject_server_error(times=1, status=503, scope="query")
    sleeps = Sleeps()
    result = run(sf, store, BASE, "r1", dest=destination(sf, sleeps=sleeps))
    assert (result.added, result.failed) == (3, 0) and len(sleeps) == 3
    assert [r.status for r in sf.requests if r.scope == "members"] == [403, 403, 200]
    assert len(sf.members(result.destination_audience_id)) == 3


def test_the_daily_allocation_exhausted_stops_the_run_without_retrying(sf, store):
    run(sf, store, {"k1": BASE["k1"]}, "r1")
    before = store.read()
    sf.api_limit = sf.api_used + 3  # token, describe, campaign check: then the allocation is gone
    n = len(sf.requests)
    with pytest.raises(SyncAborted, match="daily API request allocation is exhausted") as err:
        run(sf, store, BASE, "r2")
    assert isinstance(err.value.__cause__, TerminalError) and "TotalRequests" in str(err.value)
    assert [r.status for r in since(sf, n) if r.status == 403] == [403]  # not retried
    assert store.read().equals(before) and len(sf.leads) == 1
    sf.api_limit = 15_000
    third = run(sf, store, BASE, "r3")  # r2's journalled rows are sent again
    assert (third.added + third.updated, third.failed) == (2, 0)
    assert len(sf.members(third.destination_audience_id)) == 3


def test_an_expired_session_is_renewed_once(sf, store):
    dest = destination(sf)
    dest.check_access()
    sf.expire_sessions()
    result = run(sf, store, BASE, "r1", dest=dest)
    assert (result.added, result.failed) == (3, 0)
    assert [r.scope for r in sf.requests].count("token") == 2

    dest = destination(sf)
    dest.check_access()
    sf.expire_sessions()
    sf.revoke_refresh_token()
    with pytest.raises(CredentialsError, match="'refresh_token'") as err:
        dest.check_audience(result.destination_audience_id)
    assert "5Aep861fake" not in str(err.value)


@pytest.mark.parametrize("setting, value, named", [
    ("refresh_token", "5Aep861wrong.token", "'refresh_token'"),
    ("client_secret", "wrong-secret", "'client_id/client_secret'"),
    ("client_id", "3MVG9wrong.key", "'client_id'"),
])
def test_bad_credentials_stop_before_anything_is_sent(sf, store, setting, value, named):
    with pytest.raises(CredentialsError) as err:
        run(sf, store, BASE, "r1", dest=destination(sf, **{setting: value}))
    assert named in str(err.value) and value not in str(err.value)
    assert sf.campaigns == {} and sf.leads == {} and store.manifest() is None
    assert [r.scope for r in sf.requests] == ["token"]


def test_field_kinds_are_checked_before_anything_is_sent(sf, store):
    signed_up = [dt.date(2024, 1, 2)] * 3
    with pytest.raises(TerminalError) as err:  # a date column to a number field
        run(sf, store, BASE, "r1", fields={"Score__c": "signed_up", "Plan__c": "plan"}, signed_up=signed_up)
    assert "field 'Score__c'" in str(err.value) and "Plan__c" not in str(err.value)
    with pytest.raises(TerminalError, match="field 'CreatedDate' is not updateable"):
        run(sf, store, BASE, "r1", fields={"CreatedDate": "signed_up"}, signed_up=signed_up)
    with pytest.raises(TerminalError, match="no property 'Favourite_Colour__c'"):
        run(sf, store, BASE, "r1", fields={"Favourite_Colour__c": "plan"})
    assert sf.leads == {} and sf.campaign_members == {} and store.manifest() is None
    assert not [r for r in sf.requests if r.scope in ("people", "members")]

    ok = run(sf, store, BASE, "r1", fields={"Signup_Date__c": "signed_up"}, signed_up=signed_up)
    assert ok.added == 3 and lead(sf, "ann@example.com")["Email"] == "ann@example.com"
    assert sf.person_by_email("ann@example.com")["Signup_Date__c"] == "2024-01-02"


def test_campaign_by_id_and_an_unknown_id(sf, store):
    with pytest.raises(TerminalError, match="campaign 7015g000000NOPEAAA does not exist"):
        run(sf, store, BASE, "r1", target=Target(id="7015g000000NOPEAAA"))
    assert sf.campaigns == {} and sf.leads == {} and store.manifest() is None
    cid = sf.create("Campaign", Name="Made elsewhere")
    result = run(sf, store, BASE, "r2", target=Target(id=cid))
    assert result.destination_audience_id == cid and len(sf.members(cid)) == 3 and len(sf.campaigns) == 1


def test_campaign_names_are_escaped_and_found_exactly_across_pages(sf, store):
    sf.page_size = 1
    name = "Bob's \\ VIP"
    first = run(sf, store, BASE, "r1", target=Target(name=name))
    assert [c["Name"] for c in sf.campaigns.values()] == [name]
    # SOQL's = ignores case: a look-up finds both, a page each, and takes the exact name.
    older = sf.create("Campaign", Name="bob's \\ vip")
    dest = destination(sf)
    assert dest.find_audience(name) == first.destination_audience_id
    assert any(r.path.startswith("/query/01g") for r in sf.requests)  # followed nextRecordsUrl
    assert dest.find_audience("BOB'S \\ VIP") in (first.destination_audience_id, older)  # no exact one: the oldest
    dest.close()


def test_soql_literals_and_in_lists():
    assert soql_string("O'Brien \\ \"x\"\n") == "'O\\'Brien \\\\ \\\"x\\\"\\n'"
    emails = [f"{'x' * 60}{i}@example.com" for i in range(600)]
    chunks = list(_in_lists(emails))
    assert len(chunks) > 1 and all(len(quote(c, safe="")) <= SOQL_BUDGET + 3 * 600 for c in chunks)
    assert [e.strip("'") for c in chunks for e in c.split(",")] == emails


def test_bulk_error_text_is_read():
    saved = saved_from_error_text("REQUIRED_FIELD_MISSING:Required fields are missing: [LastName]:LastName --")
    assert (saved.code, saved.message, saved.fields) == ("REQUIRED_FIELD_MISSING",
                                                         "Required fields are missing: [LastName]", ("LastName",))
    assert saved_from_error_text("DUPLICATE_VALUE:Already a campaign member.:--").fields == ()


def test_a_deleted_campaign_stops_the_run(sf, store):
    first = run(sf, store, {"k1": BASE["k1"]}, "r1")
    dest = destination(sf)
    dest.check_access()
    sf.delete(first.destination_audience_id)
    with pytest.raises(TerminalError, match="can no longer take members"):
        dest.add(first.destination_audience_id, table({"k2": BASE["k2"]}).select(["key", "email"]),
                 BatchContext("s", "r", "add", 1, True))
    dest.close()


def test_required_defaults_must_name_fields_of_the_person_object(sf, store):
    with pytest.raises(TerminalError, match="'required_defaults' names field\\(s\\) Compnay"):
        run(sf, store, BASE, "r1", dest=destination(sf, required_defaults={"Compnay": "x", "LastName": "y"}))
    assert sf.campaigns == {} and sf.leads == {}


def test_settings():
    s = SalesforceSettings(instance_url="https://acme.my.salesforce.com/", client_id="k", client_secret="s",
                           refresh_token="5Aep-s3cr3t", api_version="62.0", person_object="Contact")
    assert (s.instance_url, s.api_version, s.required_defaults) == ("https://acme.my.salesforce.com", "v62.0",
                                                                    {"LastName": "[not provided]"})
    assert SalesforceSettings(instance_url="https://acme.my.salesforce.com", client_id="k", client_secret="s",
                              refresh_token="r").required_defaults == {"Company": "[not provided]",
                                                                       "LastName": "[not provided]"}
    with pytest.raises(ValueError):
        SalesforceSettings(instance_url="acme", client_id="k", client_secret="s", refresh_token="r")
    assert "s3cr3t" not in repr(s) and "s3cr3t" not in str(s.model_dump())  # secrets stay out of reprs
