"""Every fault x every mode, per destination, each ending with the destination's exact state (see faults.py).

The table of what was tried and held is printed at the end of the pytest run.
"""

from __future__ import annotations

import hashlib

import pyarrow.csv as pacsv
import pytest

from audience_pipelines.destinations.file import FileSettings
from audience_pipelines.destinations.file.client import FileDestination
from audience_pipelines.destinations.meta_custom_audiences import MetaSettings
from audience_pipelines.destinations.meta_custom_audiences.client import MetaCustomAudiencesDestination
from audience_pipelines.destinations.webhook import WebhookSettings
from audience_pipelines.destinations.webhook.client import WebhookDestination
from audience_pipelines_tests.fakes import FakeMeta, FakeWebhook
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


@pytest.fixture
def case(request, tmp_path):
    """A fresh fake per scenario: its audiences, members and idempotency keys start empty."""
    if request.param == "file":
        yield FileCase(tmp_path / "exports")
    elif request.param == "meta_custom_audiences":
        with FakeMeta(access_token=TOKEN, ad_account_id="1234") as server:
            yield MetaCase(server)
    else:
        with FakeWebhook(secret=SECRET, path="/hook") as server:
            yield WebhookCase(server)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("case", ["meta_custom_audiences", "webhook"], indirect=True)
def test_fault_matrix(case, fault, mode, tmp_path, monkeypatch):
    scenario(case, fault, mode, tmp_path, monkeypatch)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("fault", ENGINE_FAULTS)
@pytest.mark.parametrize("case", ["file"], indirect=True)
def test_fault_matrix_files(case, fault, mode, tmp_path, monkeypatch):
    scenario(case, fault, mode, tmp_path, monkeypatch)
