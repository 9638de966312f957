"""The contract every destination implements and the engine drives.

Both the engine and the destinations depend on this package; neither imports the other.
"""

from audience_pipelines.contract.columns import KEY, KEY_HASH, RECORD_ID, ROW_HASH, sent_columns, without_engine_columns
from audience_pipelines.contract.destination import (
    APPLIED, AudienceStats, BatchContext, BatchDestination, BatchResult, Capabilities, Destination, DestinationType,
    Finish, MatchListSession, Recovery, Session, SessionContext, Target,
)
from audience_pipelines.contract.errors import (
    AudiencePipelinesError, ConfigError, CredentialsError, DestinationError, RowsRefused, TerminalError,
)
from audience_pipelines.contract.registry import register, registered
from audience_pipelines.contract.settings import DestinationSettings, EnvSecret, SecretInlineAllowed

__all__ = [
    "APPLIED", "KEY", "KEY_HASH", "RECORD_ID", "ROW_HASH", "AudiencePipelinesError", "AudienceStats", "BatchContext",
    "BatchDestination", "BatchResult", "Capabilities", "ConfigError", "CredentialsError", "Destination",
    "DestinationError", "DestinationSettings", "DestinationType", "EnvSecret", "Finish", "MatchListSession", "Recovery",
    "RowsRefused",
    "SecretInlineAllowed", "Session", "SessionContext", "Target", "TerminalError", "register",
    "registered", "sent_columns", "without_engine_columns",
]
