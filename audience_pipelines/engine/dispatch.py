"""Send planned changes through a destination session in batches, recording what it accepted.

Every row ends a run accepted, rejected (answered: the platform said no), skipped (deliberately
not sent), or unanswered (its fate is unknown: it stays journalled). Rows a session reports as
pending take the session's finish as their answer.

Where the destination takes it, several batches of one operation are in flight at once; the
operations themselves run one after another, the first batch of each goes alone (it may
create the audience, the table or its columns), and so does the run's last batch, after all the
others (it may close the platform's session). Batches in flight on one destination account are
also bounded across every run in the process.
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from audience_pipelines.contract import KEY, BatchContext, BatchResult, Finish, RowsRefused, Session


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
    # Not sent: done when the session finishes applied (the removes of a replace session).
    implicit: bool = False
    # Held rows a replace session did not carry: no longer held, whatever the answer.
    dropped: np.ndarray | None = None

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
    pending: dict[str, np.ndarray]  # accepted only if the session finishes applied
    skipped: dict[str, np.ndarray]  # deliberately not sent (no profile); never committed
    record_ids: dict[str, np.ndarray]  # the platform's record id per position, where it gave one
    rejections: list[dict] = field(default_factory=list)
    skipped_sample: list[dict] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    rows_done: int = 0
    rows_total: int = 0
    batches: int = 0
    finish: Finish | None = None
    error: BaseException | None = None


@dataclass
class _Answer:
    """One batch's answer, positions in the rows sent."""

    rejected: dict[int, str] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)
    record_ids: dict[int, str] = field(default_factory=dict)
    pending: bool = False


_ACCOUNT_SLOTS: dict[str, threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


def account_slots(account: str, limit: int) -> threading.BoundedSemaphore:
    """The batches-in-flight limit every run in this process shares for one destination account."""
    with _SLOTS_LOCK:
        if account not in _ACCOUNT_SLOTS:
            _ACCOUNT_SLOTS[account] = threading.BoundedSemaphore(max(1, limit))
        return _ACCOUNT_SLOTS[account]


@dataclass
class _Sent:
    """One batch as it came back: its answer, or the error that stops the run."""

    op: Operation
    lo: int
    hi: int
    rows: pa.Table
    sent_at: np.ndarray
    answer: _Answer | None
    error: BaseException | None = None


class Dispatcher:
    def __init__(self, session: Session, max_batch_rows: int, sync: str, options, batch_size: int | None,
                 create_profiles: bool | None = None, parallel: int = 1,
                 slots: threading.BoundedSemaphore | None = None, progress: Progress | None = None,
                 first_seq: int = 1, last_seq: int | None = None):
        self.session = session
        self.create_profiles = create_profiles
        self.sync = sync
        self.options = options
        self.batch_size = min(batch_size, max_batch_rows) if batch_size else max_batch_rows
        self.isolation_left = MAX_ISOLATION_REQUESTS
        self.parallel = max(1, parallel)
        self.slots = slots or threading.BoundedSemaphore(self.parallel)
        self._lock = threading.Lock()  # stats and the isolation budget, shared by batches in flight
        self.progress = progress  # shared by the partitions of a run; else the run's own
        # Batches are numbered across the run's partitions; the run's last may close the platform's session.
        self.first_seq, self.last_seq = first_seq, last_seq

    def run(self, ops: list[Operation]) -> Outcome:
        # Nothing is accepted until the destination says so.
        def blank(dtype=bool):
            return {op.name: np.zeros(len(op.positions), dtype=dtype) for op in ops}

        outcome = Outcome(accepted=blank(), answered=blank(), pending=blank(), skipped=blank(),
                          record_ids={op.name: np.full(len(op.positions), None, dtype=object) for op in ops})
        sent_ops = [op for op in ops if not op.implicit]
        outcome.rows_total = sum(len(op.positions) for op in sent_ops)
        batches = [(seq, op, lo) for seq, (op, lo) in enumerate(
            ((op, lo) for op in sent_ops for lo in range(0, len(op.positions), self.batch_size)),
            start=self.first_seq)]
        last_seq = self.last_seq if self.last_seq is not None else self.first_seq + len(batches) - 1
        outcome.batches = len(batches)
        progress = self.progress or Progress(outcome.rows_total, self.options)
        stop = threading.Event()  # a fatal error: batches not yet sending stay unsent

        def record(sent: _Sent | None, seq: int) -> None:
            if sent is None:
                return
            if sent.error is not None:
                outcome.error = outcome.error or sent.error
                return
            self._record(outcome, sent.op, sent.lo, sent.hi, sent.rows, sent.sent_at, sent.answer)
            outcome.rows_done += sent.hi - sent.lo
            progress.batch_done(sent.hi - sent.lo)

        def send(seq: int, op: Operation, lo: int) -> _Sent | None:
            hi = min(lo + self.batch_size, len(op.positions))
            rows, sent_at, previous = op.batch(lo, hi)
            ctx = BatchContext(self.sync, self.options.run_id, "add" if op.name == "resend" else op.name,
                               seq, seq == last_seq, create_profiles=self.create_profiles)
            with self.slots:
                if stop.is_set():
                    return None
                try:
                    answer = self._send(ctx.operation, rows, previous, ctx, outcome.stats) if rows.num_rows \
                        else _Answer()
                except Exception as exc:  # noqa: BLE001 - commit what was accepted, then report
                    if getattr(exc, "fatal", True):
                        stop.set()
                        return _Sent(op, lo, hi, rows, sent_at, None, exc)
                    answer = _Answer(rejected={i: str(exc) for i in range(rows.num_rows)})
            return _Sent(op, lo, hi, rows, sent_at, answer)

        with ThreadPoolExecutor(max_workers=self.parallel) if self.parallel > 1 else _InLine() as pool:
            for _, group in itertools.groupby(batches, key=lambda b: id(b[1])):
                group = list(group)
                record(send(*group[0]), group[0][0])  # alone: it may create what the others need
                # The run's last batch goes alone after the others too: it may close the session.
                closing = group.pop() if len(group) > 1 and group[-1][0] == last_seq else None
                in_flight: dict[Future, int] = {}
                for seq, op, lo in group[1:]:
                    if outcome.error is not None:
                        break
                    while len(in_flight) >= self.parallel:
                        done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                        for f in sorted(done, key=in_flight.get):
                            record(f.result(), in_flight.pop(f))
                    if outcome.error is None:
                        in_flight[pool.submit(send, seq, op, lo)] = seq
                for f in sorted(in_flight, key=in_flight.get):  # what is in flight still lands and counts
                    record(f.result(), in_flight[f])
                if closing is not None and outcome.error is None:
                    record(send(*closing), closing[0])
                if outcome.error is not None:
                    break
        self._finish(outcome, ops)
        if self.progress is None:
            progress.finish(outcome.error is None)
        return outcome

    def _record(self, outcome: Outcome, op: Operation, lo: int, hi: int, rows: pa.Table, sent_at: np.ndarray,
                answer: _Answer) -> None:
        ok = np.ones(hi - lo, dtype=bool)
        keys = rows[KEY]
        # Answers index the sent rows; map them back to the batch.
        for i, reason in sorted(answer.rejected.items()):
            if 0 <= i < len(sent_at):
                ok[sent_at[i]] = False
                outcome.rejections.append({"key": keys[i].as_py(), "operation": op.name, "reason": str(reason)[:500]})
        for i, reason in sorted(answer.skipped.items()):
            if 0 <= i < len(sent_at) and ok[sent_at[i]]:
                ok[sent_at[i]] = False
                outcome.skipped[op.name][lo + sent_at[i]] = True
                if len(outcome.skipped_sample) < 10:
                    outcome.skipped_sample.append({"key": keys[i].as_py(), "reason": str(reason)[:300]})
        for i, rid in answer.record_ids.items():
            if 0 <= i < len(sent_at):
                outcome.record_ids[op.name][lo + sent_at[i]] = str(rid)
        if answer.pending:
            outcome.pending[op.name][lo:hi] = ok
        else:
            outcome.accepted[op.name][lo:hi] = ok
        outcome.answered[op.name][lo:hi] = True

    def _finish(self, outcome: Outcome, ops: list[Operation]) -> None:
        """The session's end is the answer for pending rows and for the implicit operations."""
        try:
            finish = self.session.finish(complete=outcome.error is None)
        except Exception as exc:  # noqa: BLE001 - pending rows stay unknown; reported like a stop
            finish = Finish("unknown", reason=f"{type(exc).__name__}: {exc}")
            if outcome.error is None:
                outcome.error = exc
        outcome.finish = finish
        for k, v in finish.stats.items():
            outcome.stats[k] = outcome.stats.get(k, 0) + v
        for op in ops:
            pending = outcome.pending[op.name]
            if op.implicit:
                pending[:] = True
            if not pending.any():
                continue
            if finish.status == "applied":
                keys = op.table[KEY].take(pa.array(op.positions, pa.int64())).to_numpy(zero_copy_only=False)
                refused = np.isin(keys, list(finish.rejected)) & pending if finish.rejected else np.zeros_like(pending)
                outcome.accepted[op.name] |= pending & ~refused
                for i in np.flatnonzero(refused):
                    outcome.rejections.append({"key": keys[i], "operation": op.name,
                                               "reason": str(finish.rejected[keys[i]])[:500]})
                outcome.answered[op.name] |= pending
            elif finish.status == "failed":
                if not op.implicit:
                    keys = op.table[KEY].take(pa.array(op.positions[pending], pa.int64())).to_pylist()
                    outcome.rejections += [{"key": k, "operation": op.name, "reason": finish.reason[:500]}
                                           for k in keys]
                outcome.answered[op.name] |= pending
            else:  # unknown: neither accepted nor answered, so they stay journalled
                outcome.answered[op.name] &= ~pending

    def _send(self, name: str, rows: pa.Table, previous: pa.Table | None, ctx: BatchContext,
              stats: dict[str, int]) -> _Answer:
        """Send rows; return what the platform did not apply (positions in `rows`), with reasons."""
        everything = np.arange(rows.num_rows)
        try:
            res: BatchResult = self.session.send(name, rows, previous, ctx)
        except RowsRefused as exc:  # nothing applied; some rows are to blame
            return _Answer(rejected=self._narrow(name, rows, previous, ctx, everything, str(exc), stats))
        if not ctx.part:  # a part sent again would count its rows twice
            with self._lock:
                for k, v in res.stats.items():
                    stats[k] = stats.get(k, 0) + v
        rejected = dict(res.rejected)
        if res.unapplied:
            rest = everything[[i not in rejected and i not in res.skipped for i in everything]]
            rejected.update(self._narrow(name, rows, previous, ctx, rest,
                                         res.unapplied_reason or "not applied by the platform", stats,
                                         count=res.unapplied))
        return _Answer(rejected, dict(res.skipped), dict(res.record_ids), res.pending)

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
            with self._lock:
                spent = self.isolation_left < 1
                if not spent:
                    self.isolation_left -= 1
                    stats["isolation_requests"] = stats.get("isolation_requests", 0) + 1
            if spent:
                found.update({int(i): f"{reason} (not isolated within this run's {MAX_ISOLATION_REQUESTS} extra "
                                      "requests; retried next run)" for i in half})
                continue
            part = rows.take(pa.array(half, pa.int64()))
            part_previous = None if previous is None else \
                previous.filter(pc.is_in(previous[KEY], value_set=part[KEY].combine_chunks()))
            part_ctx = replace(ctx, part=f"{ctx.part}.{n}" if ctx.part else str(n))
            for i, r in self._send(name, part, part_previous, part_ctx, stats).rejected.items():
                found[int(half[i])] = r
        return found


class _InLine:
    """An executor that runs each task as it is submitted: one batch at a time, in order."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future


class Progress:
    """Logs rows sent, rate and time left at most every `progress_interval_s` seconds."""

    def __init__(self, total: int, options):
        self.total, self.rows = total, 0
        self.emit = options.progress
        self.interval = options.progress_interval_s
        self.start = self.last = time.monotonic()

    def batch_done(self, rows: int) -> None:
        self.rows += rows
        now = time.monotonic()
        if self.emit is None or now - self.last < self.interval:
            return
        self.last = now
        elapsed = now - self.start
        rate = self.rows / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.rows) / rate if rate > 0 else float("nan")
        self.emit(f"sent {self.rows:,}/{self.total:,} rows ({self.rows / max(1, self.total):.0%}), "
                  f"{rate:,.0f} rows/s, about {left:,.0f}s left")

    def finish(self, ok: bool) -> None:
        if self.emit is None or self.total == 0:
            return
        elapsed = time.monotonic() - self.start
        rate = self.rows / elapsed if elapsed > 0 else 0.0
        word = "sent" if ok else "stopped after"
        self.emit(f"{word} {self.rows:,}/{self.total:,} rows in {elapsed:,.1f}s ({rate:,.0f} rows/s)")
