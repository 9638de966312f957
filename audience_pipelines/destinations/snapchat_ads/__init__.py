"""`snapchat_ads`: Snapchat Ads customer-list segments through the Snap Marketing API (v1).

Members are SHA-256 hashed emails, phone numbers and mobile ad ids, one schema per request, at
most 100,000 identifiers a request. Snap reports a segment's approximate size, no match rate.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from audience_pipelines.contract import Capabilities, DestinationSettings, DestinationType, EnvSecret, register

MAX_IDENTIFIERS = 100_000
LIFETIME = 9999  # retention_in_days meaning "keep members for ever"
# The kinds Snap matches on (identifiers/snapchat.py names their schemas). Each is matched by
# itself, so withdrawing a value takes out whoever it stands for.
SNAP_KINDS = frozenset({"email", "phone", "device_id"})


class SnapchatSettings(DestinationSettings):
    ad_account_id: str
    client_id: str
    client_secret: EnvSecret
    refresh_token: EnvSecret
    token_url: str = "https://accounts.snapchat.com/login/oauth2/access_token"
    base_url: str = "https://adsapi.snapchat.com/v1"
    retention_in_days: int = Field(default=LIFETIME, ge=1, le=LIFETIME)
    # Rows per batch: one request per schema per batch, each under Snap's 100,000 identifiers.
    batch_size: int = Field(default=MAX_IDENTIFIERS, ge=1, le=MAX_IDENTIFIERS)
    timeout_s: float = Field(default=60.0, gt=0)

    @field_validator("ad_account_id", "client_id")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v.strip()

    @field_validator("ad_account_id")
    @classmethod
    def _account_id(cls, v: str) -> str:
        # It goes into URL paths: Snap's ids are UUIDs (letters, digits, hyphens).
        if not re.fullmatch(r"[A-Za-z0-9_-]+", v):
            raise ValueError(f"ad_account_id is the ad account's id (a UUID), got {v!r}")
        return v


@register
class SnapchatAds(DestinationType):
    name = "snapchat_ads"
    settings_model = SnapchatSettings
    kind_tag = "snapchat"
    client = "audience_pipelines.destinations.snapchat_ads.client:SnapchatAdsDestination"
    summary = "Snapchat Ads customer-list segments (hashed email, phone, mobile ad id)"

    @classmethod
    def capabilities(cls, settings: SnapchatSettings | None = None):
        return Capabilities(
            identifier_kinds=SNAP_KINDS, max_batch_rows=settings.batch_size if settings else MAX_IDENTIFIERS,
            accepts_fields=False, can_list_audiences=True, can_create_audiences=True, hashes_identifiers=True,
            requires_identifier=True, match_identifiers=SNAP_KINDS, reports_size=True, reports_match_rate=False,
        )

    @classmethod
    def account(cls, settings: SnapchatSettings) -> str:
        return settings.ad_account_id
