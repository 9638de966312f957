"""`reddit_ads`: Reddit Ads custom audiences (customer lists) through the Ads API v3.

Reddit refuses requests with a generic User-Agent, so the User-Agent is built from the settings in
the form Reddit asks for: `audience_pipelines:<client_id>:<version> (by /u/<reddit_username>)`.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from audience_pipelines.contract import Capabilities, DestinationSettings, DestinationType, EnvSecret, register

MAX_ROWS = 2_500  # user_data rows per request (Reddit's documented maxItems)
KINDS = frozenset({"email", "device_id"})  # EMAIL_SHA256 and MAID_SHA256; phone is not accepted
_USERNAME = re.compile(r"^[A-Za-z0-9_-]{3,20}$")


class RedditAdsSettings(DestinationSettings):
    ad_account_id: str
    client_id: str
    client_secret: EnvSecret
    refresh_token: EnvSecret  # granted the adsread and adsedit scopes
    reddit_username: str  # the developer's Reddit account, named in the User-Agent
    base_url: str = "https://ads-api.reddit.com/api/v3"
    token_url: str = "https://www.reddit.com/api/v1/access_token"
    timeout_s: float = Field(default=60.0, gt=0)
    batch_size: int = Field(default=MAX_ROWS, ge=1, le=MAX_ROWS)
    # The engine lowercases device ids; Reddit hashes IDFAs upper case: "upper" for a column of IDFAs.
    device_id_case: Literal["keep", "upper", "lower"] = "keep"

    @field_validator("ad_account_id", "client_id")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v.strip()

    @field_validator("reddit_username")
    @classmethod
    def _username(cls, v: str) -> str:
        name = v.strip().removeprefix("/").removeprefix("u/")
        if not _USERNAME.match(name):
            raise ValueError("a Reddit username (3 to 20 letters, digits, '_' or '-'), used in the User-Agent "
                             "Reddit requires")
        return name


@register
class RedditAds(DestinationType):
    name = "reddit_ads"
    settings_model = RedditAdsSettings
    kind_tag = "reddit"
    client = "audience_pipelines.destinations.reddit_ads.client:RedditAdsDestination"
    summary = "Reddit Ads custom audiences (hashed email and mobile ad ids)"

    @classmethod
    def capabilities(cls, settings: RedditAdsSettings | None = None):
        return Capabilities(
            identifier_kinds=KINDS, max_batch_rows=settings.batch_size if settings else MAX_ROWS,
            accepts_fields=False, can_list_audiences=True, hashes_identifiers=True, requires_identifier=True,
            match_identifiers=KINDS, reports_size=True,
        )

    @classmethod
    def account(cls, settings: RedditAdsSettings) -> str:
        return settings.ad_account_id
