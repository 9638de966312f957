"""TikTok custom audiences in the contract suite (faults in TikTok's own form: codes in an HTTP 200 envelope)."""

from __future__ import annotations

from audience_pipelines.destinations.tiktok_ads import TikTokAdsSettings
from audience_pipelines.destinations.tiktok_ads.client import TikTokAdsDestination
from audience_pipelines_tests.cases import TIMEOUT_S, h
from audience_pipelines_tests.fakes.tiktok import FakeTikTok
from audience_pipelines_tests.faults import PlatformCase

TOKEN = "tt-matrix-token"
ADVERTISER = "7000000000000000042"


class TikTokCase(PlatformCase):
    name = "tiktok_ads"
    create_request = ("POST", r"/segment/audience/?$")
    fake_cls, client_cls = FakeTikTok, TikTokAdsDestination
    fake_args = {"access_token": TOKEN, "advertiser_id": ADVERTISER}
    clear_refusals = "clear_refused"

    def settings(self, **overrides) -> TikTokAdsSettings:
        return TikTokAdsSettings(**{"advertiser_id": ADVERTISER, "access_token": TOKEN, "base_url": self.fake.url,
                                    "timeout_s": TIMEOUT_S, **overrides})

    def expected(self, members):
        # The matrix's emails have no dots or "+suffix" before the "@": TikTok's rules leave them as they are.
        return {frozenset({("EMAIL_SHA256", h(e))}) for e, _ in members.values()}

    faults = {
        "throttle": lambda c: c.fake.inject_throttle(times=8),  # code 40100, past the 6 attempts
        "system busy": lambda c: c.fake.inject_busy(times=2),
        "5xx": lambda c: c.fake.inject_server_error(times=2, status=503),
        "connection reset": lambda c: c.fake.inject_reset(times=2, scope="mapping"),
        "timeout": lambda c: c.fake.inject_delay(TIMEOUT_S * 3, times=1),
        "answer lost after apply": lambda c: c.fake.inject_lost_answer(times=2, scope="mapping"),
        # TikTok refuses a batch whole: the batches holding k3's new email, the joiner k20 or the leaver k1.
        "per-row rejection": lambda c: c.fake.refuse_values(
            [h("moved3@example.com"), h("user20@example.com"), h("user1@example.com")]),
        "bad credentials": lambda c: c.destination(access_token="tt-revoked"),
    }


CASES = [TikTokCase]
