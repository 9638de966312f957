"""Meta Custom Audiences in the contract suite: diff runs, and full resends as replace sessions."""

from __future__ import annotations

import contextlib

from audience_pipelines.destinations.meta_custom_audiences import MetaSettings
from audience_pipelines.destinations.meta_custom_audiences.client import MetaCustomAudiencesDestination
from audience_pipelines_tests.cases import TIMEOUT_S, h
from audience_pipelines_tests.fakes import FakeMeta
from audience_pipelines_tests.faults import Case, plain_settings

TOKEN = "EAAB-matrix-token"


class MetaCase(Case):
    name = "meta_custom_audiences"
    identifiers = {"email": "email", "external_id": "key"}
    fields = {}  # Meta takes identifiers only

    names_audiences = True
    create_request = ("POST", r"/customaudiences$")

    def audience_names(self):
        return [a["name"] for a in self.fake.audiences.values()]

    def __init__(self, fake: FakeMeta):
        self.fake = fake

    def settings(self, token=TOKEN) -> MetaSettings:
        return MetaSettings(ad_account_id="1234", access_token=token, base_url=self.fake.url, timeout_s=TIMEOUT_S)

    def destination(self, token=TOKEN):
        return MetaCustomAudiencesDestination(self.settings(token), sleep=lambda s: None)

    def spec(self):
        return "meta_custom_audiences", plain_settings(self.settings())

    def state(self):
        aid = self.fake.audience_id_by_name("vip")
        return self.fake.members(aid) if aid else set()

    def expected(self, members):
        return {frozenset({("EMAIL", h(e)), ("EXTERN_ID", k)}) for k, (e, _) in members.items()}

    def disarm(self):
        self.fake.clear_injections()
        self.fake.clear_invalid()

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
        "bad credentials": lambda c: c.destination(token="EAAB-revoked"),
    }


    @classmethod
    @contextlib.contextmanager
    def open(cls, tmp_path):
        with FakeMeta(access_token=TOKEN, ad_account_id="1234") as server:
            yield cls(server)


class MetaReplaceCase(MetaCase):
    """Meta with the faulted run a full resend: a `usersreplace` session in mirror mode."""

    name = "meta_custom_audiences (replace)"
    full_resync = True

    def spec(self):
        return "meta_custom_audiences", plain_settings(self.settings())


CASES = [MetaCase, MetaReplaceCase]
