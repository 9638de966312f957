"""Dagster Components: the YAML vocabulary of audience_pipelines."""

from audience_pipelines.components.audience import Audience
from audience_pipelines.components.destination import Destination
from audience_pipelines.components.entity import Entity
from audience_pipelines.components.settings import Settings
from audience_pipelines.components.sync import AudienceSync
from audience_pipelines.components.warehouse import Warehouse

__all__ = ["Audience", "AudienceSync", "Destination", "Entity", "Settings", "Warehouse"]
