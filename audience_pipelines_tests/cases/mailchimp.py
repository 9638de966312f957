"""Mailchimp tags in the contract suite: members on the list with a PLAN merge field, the audience a tag."""

from __future__ import annotations

from audience_pipelines.destinations.mailchimp import MailchimpSettings
from audience_pipelines.destinations.mailchimp.client import MailchimpDestination
from audience_pipelines_tests.cases import TIMEOUT_S
from audience_pipelines_tests.fakes.mailchimp import FakeMailchimp
from audience_pipelines_tests.faults import PlatformCase

KEY = "f00dfeedf00dfeedf00dfeedf00dfeed-us21"
LIST = "5e1ec7ed01"


class MailchimpCase(PlatformCase):
    name = "mailchimp"
    fields = {"PLAN": "plan"}  # a merge tag of the list
    create_request = ("POST", r"/3\.0/lists/[^/]+/segments$")
    fake_cls, fake_args, client_cls = FakeMailchimp, {"api_key": KEY, "list_id": LIST}, MailchimpDestination
    audiences, find_audience = "tags", "segment_id_by_name"
    clear_refusals = "clear_rejected_emails"

    def settings(self, **overrides) -> MailchimpSettings:
        # batch_threshold 2: the matrix's batches of 2 go through batch subscribe, its single rows through PUT.
        return MailchimpSettings(**{"api_key": KEY, "list_id": LIST, "base_url": self.fake.url,
                                    "timeout_s": TIMEOUT_S, "batch_threshold": 2, **overrides})

    def state(self, name: str = "vip"):
        sid = self.audience_id(name)
        if not sid:
            return {}
        members = self.fake.members()
        return {e: members[e]["merge_fields"]["PLAN"] for e in self.fake.tagged(sid)}

    def profiles(self):
        # A removal must never unsubscribe or archive: only members the sync left as it made them count.
        return {e: m["merge_fields"]["PLAN"] for e, m in self.fake.members().items() if m["status"] == "transactional"}

    def expected(self, members):
        return {e: p for e, p in members.values()}

    faults = {
        "throttle": lambda c: c.fake.inject_throttle(times=8),  # past the 6 attempts
        "5xx": lambda c: c.fake.inject_server_error(times=2, status=503),
        "connection reset": lambda c: c.fake.inject_reset(times=2, scope="segments"),
        "timeout": lambda c: c.fake.inject_delay(TIMEOUT_S * 3, times=1, scope="members"),
        "answer lost after apply": lambda c: c.fake.inject_lost_answer(times=2, scope="segments"),
        # k3's new email and the joiner k20; a tag removal has no per-member refusal
        "per-row rejection": lambda c: c.fake.reject_emails(["moved3@example.com", "user20@example.com"]),
        "bad credentials": lambda c: c.destination(api_key="0badc0de0badc0de0badc0de0badc0de-us21"),
    }


CASES = [MailchimpCase]
