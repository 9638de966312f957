"""Microsoft Advertising Customer Match lists in the contract suite."""

from __future__ import annotations

import contextlib

from audience_pipelines.destinations.microsoft_ads import MicrosoftAdsSettings
from audience_pipelines.destinations.microsoft_ads.client import MicrosoftAdsDestination
from audience_pipelines_tests.cases import TIMEOUT_S, h
from audience_pipelines_tests.fakes.microsoft_ads import FakeMicrosoftAds
from audience_pipelines_tests.faults import Case, plain_settings


class MicrosoftAdsCase(Case):
    name = "microsoft_ads"
    identifiers = {"email": "email"}
    fields = {}  # customer lists take hashed emails only

    names_audiences = True
    create_request = ("POST", r"/Audiences$")

    def audience_names(self):
        return [a["Name"] for a in self.fake.audiences.values()]

    def __init__(self, fake: FakeMicrosoftAds):
        self.fake = fake

    def settings(self, **wrong) -> MicrosoftAdsSettings:
        return MicrosoftAdsSettings(**{
            "customer_id": self.fake.customer_id, "account_id": self.fake.account_id,
            "developer_token": self.fake.developer_token, "client_id": self.fake.client_id,
            "client_secret": self.fake.client_secret, "refresh_token": self.fake.refresh_token,
            "base_url": self.fake.url, "token_url": self.fake.token_url, "timeout_s": TIMEOUT_S, **wrong})

    def destination(self, **wrong):
        return MicrosoftAdsDestination(self.settings(**wrong), sleep=lambda s: None)

    def spec(self):
        return "microsoft_ads", plain_settings(self.settings())

    def state(self):
        aid = self.fake.audience_id_by_name("vip")
        return self.fake.members(aid) if aid else set()

    def expected(self, members):
        return {h(e) for e, _ in members.values()}

    def disarm(self):
        self.fake.clear_injections()
        self.fake.clear_rejected()

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

    @classmethod
    @contextlib.contextmanager
    def open(cls, tmp_path):
        with FakeMicrosoftAds() as server:
            yield cls(server)


CASES = [MicrosoftAdsCase]
