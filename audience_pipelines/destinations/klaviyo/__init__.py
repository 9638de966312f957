"""`klaviyo`: Klaviyo lists, filled by bulk profile import jobs (profiles created or updated, then listed)."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field

from audience_pipelines.contract import Capabilities, DestinationSettings, DestinationType, EnvSecret, register

# A bulk profile import job takes at most 10,000 profiles (and 5 MB) per request.
MAX_PROFILES = 10_000


class KlaviyoSettings(DestinationSettings):
    api_key: EnvSecret  # a private API key (pk_...), scopes lists:read/write and profiles:read/write
    # The API version, sent as the `revision` header on every call.
    revision: str = Field(default="2026-07-15", pattern=r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$")
    base_url: str = "https://a.klaviyo.com/api"
    timeout_s: float = 30.0
    # False: members with no Klaviyo profile are skipped (counted, retried next run), never created.
    create_profiles: bool = True
    batch_size: int = Field(default=MAX_PROFILES, ge=1, le=MAX_PROFILES)
    # How often and how long a batch waits for its import job.
    poll_interval_s: float = Field(default=2.0, gt=0)
    poll_timeout_s: float = Field(default=600.0, ge=0)


@register
class KlaviyoLists(DestinationType):
    name = "klaviyo"
    settings_model = KlaviyoSettings
    kind_tag = "klaviyo"
    client = "audience_pipelines.destinations.klaviyo.client:KlaviyoDestination"
    summary = "Klaviyo lists (profiles created by bulk import jobs, profile ids kept)"

    @classmethod
    def capabilities(cls, settings: KlaviyoSettings | None = None):
        return Capabilities.for_profiles({"email", "phone", "external_id"}, settings, MAX_PROFILES, uses_jobs=True)

    @classmethod
    def account(cls, settings: KlaviyoSettings) -> str:
        # Refined per key by the open client (KlaviyoDestination.account).
        return urlsplit(settings.base_url).netloc or settings.base_url
