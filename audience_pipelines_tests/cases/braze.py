"""Braze cohorts in the contract suite (members known by email are user aliases)."""

from __future__ import annotations

from audience_pipelines.destinations.braze import BrazeSettings
from audience_pipelines.destinations.braze.client import BrazeDestination
from audience_pipelines_tests.cases import TIMEOUT_S
from audience_pipelines_tests.fakes.braze import FakeBraze
from audience_pipelines_tests.faults import PlatformCase

KEYS = {"api_key": "braze-matrix-rest-key", "partner_api_key": "matrix-partner-key",
        "client_secret": "matrix-data-import-key"}


def _who(user: dict) -> tuple[str, str]:
    """A user as (alias name, alias label), or ("external_id", its id)."""
    if user["external_id"]:
        return "external_id", user["external_id"]
    alias = user["user_aliases"][0]
    return alias["alias_name"], alias["alias_label"]


class BrazeCase(PlatformCase):
    name = "braze"
    fields = {"plan": "plan"}  # a custom attribute on each user
    create_request = ("POST", r"/partners/[^/]+/cohorts/?$")
    fake_cls, fake_args, client_cls = FakeBraze, {"partner_name": "matrix", **KEYS}, BrazeDestination
    audiences, find_audience = "cohorts", "cohort_id_by_name"

    def settings(self, **overrides) -> BrazeSettings:
        return BrazeSettings(**{"rest_endpoint": self.fake.url, "partner_name": "matrix", **KEYS,
                                "timeout_s": TIMEOUT_S, **overrides})

    def state(self, name: str = "vip"):
        cid = self.audience_id(name)
        if not cid:
            return {}
        return {_who(u): (u["attributes"].get("email"), u["attributes"].get("plan")) for u in self.fake.members(cid)}

    def profiles(self):
        return {u["attributes"].get("email"): u["attributes"].get("plan") for u in self.fake.users.values()}

    def expected(self, members):
        return {(e, "email"): (e, p) for e, p in members.values()}

    faults = {
        "throttle": lambda c: c.fake.inject_rate_limit(times=8),  # past the 6 attempts
        "5xx": lambda c: c.fake.inject_server_error(times=2, status=502),
        "connection reset": lambda c: c.fake.inject_reset(times=2, scope="cohorts"),
        "timeout": lambda c: c.fake.inject_delay(TIMEOUT_S * 3, times=1, scope="track"),
        "answer lost after apply": lambda c: c.fake.inject_lost_answer(times=2, scope="cohorts"),
        # k3's new email and the joiner k20, refused by index in /users/track's errors
        "per-row rejection": lambda c: c.fake.reject_values(["moved3@example.com", "user20@example.com"]),
        "bad credentials": lambda c: c.destination(api_key="revoked-rest-key"),
    }


CASES = [BrazeCase]
