"""`hubspot`: HubSpot static (MANUAL) contact lists, Lists v3 and the CRM contacts API."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field

from audience_pipelines.contract import Capabilities, DestinationSettings, DestinationType, EnvSecret, register

# HubSpot's batch input limit for contacts batch/upsert and batch/read.
MAX_ROWS = 100


class HubSpotSettings(DestinationSettings):
    access_token: EnvSecret  # a private app's access token
    base_url: str = "https://api.hubapi.com"
    timeout_s: float = 30.0
    # False: members with no HubSpot contact are skipped (counted, retried next run), never created.
    create_profiles: bool = True
    batch_size: int = Field(default=MAX_ROWS, ge=1, le=MAX_ROWS)
    # Only MANUAL lists take membership changes by API and keep them; DYNAMIC ones follow filters.
    list_processing_type: Literal["MANUAL"] = "MANUAL"


@register
class HubSpotLists(DestinationType):
    name = "hubspot"
    settings_model = HubSpotSettings
    kind_tag = "hubspot"
    client = "audience_pipelines.destinations.hubspot.client:HubSpotDestination"
    summary = "HubSpot static contact lists (contacts upserted by email, record ids kept)"

    @classmethod
    def capabilities(cls, settings: HubSpotSettings | None = None):
        return Capabilities.for_profiles({"email"}, settings, MAX_ROWS)  # one contact per email

    @classmethod
    def account(cls, settings: HubSpotSettings) -> str:
        # Without the token only the API host is known; the open client refines this per token
        # (see HubSpotDestination.account), so two portals never share a registry of lists.
        return urlsplit(settings.base_url).netloc or settings.base_url
