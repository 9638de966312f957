"""`salesforce`: Salesforce campaigns, members kept as CampaignMember records of Leads or Contacts.

A campaign is found by name or created; each member is a Lead or Contact (the `person_object`
setting) found by email, created where missing when profiles are created, with the sync's mapped
fields written to it; membership is one CampaignMember per person. Small batches go through sObject
Collections (200 records a request), batches of `bulk_threshold` members or more through a Bulk API
2.0 ingest job.
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from audience_pipelines.contract import Capabilities, DestinationSettings, DestinationType, EnvSecret, register

# Rows per engine batch. The client splits a batch into requests of 200 (sObject Collections) or
# sends its members as one Bulk API 2.0 job, so a batch may be larger than a request. 10,000 rows
# make a first sync of a large audience a few Bulk jobs instead of hundreds of collection calls;
# a batch below `bulk_threshold` (a small run, a diff run) stays on collections.
DEFAULT_BATCH = 10_000
# A Bulk API 2.0 upload holds at most 150 MB of CSV; 100,000 member rows are a few MB.
MAX_BATCH = 100_000
DEFAULT_BULK_THRESHOLD = 2_000  # Salesforce suggests Bulk API above about 2,000 records
# Values for the fields Salesforce requires on a new person when the sync maps none.
REQUIRED_DEFAULTS = {
    "Lead": {"Company": "[not provided]", "LastName": "[not provided]"},
    "Contact": {"LastName": "[not provided]"},
}


class SalesforceSettings(DestinationSettings):
    instance_url: str  # the org's My Domain URL, e.g. https://acme.my.salesforce.com
    api_version: str = "v61.0"
    # OAuth 2.0 refresh-token flow of a connected app. Salesforce's token answer also names an
    # instance_url; this setting wins (the token only authenticates).
    client_id: str
    client_secret: EnvSecret
    refresh_token: EnvSecret
    token_url: str = "https://login.salesforce.com/services/oauth2/token"
    person_object: Literal["Lead", "Contact"] = "Lead"
    # Field values a new person gets for fields Salesforce requires and the sync does not map
    # (or maps to an empty value). Default: Company and LastName for a Lead, LastName for a Contact.
    required_defaults: dict[str, str] = Field(default_factory=dict)
    # False: members with no Lead/Contact are skipped (counted, retried next run), never created.
    create_profiles: bool = True
    member_status: str = "Sent"  # CampaignMember.Status of members this sync adds
    # A batch with this many CampaignMember inserts (or deletes) or more goes as one Bulk API 2.0 job.
    bulk_threshold: int = Field(default=DEFAULT_BULK_THRESHOLD, ge=1)
    batch_size: int = Field(default=DEFAULT_BATCH, ge=1, le=MAX_BATCH)
    timeout_s: float = Field(default=60.0, gt=0)
    poll_interval_s: float = Field(default=2.0, ge=0)  # between reads of a Bulk job's state
    # A Bulk job still running after this long: its rows fail and are sent again next run.
    poll_timeout_s: float = Field(default=1800.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _default_required(cls, values):
        if isinstance(values, dict) and not values.get("required_defaults"):
            person = values.get("person_object") or "Lead"
            values = {**values, "required_defaults": dict(REQUIRED_DEFAULTS.get(person, {}))}
        return values

    @field_validator("instance_url", "token_url")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not re.match(r"^https?://[^/]+", v):
            raise ValueError(f"expected an https:// URL, got {v!r}")
        return v

    @field_validator("api_version")
    @classmethod
    def _version(cls, v: str) -> str:
        v = v.strip().strip("/")
        v = v if v.startswith("v") else f"v{v}"
        if not re.fullmatch(r"v\d+\.\d", v):
            raise ValueError(f"expected a REST API version such as v61.0, got {v!r}")
        return v


@register
class Salesforce(DestinationType):
    name = "salesforce"
    settings_model = SalesforceSettings
    kind_tag = "salesforce"
    client = "audience_pipelines.destinations.salesforce.client:SalesforceDestination"
    summary = "Salesforce campaigns (Leads or Contacts found by email, CampaignMember ids kept)"

    @classmethod
    def capabilities(cls, settings: SalesforceSettings | None = None):
        return Capabilities.for_profiles({"email"}, settings, DEFAULT_BATCH)  # one Lead/Contact per email

    @classmethod
    def account(cls, settings: SalesforceSettings) -> str:
        return urlsplit(settings.instance_url).netloc or settings.instance_url  # one org per My Domain
