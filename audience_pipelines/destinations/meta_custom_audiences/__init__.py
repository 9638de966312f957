"""`meta_custom_audiences`: Meta (Facebook) Custom Audiences through the Marketing API."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from audience_pipelines.contract import Capabilities, DestinationSettings, DestinationType, EnvSecret, register
from audience_pipelines.identifiers.kinds import META_FIELDS

MAX_ROWS = 10_000
# Meta ends a replace session 90 minutes after its first batch; stop sending a little before.
REPLACE_WINDOW_S = 85 * 60


class MetaSettings(DestinationSettings):
    ad_account_id: str
    access_token: EnvSecret
    app_secret: EnvSecret | None = None
    base_url: str = "https://graph.facebook.com/v25.0"
    timeout_s: float = 60.0
    customer_file_source: Literal[
        "USER_PROVIDED_ONLY", "PARTNER_PROVIDED_ONLY", "BOTH_USER_AND_PARTNER_PROVIDED"] = "USER_PROVIDED_ONLY"
    batch_size: int = Field(default=MAX_ROWS, ge=1, le=MAX_ROWS)
    # A full resend of a mirror sync replaces the audience through `usersreplace` sessions.
    replace_on_full_resend: bool = True
    replace_window_s: float = Field(default=REPLACE_WINDOW_S, gt=0)


@register
class MetaCustomAudiences(DestinationType):
    name = "meta_custom_audiences"
    settings_model = MetaSettings
    kind_tag = "meta"
    client = "audience_pipelines.destinations.meta_custom_audiences.client:MetaCustomAudiencesDestination"
    summary = "Meta Custom Audiences (hashed identifiers; usersreplace sessions for full resends)"

    @classmethod
    def capabilities(cls, settings: MetaSettings | None = None):
        return Capabilities(
            identifier_kinds=frozenset(META_FIELDS), max_batch_rows=settings.batch_size if settings else MAX_ROWS,
            accepts_fields=False, can_list_audiences=True, hashes_identifiers=True, requires_identifier=True,
            match_identifiers=frozenset({"email", "phone", "external_id", "device_id"}),
            replaces_audience=settings.replace_on_full_resend if settings else True, reports_size=True,
            # Meta limits calls per hour, not calls at once; a replace session still goes one batch at a time.
            parallel_batches=2, max_parallel_batches=4,
        )

    @classmethod
    def account(cls, settings: MetaSettings) -> str:
        return f"act_{settings.ad_account_id.removeprefix('act_')}"
