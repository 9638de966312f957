"""`webhook`: JSON batches POSTed to a URL, signed, with an idempotency key per batch."""

from __future__ import annotations

from pydantic import Field

from audience_pipelines.contract import (
    Capabilities, DestinationSettings, DestinationType, EnvSecret, SecretInlineAllowed, register,
)
from audience_pipelines.identifiers.kinds import KINDS

MAX_ROWS = 1000


class WebhookSettings(DestinationSettings):
    url: SecretInlineAllowed  # a receiver's URL may carry a token
    secret: EnvSecret | None = None
    timeout_s: float = 30.0
    batch_size: int = Field(default=MAX_ROWS, ge=1, le=MAX_ROWS)


@register
class Webhook(DestinationType):
    name = "webhook"
    settings_model = WebhookSettings
    kind_tag = "webhook"
    client = "audience_pipelines.destinations.webhook.client:WebhookDestination"
    summary = "signed JSON batches with an idempotency key, per-row results optional"

    @classmethod
    def capabilities(cls, settings: WebhookSettings | None = None):
        # One batch at a time unless a sync asks for more: then batches may arrive out of `seq` order.
        return Capabilities(identifier_kinds=frozenset(KINDS), can_list_audiences=True,
                            max_batch_rows=settings.batch_size if settings else MAX_ROWS, max_parallel_batches=8)

    @classmethod
    def account(cls, settings: WebhookSettings) -> str:
        return "webhook"  # the URL is a secret; names are ids here, so one book serves all
