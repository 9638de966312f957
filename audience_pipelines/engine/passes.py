"""A run's two passes over the key-hash partitions: plan every one (shape, diff, journal; nothing sent),
then send them one destination session at a time."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from audience_pipelines.contract import KEY, KEY_HASH, RECORD_ID, ROW_HASH, Destination, SessionContext
from audience_pipelines.engine.diff import DiffPlan, plan_diff
from audience_pipelines.engine.dispatch import Dispatcher, Operation, Outcome, Progress, account_slots
from audience_pipelines.engine.held import conform, journal_rows, last_per_key, uncertain_parts, with_uncertain
from audience_pipelines.engine.operations import with_old_record_ids
from audience_pipelines.engine.partitions import ClusteredFile, ClusteredWriter, split
from audience_pipelines.engine.payload import SAMPLE, Payload, build_payload
from audience_pipelines.engine.snapshot import SnapshotStore
from audience_pipelines.engine.spec import DIFF, FIRST_RUN, FULL_RESEND, RunOptions, SyncResult, SyncSpec


@dataclass
class Planned:
    """What the first pass over the partitions found, for the whole audience."""

    held: int = 0
    removes: int = 0
    kept: int = 0  # members the audience keeps: adds, updates and unchanged
    payload_rows: int = 0
    to_send: int = 0
    batches: int = 0
    set_aside: int = 0
    set_aside_sample: list[dict] = field(default_factory=list)
    invalid: dict[str, int] = field(default_factory=dict)
    invalid_set_aside: dict[str, int] = field(default_factory=dict)
    withdrawn: list[pa.Table] = field(default_factory=list)  # snapshot rows leaving a platform matching on them


@dataclass
class Part:
    # Sent this run: only the held rows it removes or updates, whole (the plan's old positions index
    # them; unchanged members come from the payload). Not sent: every held row. Rows of an
    # interrupted run are marked unknown.
    old: pa.Table
    payload: Payload | None = None  # None: the partition is not sent this run
    plan: DiffPlan | None = None
    held: int = 0  # rows held in the partition


class Partitions:
    """The run's key-hash partitions: payloads shaped once (staged on disk when there are several),
    what is held, and the journal."""

    def __init__(self, spec: SyncSpec, source, destination: Destination, shape: Payload,
                 held: ClusteredFile | None, pending: pa.Table | None, bits: int, stage_path):
        self.spec, self.source, self.destination, self.shape = spec, source, destination, shape
        self.held, self.bits = held, bits
        self.schema = shape.table.schema
        self.pending = conform(pending, self.schema) if pending is not None else None
        self._pending_parts = split(self.pending, bits) if self.pending is not None else None
        self._stage = ClusteredWriter(stage_path, self.schema, bits) if bits else None
        self._staged: ClusteredFile | None = None
        self._kept: Part | None = None  # one partition: kept in memory between the passes
        self._journal: ClusteredWriter | None = None

    def _old(self, p: int) -> pa.Table:
        old = conform(self.held.read(p, self.bits), self.schema) if self.held else self.schema.empty_table()
        if self._pending_parts is not None:
            old = with_uncertain(old, self._pending_parts[p])
        return old

    def _shaped(self, p: int) -> Payload:
        spec = self.spec
        return build_payload(spec.name, self.source.read(p, self.bits), self.destination, spec.identifiers,
                             spec.fields, spec.default_region, spec.region_column, rows=self.source.rows)

    def prepare(self, p: int, sent: bool = True) -> Part:
        """Partition p as the second pass sends it (the first pass shaped its payload)."""
        if not sent:  # held as it was: every row, whole
            return Part(self._old(p))
        if self._kept is not None:
            return self._kept
        payload = Payload(self._staged.read(p, self.bits), self.shape.identifier_columns, self.shape.field_columns)
        return self._diffed(p, payload)

    def _diffed(self, p: int, payload: Payload) -> Part:
        """Diff partition p on the held rows' key and row hashes; read the rest of only the held
        rows the run removes or updates."""
        narrow, whole_rows = self._held_narrow(p)
        plan = plan_diff(payload.table, narrow)
        if RECORD_ID in self.schema.names and self._staged is None:  # staged payloads carry them already
            payload.table = with_old_record_ids(payload.table, narrow, plan)
        changed = np.union1d(plan.remove, plan.update_old).astype(np.int64)
        at = np.full(narrow.num_rows, -1, dtype=np.int64)
        at[changed] = np.arange(len(changed))
        plan = dataclasses.replace(plan, remove=at[plan.remove], update_old=at[plan.update_old],
                                   unchanged_old=np.full(len(plan.unchanged_new), -1, dtype=np.int64))
        return Part(whole_rows(changed), payload, plan, narrow.num_rows)

    def _held_narrow(self, p: int) -> tuple[pa.Table, Callable[[np.ndarray], pa.Table]]:
        """Partition p's held rows as key, key hash, row hash (and record id), rows of an interrupted
        run marked unknown; and a reader of whole rows at given (ascending) positions of it."""
        columns = [c for c in (KEY, KEY_HASH, ROW_HASH, RECORD_ID) if c in self.schema.names]
        narrow_schema = pa.schema([self.schema.field(c) for c in columns])
        on_file = [c for c in columns if self.held is not None and c in self.held.schema.names]
        held = conform(self.held.read(p, self.bits, on_file), narrow_schema) if self.held \
            else narrow_schema.empty_table()
        n_held, extra = held.num_rows, self.schema.empty_table()
        if self._pending_parts is not None and self._pending_parts[p].num_rows:
            held, extra = uncertain_parts(held, last_per_key(self._pending_parts[p]))
        narrow = pa.concat_tables([held, extra.select(columns)]).combine_chunks() if extra.num_rows else held

        def whole_rows(positions: np.ndarray) -> pa.Table:
            from_file, from_pending = positions[positions < n_held], positions[positions >= n_held] - n_held
            parts = [extra.take(pa.array(from_pending, pa.int64()))]
            if len(from_file):
                parts.insert(0, conform(self.held.take(p, self.bits, from_file), self.schema))
            rows = pa.concat_tables(parts)
            # The hashes as planned: unknown where an interrupted run left the row's fate open.
            return rows.set_column(rows.column_names.index(ROW_HASH), ROW_HASH,
                                   narrow[ROW_HASH].take(pa.array(positions, pa.int64())))

        return narrow, whole_rows

    def plan_all(self, store: SnapshotStore, match_columns: list[str], full: bool, replace: bool,
                 batch_rows: int) -> Planned:
        """First pass: shape, diff and journal every partition; nothing is sent."""
        spec, planned = self.spec, Planned()
        self._journal = store.pending_writer(self.schema, self.bits)
        for p in range(1 << self.bits):
            part = self._diffed(p, self._shaped(p))  # members already held keep the platform's record id
            payload, old, plan = part.payload, part.old, part.plan
            planned.held += part.held
            planned.removes += len(plan.remove)
            planned.kept += len(plan.add) + len(plan.update_new) + len(plan.unchanged_new)
            planned.payload_rows += payload.table.num_rows
            planned.set_aside += payload.set_aside
            planned.set_aside_sample += payload.set_aside_samples[:SAMPLE - len(planned.set_aside_sample)]
            for kind, n in payload.invalid_identifiers.items():
                planned.invalid[kind] = planned.invalid.get(kind, 0) + n
            for kind, n in payload.invalid_identifiers_set_aside.items():
                planned.invalid_set_aside[kind] = planned.invalid_set_aside.get(kind, 0) + n
            journal = journal_rows(spec, plan, payload.table, old, self._pending_parts[p]
                                   if self._pending_parts is not None else None)
            sizes = [len(plan.remove)] if spec.sends_removes and not replace else []
            sizes += [len(plan.update_new), len(plan.add), len(plan.unchanged_new) if full else 0] \
                if spec.sends_adds else []
            planned.to_send += sum(sizes)
            planned.batches += sum(-(-n // batch_rows) for n in sizes)
            self._journal.write(p, journal)
            if match_columns:
                leaving = [plan.remove] if spec.sends_removes else []
                leaving += [plan.update_old] if spec.sends_adds else []
                planned.withdrawn.append(old.take(pa.array(np.concatenate(leaving) if leaving else [], pa.int64())))
            if self._stage is not None:
                self._stage.write(p, payload.table)
            else:
                self._kept = part
        if self._stage is not None:
            self._staged = ClusteredFile(self._stage.close())
        return planned

    def payloads(self, columns: list[str]):
        """Every partition's payload, one at a time."""
        if self._kept is not None:
            yield self._kept.payload.table
            return
        for p in range(1 << self.bits):
            yield self._staged.read(p, self.bits, [c for c in columns if c in self.schema.names])

    def commit_journal(self, store: SnapshotStore) -> ClusteredFile | None:
        journal, self._journal = self._journal, None
        return store.close_pending(journal)

    def abandon(self) -> None:
        """Drop the staged payloads, and the journal unless it was committed."""
        if self._journal is not None:
            self._journal.abandon()
            self._journal = None
        if self._stage is not None:
            if self._staged is None:
                self._stage.abandon()
            self._stage.path.unlink(missing_ok=True)


class Sender:
    """The second pass's sending: one destination session per partition (one in all for a replace)."""

    def __init__(self, spec: SyncSpec, destination: Destination, store: SnapshotStore, audience_id: str,
                 options: RunOptions, replace: bool, resume: dict | None, progress: Progress, batches: int):
        self.spec, self.destination, self.store, self.audience_id = spec, destination, store, audience_id
        self.options, self.replace, self.resume, self.progress = options, replace, resume, progress
        self.next_seq, self.last_seq = 1, batches  # batches are numbered across partitions
        self.error: BaseException | None = None
        self.held_back = False  # a session not finished yet: later partitions wait for the next run
        self.waiting = 0  # partitions not sent this run
        self.unfinished: str | None = None
        self.settled = True
        self.rows_done = 0
        self.stats: dict[str, int] = {}
        self.rejections: list[dict] = []
        self.skipped_sample: list[dict] = []

    def send(self, ops: list[Operation], last: bool) -> Outcome:
        outcome = dispatch(self.spec, self.destination, self.store, self.audience_id, ops, self.options,
                           self.replace, self.resume, self.progress, self.next_seq, self.last_seq)
        self.resume = None
        self.next_seq += outcome.batches
        self.rows_done += outcome.rows_done
        for k, v in outcome.stats.items():
            self.stats[k] = self.stats.get(k, 0) + v
        self.rejections += outcome.rejections
        self.skipped_sample += outcome.skipped_sample[:10 - len(self.skipped_sample)]
        self.error = self.error or outcome.error
        self.settled = outcome.finish is not None and outcome.finish.status != "unknown"
        if outcome.finish is not None and outcome.finish.status == "unknown":
            self.unfinished = outcome.finish.reason
            self.held_back = True  # later partitions wait for the next run, which settles this session
        elif self.settled and not last and self.error is None:
            self.store.write_session(None)  # the next partition opens its own session
        return outcome


def dispatch(spec: SyncSpec, destination: Destination, store: SnapshotStore, audience_id: str,
             ops: list[Operation], options: RunOptions, replace: bool, resume: dict | None,
             progress: Progress | None = None, first_seq: int = 1, last_seq: int | None = None) -> Outcome:
    def save_state(state: dict) -> None:
        store.write_session({"run_id": options.run_id, "audience_id": audience_id, "replace": replace,
                             "state": state})

    total = sum(len(op.positions) for op in ops if not op.implicit)
    session = destination.open_session(SessionContext(spec.name, options.run_id, audience_id, replace, total,
                                                      save_state, resume))
    caps = destination.capabilities
    # A replace session's batches go in order: the audience becomes what it received when it closes.
    parallel = 1 if replace else min(options.parallel_batches or caps.parallel_batches, caps.max_parallel_batches)
    dispatcher = Dispatcher(session, caps.max_batch_rows, spec.name, options, spec.batch_size,
                            spec.create_profiles, parallel=parallel,
                            slots=account_slots(f"{destination.type_name}:{destination.account()}",
                                                caps.max_parallel_batches), progress=progress,
                            first_seq=first_seq, last_seq=last_seq)
    return dispatcher.run(ops)


def new_result(spec: SyncSpec, options: RunOptions, first_run: bool, full: bool, audience_id: str | None,
               members: int, planned: Planned, notes: list[str], replace: bool) -> SyncResult:
    return SyncResult(
        sync=spec.name, run_id=options.run_id, run_kind=FIRST_RUN if first_run else FULL_RESEND if full else DIFF,
        sync_mode=spec.mode, destination_audience_id=audience_id or "", membership_rows=members,
        set_aside=planned.set_aside, held_before=planned.held, set_aside_sample=planned.set_aside_sample,
        invalid_identifiers=planned.invalid, invalid_identifiers_set_aside=planned.invalid_set_aside, notes=notes,
        replaced=replace)
