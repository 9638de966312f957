"""`google_ads`: Google Ads Customer Match user lists through the Google Ads API.

The Google Ads API (offline user data jobs) is what a Google Ads developer token can use today, and
it reads a list's size and match rate back through the same API. Google says that from April 2026
most brand-new Customer Match integrations must use the Data Manager API (`audienceMembers:ingest`),
which needs its own access approval; that path is not built here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from audience_pipelines.contract import Capabilities, DestinationSettings, DestinationType, EnvSecret, register
from audience_pipelines.identifiers.kinds import ADDRESS_KINDS

# Google recommends about 10,000 identifiers a call and allows 100,000 a request.
DEFAULT_BATCH = 10_000
MAX_IDENTIFIERS_PER_REQUEST = 100_000
UNLIMITED_LIFE_SPAN = 10_000

# What each upload key type of a CRM-based list accepts, by identifier kind.
KINDS_BY_UPLOAD_KEY = {
    "CONTACT_INFO": frozenset({"email", "phone", "first_name", "last_name", "country", "zip"}),
    "CRM_ID": frozenset({"user_id"}),
    "MOBILE_ADVERTISING_ID": frozenset({"device_id"}),
}
# Kinds Google matches a person on by themselves (names and address only count all together).
MATCH_KINDS = frozenset({"email", "phone", "user_id", "device_id"})


def _customer_id(value: str | None, setting: str) -> str | None:
    if value is None or not str(value).strip():  # an optional variable left unset
        return None
    digits = str(value).strip().replace("-", "")
    if not digits.isdigit():
        raise ValueError(f"{setting} is the 10-digit Google Ads customer id (hyphens allowed), got {value!r}")
    return digits


class GoogleAdsSettings(DestinationSettings):
    customer_id: str
    # The manager account the credentials act through, when the list lives in a client account.
    login_customer_id: str | None = None
    developer_token: EnvSecret
    client_id: str
    client_secret: EnvSecret
    refresh_token: EnvSecret
    api_version: str = "v22"
    base_url: str = "https://googleads.googleapis.com"
    token_url: str = "https://oauth2.googleapis.com/token"
    upload_key_type: Literal["CONTACT_INFO", "CRM_ID", "MOBILE_ADVERTISING_ID"] = "CONTACT_INFO"
    membership_life_span_days: int = UNLIMITED_LIFE_SPAN
    ad_user_data: Literal["GRANTED", "DENIED"] = "GRANTED"
    ad_personalization: Literal["GRANTED", "DENIED"] = "GRANTED"
    # Rows per batch; requests are split further so none carries over 100,000 identifiers.
    batch_size: int = Field(default=DEFAULT_BATCH, ge=1, le=MAX_IDENTIFIERS_PER_REQUEST)
    timeout_s: float = Field(default=60.0, gt=0)
    poll_interval_s: float = Field(default=30.0, ge=0)
    # A job can take 6 hours or more; past this the run ends with its rows unsettled.
    poll_timeout_s: float = Field(default=6 * 3600.0, ge=0)
    app_id: str | None = None  # the app of a MOBILE_ADVERTISING_ID list (needed to create one)

    @field_validator("customer_id")
    @classmethod
    def _check_customer_id(cls, v):
        return _customer_id(v, "customer_id")

    @field_validator("login_customer_id")
    @classmethod
    def _check_login_customer_id(cls, v):
        return _customer_id(v, "login_customer_id")

    @field_validator("membership_life_span_days")
    @classmethod
    def _check_life_span(cls, v):
        if not (0 <= v <= 540 or v == UNLIMITED_LIFE_SPAN):
            raise ValueError("membership_life_span_days is 0 to 540, or 10000 for no expiry")
        return v

    @model_validator(mode="after")
    def _check_app_id(self):
        if self.app_id and self.upload_key_type != "MOBILE_ADVERTISING_ID":
            raise ValueError("app_id is only for upload_key_type MOBILE_ADVERTISING_ID")
        return self


@register
class GoogleAds(DestinationType):
    name = "google_ads"
    settings_model = GoogleAdsSettings
    kind_tag = "google"
    client = "audience_pipelines.destinations.google_ads.client:GoogleAdsDestination"
    summary = "Google Ads Customer Match (hashed identifiers; offline user data jobs)"

    @classmethod
    def capabilities(cls, settings: GoogleAdsSettings | None = None):
        kinds = KINDS_BY_UPLOAD_KEY[settings.upload_key_type if settings else "CONTACT_INFO"]
        return Capabilities(
            identifier_kinds=kinds, max_batch_rows=settings.batch_size if settings else DEFAULT_BATCH,
            accepts_fields=False, can_list_audiences=True, hashes_identifiers=True, requires_identifier=True,
            match_identifiers=MATCH_KINDS, identifier_groups=(frozenset(ADDRESS_KINDS),), uses_jobs=True,
            reports_size=True, reports_match_rate=True,
        )

    @classmethod
    def account(cls, settings: GoogleAdsSettings) -> str:
        return settings.customer_id
