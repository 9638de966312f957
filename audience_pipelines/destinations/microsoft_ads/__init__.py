"""`microsoft_ads`: Microsoft Advertising Customer Match lists (Campaign Management REST API v13).

Customer lists take SHA-256 hashed emails only (`CustomerListItemSubType` "Email"): the docs list
CRM ids and phones as not currently supported. Members go through `CustomerListUserData/Apply`, at
most 1,000 items a call. An account must have accepted the Customer Match terms, in the UI or with
`AcceptCustomerMatchTerm` on an upload (`accept_customer_match_terms`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from audience_pipelines.contract import Capabilities, DestinationSettings, DestinationType, EnvSecret, register

MAX_ITEMS = 1_000  # CustomerListItems per Apply call
BASE_URL = "https://campaign.api.bingads.microsoft.com/CampaignManagement/v13"
TOKEN_URL = "https://login.microsoftonline.com/common/oauth2/v2.0/token"
OAUTH_SCOPE = "https://ads.microsoft.com/msads.manage offline_access"


class MicrosoftAdsSettings(DestinationSettings):
    customer_id: str  # the manager account (header CustomerId)
    account_id: str  # the ad account (header CustomerAccountId)
    developer_token: EnvSecret
    client_id: str
    client_secret: EnvSecret | None = None  # public clients (desktop / native apps) have none
    refresh_token: EnvSecret
    base_url: str = BASE_URL
    token_url: str = TOKEN_URL
    # Sent as AcceptCustomerMatchTerm=true on every upload; left out otherwise (false would refuse them).
    accept_customer_match_terms: bool = False
    membership_duration_days: int = 30
    scope: Literal["Account", "Customer"] = "Account"
    batch_size: int = Field(default=MAX_ITEMS, ge=1, le=MAX_ITEMS)
    timeout_s: float = Field(default=60.0, gt=0)

    @field_validator("customer_id", "account_id", mode="before")
    @classmethod
    def _digits(cls, v, info):
        text = str(v).strip() if isinstance(v, (str, int)) and not isinstance(v, bool) else ""
        if not text.isdigit():
            raise ValueError(f"{info.field_name} is a numeric Microsoft Advertising id, got {v!r}")
        return text

    @field_validator("membership_duration_days")
    @classmethod
    def _duration(cls, v):
        if not (1 <= v <= 390 or v == -1):
            raise ValueError("membership_duration_days is 1 to 390, or -1 for no expiry")
        return v


@register
class MicrosoftAds(DestinationType):
    name = "microsoft_ads"
    settings_model = MicrosoftAdsSettings
    kind_tag = "microsoft"
    client = "audience_pipelines.destinations.microsoft_ads.client:MicrosoftAdsDestination"
    summary = "Microsoft Advertising Customer Match lists (hashed emails)"

    @classmethod
    def capabilities(cls, settings: MicrosoftAdsSettings | None = None):
        return Capabilities(
            identifier_kinds=frozenset({"email"}), max_batch_rows=settings.batch_size if settings else MAX_ITEMS,
            accepts_fields=False, can_list_audiences=True, hashes_identifiers=True, requires_identifier=True,
            match_identifiers=frozenset({"email"}), reports_size=True,
        )

    @classmethod
    def account(cls, settings: MicrosoftAdsSettings) -> str:
        return settings.account_id
