"""`file`: each run's adds, removes and updates as CSV or Parquet files under a folder."""

from __future__ import annotations

from typing import Literal

from audience_pipelines.contract import Capabilities, DestinationSettings, DestinationType, register
from audience_pipelines.identifiers.kinds import KINDS


class FileSettings(DestinationSettings):
    path: str
    format: Literal["csv", "parquet"] = "csv"


@register
class File(DestinationType):
    name = "file"
    settings_model = FileSettings
    kind_tag = "file"
    client = "audience_pipelines.destinations.file.client:FileDestination"
    summary = "CSV or Parquet files of each run's changes"

    @classmethod
    def capabilities(cls, settings=None):
        return Capabilities(identifier_kinds=frozenset(KINDS), max_batch_rows=100_000, can_list_audiences=True)

    @classmethod
    def account(cls, settings: FileSettings) -> str:
        return settings.path
