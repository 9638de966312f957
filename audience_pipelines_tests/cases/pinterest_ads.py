"""Pinterest Ads customer lists in the contract suite."""

from __future__ import annotations

from audience_pipelines.destinations.pinterest_ads import PinterestSettings
from audience_pipelines.destinations.pinterest_ads.client import PinterestAdsDestination
from audience_pipelines_tests.cases import TIMEOUT_S, h
from audience_pipelines_tests.fakes.pinterest import FakePinterest
from audience_pipelines_tests.faults import PlatformCase

TOKEN = "pina_matrix-token"


class PinterestCase(PlatformCase):
    name = "pinterest_ads"
    create_request = ("POST", r"/customer_lists$")
    fake_cls, fake_args, client_cls = FakePinterest, {"access_token": TOKEN}, PinterestAdsDestination
    audiences, find_audience = "customer_lists", "list_id_by_name"
    clear_refusals = "clear_refused_values"

    def settings(self, **overrides) -> PinterestSettings:
        return PinterestSettings(**{"ad_account_id": self.fake.ad_account_id, "access_token": TOKEN,
                                    "base_url": self.fake.url, "timeout_s": TIMEOUT_S, **overrides})

    def expected(self, members):
        return {h(e) for e, _ in members.values()}

    faults = {
        "throttle": lambda c: c.fake.inject_throttle(times=8),  # past the 6 attempts
        "5xx": lambda c: c.fake.inject_server_error(times=2, status=503),
        "connection reset": lambda c: c.fake.inject_reset(times=2, scope="records"),
        "timeout": lambda c: c.fake.inject_delay(TIMEOUT_S * 3, times=1),
        "answer lost after apply": lambda c: c.fake.inject_lost_answer(times=2, scope="records"),
        # A batch holding k3's new email, the joiner k20 or the leaver k1 is refused whole.
        "per-row rejection": lambda c: c.fake.refuse_values(
            [h("moved3@example.com"), h("user20@example.com"), h("user1@example.com")]),
        "bad credentials": lambda c: c.destination(access_token="pina_revoked"),
    }


CASES = [PinterestCase]
