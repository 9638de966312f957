"""The contract between the engine and every destination.

A destination type (`DestinationType`) is light: a name, a typed settings model, capabilities
derived from the settings, and `open()`, which imports the platform client only when a run uses
it. The client (`Destination`) opens the target audience, then a run works in a `Session`:
batches per operation, a receipt per row (accepted, rejected with a reason, pending until the
platform's job finishes, or skipped), a platform record id per member where it has one, and a
finish (run and poll a job, close a replace session). Session state is journalled through
`SessionContext.save_state`, so a run killed mid-job resumes or abandons it safely.

`BatchDestination` is the thin adapter for a simple per-batch destination: it implements
`add` and `remove` (and `update` when it differs from an add); every row is answered at once.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import ClassVar, Generic, Literal, TypeVar

import pyarrow as pa

from audience_pipelines.contract.columns import KEY
from audience_pipelines.contract.errors import TerminalError
from audience_pipelines.contract.settings import DestinationSettings

OPERATIONS = ("remove", "update", "add")


@dataclass(frozen=True)
class Capabilities:
    identifier_kinds: frozenset[str]
    max_batch_rows: int
    accepts_fields: bool = True
    # find_audience can look an audience up by name; otherwise names resolve only through the
    # registry of audiences this project created.
    can_list_audiences: bool = False
    can_create_audiences: bool = True
    # A member needs a profile (a CRM contact) before membership; its record id is kept.
    needs_profile: bool = False
    creates_profiles: bool = False
    keeps_record_ids: bool = False
    hashes_identifiers: bool = False
    # Ad platforms match on identifiers only, so a row with none is unsendable.
    requires_identifier: bool = False
    # Kinds that only identify a person together (Google's name and address); a row carrying only
    # part of such a group has no usable identifier and is set aside.
    identifier_groups: tuple[frozenset[str], ...] = ()
    # Kinds sent beside an identifier but never enough alone (LinkedIn's plain-text names).
    companion_kinds: frozenset[str] = frozenset()
    # Identifier kinds the platform matches a person on by themselves. A removal must
    # never carry a value of these that a current member still sends (it would take
    # that member out too). Empty: the platform matches rows by key.
    match_identifiers: frozenset[str] = frozenset()
    # A full resend of a mirror sync replaces the audience in one session (departed members
    # drop out when it closes) instead of sending removes.
    replaces_audience: bool = False
    # Outcomes known only when a job finishes (rows pending until then).
    uses_jobs: bool = False
    reports_size: bool = False
    reports_match_rate: bool = False
    # Batches in flight at once in one run (a sync's `parallel_batches` may set 1 up to the maximum);
    # more than one only where batches may land in any order and the client is thread-safe. Batches of
    # one operation overlap; operations never do, so a member's remove lands before its add.
    parallel_batches: int = 1
    max_parallel_batches: int = 1

    def with_batch_rows(self, rows: int) -> Capabilities:
        return replace(self, max_batch_rows=rows)

    @classmethod
    def for_profiles(cls, identifier_kinds, settings, default_batch: int, **overrides) -> Capabilities:
        """A CRM's: a profile per person (created unless `create_profiles` is false), mapped fields as its
        properties, its record id kept, and each identifier naming one person, so a leaver sharing one
        with a current member is never withdrawn."""
        kinds = frozenset(identifier_kinds)
        return cls(**{
            "identifier_kinds": kinds, "max_batch_rows": settings.batch_size if settings else default_batch,
            "accepts_fields": True, "can_list_audiences": True, "needs_profile": True,
            "creates_profiles": settings.create_profiles if settings else True, "keeps_record_ids": True,
            "requires_identifier": True, "match_identifiers": kinds, "reports_size": True, **overrides})


@dataclass(frozen=True)
class Target:
    """Which destination audience a sync writes to: an existing id or a name to find or create."""

    id: str | None = None
    name: str | None = None

    def describe(self) -> str:
        return f"id {self.id}" if self.id else f"name '{self.name}'"


@dataclass(frozen=True)
class BatchContext:
    sync: str
    run_id: str
    operation: str  # add | remove | update
    seq: int  # 1-based across the whole run, for idempotency keys and sessions
    last: bool
    # Set when part of a batch is sent again to find the rows the platform did not
    # apply ("1", "2", "2.1", ...); idempotency keys and sessions must include it.
    part: str = ""
    # The sync's choice for members with no profile: create one, or skip them (None: the destination's).
    create_profiles: bool | None = None

    @property
    def request_id(self) -> str:
        """Unique per request of a run: sync, run, batch and part."""
        base = f"{self.sync}:{self.run_id}:{self.seq}"
        return f"{base}:{self.part}" if self.part else base


@dataclass
class BatchResult:
    """The receipt for one batch; positions index the rows sent.

    Every row not named otherwise is accepted, or, with `pending`, accepted only if the
    session's finish says so. `unapplied`: rows the platform says it did not apply without
    naming them (a count); the engine finds them by sending parts of the batch again.
    `skipped`: rows deliberately not sent (no profile and profiles are not created); counted,
    never committed. `record_ids`: the platform's record id per row, where it has one.
    """

    rejected: dict[int, str] = field(default_factory=dict)
    unapplied: int = 0
    unapplied_reason: str = ""
    pending: bool = False
    skipped: dict[int, str] = field(default_factory=dict)
    record_ids: dict[int, str] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Finish:
    """How a session ended, for its pending rows.

    applied: the platform applied them (but `rejected`, by key); failed: none was applied
    (`reason` says why; they are retried next run); unknown: not known yet (a job still
    running): they stay journalled and the next run resumes the session.
    """

    status: Literal["applied", "failed", "unknown"]
    reason: str = ""
    rejected: dict[str, str] = field(default_factory=dict)  # key -> reason
    stats: dict[str, int] = field(default_factory=dict)


APPLIED = Finish("applied")


@dataclass(frozen=True)
class Recovery:
    """What became of a session an earlier run left open (see `Destination.recover`).

    `replace_again`: the audience may be half-replaced; this run must replace it in full, carrying on
    the session in `resume` (its state) where one is still open, else in a new one.
    `settled`: the session is over (finished or abandoned); its journal entry can go.
    """

    note: str
    settled: bool = True
    replace_again: bool = False
    resume: dict | None = None


@dataclass(frozen=True)
class AudienceStats:
    size: int | None = None
    match_rate: float | None = None  # 0..1


@dataclass
class SessionContext:
    sync: str
    run_id: str
    audience_id: str
    replace: bool  # a replace session: the audience becomes exactly what is sent
    total_rows: int
    save_state: Callable[[dict], None]  # journal session state (a job name, a session id) durably
    # The journalled state of a session an earlier run left open, when this run must carry it on
    # (`Recovery.replace_again`): a platform that allows one replace session at a time resumes it.
    resume: dict | None = None


class Session(ABC):
    """One run's conversation with the platform about one audience."""

    @abstractmethod
    def send(self, operation: str, rows: pa.Table, previous: pa.Table | None, ctx: BatchContext) -> BatchResult:
        """Send one batch. `previous` (updates only): what was sent before and no current member still
        sends, so withdrawing it harms nobody; it may be shorter than `rows`."""

    def finish(self, complete: bool) -> Finish:
        """End the session. `complete` is False when the run stopped early: a session must then not
        apply what would be wrong half-done (a replace), and says what became of pending rows."""
        return APPLIED


S = TypeVar("S", bound=DestinationSettings)


class Destination(ABC, Generic[S]):
    """A live client of one configured destination."""

    destination_type: ClassVar[type[DestinationType]]

    def __init__(self, settings: S):
        self.settings = settings
        self.capabilities: Capabilities = self.destination_type.capabilities(settings)

    @property
    def type_name(self) -> str:
        return self.destination_type.name

    def identifier_column(self, kind: str) -> str:
        """Name of the sent column for an identifier kind."""
        return kind

    def transform_identifier(self, kind: str, canonical: pa.Array) -> pa.Array:
        """Platform form of a canonical identifier (hashing happens here)."""
        return canonical

    def account(self) -> str:
        """The platform account this client writes to: created audiences are registered per account."""
        return self.destination_type.account(self.settings)

    def check_access(self) -> None:
        """Fail with a CredentialsError naming the setting before anything is sent."""

    def find_audience(self, name: str) -> str | None:
        """The id of the audience with this name, where the platform can list them."""
        return None

    def create_audience(self, name: str) -> str:
        raise TerminalError(f"{self.type_name} cannot create audiences; give the target's id")

    def check_audience(self, audience_id: str) -> None:
        """Raise TerminalError when the audience does not exist (nothing is created)."""

    def check_fields(self, columns: dict[str, pa.DataType]) -> None:
        """Raise TerminalError naming each mapped field (name -> its column's Arrow type) the platform
        cannot take, before anything is sent (`contract.fields.check_field_kinds`). Default: all taken."""

    @abstractmethod
    def open_session(self, ctx: SessionContext) -> Session: ...

    def recover(self, audience_id: str, state: dict) -> Recovery:
        """Settle a session an earlier run journalled and did not finish."""
        return Recovery("an interrupted session left nothing to settle")

    def audience_stats(self, audience_id: str) -> AudienceStats | None:
        """Size and match rate as the platform reports them, where it does."""
        return None

    def close(self) -> None:
        """Release connections."""


class BatchDestination(Destination[S]):
    """A destination that answers every batch at once: implement `add` and `remove`."""

    def find_audience(self, name: str) -> str | None:
        return name  # the name is the id (a table's audience column, a folder, a webhook field)

    @abstractmethod
    def add(self, audience_id: str, rows: pa.Table, ctx: BatchContext) -> BatchResult: ...

    @abstractmethod
    def remove(self, audience_id: str, rows: pa.Table, ctx: BatchContext) -> BatchResult: ...

    def update(self, audience_id: str, rows: pa.Table, previous: pa.Table | None, ctx: BatchContext) -> BatchResult:
        return self.add(audience_id, rows, ctx)

    def open_session(self, ctx: SessionContext) -> Session:
        return _BatchSession(self, ctx.audience_id)


class _BatchSession(Session):
    def __init__(self, destination: BatchDestination, audience_id: str):
        self.destination, self.audience_id = destination, audience_id

    def send(self, operation, rows, previous, ctx):
        if operation == "remove":
            return self.destination.remove(self.audience_id, rows, ctx)
        if operation == "update":
            return self.destination.update(self.audience_id, rows, previous, ctx)
        return self.destination.add(self.audience_id, rows, ctx)


class MatchListSession(Session):
    """A platform that adds and removes people by identifier, each batch answered at once.

    An update withdraws the member's old identifier values, then adds the new ones (the platform
    matches a person on any identifier, so adding first and withdrawing after could take the person
    out again). A member whose old values were not withdrawn is not taken as updated: the next run
    withdraws them again.
    """

    def __init__(self, destination: Destination, audience_id: str):
        self.destination, self.audience_id = destination, audience_id

    @abstractmethod
    def add(self, rows: pa.Table, ctx: BatchContext) -> BatchResult: ...

    @abstractmethod
    def remove(self, rows: pa.Table, ctx: BatchContext) -> BatchResult: ...

    def send(self, operation, rows, previous, ctx):
        if operation == "remove":
            return self.remove(rows, ctx)
        if operation != "update" or previous is None or previous.num_rows == 0:
            return self.add(rows, ctx)
        withdrawn = self.remove(previous, ctx)
        added = self.add(rows, ctx)
        position = {k: i for i, k in enumerate(rows[KEY].to_pylist())}
        old_keys = previous[KEY].to_pylist()
        for i, reason in withdrawn.rejected.items():
            added.rejected.setdefault(position[old_keys[i]], f"old values not withdrawn: {reason}")
        added.unapplied += withdrawn.unapplied
        added.unapplied_reason = added.unapplied_reason or withdrawn.unapplied_reason
        for k, v in withdrawn.stats.items():
            added.stats[k] = added.stats.get(k, 0) + v
        return added


class DestinationType(ABC):
    """The light half of a destination: what loading definitions needs, no platform client."""

    name: ClassVar[str]
    settings_model: ClassVar[type[DestinationSettings]]
    kind_tag: ClassVar[str]  # the Dagster `kinds` tag
    summary: ClassVar[str]

    @classmethod
    @abstractmethod
    def capabilities(cls, settings: DestinationSettings | None = None) -> Capabilities:
        """Capabilities, derived from the settings where given (batch limits, modes)."""

    @classmethod
    def account(cls, settings: DestinationSettings) -> str:
        return "default"

    # "module:Class" of the client, imported only when a run opens it.
    client: ClassVar[str]

    @classmethod
    def open(cls, settings: DestinationSettings) -> Destination:
        """Import the client and build it (secrets are read now)."""
        module, _, name = cls.client.partition(":")
        return getattr(importlib.import_module(module), name)(settings)
