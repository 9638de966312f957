"""`tiktok_ads`: TikTok custom audiences through the Business API (v1.3) segment endpoints.

The audience is a TikTok "Customer File" custom audience. Connectors (Segment, RudderStack)
create and fill it through the segment API: `POST /segment/audience/` with action "create" and an
`id_type` (the audience's kind of hashed id), then `POST /segment/mapping/` with action add or
delete. That is the path built here. `id_type` (EMAIL_SHA256 by default, or PHONE_SHA256,
IDFA_SHA256, GAID_SHA256, AAID_SHA256) is the choice between audience flavours; it is sent only
when the audience is created. The customer-file upload path (`/dmp/custom_audience/file/upload/`
then `/dmp/custom_audience/create/`) is [unverified] in the reference and not built.

Assumptions where the reference says [unverified]: at most 1,000 rows a mapping request (the
limit was not found; Tealium batches at 1,000); code 40100 is TikTok's rate limit.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from audience_pipelines.contract import Capabilities, DestinationSettings, DestinationType, EnvSecret, register

# [unverified] TikTok's per-request limit for /segment/mapping/ is not documented.
MAX_ROWS = 1_000
# Identifier kinds TikTok matches on, each by itself (EMAIL_SHA256, PHONE_SHA256, a device id).
TIKTOK_KINDS = frozenset({"email", "phone", "device_id"})
DEVICE_ID_TYPES = ("IDFA_SHA256", "GAID_SHA256")


class TikTokAdsSettings(DestinationSettings):
    advertiser_id: str
    access_token: EnvSecret  # sent as the `Access-Token` header (not Bearer)
    base_url: str = "https://business-api.tiktok.com/open_api/v1.3"
    timeout_s: float = Field(default=60.0, gt=0)
    batch_size: int = Field(default=MAX_ROWS, ge=1, le=MAX_ROWS)
    # The kind of audience created (the create call's `id_type`).
    id_type: Literal["EMAIL_SHA256", "PHONE_SHA256", "IDFA_SHA256", "GAID_SHA256", "AAID_SHA256"] = "EMAIL_SHA256"
    # The schema device ids are sent under.
    device_id_type: Literal["IDFA_SHA256", "GAID_SHA256"] = "GAID_SHA256"

    @model_validator(mode="after")
    def _device_ids_match_the_audience(self):
        if self.id_type in DEVICE_ID_TYPES and self.device_id_type != self.id_type:
            raise ValueError(f"id_type {self.id_type} creates a device-id audience; set device_id_type to "
                             f"{self.id_type} too (it is {self.device_id_type})")
        return self


@register
class TikTokAds(DestinationType):
    name = "tiktok_ads"
    settings_model = TikTokAdsSettings
    kind_tag = "tiktok"
    client = "audience_pipelines.destinations.tiktok_ads.client:TikTokAdsDestination"
    summary = "TikTok custom audiences (hashed email, phone, device id; segment API)"

    @classmethod
    def capabilities(cls, settings: TikTokAdsSettings | None = None):
        return Capabilities(
            identifier_kinds=TIKTOK_KINDS, max_batch_rows=settings.batch_size if settings else MAX_ROWS,
            accepts_fields=False, can_list_audiences=True, can_create_audiences=True, hashes_identifiers=True,
            requires_identifier=True, match_identifiers=TIKTOK_KINDS, reports_size=True,
        )

    @classmethod
    def account(cls, settings: TikTokAdsSettings) -> str:
        return settings.advertiser_id
