"""LinkedIn Matched Audiences (DMP segments) in the contract suite."""

from __future__ import annotations

from audience_pipelines.destinations.linkedin_ads import LinkedInSettings
from audience_pipelines.destinations.linkedin_ads.client import LinkedInAdsDestination
from audience_pipelines_tests.cases import TIMEOUT_S, h
from audience_pipelines_tests.fakes.linkedin import FakeLinkedIn
from audience_pipelines_tests.faults import PlatformCase

TOKEN = "AQV-matrix-member-token"


class LinkedInCase(PlatformCase):
    name = "linkedin_ads"
    create_request = ("POST", r"/dmpSegments$")
    fake_cls, client_cls = FakeLinkedIn, LinkedInAdsDestination
    fake_args = {"access_token": TOKEN, "ad_account_id": "5123"}
    audiences, find_audience = "segments", "segment_id_by_name"

    def settings(self, **overrides) -> LinkedInSettings:
        return LinkedInSettings(**{
            "ad_account_id": self.fake.ad_account_id, "access_token": TOKEN, "base_url": self.fake.url,
            "timeout_s": TIMEOUT_S, "creation_wait_s": 0, **overrides})

    def expected(self, members):
        return {frozenset({("SHA256_EMAIL", h(e))}) for e, _ in members.values()}

    faults = {
        "throttle": lambda c: c.fake.inject_throttle(times=8),  # HTTP 429, past the 6 attempts
        "5xx": lambda c: c.fake.inject_server_error(times=2, status=503),
        "connection reset": lambda c: c.fake.inject_reset(times=2, scope="users"),
        "timeout": lambda c: c.fake.inject_delay(TIMEOUT_S * 3, times=1),
        "answer lost after apply": lambda c: c.fake.inject_lost_answer(times=2, scope="users"),
        # k3's new email, the joiner k20 and the leaver k1: element statuses 400
        "per-row rejection": lambda c: c.fake.reject_values(
            [h("moved3@example.com"), h("user20@example.com"), h("user1@example.com")]),
        "bad credentials": lambda c: c.destination(access_token="AQV-revoked"),
    }


CASES = [LinkedInCase]
