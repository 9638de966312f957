"""Klaviyo lists in the contract suite."""

from __future__ import annotations

from audience_pipelines.destinations.klaviyo import KlaviyoSettings
from audience_pipelines.destinations.klaviyo.client import KlaviyoDestination
from audience_pipelines_tests.cases import TIMEOUT_S
from audience_pipelines_tests.fakes.klaviyo import FakeKlaviyo
from audience_pipelines_tests.faults import PlatformCase

KEY = "pk_matrix_0123456789"


class KlaviyoCase(PlatformCase):
    name = "klaviyo"
    fields = {"plan": "plan"}  # a custom profile property
    create_request = ("POST", r"/api/lists/?$")
    fake_cls, fake_args, client_cls = FakeKlaviyo, {"api_key": KEY, "running_polls": 1}, KlaviyoDestination
    audiences, find_audience = "lists", "list_id_by_name"

    def settings(self, **overrides) -> KlaviyoSettings:
        return KlaviyoSettings(**{"api_key": KEY, "base_url": self.fake.url, "timeout_s": TIMEOUT_S,
                                  "poll_interval_s": 0.01, "poll_timeout_s": 5, **overrides})

    def state(self, name: str = "vip"):
        lid = self.audience_id(name)
        if not lid:
            return {}
        profiles = self.fake.profiles
        return {pid: (profiles[pid]["email"], profiles[pid]["properties"].get("plan"))
                for pid in self.fake.members(lid)}

    def profiles(self):
        return {p["email"]: p["properties"].get("plan") for p in self.fake.profiles.values()}

    def expected(self, members):
        return {self.fake.profile_id(email=e) or f"no profile for {e}": (e, p) for e, p in members.values()}

    faults = {
        "throttle": lambda c: c.fake.inject_throttle(times=8, retry_after=0),  # past the 6 attempts
        "5xx": lambda c: c.fake.inject_server_error(times=2, status=503),
        "connection reset": lambda c: c.fake.inject_reset(times=2, scope="jobs"),
        "timeout": lambda c: c.fake.inject_delay(TIMEOUT_S * 3, times=1, scope="jobs"),
        "answer lost after apply": lambda c: c.fake.inject_lost_answer(times=2, scope="members"),
        "job answer lost": lambda c: c.fake.inject_lost_answer(times=2, scope="jobs"),
        "job failed": lambda c: c.fake.inject_job_failure(times=1),
        # A batch waits no time: its job ends during the session's finish, or only in the next run.
        "job outlives its batch": lambda c: c.destination(poll_timeout_s=0),
        "job outlives the run": lambda c: c.slow_jobs(polls=3),
        # k3's new email and the joiner k20: Klaviyo refuses them in the job's import errors
        "per-row rejection": lambda c: c.fake.reject_values(["moved3@example.com", "user20@example.com"]),
        "bad credentials": lambda c: c.destination(api_key="pk_revoked_key"),
    }

    def slow_jobs(self, polls: int):
        self.fake.running_polls = polls
        return self.destination(poll_timeout_s=0)

    def disarm(self):
        super().disarm()
        self.fake.running_polls = self.fake_args["running_polls"]


CASES = [KlaviyoCase]
