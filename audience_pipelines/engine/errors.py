"""Errors the engine raises; each message names the sync and what to do."""


class AudiencePipelinesError(Exception):
    """Base class for errors a user can act on."""


class ConfigError(AudiencePipelinesError):
    pass


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


class DestinationError(AudiencePipelinesError):
    """A destination call failed after retries.

    `fatal` errors (bad credentials, missing audience) stop the run: every
    later batch would fail the same way. Others reject only their batch.
    """

    def __init__(self, message: str, *, status: int | None = None, fatal: bool = False):
        super().__init__(message)
        self.status = status
        self.fatal = fatal


class RowsRefused(DestinationError):
    """The destination refused a whole batch because of some of its rows, without naming them.

    Nothing of the batch was applied (a rolled-back transaction, say). The engine
    sends parts of the batch again to find the rows to blame; the rest go through.
    """


class SyncAborted(AudiencePipelinesError):
    """A run stopped part-way; what the destination accepted before was committed."""

    def __init__(self, message: str, *, result=None):
        super().__init__(message)
        self.result = result  # the SyncResult: counts of what was accepted before the stop
