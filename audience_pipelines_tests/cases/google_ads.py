"""Google Ads Customer Match in the contract suite."""

from __future__ import annotations

from audience_pipelines.destinations.google_ads import GoogleAdsSettings
from audience_pipelines.destinations.google_ads.client import GoogleAdsDestination
from audience_pipelines_tests.cases import TIMEOUT_S, h
from audience_pipelines_tests.fakes.google_ads import FakeGoogleAds
from audience_pipelines_tests.faults import PlatformCase


class GoogleAdsCase(PlatformCase):
    name = "google_ads"
    create_request = ("POST", r"/userLists:mutate$")
    fake_cls, fake_args, client_cls = FakeGoogleAds, {"running_polls": 1}, GoogleAdsDestination
    audiences, find_audience = "user_lists", "user_list_id_by_name"

    def settings(self, **overrides) -> GoogleAdsSettings:
        return GoogleAdsSettings(**{
            "customer_id": self.fake.customer_id, "developer_token": self.fake.developer_token,
            "client_id": self.fake.client_id, "client_secret": self.fake.client_secret,
            "refresh_token": self.fake.refresh_token, "base_url": self.fake.origin, "token_url": self.fake.token_url,
            "timeout_s": TIMEOUT_S, "poll_interval_s": 0.01, "poll_timeout_s": 5, **overrides})

    def expected(self, members):
        return {frozenset({("hashedEmail", h(e))}) for e, _ in members.values()}

    faults = {
        "throttle": lambda c: c.fake.inject_resource_exhausted(times=8, retry_delay="0s"),
        "5xx": lambda c: c.fake.inject_server_error(times=2, status=503),
        "connection reset": lambda c: c.fake.inject_reset(times=2, scope="operations"),
        "timeout": lambda c: c.fake.inject_delay(TIMEOUT_S * 3, times=1),
        "answer lost after apply": lambda c: c.fake.inject_lost_answer(times=2, scope="operations"),
        # k3's new email, the joiner k20 and the leaver k1 (user1@example.com)
        "per-row rejection": lambda c: c.fake.reject_values(
            [h("moved3@example.com"), h("user20@example.com"), h("user1@example.com")]),
        "bad credentials": lambda c: c.destination(refresh_token="1//revoked"),
    }


CASES = [GoogleAdsCase]
