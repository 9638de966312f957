"""Microsoft Advertising Customer Match lists in the contract suite."""

from __future__ import annotations

from audience_pipelines.destinations.microsoft_ads import MicrosoftAdsSettings
from audience_pipelines.destinations.microsoft_ads.client import MicrosoftAdsDestination
from audience_pipelines_tests.cases import TIMEOUT_S, h
from audience_pipelines_tests.fakes.microsoft_ads import FakeMicrosoftAds
from audience_pipelines_tests.faults import PlatformCase


class MicrosoftAdsCase(PlatformCase):
    name = "microsoft_ads"
    create_request = ("POST", r"/Audiences$")
    fake_cls, client_cls = FakeMicrosoftAds, MicrosoftAdsDestination
    name_key = "Name"
    clear_refusals = "clear_rejected"

    def settings(self, **overrides) -> MicrosoftAdsSettings:
        return MicrosoftAdsSettings(**{
            "customer_id": self.fake.customer_id, "account_id": self.fake.account_id,
            "developer_token": self.fake.developer_token, "client_id": self.fake.client_id,
            "client_secret": self.fake.client_secret, "refresh_token": self.fake.refresh_token,
            "base_url": self.fake.url, "token_url": self.fake.token_url, "timeout_s": TIMEOUT_S, **overrides})

    def expected(self, members):
        return {h(e) for e, _ in members.values()}

    faults = {
        "throttle": lambda c: c.fake.inject_call_rate_exceeded(times=8),  # past the 6 attempts
        "5xx": lambda c: c.fake.inject_server_error(times=2, status=503),
        "connection reset": lambda c: c.fake.inject_reset(times=2, scope="apply"),
        "timeout": lambda c: c.fake.inject_delay(TIMEOUT_S * 3, times=1),
        "answer lost after apply": lambda c: c.fake.inject_lost_answer(times=2, scope="apply"),
        # k3's new email, the joiner k20 and the leaver k1 (user1@example.com)
        "per-row rejection": lambda c: c.fake.reject_items(
            [h("moved3@example.com"), h("user20@example.com"), h("user1@example.com")]),
        "bad credentials": lambda c: c.destination(refresh_token="M.C1-revoked"),
    }


CASES = [MicrosoftAdsCase]
