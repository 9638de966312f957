"""`braze`: Braze user profiles (`/users/track`) and partner cohorts (the Cohort Import API)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from audience_pipelines.contract import Capabilities, DestinationSettings, DestinationType, EnvSecret, register

# `/users/track` takes at most 75 objects across attributes, events and purchases; we send attributes only.
MAX_ROWS = 75
KINDS = frozenset({"external_id", "email"})


class BrazeSettings(DestinationSettings):
    # The workspace's REST endpoint, e.g. https://rest.iad-01.braze.com or https://rest.fra-01.braze.eu.
    rest_endpoint: str
    # A REST API key with the users.track and users.export.ids permissions (Bearer).
    api_key: EnvSecret
    # The Cohort Import API: `/partners/{partner_name}/cohorts`, the partner's key Braze issues for
    # the cluster, and the workspace's data import key (Braze's name for it in the body: client_secret).
    partner_name: str
    partner_api_key: EnvSecret
    client_secret: EnvSecret
    # False: members with no Braze profile are skipped (counted, retried next run), never created.
    create_profiles: bool = True
    # Members known only by email are Braze user aliases {alias_name: <email>, alias_label: this}.
    email_alias_label: str = "email"
    batch_size: int = Field(default=MAX_ROWS, ge=1, le=MAX_ROWS)
    timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("rest_endpoint")
    @classmethod
    def _check_endpoint(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not urlsplit(v).scheme or not urlsplit(v).netloc:
            raise ValueError(f"rest_endpoint is the workspace's REST endpoint URL, e.g. "
                             f"https://rest.iad-01.braze.com; got {v!r}")
        return v

    @field_validator("partner_name")
    @classmethod
    def _check_partner(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v.strip()):
            raise ValueError(f"partner_name is the partner's name in the cohort import path "
                             f"(/partners/<partner_name>/cohorts); got {v!r}")
        return v.strip()

    @field_validator("email_alias_label")
    @classmethod
    def _check_label(cls, v: str) -> str:
        if not v.strip() or ":" in v:  # record ids are "alias:<label>:<name>"
            raise ValueError(f"email_alias_label must be non-empty text without ':'; got {v!r}")
        return v.strip()


@register
class Braze(DestinationType):
    name = "braze"
    settings_model = BrazeSettings
    kind_tag = "braze"
    client = "audience_pipelines.destinations.braze.client:BrazeDestination"
    summary = "Braze partner cohorts (profiles tracked by external id or email alias, record ids kept)"

    @classmethod
    def capabilities(cls, settings: BrazeSettings | None = None):
        # One user per external id and per email alias; cohorts cannot be listed, nor their size read.
        return Capabilities.for_profiles(KINDS, settings, MAX_ROWS, can_list_audiences=False, reports_size=False)

    @classmethod
    def account(cls, settings: BrazeSettings) -> str:
        # Refined per workspace by the open client (BrazeDestination.account).
        return f"{urlsplit(settings.rest_endpoint).netloc}/{settings.partner_name}"
