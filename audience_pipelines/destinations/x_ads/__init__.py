"""`x_ads`: X (Twitter) Ads custom audiences (CRM lists) through the Ads API, OAuth 1.0a user context."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from audience_pipelines.contract import Capabilities, DestinationSettings, DestinationType, EnvSecret, register

# X counts 2,500 *operation objects* a request, not users; we send one operation a request and
# keep its users to 2,500 as well, so a batch never depends on how X counts.
MAX_USERS = 2_500
# X takes bodies up to 5,000,000 bytes; a request is split further above this.
MAX_BODY_BYTES = 4_000_000
# The kinds X takes (identifiers.x.X_FIELDS names their keys); each matches a person by itself.
X_KINDS = frozenset({"email", "phone", "user_id", "device_id", "external_id"})


class XAdsSettings(DestinationSettings):
    account_id: str
    consumer_key: str
    consumer_secret: EnvSecret
    access_token: EnvSecret
    access_token_secret: EnvSecret
    base_url: str = "https://ads-api.x.com"
    api_version: str = "12"
    timeout_s: float = Field(default=60.0, gt=0)
    batch_size: int = Field(default=MAX_USERS, ge=1, le=MAX_USERS)
    max_body_bytes: int = Field(default=MAX_BODY_BYTES, ge=10_000, le=5_000_000)
    # X does not document a phone format for custom audiences: E.164 with "+" unless told otherwise.
    phone_format: Literal["e164", "digits"] = "e164"

    @field_validator("account_id")
    @classmethod
    def _check_account_id(cls, v):
        v = str(v).strip()
        if not re.fullmatch(r"[A-Za-z0-9]+", v):
            raise ValueError(f"account_id is the X Ads account id (letters and digits, e.g. 18ce54d4x5t), got {v!r}")
        return v


@register
class XAds(DestinationType):
    name = "x_ads"
    settings_model = XAdsSettings
    kind_tag = "x"
    client = "audience_pipelines.destinations.x_ads.client:XAdsDestination"
    summary = "X (Twitter) Ads custom audiences (hashed identifiers; OAuth 1.0a)"

    @classmethod
    def capabilities(cls, settings: XAdsSettings | None = None):
        return Capabilities(
            identifier_kinds=X_KINDS, max_batch_rows=settings.batch_size if settings else MAX_USERS,
            accepts_fields=False, can_list_audiences=True, can_create_audiences=True, hashes_identifiers=True,
            requires_identifier=True, match_identifiers=X_KINDS, reports_size=True,
        )

    @classmethod
    def account(cls, settings: XAdsSettings) -> str:
        return settings.account_id
