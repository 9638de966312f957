"""The code location: every YAML component under defs/ plus the shared storage resource."""

from pathlib import Path

import dagster as dg

from audience_pipelines.resources import AudienceStorage


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
        dg.Definitions(resources={"audience_storage": AudienceStorage()}),
    )
