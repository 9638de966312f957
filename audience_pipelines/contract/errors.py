"""Errors by kind, shared by the engine and the destinations.

- transient: the HTTP layer retries it (throttles, 5xx, resets); only when retries run out does it
  reach the engine, as a terminal error.
- terminal for the run (`TerminalError`, or `DestinationError(fatal=True)`): every later batch
  would fail the same way (bad credentials, a missing audience); the run stops and commits what
  was accepted.
- per batch (`DestinationError`): the batch is rejected and retried next run.
- per row: a `BatchResult.rejected` entry, or `RowsRefused` when the platform refused a whole
  batch because of rows it did not name.
"""

from __future__ import annotations


class AudiencePipelinesError(Exception):
    """Base class for errors a user can act on."""


class ConfigError(AudiencePipelinesError):
    pass


class DestinationError(AudiencePipelinesError):
    """A destination call failed after retries.

    `fatal` errors stop the run; others reject only their batch.
    """

    def __init__(self, message: str, *, status: int | None = None, fatal: bool = False):
        super().__init__(message)
        self.status = status
        self.fatal = fatal


class TerminalError(DestinationError):
    """The run cannot go on (credentials, permissions, a missing audience): stop, commit what was accepted."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message, status=status, fatal=True)


class CredentialsError(TerminalError):
    """The platform refused the credentials: raised before anything is sent, naming the setting."""


class RowsRefused(DestinationError):
    """The destination refused a whole batch because of some of its rows, without naming them.

    Nothing of the batch was applied. The engine sends parts of the batch again to find the rows
    to blame; the rest go through.
    """
