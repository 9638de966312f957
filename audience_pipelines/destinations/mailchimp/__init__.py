"""`mailchimp`: a tag on one Mailchimp audience (list), members upserted by subscriber hash.

The destination audience is a tag (a static segment) of the list `list_id`. A member is put on
the list first (its mapped fields become merge fields), then tagged; a removal takes the tag off
and leaves the member, its status and its merge fields as they were.

`status_if_new` is the status a person gets when the sync puts them on the list. Its default is
"transactional": Mailchimp accepts it for new members (destination-apis.md section 8) and it means
"on the list, not opted in to marketing", so no campaign and no confirmation email reach anyone
the sync added. "pending" sends an opt-in confirmation email; "subscribed" asserts consent the
warehouse may not hold, so either must be chosen on purpose. Existing members keep their status.
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator

from audience_pipelines.contract import (
    Capabilities, ConfigError, DestinationSettings, DestinationType, EnvSecret, register,
)

# Members per batch subscribe (POST /lists/{id}) and per static-segment change: Mailchimp's limit.
MAX_ROWS = 500
# Mailchimp allows 10 simultaneous connections per user.
MAX_CONNECTIONS = 10
_DATA_CENTER = re.compile(r"^[a-z]{2,}[0-9]+$")


def data_center(api_key: str) -> str | None:
    """The data center an API key names after its last "-" (`...-us21` -> "us21"), or None."""
    _, sep, dc = api_key.strip().rpartition("-")
    return dc if sep and _DATA_CENTER.match(dc) else None


def api_base_url(api_key: str, base_url: str | None) -> str:
    """`base_url` when set, else https://{dc}.api.mailchimp.com/3.0 from the key (never shown in errors)."""
    if base_url:
        return base_url.rstrip("/")
    dc = data_center(api_key)
    if dc is None:
        raise ConfigError("mailchimp: the setting 'api_key' does not end in a data center (like '-us21'), so the "
                          "API host is unknown; use the key as Mailchimp shows it, or set 'base_url'")
    return f"https://{dc}.api.mailchimp.com/3.0"


class MailchimpSettings(DestinationSettings):
    # Default: https://{dc}.api.mailchimp.com/3.0, the data center taken from the key (tests, proxies set it).
    base_url: str | None = None
    api_key: EnvSecret  # "<key>-<dc>", e.g. "...-us21"
    list_id: str = Field(min_length=1)  # the Mailchimp audience (list) the members live in
    # The status of people the sync puts on the list; existing members keep theirs (see the module doc).
    status_if_new: Literal["subscribed", "pending", "transactional", "unsubscribed"] = "transactional"
    # False: people not on the list already are skipped (counted, retried next run), never added.
    create_profiles: bool = True
    batch_size: int = Field(default=MAX_ROWS, ge=1, le=MAX_ROWS)
    # A batch with at least this many members goes through batch subscribe (POST /lists/{id}, 500 a
    # call); a smaller one is one PUT per member.
    batch_threshold: int = Field(default=50, ge=1)
    # Parallel requests for per-member calls, within Mailchimp's 10 simultaneous connections.
    concurrency: int = Field(default=4, ge=1, le=MAX_CONNECTIONS)
    timeout_s: float = 30.0

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("api_key")
    @classmethod
    def _key_names_data_center(cls, value: EnvSecret, info: ValidationInfo) -> EnvSecret:
        # Only a value already at hand is checked (at open, or inline): loading reads no secret.
        try:
            key = value.value({})
        except ConfigError:
            return value
        if not info.data.get("base_url") and data_center(key) is None:
            raise ValueError("does not end in a data center (like '-us21'), so the API host is unknown; use the "
                             "key as Mailchimp shows it, or set 'base_url'")
        return value


@register
class MailchimpTags(DestinationType):
    name = "mailchimp"
    settings_model = MailchimpSettings
    kind_tag = "mailchimp"
    client = "audience_pipelines.destinations.mailchimp.client:MailchimpDestination"
    summary = "A tag on a Mailchimp audience (members upserted by subscriber hash, merge fields mapped)"

    @classmethod
    def capabilities(cls, settings: MailchimpSettings | None = None):
        return Capabilities.for_profiles({"email"}, settings, MAX_ROWS)  # one list member per email

    @classmethod
    def account(cls, settings: MailchimpSettings) -> str:
        # Tags belong to one list; the open client adds the data center (see MailchimpDestination.account).
        host = urlsplit(settings.base_url).netloc if settings.base_url else "api.mailchimp.com"
        return f"{host}/lists/{settings.list_id}"
