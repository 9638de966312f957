"""Snapchat Ads customer-list segments in the contract suite."""

from __future__ import annotations

from audience_pipelines.destinations.snapchat_ads import SnapchatSettings
from audience_pipelines.destinations.snapchat_ads.client import SnapchatAdsDestination
from audience_pipelines_tests.cases import TIMEOUT_S, h
from audience_pipelines_tests.fakes.snapchat import FakeSnapchat
from audience_pipelines_tests.faults import PlatformCase


class SnapchatCase(PlatformCase):
    name = "snapchat_ads"
    create_request = ("POST", r"/adaccounts/[^/]+/segments$")
    fake_cls, client_cls = FakeSnapchat, SnapchatAdsDestination
    audiences, find_audience = "segments", "segment_id_by_name"

    def settings(self, **overrides) -> SnapchatSettings:
        return SnapchatSettings(**{
            "ad_account_id": self.fake.ad_account_id, "client_id": self.fake.client_id,
            "client_secret": self.fake.client_secret, "refresh_token": self.fake.refresh_token,
            "token_url": self.fake.token_url, "base_url": self.fake.url, "timeout_s": TIMEOUT_S, **overrides})

    def expected(self, members):
        return {("EMAIL_SHA256", h(e)) for e, _ in members.values()}

    faults = {
        "throttle": lambda c: c.fake.inject_throttle(times=8),  # HTTP 429, past the 6 attempts
        "5xx": lambda c: c.fake.inject_server_error(times=2, status=503),
        "connection reset": lambda c: c.fake.inject_reset(times=2, scope="users"),
        "timeout": lambda c: c.fake.inject_delay(TIMEOUT_S * 3, times=1),
        "answer lost after apply": lambda c: c.fake.inject_lost_answer(times=2, scope="users"),
        # Snap refuses a request whole: k3's new email, the joiner k20 and the leaver k1
        "per-row rejection": lambda c: c.fake.reject_values(
            [h("moved3@example.com"), h("user20@example.com"), h("user1@example.com")]),
        "unconfirmed answer": lambda c: c.fake.inject_unconfirmed(times=2),
        "access token expired": lambda c: c.fake.inject_token_expiry(times=1),
        "permission revoked (E3002)": lambda c: c.fake.inject_permission_denied(times=1),
        "bad credentials": lambda c: c.destination(refresh_token="revoked-refresh-token"),
    }


CASES = [SnapchatCase]
