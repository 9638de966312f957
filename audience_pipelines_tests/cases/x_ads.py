"""X (Twitter) Ads custom audiences in the contract suite."""

from __future__ import annotations

from audience_pipelines.destinations.x_ads import XAdsSettings
from audience_pipelines.destinations.x_ads.client import XAdsDestination
from audience_pipelines_tests.cases import TIMEOUT_S, h
from audience_pipelines_tests.fakes.x_ads import FakeXAds
from audience_pipelines_tests.faults import PlatformCase


class XAdsCase(PlatformCase):
    name = "x_ads"
    identifiers = {"email": "email", "external_id": "key"}
    create_request = ("POST", r"/accounts/[^/]+/custom_audiences$")
    fake_cls, client_cls = FakeXAds, XAdsDestination

    def settings(self, **overrides) -> XAdsSettings:
        fake = self.fake
        return XAdsSettings(**{
            "account_id": fake.account_id, "consumer_key": fake.consumer_key,
            "consumer_secret": fake.consumer_secret, "access_token": fake.access_token,
            "access_token_secret": fake.access_token_secret, "base_url": fake.url, "timeout_s": TIMEOUT_S,
            **overrides})

    def expected(self, members):
        return {frozenset({("email", h(e)), ("partner_user_id", k)}) for k, (e, _) in members.items()}

    def _reject_rows(self):
        # k3's new email and the leaver k1 are named in operation_errors; the joiner k20's error names
        # only the operation, so the engine has to find it.
        self.fake.reject_values([h("moved3@example.com"), "k1"], name_users=True)
        self.fake.reject_values(["k20"], name_users=False)

    faults = {
        "throttle": lambda c: c.fake.inject_throttle(times=8),  # past the 6 attempts
        "5xx": lambda c: c.fake.inject_server_error(times=2, status=503),
        "connection reset": lambda c: c.fake.inject_reset(times=2, scope="users"),
        "timeout": lambda c: c.fake.inject_delay(TIMEOUT_S * 3, times=1),
        "answer lost after apply": lambda c: c.fake.inject_lost_answer(times=2, scope="users"),
        "per-row rejection": lambda c: c._reject_rows(),
        "success_count short": lambda c: c.fake.inject_miscount(times=2),
        "bad credentials": lambda c: c.destination(access_token_secret="revoked-token-secret"),
    }


CASES = [XAdsCase]
