"""Salesforce campaigns in the contract suite: sObject Collections, and the same over Bulk API 2.0 jobs."""

from __future__ import annotations

from audience_pipelines.destinations.salesforce import SalesforceSettings
from audience_pipelines.destinations.salesforce.client import SalesforceDestination
from audience_pipelines_tests.cases import TIMEOUT_S
from audience_pipelines_tests.fakes.salesforce import FakeSalesforce
from audience_pipelines_tests.faults import PlatformCase


class SalesforceCase(PlatformCase):
    name = "salesforce"
    fields = {"Plan__c": "plan"}  # a CRM keeps the person's fields too
    create_request = ("POST", r"/sobjects/Campaign$")
    fake_cls, client_cls = FakeSalesforce, SalesforceDestination
    audiences, name_key, find_audience = "campaigns", "Name", "campaign_id_by_name"
    clear_refusals = "clear_rejected_emails"
    bulk_threshold = 2_000  # the engine's batches of 2 stay on collections

    def settings(self, **overrides) -> SalesforceSettings:
        return SalesforceSettings(**{
            "instance_url": self.fake.instance_url, "token_url": self.fake.token_url, "client_id": self.fake.client_id,
            "client_secret": self.fake.client_secret, "refresh_token": self.fake.refresh_token,
            "timeout_s": TIMEOUT_S, "bulk_threshold": self.bulk_threshold, "poll_interval_s": 0.01,
            "poll_timeout_s": 5, **overrides})

    def state(self, name: str = "vip"):
        cid = self.audience_id(name)
        if not cid:
            return {}
        return {pid: (self.fake.person(pid)["Email"], self.fake.person(pid).get("Plan__c"))
                for pid in self.fake.members(cid)}

    def profiles(self):
        return {lead["Email"]: lead.get("Plan__c") for lead in self.fake.leads.values()}

    def expected(self, members):
        leads = {lead["Email"]: lid for lid, lead in self.fake.leads.items()}
        return {leads.get(e, f"no Lead for {e}"): (e, p) for e, p in members.values()}

    faults = {
        # Salesforce has no 429: the concurrent long-request limit is a 403 REQUEST_LIMIT_EXCEEDED.
        "throttle": lambda c: c.fake.inject_request_limit(times=8, kind="concurrent"),  # past the 6 attempts
        "5xx": lambda c: c.fake.inject_server_error(times=2, status=503),
        "connection reset": lambda c: c.fake.inject_reset(times=2, scope="members"),
        # Member calls are retried (an insert twice is DUPLICATE_VALUE, a delete twice ENTITY_IS_DELETED).
        "timeout": lambda c: c.fake.inject_delay(TIMEOUT_S * 3, times=1, scope="members"),
        "answer lost after apply": lambda c: c.fake.inject_lost_answer(times=2, scope="members"),
        # k3's new email and the joiner k20 are refused as Leads; the leaver k1's member may not be deleted.
        "per-row rejection": lambda c: (c.fake.reject_emails(["moved3@example.com", "user20@example.com"]),
                                        c.fake.refuse_member_deletes(["user1@example.com"]))[0],
        "bad credentials": lambda c: c.destination(refresh_token="5Aep861revoked.token"),
    }


class SalesforceBulkCase(SalesforceCase):
    """Every member insert and delete as a Bulk API 2.0 ingest job."""

    name = "salesforce (bulk)"
    bulk_threshold = 1
    faults = {**SalesforceCase.faults,
              "connection reset": lambda c: c.fake.inject_reset(times=2, scope="bulk"),
              "timeout": lambda c: c.fake.inject_delay(TIMEOUT_S * 3, times=1, scope="bulk"),
              "answer lost after apply": lambda c: c.fake.inject_lost_answer(times=2, scope="bulk")}


CASES = [SalesforceCase, SalesforceBulkCase]
