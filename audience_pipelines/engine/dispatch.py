"""Send planned changes to a destination in batches, recording what it accepted."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from audience_pipelines.destinations.base import BatchContext, BatchResult, Destination
from audience_pipelines.engine.diff import KEY
from audience_pipelines.engine.errors import RowsRefused


# Extra requests a run may spend finding rows a platform counted as not applied
# without naming them; rows still unnamed after that fail and are retried next run.
MAX_ISOLATION_REQUESTS = 1000


@dataclass
class Operation:
    name: str  # remove | update | add | resend
    counter: str  # SyncResult attribute counting accepted rows
    positions: np.ndarray  # rows of `table` this operation covers
    table: pa.Table
    sent: pa.Table | None = None  # what leaves for each position, when not table.take(positions)
    silent: np.ndarray | None = None  # positions committed as done without being sent
    previous_positions: np.ndarray | None = None  # updates: the snapshot rows they replace
    previous_sent: pa.Table | None = None  # updates: what to withdraw, aligned with previous_positions
    previous_silent: np.ndarray | None = None  # updates: previous rows with nothing to withdraw

    def batch(self, lo: int, hi: int) -> tuple[pa.Table, np.ndarray, pa.Table | None]:
        """Rows to send for positions[lo:hi], which of those positions they are, and the previous rows."""
        send = np.ones(hi - lo, dtype=bool) if self.silent is None else ~self.silent[lo:hi]
        if self.sent is not None:
            rows = self.sent.slice(lo, hi - lo).filter(pa.array(send))
        else:
            rows = self.table.take(pa.array(self.positions[lo:hi][send], pa.int64()))
        previous = None
        if self.previous_sent is not None:
            keep = np.ones(hi - lo, dtype=bool) if self.previous_silent is None else ~self.previous_silent[lo:hi]
            previous = self.previous_sent.slice(lo, hi - lo).filter(pa.array(keep))
        return rows, np.flatnonzero(send), previous


@dataclass
class Outcome:
    accepted: dict[str, np.ndarray]
    answered: dict[str, np.ndarray]  # the destination said yes or no (not: timed out, never sent)
    rejections: list[dict] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    rows_done: int = 0
    rows_total: int = 0
    error: BaseException | None = None


class Dispatcher:
    def __init__(self, destination: Destination, audience_id: str, sync: str, options, batch_size: int | None):
        self.destination = destination
        self.audience_id = audience_id
        self.sync = sync
        self.options = options
        cap = destination.capabilities.max_batch_rows
        self.batch_size = min(batch_size, cap) if batch_size else cap
        self.isolation_left = MAX_ISOLATION_REQUESTS

    def run(self, ops: list[Operation]) -> Outcome:
        # Nothing is accepted until the destination says so.
        outcome = Outcome(accepted={op.name: np.zeros(len(op.positions), dtype=bool) for op in ops},
                          answered={op.name: np.zeros(len(op.positions), dtype=bool) for op in ops})
        outcome.rows_total = sum(len(op.positions) for op in ops)
        batches = [(op, lo) for op in ops for lo in range(0, len(op.positions), self.batch_size)]
        progress = _Progress(outcome.rows_total, len(batches), self.options)
        for seq, (op, lo) in enumerate(batches, start=1):
            hi = min(lo + self.batch_size, len(op.positions))
            rows, sent_at, previous = op.batch(lo, hi)
            ctx = BatchContext(self.sync, self.options.run_id, "add" if op.name == "resend" else op.name,
                               seq, seq == len(batches))
            try:
                rejected = self._send(op.name, rows, previous, ctx, outcome.stats) if rows.num_rows else {}
            except Exception as exc:  # noqa: BLE001 - commit what was accepted, then report
                if getattr(exc, "fatal", True):
                    outcome.error = exc
                    break
                rejected = {i: str(exc) for i in range(rows.num_rows)}
            ok = np.ones(hi - lo, dtype=bool)
            if rejected:
                # Rejections index the sent rows; map them back to the batch.
                bad = np.fromiter((i for i in rejected if 0 <= i < len(sent_at)), dtype=np.int64)
                ok[sent_at[bad]] = False
                keys = rows[KEY]
                for i, reason in sorted(rejected.items()):
                    if 0 <= i < len(sent_at):
                        outcome.rejections.append(
                            {"key": keys[i].as_py(), "operation": op.name, "reason": str(reason)[:500]})
            outcome.accepted[op.name][lo:hi] = ok
            outcome.answered[op.name][lo:hi] = True
            outcome.rows_done += hi - lo
            progress.batch_done(outcome.rows_done, seq)
        progress.finish(outcome.rows_done, outcome.error is None)
        return outcome

    def _call(self, name: str, rows: pa.Table, previous: pa.Table | None, ctx: BatchContext) -> BatchResult:
        if name == "remove":
            return self.destination.remove(self.audience_id, rows, ctx)
        if name == "update":
            return self.destination.update(self.audience_id, rows, previous, ctx)
        return self.destination.add(self.audience_id, rows, ctx)

    def _send(self, name: str, rows: pa.Table, previous: pa.Table | None, ctx: BatchContext,
              stats: dict[str, int]) -> dict[int, str]:
        """Send rows; return those (positions in `rows`) the platform did not apply, with reasons."""
        everything = np.arange(rows.num_rows)
        try:
            res = self._call(name, rows, previous, ctx)
        except RowsRefused as exc:  # nothing applied; some rows are to blame
            return self._narrow(name, rows, previous, ctx, everything, str(exc), stats)
        if not ctx.part:  # a part sent again would count its rows twice
            for k, v in res.stats.items():
                stats[k] = stats.get(k, 0) + v
        rejected = dict(res.rejected)
        if res.unapplied:
            rest = everything[[i not in rejected for i in everything]]
            rejected.update(self._narrow(name, rows, previous, ctx, rest,
                                         res.unapplied_reason or "not applied by the platform", stats,
                                         count=res.unapplied))
        return rejected

    def _narrow(self, name: str, rows: pa.Table, previous: pa.Table | None, ctx: BatchContext,
                idx: np.ndarray, reason: str, stats: dict[str, int], count: int | None = None) -> dict[int, str]:
        """Find which of rows[idx] the platform did not apply, knowing only how many (`count`) or
        only that some did not.

        Sends each half again (adding or removing a member twice is harmless) and
        trusts each half's own answer, down to single rows.
        """
        if len(idx) == 1 or (count is not None and count >= len(idx)):
            return {int(i): reason for i in idx}
        found: dict[int, str] = {}
        for n, half in enumerate(np.array_split(idx, 2), start=1):
            if self.isolation_left < 1:
                found.update({int(i): f"{reason} (not isolated within this run's {MAX_ISOLATION_REQUESTS} extra "
                                      "requests; retried next run)" for i in half})
                continue
            self.isolation_left -= 1
            stats["isolation_requests"] = stats.get("isolation_requests", 0) + 1
            part = rows.take(pa.array(half, pa.int64()))
            part_previous = None if previous is None else \
                previous.filter(pc.is_in(previous[KEY], value_set=part[KEY].combine_chunks()))
            part_ctx = replace(ctx, part=f"{ctx.part}.{n}" if ctx.part else str(n))
            for i, r in self._send(name, part, part_previous, part_ctx, stats).items():
                found[int(half[i])] = r
        return found


class _Progress:
    """Logs rows done, rate and time left at most every `progress_interval_s` seconds."""

    def __init__(self, total: int, batches: int, options):
        self.total, self.batches = total, batches
        self.emit = options.progress
        self.interval = options.progress_interval_s
        self.start = self.last = time.monotonic()

    def batch_done(self, rows: int, seq: int) -> None:
        now = time.monotonic()
        if self.emit is None or now - self.last < self.interval:
            return
        self.last = now
        elapsed = now - self.start
        rate = rows / elapsed if elapsed > 0 else 0.0
        left = (self.total - rows) / rate if rate > 0 else float("nan")
        self.emit(f"sent {rows:,}/{self.total:,} rows ({rows / self.total:.0%}) in {seq}/{self.batches} "
                  f"batches, {rate:,.0f} rows/s, about {left:,.0f}s left")

    def finish(self, rows: int, ok: bool) -> None:
        if self.emit is None or self.total == 0:
            return
        elapsed = time.monotonic() - self.start
        rate = rows / elapsed if elapsed > 0 else 0.0
        word = "sent" if ok else "stopped after"
        self.emit(f"{word} {rows:,}/{self.total:,} rows in {elapsed:,.1f}s ({rate:,.0f} rows/s)")
