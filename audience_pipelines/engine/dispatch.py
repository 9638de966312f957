"""Send planned changes to a destination in batches, recording what it accepted."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from audience_pipelines.destinations.base import BatchContext, BatchResult, Destination
from audience_pipelines.engine.diff import KEY


@dataclass
class Operation:
    name: str  # remove | update | add | resend
    counter: str  # SyncResult attribute counting accepted rows
    positions: np.ndarray  # rows of `table` to send
    table: pa.Table
    previous: pa.Table | None = None  # old snapshot, for updates
    previous_positions: np.ndarray | None = None
    silent: np.ndarray | None = None  # rows committed as done without being sent (see sync._still_sent)
    previous_silent: np.ndarray | None = None  # previous rows not to withdraw


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

    def run(self, ops: list[Operation]) -> Outcome:
        # Nothing is accepted until the destination says so.
        outcome = Outcome(accepted={op.name: np.zeros(len(op.positions), dtype=bool) for op in ops},
                          answered={op.name: np.zeros(len(op.positions), dtype=bool) for op in ops})
        outcome.rows_total = sum(len(op.positions) for op in ops)
        batches = [(op, lo) for op in ops for lo in range(0, len(op.positions), self.batch_size)]
        progress = _Progress(outcome.rows_total, len(batches), self.options)
        for seq, (op, lo) in enumerate(batches, start=1):
            hi = min(lo + self.batch_size, len(op.positions))
            send = np.ones(hi - lo, dtype=bool) if op.silent is None else ~op.silent[lo:hi]
            rows = op.table.take(pa.array(op.positions[lo:hi][send], pa.int64()))
            ctx = BatchContext(self.sync, self.options.run_id, "add" if op.name == "resend" else op.name,
                               seq, seq == len(batches))
            try:
                if rows.num_rows == 0:
                    res = BatchResult()
                elif op.name == "remove":
                    res = self.destination.remove(self.audience_id, rows, ctx)
                elif op.name == "update":
                    prev_pos = op.previous_positions[lo:hi]
                    if op.previous_silent is not None:
                        prev_pos = prev_pos[~op.previous_silent[lo:hi]]
                    prev = op.previous.take(pa.array(prev_pos, pa.int64()))
                    res = self.destination.update(self.audience_id, rows, prev, ctx)
                else:
                    res = self.destination.add(self.audience_id, rows, ctx)
            except Exception as exc:  # noqa: BLE001 - commit what was accepted, then report
                if getattr(exc, "fatal", True):
                    outcome.error = exc
                    break
                res_rejected = {i: str(exc) for i in range(rows.num_rows)}
            else:
                res_rejected = res.rejected
                for k, v in res.stats.items():
                    outcome.stats[k] = outcome.stats.get(k, 0) + v
            ok = np.ones(hi - lo, dtype=bool)
            if res_rejected:
                # Rejections index the sent rows; map them back to the batch.
                sent_at = np.flatnonzero(send)
                bad = np.fromiter((i for i in res_rejected if 0 <= i < len(sent_at)), dtype=np.int64)
                ok[sent_at[bad]] = False
                keys = rows[KEY]
                for i, reason in res_rejected.items():
                    if 0 <= i < len(sent_at):
                        outcome.rejections.append(
                            {"key": keys[i].as_py(), "operation": op.name, "reason": str(reason)[:500]})
            outcome.accepted[op.name][lo:hi] = ok
            outcome.answered[op.name][lo:hi] = True
            outcome.rows_done += hi - lo
            progress.batch_done(outcome.rows_done, seq)
        progress.finish(outcome.rows_done, outcome.error is None)
        return outcome


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
