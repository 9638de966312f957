"""Fake destination servers (real HTTP on 127.0.0.1) for client tests."""

from .meta import FakeMeta, MetaRequest
from .webhook import FakeWebhook, WebhookRequest, sign

__all__ = ["FakeMeta", "FakeWebhook", "MetaRequest", "WebhookRequest", "sign"]
