"""Errors the engine raises; each message names the sync and what to do."""

from audience_pipelines.contract.errors import (  # noqa: F401 - the engine's errors include the contract's
    AudiencePipelinesError, ConfigError, CredentialsError, DestinationError, RowsRefused, TerminalError,
)


class AudienceError(AudiencePipelinesError):
    """The audience query failed or returned something unusable."""


class SyncInputError(AudiencePipelinesError):
    """The membership lacks a column the sync maps, or has unusable values."""


class SyncAlreadyRunning(AudiencePipelinesError):
    pass


class MassRemovalBlocked(AudiencePipelinesError):
    def __init__(self, message: str, *, removes: int, held: int, limit: float, result=None):
        super().__init__(message)
        self.removes, self.held, self.limit = removes, held, limit
        self.result = result  # the SyncResult as far as the run got: nothing sent


class SyncAborted(AudiencePipelinesError):
    """A run stopped part-way; what the destination accepted before was committed."""

    def __init__(self, message: str, *, result=None):
        super().__init__(message)
        self.result = result  # the SyncResult: counts of what was accepted before the stop
