"""`linkedin_ads`: LinkedIn Matched Audiences, person (USER) DMP segments through the Marketing API.

Members are streamed with `POST /dmpSegments/{id}/users` (BATCH_CREATE). Assumptions where the
reference is not sure:
- the largest batch LinkedIn takes is not documented; 5,000 elements a request is what other
  connectors are believed to use [unverified], so that is the limit here;
- a created segment's id is read from the `x-restli-id` header [unverified] or else the body's `id`;
- segments are created with sourcePlatform "API" and sourceSegmentId = the audience name;
- an identifier change is a REMOVE request, then an ADD request: the order of elements within one
  batch is not documented.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from audience_pipelines.contract import Capabilities, DestinationSettings, DestinationType, EnvSecret, register

MAX_ELEMENTS = 5_000  # per /users request [unverified]
# Kinds that identify a member by themselves (a `userIds` entry each).
MATCH_KINDS = frozenset({"email", "device_id"})
# Plain-text extras LinkedIn uses to improve a match, sent only beside a user id.
EXTRA_KINDS = frozenset({"first_name", "last_name", "country"})
ACCOUNT_URN = "urn:li:sponsoredAccount:"


class LinkedInSettings(DestinationSettings):
    ad_account_id: str  # the sponsoredAccount id (digits), or its URN
    # A member's 3-legged token (scope rw_dmp_segments, role other than VIEWER on the account), or,
    # for apps with programmatic refresh tokens, refresh_token + client_id + client_secret.
    access_token: EnvSecret | None = None
    refresh_token: EnvSecret | None = None
    client_id: str | None = None
    client_secret: EnvSecret | None = None
    base_url: str = "https://api.linkedin.com/rest"
    token_url: str = "https://www.linkedin.com/oauth/v2/accessToken"
    linkedin_version: str = "202509"  # the LinkedIn-Version header, YYYYMM
    segment_type: Literal["USER"] = "USER"  # person audiences only
    batch_size: int = Field(default=MAX_ELEMENTS, ge=1, le=MAX_ELEMENTS)
    timeout_s: float = Field(default=60.0, gt=0)
    # LinkedIn asks for a wait after creating a segment before users are added; a 404 on /users
    # for a segment this client created is retried for up to creation_retry_s more.
    creation_wait_s: float = Field(default=5.0, ge=0)
    creation_retry_s: float = Field(default=60.0, ge=0)

    @field_validator("ad_account_id")
    @classmethod
    def _check_account(cls, v: str) -> str:
        digits = str(v).strip().removeprefix(ACCOUNT_URN)
        if not digits.isdigit():
            raise ValueError(f"ad_account_id is the sponsored account id (digits), got {v!r}")
        return digits

    @field_validator("linkedin_version")
    @classmethod
    def _check_version(cls, v: str) -> str:
        if not re.fullmatch(r"20\d\d(0[1-9]|1[0-2])", str(v).strip()):
            raise ValueError(f"linkedin_version is YYYYMM (e.g. 202509), got {v!r}")
        return str(v).strip()

    @model_validator(mode="after")
    def _check_credentials(self):
        refresh = (self.refresh_token, self.client_id, self.client_secret)
        if any(refresh) and not all(refresh):
            raise ValueError("refresh_token, client_id and client_secret go together")
        if self.access_token is None and not all(refresh):
            raise ValueError("give access_token, or refresh_token with client_id and client_secret")
        return self


@register
class LinkedInAds(DestinationType):
    name = "linkedin_ads"
    settings_model = LinkedInSettings
    kind_tag = "linkedin"
    client = "audience_pipelines.destinations.linkedin_ads.client:LinkedInAdsDestination"
    summary = "LinkedIn Matched Audiences (USER DMP segments; hashed emails, mobile ad ids)"

    @classmethod
    def capabilities(cls, settings: LinkedInSettings | None = None):
        return Capabilities(
            identifier_kinds=MATCH_KINDS | EXTRA_KINDS,
            max_batch_rows=settings.batch_size if settings else MAX_ELEMENTS,
            accepts_fields=False, can_list_audiences=True, hashes_identifiers=True, requires_identifier=True,
            companion_kinds=EXTRA_KINDS, match_identifiers=MATCH_KINDS,
            reports_size=True, reports_match_rate=True,
        )

    @classmethod
    def account(cls, settings: LinkedInSettings) -> str:
        return f"{ACCOUNT_URN}{settings.ad_account_id}"
