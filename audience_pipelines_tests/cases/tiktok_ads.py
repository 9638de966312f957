"""TikTok custom audiences in the contract suite (faults in TikTok's own form: codes in an HTTP 200 envelope)."""

from __future__ import annotations

import contextlib

from audience_pipelines.destinations.tiktok_ads import TikTokAdsSettings
from audience_pipelines.destinations.tiktok_ads.client import TikTokAdsDestination
from audience_pipelines_tests.cases import TIMEOUT_S, h
from audience_pipelines_tests.fakes.tiktok import FakeTikTok
from audience_pipelines_tests.faults import Case, plain_settings

TOKEN = "tt-matrix-token"
ADVERTISER = "7000000000000000042"


class TikTokCase(Case):
    name = "tiktok_ads"
    identifiers = {"email": "email"}
    fields = {}  # TikTok takes identifiers only

    names_audiences = True
    create_request = ("POST", r"/segment/audience/?$")

    def audience_names(self):
        return [a["name"] for a in self.fake.audiences.values()]

    def __init__(self, fake: FakeTikTok):
        self.fake = fake

    def settings(self, token=TOKEN) -> TikTokAdsSettings:
        return TikTokAdsSettings(advertiser_id=ADVERTISER, access_token=token, base_url=self.fake.url,
                                 timeout_s=TIMEOUT_S)

    def destination(self, token=TOKEN):
        return TikTokAdsDestination(self.settings(token), sleep=lambda s: None)

    def spec(self):
        return "tiktok_ads", plain_settings(self.settings())

    def state(self):
        aid = self.fake.audience_id_by_name("vip")
        return self.fake.members(aid) if aid else set()

    def expected(self, members):
        # The matrix's emails have no dots or "+suffix" before the "@": TikTok's rules leave them as they are.
        return {frozenset({("EMAIL_SHA256", h(e))}) for e, _ in members.values()}

    def disarm(self):
        self.fake.clear_injections()
        self.fake.clear_refused()

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
        "bad credentials": lambda c: c.destination(token="tt-revoked"),
    }

    @classmethod
    @contextlib.contextmanager
    def open(cls, tmp_path):
        with FakeTikTok(access_token=TOKEN, advertiser_id=ADVERTISER) as server:
            yield cls(server)


CASES = [TikTokCase]
