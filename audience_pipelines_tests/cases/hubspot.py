"""HubSpot lists in the contract suite."""

from __future__ import annotations

import contextlib

from audience_pipelines.destinations.hubspot import HubSpotSettings
from audience_pipelines.destinations.hubspot.client import HubSpotDestination
from audience_pipelines_tests.cases import TIMEOUT_S
from audience_pipelines_tests.fakes.hubspot import FakeHubSpot
from audience_pipelines_tests.faults import Case, plain_settings

TOKEN = "pat-na1-matrix-token"


class HubSpotCase(Case):
    name = "hubspot"

    names_audiences = True
    create_request = ("POST", r"/crm/v3/lists/?$")

    def audience_names(self):
        return [entry["name"] for entry in self.fake.lists.values()]

    def __init__(self, fake: FakeHubSpot):
        self.fake = fake

    def settings(self, token=TOKEN) -> HubSpotSettings:
        return HubSpotSettings(access_token=token, base_url=self.fake.url, timeout_s=TIMEOUT_S)

    def destination(self, token=TOKEN):
        return HubSpotDestination(self.settings(token), sleep=lambda s: None)

    def spec(self):
        return "hubspot", plain_settings(self.settings())

    def state(self):
        lid = self.fake.list_id_by_name("vip")
        if not lid:
            return {}
        return {cid: (self.fake.contacts[cid]["email"], self.fake.contacts[cid].get("plan"))
                for cid in self.fake.members(lid)}

    def expected(self, members):
        by_email = {self.fake.contacts[c]["email"]: c for c in self.fake.contacts}
        return {by_email.get(e, f"no contact for {e}"): (e, p) for e, p in members.values()}

    def disarm(self):
        self.fake.clear_injections()
        self.fake.clear_rejected_emails()

    faults = {
        "throttle": lambda c: c.fake.inject_rate_limit(times=8),  # past the 6 attempts
        "5xx": lambda c: c.fake.inject_server_error(times=2, status=502),
        "connection reset": lambda c: c.fake.inject_reset(times=2, scope="memberships"),
        "timeout": lambda c: c.fake.inject_delay(TIMEOUT_S * 3, times=1, scope="upsert"),
        "answer lost after apply": lambda c: c.fake.inject_lost_answer(times=2, scope="memberships"),
        # k3's new email and the joiner k20; a removal has no per-row refusal in HubSpot
        "per-row rejection": lambda c: c.fake.reject_emails(["moved3@example.com", "user20@example.com"]),
        "bad credentials": lambda c: c.destination(token="pat-na1-revoked"),
    }

    @classmethod
    @contextlib.contextmanager
    def open(cls, tmp_path):
        with FakeHubSpot(access_token=TOKEN) as server:
            yield cls(server)


CASES = [HubSpotCase]
