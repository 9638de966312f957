"""The code location: every YAML component under defs/ plus the shared storage resource."""

from collections.abc import Callable
from pathlib import Path

import dagster as dg

from audience_pipelines.components.load_errors import first_user_error
from audience_pipelines.engine import ConfigError
from audience_pipelines.resources import AudienceStorage

DEFS = Path(__file__).parent / "defs"


def build(load: Callable[[], dg.Definitions]) -> dg.Definitions:
    """What `load` returns plus the storage resource; a YAML mistake is raised as a ConfigError."""
    try:
        loaded = load()
    except Exception as exc:
        mistake = first_user_error(exc)
        if not isinstance(mistake, ConfigError):
            raise
        # Dagster prints the outermost error first: lead with the YAML mistake, not its component tree.
        raise ConfigError(str(mistake)) from mistake.__cause__
    return dg.Definitions.merge(loaded, dg.Definitions(resources={"audience_storage": AudienceStorage()}))


@dg.definitions
def defs() -> dg.Definitions:
    return build(lambda: dg.load_from_defs_folder(path_within_project=Path(__file__).parent))
