"""The contract suite: every fault x every mode, per destination, each ending with the destination's exact
state (see faults.py). Every destination and its fake is a `Case`; a new destination adds its case here.

The table of what was tried and held is printed at the end of the pytest run. `test_contract.py` holds
the rest of the suite (names created once under racing runs, credentials checked before sending).
"""

from __future__ import annotations

import contextlib
import hashlib

import pyarrow.csv as pacsv
import pytest

from audience_pipelines.destinations.file import FileSettings
from audience_pipelines.destinations.file.client import FileDestination
from audience_pipelines.destinations.meta_custom_audiences import MetaSettings
from audience_pipelines.destinations.meta_custom_audiences.client import MetaCustomAudiencesDestination
from audience_pipelines.destinations.webhook import WebhookSettings
from audience_pipelines.destinations.webhook.client import WebhookDestination
from audience_pipelines.destinations.google_ads import GoogleAdsSettings
from audience_pipelines.destinations.google_ads.client import GoogleAdsDestination
from audience_pipelines.destinations.hubspot import HubSpotSettings
from audience_pipelines.destinations.hubspot.client import HubSpotDestination
from audience_pipelines_tests.fakes import FakeMeta, FakeWebhook
from audience_pipelines_tests.fakes.google_ads import FakeGoogleAds
from audience_pipelines_tests.fakes.hubspot import FakeHubSpot
from audience_pipelines_tests.faults import plain_settings, ENGINE_FAULTS, MODES, Case, scenario

TOKEN = "EAAB-matrix-token"
SECRET = "whsec_matrix"
TIMEOUT_S = 0.5  # client timeout; the timeout fault delays an answer past it


def h(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class MetaCase(Case):
    name = "meta_custom_audiences"
    identifiers = {"email": "email", "external_id": "key"}
    fields = {}  # Meta takes identifiers only

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


class MetaReplaceCase(MetaCase):
    """Meta with the faulted run a full resend: a `usersreplace` session in mirror mode."""

    name = "meta_custom_audiences (replace)"
    full_resync = True

    def spec(self):
        return "meta_custom_audiences", plain_settings(self.settings())


class GoogleAdsCase(Case):
    name = "google_ads"
    identifiers = {"email": "email"}
    fields = {}  # Customer Match takes identifiers only

    def __init__(self, fake: FakeGoogleAds):
        self.fake = fake

    def settings(self, **wrong) -> GoogleAdsSettings:
        return GoogleAdsSettings(**{
            "customer_id": self.fake.customer_id, "developer_token": self.fake.developer_token,
            "client_id": self.fake.client_id, "client_secret": self.fake.client_secret,
            "refresh_token": self.fake.refresh_token, "base_url": self.fake.origin, "token_url": self.fake.token_url,
            "timeout_s": TIMEOUT_S, "poll_interval_s": 0.01, "poll_timeout_s": 5, **wrong})

    def destination(self, **wrong):
        return GoogleAdsDestination(self.settings(**wrong), sleep=lambda s: None)

    def spec(self):
        return "google_ads", plain_settings(self.settings())

    def state(self):
        lid = self.fake.user_list_id_by_name("vip")
        return self.fake.members(lid) if lid else set()

    def expected(self, members):
        return {frozenset({("hashedEmail", h(e))}) for e, _ in members.values()}

    def disarm(self):
        self.fake.clear_injections()
        self.fake.clear_rejected_values()

    faults = {
        "throttle": lambda c: c.fake.inject_resource_exhausted(times=8, retry_delay="0s"),
        "5xx": lambda c: c.fake.inject_server_error(times=2, status=503),
        "connection reset": lambda c: c.fake.inject_reset(times=2, scope="operations"),
        "timeout": lambda c: c.fake.inject_delay(TIMEOUT_S * 3, times=1),
        "answer lost after apply": lambda c: c.fake.inject_lost_answer(times=2, scope="operations"),
        # k3's new email, the joiner k20 and the leaver k1 (user1@example.com)
        "per-row rejection": lambda c: c.fake.reject_values(
            [h("moved3@example.com"), h("user20@example.com"), h("user1@example.com")]),
        "bad credentials": lambda c: c.destination(refresh_token="1//revoked"),
    }


class HubSpotCase(Case):
    name = "hubspot"

    def __init__(self, fake: FakeHubSpot):
        self.fake = fake

    def settings(self, token=TOKEN) -> HubSpotSettings:
        return HubSpotSettings(access_token=token, base_url=self.fake.url, timeout_s=TIMEOUT_S)

    def destination(self, token=TOKEN):
        return HubSpotDestination(self.settings(token), sleep=lambda s: None)

    def spec(self):
        return "hubspot", plain_settings(self.settings())

    def state(self):
        lid = self.fake.list_id_by_name("vip")
        if not lid:
            return {}
        return {cid: (self.fake.contacts[cid]["email"], self.fake.contacts[cid].get("plan"))
                for cid in self.fake.members(lid)}

    def expected(self, members):
        by_email = {self.fake.contacts[c]["email"]: c for c in self.fake.contacts}
        return {by_email.get(e, f"no contact for {e}"): (e, p) for e, p in members.values()}

    def disarm(self):
        self.fake.clear_injections()
        self.fake.clear_rejected_emails()

    faults = {
        "throttle": lambda c: c.fake.inject_rate_limit(times=8),  # past the 6 attempts
        "5xx": lambda c: c.fake.inject_server_error(times=2, status=502),
        "connection reset": lambda c: c.fake.inject_reset(times=2, scope="memberships"),
        "timeout": lambda c: c.fake.inject_delay(TIMEOUT_S * 3, times=1, scope="upsert"),
        "answer lost after apply": lambda c: c.fake.inject_lost_answer(times=2, scope="memberships"),
        # k3's new email and the joiner k20; a removal has no per-row refusal in HubSpot
        "per-row rejection": lambda c: c.fake.reject_emails(["moved3@example.com", "user20@example.com"]),
        "bad credentials": lambda c: c.destination(token="pat-na1-revoked"),
    }


class WebhookCase(Case):
    name = "webhook"

    def __init__(self, fake: FakeWebhook):
        self.fake = fake

    def settings(self, secret=SECRET) -> WebhookSettings:
        return WebhookSettings(url=self.fake.url, secret=secret, timeout_s=TIMEOUT_S, batch_size=1000)

    def destination(self, secret=SECRET):
        return WebhookDestination(self.settings(secret), sleep=lambda s: None)

    def spec(self):
        return "webhook", plain_settings(self.settings())

    def state(self):
        return self.fake.members.get("vip", {})

    def expected(self, members):
        return {k: {"id": k, "email": e, "plan": p} for k, (e, p) in members.items()}

    def disarm(self):
        self.fake.clear_injections()
        self.fake.clear_rejections()

    faults = {
        "throttle": lambda c: c.fake.inject_status(429, times=8, retry_after=0),  # past the 6 attempts
        "5xx": lambda c: c.fake.inject_status(503, times=2),
        "connection reset": lambda c: c.fake.inject_reset(times=2),
        "timeout": lambda c: c.fake.inject_delay(TIMEOUT_S * 3, times=1),
        "answer lost after apply": lambda c: c.fake.inject_lost_answer(times=2),
        "per-row rejection": lambda c: c.fake.reject_ids(["k3", "k20", "k1"], error="invalid email"),
        "bad credentials": lambda c: c.destination(secret="whsec_wrong"),
    }


class FileCase(Case):
    """Change files: the state is every run's adds, updates and removes replayed in the order written."""

    name = "file"
    faults = {}  # no platform to fail; the engine-level faults apply

    def __init__(self, root):
        self.root = root

    def destination(self):
        return FileDestination(FileSettings(path=str(self.root), format="csv"))

    def spec(self):
        return "file", {"path": str(self.root), "format": "csv"}

    def state(self):
        held: dict = {}
        for path in sorted(self.root.glob("vip/*/*.csv"), key=lambda p: p.stat().st_mtime_ns):
            for r in pacsv.read_csv(path).to_pylist():
                if path.name.startswith("remove-"):
                    held.pop(r["key"], None)
                else:
                    held[r["key"]] = {"email": r["email"], "plan": r["plan"]}
        return held

    def expected(self, members):
        return {k: {"email": e, "plan": p} for k, (e, p) in members.items()}


FAULTS = [*MetaCase.faults, *ENGINE_FAULTS]


HTTP_CASES = ["meta_custom_audiences", "meta_custom_audiences (replace)", "google_ads", "hubspot", "webhook"]


@contextlib.contextmanager
def make_case(name: str, tmp_path):
    """A fresh fake per scenario: its audiences, members and idempotency keys start empty."""
    if name == "file":
        yield FileCase(tmp_path / "exports")
    elif name.startswith("meta_custom_audiences"):
        with FakeMeta(access_token=TOKEN, ad_account_id="1234") as server:
            yield MetaReplaceCase(server) if "replace" in name else MetaCase(server)
    elif name == "google_ads":
        with FakeGoogleAds(running_polls=1) as server:
            yield GoogleAdsCase(server)
    elif name == "hubspot":
        with FakeHubSpot(access_token=TOKEN) as server:
            yield HubSpotCase(server)
    else:
        with FakeWebhook(secret=SECRET, path="/hook") as server:
            yield WebhookCase(server)


@pytest.fixture
def case(request, tmp_path):
    with make_case(request.param, tmp_path) as c:
        yield c


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("case", HTTP_CASES, indirect=True)
def test_fault_matrix(case, fault, mode, tmp_path, monkeypatch):
    scenario(case, fault, mode, tmp_path, monkeypatch)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("fault", ENGINE_FAULTS)
@pytest.mark.parametrize("case", ["file"], indirect=True)
def test_fault_matrix_files(case, fault, mode, tmp_path, monkeypatch):
    scenario(case, fault, mode, tmp_path, monkeypatch)
