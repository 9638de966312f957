"""`pinterest_ads`: Pinterest Ads customer lists (API v5), and the audience that makes one targetable.

The sync's destination audience id is the customer list's id: members are added to and removed
from the list. With `create_audience` (the default) the list is also wrapped in a CUSTOMER_LIST
audience of the same name, which is what campaigns target and what reports a size.

Records per request are not stated in Pinterest's v5 spec [unverified]: a third-party tool says
50,000, so that is the ceiling here and 10,000 the default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from audience_pipelines.contract import Capabilities, DestinationSettings, DestinationType, EnvSecret, register

DEFAULT_BATCH = 10_000
MAX_RECORDS = 50_000  # [unverified] per PATCH
# A customer list holds one kind of record; the sent column is named after the list type.
KIND_BY_LIST_TYPE = {"EMAIL": "email", "MAID": "device_id"}


class PinterestSettings(DestinationSettings):
    ad_account_id: str
    # A static access token, or a refresh token (with the app's client id and secret) exchanged
    # for one at https://api.pinterest.com/v5/oauth/token.
    access_token: EnvSecret | None = None
    refresh_token: EnvSecret | None = None
    client_id: str | None = None
    client_secret: EnvSecret | None = None
    base_url: str = "https://api.pinterest.com/v5"
    token_url: str = "https://api.pinterest.com/v5/oauth/token"
    timeout_s: float = Field(default=60.0, gt=0)
    list_type: Literal["EMAIL", "MAID"] = "EMAIL"
    # Also create the CUSTOMER_LIST audience wrapping a list, so campaigns can target it.
    create_audience: bool = True
    batch_size: int = Field(default=DEFAULT_BATCH, ge=1, le=MAX_RECORDS)

    @field_validator("ad_account_id")
    @classmethod
    def _check_ad_account_id(cls, v: str) -> str:
        v = str(v).strip()
        if not v.isdigit() or len(v) > 18:
            raise ValueError(f"ad_account_id is Pinterest's numeric ad account id (at most 18 digits), got {v!r}")
        return v

    @model_validator(mode="after")
    def _check_credentials(self):
        refresh = (self.refresh_token, self.client_id, self.client_secret)
        if any(v is not None for v in refresh) and not all(v is not None for v in refresh):
            raise ValueError("refreshing the access token needs refresh_token, client_id and client_secret")
        if self.access_token is None and self.refresh_token is None:
            raise ValueError("give access_token, or refresh_token with client_id and client_secret")
        return self


@register
class PinterestAds(DestinationType):
    name = "pinterest_ads"
    settings_model = PinterestSettings
    kind_tag = "pinterest"
    client = "audience_pipelines.destinations.pinterest_ads.client:PinterestAdsDestination"
    summary = "Pinterest Ads customer lists (hashed emails or MAIDs) wrapped in a CUSTOMER_LIST audience"

    @classmethod
    def capabilities(cls, settings: PinterestSettings | None = None):
        kinds = frozenset({KIND_BY_LIST_TYPE[settings.list_type if settings else "EMAIL"]})
        return Capabilities(
            identifier_kinds=kinds, max_batch_rows=settings.batch_size if settings else DEFAULT_BATCH,
            accepts_fields=False, can_list_audiences=True, hashes_identifiers=True, requires_identifier=True,
            match_identifiers=kinds, reports_size=True,
        )

    @classmethod
    def account(cls, settings: PinterestSettings) -> str:
        return settings.ad_account_id
