"""The one small interface every destination implements.

The engine owns batching, diffing, retries of rejected rows and commits; a
destination only turns a batch of rows into calls and says which rows it
rejected. Shared HTTP policy lives in `destinations.http`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import pyarrow as pa


@dataclass(frozen=True)
class Capabilities:
    identifier_kinds: frozenset[str]
    max_batch_rows: int
    accepts_fields: bool = True
    can_list_audiences: bool = False
    can_create_audiences: bool = True
    needs_profile: bool = False
    hashes_identifiers: bool = False
    # Ad platforms match on identifiers only, so a row with none is unsendable.
    requires_identifier: bool = False
    # Identifier kinds the platform matches a person on by themselves. A removal must
    # never carry a value of these that a current member still sends (it would take
    # that member out too). Empty: the platform matches rows by key.
    match_identifiers: frozenset[str] = frozenset()


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

    @property
    def request_id(self) -> str:
        """Unique per request of a run: sync, run, batch and part."""
        base = f"{self.sync}:{self.run_id}:{self.seq}"
        return f"{base}:{self.part}" if self.part else base


@dataclass
class BatchResult:
    """What the platform did with a batch.

    `rejected`: row positions (within the batch) not applied, with reasons.
    `unapplied`: rows the platform says it did not apply without naming them (a
    count such as Meta's `num_invalid_entries` beyond its samples). The engine
    finds them by sending parts of the batch again; they are never committed.
    """

    rejected: dict[int, str] = field(default_factory=dict)
    unapplied: int = 0
    unapplied_reason: str = ""
    stats: dict[str, int] = field(default_factory=dict)


class Destination(ABC):
    type_name: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    def identifier_column(self, kind: str) -> str:
        """Name of the sent column for an identifier kind."""
        return kind

    def transform_identifier(self, kind: str, canonical: pa.Array) -> pa.Array:
        """Platform form of a canonical identifier (hashing happens here)."""
        return canonical

    @abstractmethod
    def resolve_target(self, target: Target) -> str:
        """Find or create the destination audience; return its id."""

    @abstractmethod
    def add(self, audience_id: str, rows: pa.Table, ctx: BatchContext) -> BatchResult: ...

    @abstractmethod
    def remove(self, audience_id: str, rows: pa.Table, ctx: BatchContext) -> BatchResult: ...

    def update(self, audience_id: str, rows: pa.Table, previous: pa.Table, ctx: BatchContext) -> BatchResult:
        """Rows whose sent values changed.

        `previous` holds what was sent before for these members and no current
        member still sends (so withdrawing it harms nobody); it may be shorter
        than `rows`.
        """
        return self.add(audience_id, rows, ctx)

    def audience_size(self, audience_id: str) -> int | None:
        """Member count as the platform reports it, where it does."""
        return None

    def close(self) -> None:
        """Release connections."""
