"""Meta Custom Audiences in the contract suite: diff runs, and full resends as replace sessions."""

from __future__ import annotations

from audience_pipelines.destinations.meta_custom_audiences import MetaSettings
from audience_pipelines.destinations.meta_custom_audiences.client import MetaCustomAudiencesDestination
from audience_pipelines_tests.cases import TIMEOUT_S, h
from audience_pipelines_tests.fakes import FakeMeta
from audience_pipelines_tests.faults import PlatformCase

TOKEN = "EAAB-matrix-token"


class MetaCase(PlatformCase):
    name = "meta_custom_audiences"
    identifiers = {"email": "email", "external_id": "key"}
    create_request = ("POST", r"/customaudiences$")
    fake_cls, client_cls = FakeMeta, MetaCustomAudiencesDestination
    fake_args = {"access_token": TOKEN, "ad_account_id": "1234"}
    clear_refusals = "clear_invalid"

    def settings(self, **overrides) -> MetaSettings:
        return MetaSettings(**{"ad_account_id": "1234", "access_token": TOKEN, "base_url": self.fake.url,
                               "timeout_s": TIMEOUT_S, **overrides})

    def expected(self, members):
        return {frozenset({("EMAIL", h(e)), ("EXTERN_ID", k)}) for k, (e, _) in members.items()}

    def _reject_rows(self):
        # k3's new email, k20 and the leaver k1; one sample named, the rest only counted
        self.fake.inject_invalid([h("moved3@example.com"), "k20", "k1"], samples=1)

    faults = {
        "throttle": lambda c: c.fake.inject_throttle(times=8, code=80003),  # past the 6 attempts
        "5xx": lambda c: c.fake.inject_server_error(times=2, status=503),
        "connection reset": lambda c: c.fake.inject_reset(times=2, scope="users"),
        "timeout": lambda c: c.fake.inject_delay(TIMEOUT_S * 3, times=1),
        "answer lost after apply": lambda c: c.fake.inject_lost_answer(times=2, scope="users"),
        "per-row rejection": lambda c: c._reject_rows(),
        "bad credentials": lambda c: c.destination(access_token="EAAB-revoked"),
    }


class MetaReplaceCase(MetaCase):
    """Meta with the faulted run a full resend: a `usersreplace` session in mirror mode."""

    name = "meta_custom_audiences (replace)"
    full_resync = True


CASES = [MetaCase, MetaReplaceCase]
