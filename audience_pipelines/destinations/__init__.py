"""Destinations, one module each, behind `base.Destination`."""

from __future__ import annotations

from audience_pipelines.destinations.base import BatchContext, BatchResult, Capabilities, Destination, Target
from audience_pipelines.destinations.file import FileDestination
from audience_pipelines.destinations.meta_custom_audiences import MetaCustomAudiencesDestination
from audience_pipelines.destinations.sql_table import SqlTableDestination
from audience_pipelines.destinations.webhook import WebhookDestination

DESTINATION_TYPES: dict[str, type[Destination]] = {
    cls.type_name: cls
    for cls in (SqlTableDestination, FileDestination, WebhookDestination, MetaCustomAudiencesDestination)
}

__all__ = ["DESTINATION_TYPES", "BatchContext", "BatchResult", "Capabilities", "Destination", "Target"]
