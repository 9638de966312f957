"""The sync engine: plain Python and pyarrow, usable without Dagster."""

from audience_pipelines.engine.errors import (
    AudienceError, AudiencePipelinesError, ConfigError, CredentialsError, DestinationError, MassRemovalBlocked,
    RowsRefused, SyncAborted, SyncAlreadyRunning, SyncInputError,
)
from audience_pipelines.engine.membership import Membership, build_membership
from audience_pipelines.engine.snapshot import SnapshotStore
from audience_pipelines.engine.spec import RunOptions, SyncResult, SyncSpec
from audience_pipelines.engine.sync import run_sync

__all__ = [
    "AudienceError", "AudiencePipelinesError", "ConfigError", "CredentialsError", "DestinationError",
    "MassRemovalBlocked",
    "Membership", "RowsRefused", "RunOptions", "SnapshotStore", "SyncAborted", "SyncAlreadyRunning", "SyncInputError",
    "SyncResult", "SyncSpec", "build_membership", "run_sync",
]
