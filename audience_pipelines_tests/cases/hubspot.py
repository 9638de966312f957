"""HubSpot lists in the contract suite."""

from __future__ import annotations

from audience_pipelines.destinations.hubspot import HubSpotSettings
from audience_pipelines.destinations.hubspot.client import HubSpotDestination
from audience_pipelines_tests.cases import TIMEOUT_S
from audience_pipelines_tests.fakes.hubspot import FakeHubSpot
from audience_pipelines_tests.faults import PlatformCase

TOKEN = "pat-na1-matrix-token"


class HubSpotCase(PlatformCase):
    name = "hubspot"
    fields = {"plan": "plan"}  # a CRM keeps contact properties too
    create_request = ("POST", r"/crm/v3/lists/?$")
    fake_cls, fake_args, client_cls = FakeHubSpot, {"access_token": TOKEN}, HubSpotDestination
    audiences, find_audience = "lists", "list_id_by_name"
    clear_refusals = "clear_rejected_emails"

    def settings(self, **overrides) -> HubSpotSettings:
        return HubSpotSettings(**{"access_token": TOKEN, "base_url": self.fake.url, "timeout_s": TIMEOUT_S,
                                  **overrides})

    def state(self, name: str = "vip"):
        lid = self.audience_id(name)
        if not lid:
            return {}
        contacts = self.fake.contacts  # a copy of them all: taken once
        return {cid: (contacts[cid]["email"], contacts[cid].get("plan")) for cid in self.fake.members(lid)}

    def profiles(self):
        return {c["email"]: c.get("plan") for c in self.fake.contacts.values()}

    def expected(self, members):
        by_email = {c["email"]: cid for cid, c in self.fake.contacts.items()}  # a copy of them all: taken once
        return {by_email.get(e, f"no contact for {e}"): (e, p) for e, p in members.values()}

    faults = {
        "throttle": lambda c: c.fake.inject_rate_limit(times=8),  # past the 6 attempts
        "5xx": lambda c: c.fake.inject_server_error(times=2, status=502),
        "connection reset": lambda c: c.fake.inject_reset(times=2, scope="memberships"),
        "timeout": lambda c: c.fake.inject_delay(TIMEOUT_S * 3, times=1, scope="upsert"),
        "answer lost after apply": lambda c: c.fake.inject_lost_answer(times=2, scope="memberships"),
        # k3's new email and the joiner k20; a removal has no per-row refusal in HubSpot
        "per-row rejection": lambda c: c.fake.reject_emails(["moved3@example.com", "user20@example.com"]),
        "bad credentials": lambda c: c.destination(access_token="pat-na1-revoked"),
    }


CASES = [HubSpotCase]
