"""The webhook in the contract suite."""

from __future__ import annotations

import contextlib

from audience_pipelines.destinations.webhook import WebhookSettings
from audience_pipelines.destinations.webhook.client import WebhookDestination
from audience_pipelines_tests.cases import TIMEOUT_S
from audience_pipelines_tests.fakes import FakeWebhook
from audience_pipelines_tests.faults import Case, plain_settings

SECRET = "whsec_matrix"


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

    @classmethod
    @contextlib.contextmanager
    def open(cls, tmp_path):
        with FakeWebhook(secret=SECRET, path="/hook") as server:
            yield cls(server)


CASES = [WebhookCase]
