"""Pinterest Ads customer lists in the contract suite."""

from __future__ import annotations

import contextlib

from audience_pipelines.destinations.pinterest_ads import PinterestSettings
from audience_pipelines.destinations.pinterest_ads.client import PinterestAdsDestination
from audience_pipelines_tests.cases import TIMEOUT_S, h
from audience_pipelines_tests.fakes.pinterest import FakePinterest
from audience_pipelines_tests.faults import Case, plain_settings

TOKEN = "pina_matrix-token"


class PinterestCase(Case):
    name = "pinterest_ads"
    identifiers = {"email": "email"}
    fields = {}  # customer lists take identifiers only

    names_audiences = True
    create_request = ("POST", r"/customer_lists$")

    def __init__(self, fake: FakePinterest):
        self.fake = fake

    def audience_names(self):
        return [cl["name"] for cl in self.fake.customer_lists.values()]

    def settings(self, token=TOKEN) -> PinterestSettings:
        return PinterestSettings(ad_account_id=self.fake.ad_account_id, access_token=token, base_url=self.fake.url,
                                 timeout_s=TIMEOUT_S)

    def destination(self, token=TOKEN):
        return PinterestAdsDestination(self.settings(token), sleep=lambda s: None)

    def spec(self):
        return "pinterest_ads", plain_settings(self.settings())

    def state(self):
        lid = self.fake.list_id_by_name("vip")
        return self.fake.members(lid) if lid else set()

    def expected(self, members):
        return {h(e) for e, _ in members.values()}

    def disarm(self):
        self.fake.clear_injections()
        self.fake.clear_refused_values()

    faults = {
        "throttle": lambda c: c.fake.inject_throttle(times=8),  # past the 6 attempts
        "5xx": lambda c: c.fake.inject_server_error(times=2, status=503),
        "connection reset": lambda c: c.fake.inject_reset(times=2, scope="records"),
        "timeout": lambda c: c.fake.inject_delay(TIMEOUT_S * 3, times=1),
        "answer lost after apply": lambda c: c.fake.inject_lost_answer(times=2, scope="records"),
        # A batch holding k3's new email, the joiner k20 or the leaver k1 is refused whole.
        "per-row rejection": lambda c: c.fake.refuse_values(
            [h("moved3@example.com"), h("user20@example.com"), h("user1@example.com")]),
        "bad credentials": lambda c: c.destination(token="pina_revoked"),
    }

    @classmethod
    @contextlib.contextmanager
    def open(cls, tmp_path):
        with FakePinterest(access_token=TOKEN) as server:
            yield cls(server)


CASES = [PinterestCase]
