"""An in-process destination for engine tests: keeps members, rejects and crashes on request."""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa

from audience_pipelines.destinations.base import BatchContext, BatchResult, Capabilities, Destination, Target
from audience_pipelines.engine.diff import KEY, KEY_HASH, ROW_HASH
from audience_pipelines.identifiers import KINDS


class Crash(BaseException):
    """Stands for the process dying: the engine must not catch it."""


class MemoryDestination(Destination):
    type_name = "memory"
    capabilities: ClassVar[Capabilities] = Capabilities(identifier_kinds=frozenset(KINDS), max_batch_rows=3)

    def __init__(self, batch_rows: int = 3):
        self.capabilities = Capabilities(identifier_kinds=frozenset(KINDS), max_batch_rows=batch_rows)
        self.audiences: dict[str, dict[str, dict]] = {}
        self.reject: set[str] = set()  # keys rejected per row, whatever the operation
        self.crash_at_batch: int | None = None  # crash when this batch seq starts (after applying nothing)
        self.count_only = False  # report rejections as a count that names no row
        self.requests: list[str] = []  # ctx.request_id of every call
        self.batches = 0

    def members(self, audience_id: str) -> dict[str, dict]:
        return self.audiences.get(audience_id, {})

    def resolve_target(self, target: Target) -> str:
        audience_id = target.id or target.name
        self.audiences.setdefault(audience_id, {})
        return audience_id

    def _apply(self, audience_id: str, rows: pa.Table, ctx: BatchContext, remove: bool) -> BatchResult:
        self.batches += 1
        self.requests.append(ctx.request_id)
        if self.crash_at_batch is not None and ctx.seq == self.crash_at_batch:
            raise Crash(f"crash at batch {ctx.seq}")
        state = self.audiences[audience_id]
        rejected = {}
        cols = [c for c in rows.column_names if c not in (KEY, KEY_HASH, ROW_HASH)]
        for i, row in enumerate(rows.select([KEY, *cols]).to_pylist()):
            key = row.pop(KEY)
            if key in self.reject:
                rejected[i] = "rejected by test"
            elif remove:
                state.pop(key, None)
            else:
                state[key] = row
        if self.count_only:
            return BatchResult(unapplied=len(rejected), unapplied_reason="counted, not named")
        return BatchResult(rejected=rejected)

    def add(self, audience_id, rows, ctx):
        return self._apply(audience_id, rows, ctx, remove=False)

    def remove(self, audience_id, rows, ctx):
        return self._apply(audience_id, rows, ctx, remove=True)
