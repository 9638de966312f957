"""Reddit Ads custom audiences in the contract suite.

Reddit answers a members PATCH with 204 and no per-row result; its only refusal of rows is a 400
for the whole request, which the engine narrows down by sending parts of the batch again.
"""

from __future__ import annotations

from audience_pipelines.destinations.reddit_ads import RedditAdsSettings
from audience_pipelines.destinations.reddit_ads.client import RedditAdsDestination
from audience_pipelines_tests.cases import TIMEOUT_S, h
from audience_pipelines_tests.fakes.reddit import FakeReddit
from audience_pipelines_tests.faults import PlatformCase


class RedditAdsCase(PlatformCase):
    name = "reddit_ads"
    create_request = ("POST", r"/ad_accounts/[^/]+/custom_audiences$")
    fake_cls, client_cls = FakeReddit, RedditAdsDestination

    def settings(self, **overrides) -> RedditAdsSettings:
        return RedditAdsSettings(**{
            "ad_account_id": self.fake.ad_account_id, "client_id": self.fake.client_id,
            "client_secret": self.fake.client_secret, "refresh_token": self.fake.refresh_token,
            "reddit_username": "audience_bot", "base_url": self.fake.url, "token_url": self.fake.token_url,
            "timeout_s": TIMEOUT_S, **overrides})

    def expected(self, members):
        return {frozenset({("EMAIL_SHA256", h(e))}) for e, _ in members.values()}

    faults = {
        "throttle": lambda c: c.fake.inject_throttle(times=8, retry_after=0),  # past the 6 attempts
        "5xx": lambda c: c.fake.inject_server_error(times=2, status=503),
        "connection reset": lambda c: c.fake.inject_reset(times=2, scope="users"),
        "timeout": lambda c: c.fake.inject_delay(TIMEOUT_S * 3, times=1),
        "answer lost after apply": lambda c: c.fake.inject_lost_answer(times=2, scope="users"),
        # k3's new email, the joiner k20 and the leaver k1: each PATCH carrying one is refused whole
        "per-row rejection": lambda c: c.fake.reject_values(
            [h("moved3@example.com"), h("user20@example.com"), h("user1@example.com")]),
        "bad credentials": lambda c: c.destination(refresh_token="revoked-refresh-token"),
    }


CASES = [RedditAdsCase]
