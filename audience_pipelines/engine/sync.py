"""One sync run: payload -> diff vs snapshot -> dispatch -> commit what was accepted."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Callable
import dataclasses
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from audience_pipelines.contract import (
    KEY, KEY_HASH, RECORD_ID, ROW_HASH, Destination, DestinationError, SessionContext, Target, TerminalError,
)
from audience_pipelines.contract.fields import FieldsRefused
from audience_pipelines.engine.audiences import AudienceRegistry, open_audience
from audience_pipelines.engine.diff import DiffPlan, plan_diff
from audience_pipelines.engine.dispatch import Dispatcher, Operation, Outcome, Progress, account_slots
from audience_pipelines.engine.errors import ConfigError, MassRemovalBlocked, SyncAborted
from audience_pipelines.engine.payload import SAMPLE, Payload, build_payload
from audience_pipelines.engine import partitions
from audience_pipelines.engine.partitions import (
    ClusteredFile, ClusteredWriter, TableSource, partition_bits, split,
)
from audience_pipelines.engine.snapshot import Manifest, SnapshotStore
from audience_pipelines.engine.withdrawals import StillSent, withdrawals

MODES = ("mirror", "additive", "subtractive")
REMOVALS = ("remove", "do_nothing")
# What one run sends: everything (no snapshot yet, or a full resend asked for) or only the changes.
FIRST_RUN, FULL_RESEND, DIFF = "first_run", "full_resend", "diff"
# Sync names are Dagster asset key parts (letters, digits, underscores): no sync folder starts with a dot.
REGISTRY_DIR = ".audience_registry"
RUN_KIND_TEXT = {FIRST_RUN: "first run (full)", FULL_RESEND: "full resend", DIFF: "diff run"}


@dataclass(frozen=True)
class SyncSpec:
    name: str
    audience: str
    destination: str
    target: Target
    identifiers: dict[str, str] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)
    mode: str = "mirror"
    removal: str = "remove"
    max_removal_share: float = 0.5
    batch_size: int | None = None
    default_region: str | None = None
    region_column: str | None = None  # per-row country for phones written without one
    create_profiles: bool | None = None  # members with no profile: create it, or skip them (None: destination's)
    # Keep writing to the audience opened at the first run even when the target's name changes
    # (one-click syncs: the destination audience keeps its name when the audience is renamed).
    keep_target: bool = False
    # The destination audience is named by this membership column, one per value (engine.targets).
    target_column: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"sync '{self.name}': mode '{self.mode}' is not one of {MODES}")
        if self.removal not in REMOVALS:
            raise ConfigError(f"sync '{self.name}': removal '{self.removal}' is not one of {REMOVALS}")
        if not 0 <= self.max_removal_share <= 1:
            raise ConfigError(f"sync '{self.name}': max_removal_share must be between 0 and 1")

    @property
    def sends_adds(self) -> bool:
        return self.mode != "subtractive"

    @property
    def sends_removes(self) -> bool:
        return self.mode != "additive" and self.removal == "remove"

    def fingerprint(self) -> str:
        raw = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


@dataclass
class RunOptions:
    run_id: str
    full_resync: bool = False
    allow_mass_removal: bool = False
    progress: Callable[[str], None] | None = None
    progress_interval_s: float = 5.0
    # How a person allows a mass removal where this run was launched (the orchestrator knows).
    allow_mass_removal_hint: str = "run it again with allow_mass_removal set"
    # Created audiences, per destination account; default: `.audience_registry/` among the syncs' folders.
    registry: AudienceRegistry | None = None
    # Batches in flight at once; default: the destination's `parallel_batches`, at most its maximum.
    parallel_batches: int | None = None
    # Members per key-hash partition: a run holds about one partition's payload and snapshot at a time
    # (default: engine.partitions.PARTITION_ROWS).
    partition_rows: int | None = None


@dataclass
class SyncResult:
    sync: str
    run_id: str
    run_kind: str  # first_run | full_resend | diff
    sync_mode: str  # mirror | additive | subtractive
    destination_audience_id: str
    added: int = 0
    removed: int = 0
    updated: int = 0
    resent: int = 0
    failed: int = 0
    set_aside: int = 0
    skipped: int = 0
    # Members with no profile on a platform that needs one, where the sync does not create profiles.
    skipped_no_profile: int = 0
    skipped_sample: list[dict] = field(default_factory=list)
    # Leavers not withdrawn: every identifier the platform matches on is still sent by a current member.
    shared_not_withdrawn: int = 0
    unchanged: int = 0
    membership_rows: int = 0
    snapshot_rows: int = 0
    held_before: int = 0  # members the destination held (as far as we knew) when the run started
    invalid_identifiers: dict[str, int] = field(default_factory=dict)
    invalid_identifiers_set_aside: dict[str, int] = field(default_factory=dict)
    destination_stats: dict[str, int] = field(default_factory=dict)
    errors_sample: list[dict] = field(default_factory=list)
    set_aside_sample: list[dict] = field(default_factory=list)
    rejected_path: str | None = None
    audience_size: int | None = None
    match_rate: float | None = None
    match_rate_basis: str | None = None
    per_audience: dict[str, dict] = field(default_factory=dict)  # a column-named target: each audience's counts
    replaced: bool = False  # sent as one replace session (departed members dropped when it closed)
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def attempted(self) -> int:
        return self.added + self.removed + self.updated + self.resent + self.failed

    @property
    def failure_rate(self) -> float:
        return self.failed / self.attempted if self.attempted else 0.0

    @property
    def status(self) -> str:
        return "partial_failure" if self.failed else "success"


def planned_run_kind(store: SnapshotStore, full_resync: bool) -> str:
    """The kind of run about to start, known before anything is read or sent."""
    manifest = store.manifest()
    if manifest is None or not manifest.snapshot_file:
        return FIRST_RUN
    return FULL_RESEND if full_resync else DIFF


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Old snapshot rows in the current payload's schema (mappings may have changed)."""
    cols = []
    for f in schema:
        if f.name in table.column_names:
            col = table[f.name]
            if col.type != f.type:
                try:
                    col = col.cast(f.type)
                except pa.ArrowException:
                    col = pa.nulls(len(table), f.type)  # row hash still differs, so it is resent
            cols.append(col)
        else:
            cols.append(pa.nulls(len(table), f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def run_sync(
    spec: SyncSpec,
    members: pa.Table | ClusteredFile,
    destination: Destination,
    store: SnapshotStore,
    options: RunOptions,
) -> SyncResult:
    """Run one sync. Raises MassRemovalBlocked before sending, SyncAborted after a partial commit.

    `members` is the membership as a table, or its Parquet file (read one partition at a time).
    The run goes over key-hash partitions twice: first it shapes each partition's payload (staged
    on disk), diffs it and journals what it will send, so the mass-removal guard and the values
    still sent are known for the whole audience before anything leaves; then it sends and writes
    the next snapshot partition by partition, and one manifest switch commits them all.
    """
    if spec.target_column:
        raise ConfigError(f"sync '{spec.name}': a target named by a column runs through engine.targets.run_by_column")
    started = time.monotonic()
    with store.lock(options.run_id):
        store.clear_staging()
        source = members if isinstance(members, ClusteredFile) else TableSource(members)
        shape = build_payload(spec.name, source.schema.empty_table(), destination, spec.identifiers, spec.fields,
                              spec.default_region, spec.region_column, rows=source.rows)
        notes: list[str] = []
        registry = options.registry or AudienceRegistry(store.root / REGISTRY_DIR)
        manifest = store.manifest()
        target = spec.target
        if spec.keep_target and manifest and manifest.destination_audience_id:
            target = Target(id=manifest.destination_audience_id)
        try:
            fields = {c: shape.table.schema.field(c).type for c in shape.field_columns} if spec.sends_adds else {}
            audience_id = open_audience(destination, target, registry, spec.name, options.run_id, notes, fields)
        except FieldsRefused as exc:
            named = [f"'{f}' from column '{c}'" for f, c in spec.fields.items() if f"field '{f}'" in str(exc)]
            raise FieldsRefused(f"sync '{spec.name}': {exc} (mapped: {', '.join(named)}; {source.rows:,} "
                                f"member(s) not sent; the snapshot is unchanged)", status=exc.status) from exc
        except DestinationError as exc:  # nothing was sent: every failure here stops the run
            kind = type(exc) if isinstance(exc, TerminalError) else TerminalError
            raise kind(f"sync '{spec.name}': could not open the destination audience "
                       f"({target.describe()}): {exc}", status=exc.status) from exc
        held, audience_changed = _held_file(spec, store, manifest, audience_id, notes)
        replace_again, resume = _recover_session(destination, store, audience_id, audience_changed, notes)
        first_run = held is None
        full = options.full_resync or replace_again
        # A replace session takes the whole audience in one session: one partition.
        may_replace = (full and not first_run and destination.capabilities.replaces_audience
                       and spec.mode == "mirror" and spec.sends_removes)
        bits = 0 if may_replace else partition_bits(max(source.rows, held.rows if held else 0),
                                                    options.partition_rows or partitions.PARTITION_ROWS)
        parts = _Partitions(spec, source, destination, shape, held, store.read_pending() if not audience_changed
                            else None, bits, store.staging_path(options.run_id))
        if parts.pending is not None:
            notes.append(f"{parts.pending.num_rows} rows from an interrupted run are sent again")
        match_columns = [] if may_replace else _match_columns(spec, destination)
        try:
            caps = destination.capabilities
            batch_rows = min(spec.batch_size, caps.max_batch_rows) if spec.batch_size else caps.max_batch_rows
            planned = parts.plan_all(store, match_columns, full, may_replace, batch_rows)
            replace = may_replace and planned.payload_rows > 0
            if may_replace and not replace:  # nothing left to replace with: removes are sent (one partition)
                planned.to_send += planned.removes
                planned.batches += -(-planned.removes // batch_rows)
            result = _new_result(spec, options, first_run, full, audience_id, source.rows, planned, notes, replace)
            _guard_mass_removal(spec, planned.removes, planned.held, planned.kept, options, result)
            still = StillSent.collect(planned.withdrawn, parts.payloads(shape.identifier_columns + [KEY, RECORD_ID]),
                                      shape.identifier_columns) if match_columns else StillSent()
        except BaseException:
            parts.abandon()
            raise
        # Journal what is about to be sent: if this run dies, the next one resends it.
        journal = parts.commit_journal(store)
        run = _Run(spec, destination, store, audience_id, options, replace, resume if replace else None,
                   Progress(planned.to_send, options), planned.batches)
        writer = store.snapshot_writer(options.run_id, parts.schema, bits)
        unanswered = store.pending_writer(parts.schema, bits)
        changed = first_run or parts.pending is not None or replace or RECORD_ID in parts.schema.names
        try:
            for p in range(1 << bits):
                part = parts.prepare(p, sent=run.error is None and not run.held_back)
                journal_p = journal.read(p, bits) if journal is not None else None
                if part.payload is None:  # not sent this run: held as it was, still journalled
                    run.waiting += 1
                    writer.write(p, part.old)
                    if journal_p is not None:
                        unanswered.write(p, journal_p)
                    continue
                ops = _operations(spec, part.plan, part.payload, part.old, full, result, match_columns, replace,
                                  still)
                outcome = run.send(ops, last=p == (1 << bits) - 1)
                _count(result, ops, outcome)
                if replace:  # rows a replace did not carry are gone from the audience, whatever they were
                    _drop_unreplaced(ops, outcome)
                new = _with_record_ids(part.payload.table, ops, outcome)
                writer.write(p, _next_snapshot(new, part.old, ops, outcome.accepted, part.plan.unchanged_new))
                left = _unanswered(journal_p, ops, outcome.answered)
                if left is not None:
                    unanswered.write(p, left)
                changed = changed or any(int(a.sum()) for name, a in outcome.accepted.items() if name != "resend")
            parts.abandon()
            run.progress.finish(run.error is None)
            result.destination_stats = run.stats
            result.errors_sample = run.rejections[:SAMPLE]
            result.skipped_sample = run.skipped_sample
            if run.rejections:
                result.rejected_path = str(store.write_rejections(options.run_id, pa.table({
                    "key": pa.array([r["key"] for r in run.rejections], pa.string()),
                    "operation": [r["operation"] for r in run.rejections],
                    "reason": [r["reason"] for r in run.rejections],
                })))
            if not changed:
                writer.abandon()
            # Rows marked unknown from the journal must be persisted as unknown, even when rejected.
            store.commit(writer if changed else None, Manifest(
                sync=spec.name, snapshot_file=None, run_id=options.run_id,
                committed_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                rows=0, destination_audience_id=audience_id, config_fingerprint=spec.fingerprint(),
                counts={"added": result.added, "removed": result.removed, "updated": result.updated,
                        "resent": result.resent, "failed": result.failed},
            ))
        except BaseException:
            writer.abandon()
            unanswered.abandon()
            parts.abandon()
            raise
        store.close_pending(unanswered)
        # Settled, unless it is a replace cut short, or one left open earlier that this run did not
        # carry on (the sync's mode changed): those stay journalled for the next run.
        if run.settled and not (replace and run.error is not None) and not (replace_again and not replace):
            store.write_session(None)
        result.snapshot_rows = store.manifest().rows
        if run.unfinished is not None and run.error is None:
            notes.append(f"the destination has not finished applying this run's changes "
                         f"({run.unfinished or 'still running'}); the next run settles them"
                         + (f", then sends the {run.waiting} partition(s) after it" if run.waiting else ""))
        if run.error is not None:
            result.duration_s = time.monotonic() - started
            raise SyncAborted(
                f"sync '{spec.name}' stopped after {run.rows_done} of {planned.to_send} rows: "
                f"{run.error}. What the destination accepted before that was committed "
                f"(added {result.added}, removed {result.removed}, updated {result.updated}); "
                "the next run sends the rest.", result=result,
            ) from run.error
        try:
            report = audience_report(destination, audience_id, result.snapshot_rows)
        except Exception as exc:  # a read-back is informative only
            report = None
            notes.append(f"could not read the audience size back: {type(exc).__name__}")
        if report is not None:
            result.audience_size, result.match_rate, result.match_rate_basis = report
    result.duration_s = time.monotonic() - started
    return result


@dataclass
class _Planned:
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
class _Part:
    # Sent this run: only the held rows it removes or updates, whole (the plan's old positions index
    # them; unchanged members come from the payload). Not sent: every held row. Rows of an
    # interrupted run are marked unknown.
    old: pa.Table
    payload: Payload | None = None  # None: the partition is not sent this run
    plan: DiffPlan | None = None
    held: int = 0  # rows held in the partition


class _Partitions:
    """The run's key-hash partitions: payloads shaped once (staged on disk when there are several),
    what is held, and the journal."""

    def __init__(self, spec: SyncSpec, source, destination: Destination, shape: Payload,
                 held: ClusteredFile | None, pending: pa.Table | None, bits: int, stage_path):
        self.spec, self.source, self.destination, self.shape = spec, source, destination, shape
        self.held, self.bits = held, bits
        self.schema = shape.table.schema
        self.pending = _conform(pending, self.schema) if pending is not None else None
        self._pending_parts = split(self.pending, bits) if self.pending is not None else None
        self._stage = ClusteredWriter(stage_path, self.schema, bits) if bits else None
        self._staged: ClusteredFile | None = None
        self._kept: _Part | None = None  # one partition: kept in memory between the passes
        self._journal: ClusteredWriter | None = None

    def _old(self, p: int) -> pa.Table:
        old = _conform(self.held.read(p, self.bits), self.schema) if self.held else self.schema.empty_table()
        if self._pending_parts is not None:
            old = _with_uncertain(old, self._pending_parts[p])
        return old

    def _shaped(self, p: int) -> Payload:
        spec = self.spec
        return build_payload(spec.name, self.source.read(p, self.bits), self.destination, spec.identifiers,
                             spec.fields, spec.default_region, spec.region_column, rows=self.source.rows)

    def prepare(self, p: int, sent: bool = True) -> _Part:
        """Partition p as the second pass sends it (the first pass shaped its payload)."""
        if not sent:  # held as it was: every row, whole
            return _Part(self._old(p))
        if self._kept is not None:
            return self._kept
        payload = Payload(self._staged.read(p, self.bits), self.shape.identifier_columns, self.shape.field_columns)
        return self._diffed(p, payload)

    def _diffed(self, p: int, payload: Payload) -> _Part:
        """Diff partition p on the held rows' key and row hashes; read the rest of only the held
        rows the run removes or updates."""
        narrow, whole_rows = self._held_narrow(p)
        plan = plan_diff(payload.table, narrow)
        if RECORD_ID in self.schema.names and self._staged is None:  # staged payloads carry them already
            payload.table = _with_old_record_ids(payload.table, narrow, plan)
        changed = np.union1d(plan.remove, plan.update_old).astype(np.int64)
        at = np.full(narrow.num_rows, -1, dtype=np.int64)
        at[changed] = np.arange(len(changed))
        plan = dataclasses.replace(plan, remove=at[plan.remove], update_old=at[plan.update_old],
                                   unchanged_old=np.full(len(plan.unchanged_new), -1, dtype=np.int64))
        return _Part(whole_rows(changed), payload, plan, narrow.num_rows)

    def _held_narrow(self, p: int) -> tuple[pa.Table, Callable[[np.ndarray], pa.Table]]:
        """Partition p's held rows as key, key hash, row hash (and record id), rows of an interrupted
        run marked unknown; and a reader of whole rows at given (ascending) positions of it."""
        columns = [c for c in (KEY, KEY_HASH, ROW_HASH, RECORD_ID) if c in self.schema.names]
        narrow_schema = pa.schema([self.schema.field(c) for c in columns])
        on_file = [c for c in columns if self.held is not None and c in self.held.schema.names]
        held = _conform(self.held.read(p, self.bits, on_file), narrow_schema) if self.held \
            else narrow_schema.empty_table()
        n_held, extra = held.num_rows, self.schema.empty_table()
        if self._pending_parts is not None and self._pending_parts[p].num_rows:
            held, extra = _uncertain_parts(held, _last_per_key(self._pending_parts[p]))
        narrow = pa.concat_tables([held, extra.select(columns)]).combine_chunks() if extra.num_rows else held

        def whole_rows(positions: np.ndarray) -> pa.Table:
            from_file, from_pending = positions[positions < n_held], positions[positions >= n_held] - n_held
            parts = [extra.take(pa.array(from_pending, pa.int64()))]
            if len(from_file):
                parts.insert(0, _conform(self.held.take(p, self.bits, from_file), self.schema))
            rows = pa.concat_tables(parts)
            # The hashes as planned: unknown where an interrupted run left the row's fate open.
            return rows.set_column(rows.column_names.index(ROW_HASH), ROW_HASH,
                                   narrow[ROW_HASH].take(pa.array(positions, pa.int64())))

        return narrow, whole_rows

    def plan_all(self, store: SnapshotStore, match_columns: list[str], full: bool, replace: bool,
                 batch_rows: int) -> _Planned:
        """First pass: shape, diff and journal every partition; nothing is sent."""
        spec, planned = self.spec, _Planned()
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
            journal = _journal_rows(spec, plan, payload.table, old, self._pending_parts[p]
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


class _Run:
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
        outcome = _dispatch(self.spec, self.destination, self.store, self.audience_id, ops, self.options,
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


def _held(spec: SyncSpec, store: SnapshotStore, manifest: Manifest | None, audience_id: str | None,
          notes: list[str]) -> tuple[pa.Table | None, bool]:
    """As `_held_file`, read whole."""
    held, changed = _held_file(spec, store, manifest, audience_id, notes)
    return (held.file.read() if held is not None else None), changed


def _held_file(spec: SyncSpec, store: SnapshotStore, manifest: Manifest | None, audience_id: str | None,
               notes: list[str]) -> tuple[ClusteredFile | None, bool]:
    """What the destination audience holds as far as the snapshot knows (None: nothing sent yet), and
    whether the sync now writes another audience than the snapshot's."""
    if not (manifest and manifest.snapshot_file):
        return None, False
    changed = audience_id is not None and manifest.destination_audience_id != audience_id
    if changed:
        notes.append(f"destination audience changed from {manifest.destination_audience_id} to {audience_id}; "
                     "the new audience gets the full membership and the old one is left as it is")
    if manifest.config_fingerprint != spec.fingerprint():
        notes.append("sync configuration changed since the last run")
    return (None if changed else store.snapshot_file()), changed


def _plan(spec: SyncSpec, payload: Payload, members: pa.Table, destination: Destination, store: SnapshotStore,
          options: RunOptions, old: pa.Table | None, audience_changed: bool, replace_again: bool,
          audience_id: str | None, notes: list[str]):
    """The diff of the membership against what is held (with rows of an interrupted run as unknown), and
    the kind of run it makes: (old, pending, plan, first run, full, replace, result)."""
    first_run = old is None
    schema = payload.table.schema
    old = _conform(old, schema) if old is not None else schema.empty_table()
    pending = store.read_pending()
    if pending is not None and not audience_changed:
        pending = _conform(pending, schema)
        old = _with_uncertain(old, pending)
        notes.append(f"{pending.num_rows} rows from an interrupted run are sent again")
    else:
        pending = None
    plan = plan_diff(payload.table, old)
    if RECORD_ID in schema.names:  # members already held keep the platform's record id
        payload.table = _with_old_record_ids(payload.table, old, plan)
    full = options.full_resync or replace_again
    replace = (full and not first_run and destination.capabilities.replaces_audience and spec.mode == "mirror"
               and spec.sends_removes and payload.table.num_rows > 0)
    planned = _Planned(held=old.num_rows, set_aside=payload.set_aside, set_aside_sample=payload.set_aside_samples,
                       invalid=payload.invalid_identifiers, invalid_set_aside=payload.invalid_identifiers_set_aside)
    result = _new_result(spec, options, first_run, full, audience_id, members.num_rows, planned, notes, replace)
    return old, pending, plan, first_run, full, replace, result


def _new_result(spec: SyncSpec, options: RunOptions, first_run: bool, full: bool, audience_id: str | None,
                members: int, planned: _Planned, notes: list[str], replace: bool) -> SyncResult:
    return SyncResult(
        sync=spec.name, run_id=options.run_id, run_kind=FIRST_RUN if first_run else FULL_RESEND if full else DIFF,
        sync_mode=spec.mode, destination_audience_id=audience_id or "", membership_rows=members,
        set_aside=planned.set_aside, held_before=planned.held, set_aside_sample=planned.set_aside_sample,
        invalid_identifiers=planned.invalid, invalid_identifiers_set_aside=planned.invalid_set_aside, notes=notes,
        replaced=replace)


def audience_report(destination: Destination, audience_id: str, held: int) -> tuple[int | None, float | None,
                                                                                    str | None] | None:
    """(audience size, match rate, where the rate comes from) as the platform reports them now, or None.

    Where the platform gives only the size of the matched audience, the match rate is that size over
    the members the sync holds: an ad platform's size counts the people it matched.
    """
    stats = destination.audience_stats(audience_id)
    if stats is None:
        return None
    if stats.match_rate is not None:
        return stats.size, stats.match_rate, "reported by the platform"
    if stats.size is not None and held and destination.capabilities.hashes_identifiers:
        return stats.size, min(1.0, stats.size / held), "audience size / members held"
    return stats.size, None, None


def _recover_session(destination: Destination, store: SnapshotStore, audience_id: str, audience_changed: bool,
                     notes: list[str]) -> tuple[bool, dict | None]:
    """Settle a session an earlier run left open: whether this run must replace the audience in full, and
    the state of the session it carries on."""
    leftover = store.read_session()
    if leftover is None:
        return False, None
    if leftover.get("audience_id") != audience_id or audience_changed:
        notes.append(f"a session left open on audience {leftover.get('audience_id')} by run "
                     f"{leftover.get('run_id')} was dropped: the sync now writes audience {audience_id}")
        store.write_session(None)
        return False, None
    recovery = destination.recover(audience_id, leftover.get("state") or {})
    notes.append(f"run {leftover.get('run_id')} left a session open: {recovery.note}")
    if recovery.replace_again:
        return True, recovery.resume  # the journal entry stays until this run's own replace settles it
    if recovery.settled:
        store.write_session(None)
    return False, None


def _dispatch(spec: SyncSpec, destination: Destination, store: SnapshotStore, audience_id: str,
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


def _count(result: SyncResult, ops: list[Operation], outcome: Outcome) -> None:
    for op in ops:
        accepted = outcome.accepted[op.name]
        n_ok = int(accepted.sum())
        n_silent = int((op.silent & accepted).sum()) if op.silent is not None else 0
        n_skipped = int(outcome.skipped[op.name].sum())
        setattr(result, op.counter, getattr(result, op.counter) + n_ok - n_silent)
        result.shared_not_withdrawn += n_silent
        result.skipped_no_profile += n_skipped
        # Rows a job has not settled yet are not failures: they stay journalled.
        unsettled = int((outcome.pending[op.name] & ~outcome.answered[op.name]).sum())
        result.failed += len(op.positions) - n_ok - n_skipped - unsettled
    if result.shared_not_withdrawn:
        result.notes.append(f"{result.shared_not_withdrawn} departed members were not withdrawn: every identifier "
                            "the platform matches them on is still sent by a current member")
    if result.skipped_no_profile:
        result.notes.append(f"{result.skipped_no_profile} members have no profile on the platform and were not "
                            "sent (the sync does not create profiles)")


def _drop_unreplaced(ops: list[Operation], outcome: Outcome) -> None:
    """After a replace, a held member the replace did not carry is no longer held: record it removed."""
    if outcome.finish is None or outcome.finish.status != "applied":
        return  # the replace did not close: nothing is known to be dropped
    for op in ops:
        if op.name in ("update", "resend"):
            op.dropped = outcome.answered[op.name] & ~outcome.accepted[op.name]


def _with_old_record_ids(new: pa.Table, old: pa.Table, plan: DiffPlan) -> pa.Table:
    matched_new = np.concatenate([plan.update_new, plan.unchanged_new])
    matched_old = np.concatenate([plan.update_old, plan.unchanged_old])
    ids = np.full(new.num_rows, None, dtype=object)
    ids[matched_new] = np.asarray(old[RECORD_ID].to_pylist(), dtype=object)[matched_old] if len(matched_old) else []
    return new.set_column(new.column_names.index(RECORD_ID), RECORD_ID, pa.array(ids, pa.string()))


def _with_record_ids(new: pa.Table, ops: list[Operation], outcome: Outcome) -> pa.Table:
    """The payload with the record ids the platform gave for rows sent this run."""
    if RECORD_ID not in new.column_names:
        return new
    ids = np.asarray(new[RECORD_ID].to_pylist(), dtype=object)
    for op in ops:
        if op.table is new and op.name != "remove":
            got = outcome.record_ids[op.name]
            given = np.array([v is not None for v in got], dtype=bool)
            ids[op.positions[given]] = got[given]
    return new.set_column(new.column_names.index(RECORD_ID), RECORD_ID, pa.array(ids.tolist(), pa.string()))


_UNKNOWN = 0  # row hash meaning "state at the destination unknown": never equal to a real row


def _with_uncertain(old: pa.Table, pending: pa.Table) -> pa.Table:
    """The snapshot with rows of unknown fate marked so the diff sends them again.

    A pending row already in the snapshot gets an unknown row hash (so it is
    updated or removed); one missing from it is added with an unknown hash (so
    it is removed if the member has left, resent if not).
    """
    return pa.concat_tables(_uncertain_parts(old, _last_per_key(pending))).combine_chunks()


def _uncertain_parts(old: pa.Table, pending: pa.Table) -> tuple[pa.Table, pa.Table]:
    """`old` with its pending rows' hashes unknown, and the pending rows it lacks (one per key) likewise."""
    in_old = pc.is_in(old[KEY], value_set=pending[KEY])
    rh = pc.if_else(in_old, pa.scalar(_UNKNOWN, pa.uint64()), old[ROW_HASH])
    old = old.set_column(old.column_names.index(ROW_HASH), ROW_HASH, rh)
    extra = pending.filter(pc.invert(pc.is_in(pending[KEY], value_set=old[KEY])))
    extra = extra.set_column(extra.column_names.index(ROW_HASH), ROW_HASH,
                             pa.array(np.full(extra.num_rows, _UNKNOWN, np.uint64)))
    return old, extra


def _last_per_key(table: pa.Table) -> pa.Table:
    idx = pa.array(np.arange(table.num_rows))
    last = table.append_column("_i", idx).group_by(KEY).aggregate([("_i", "max")])["_i_max"]
    return table.take(last)


def _journal_rows(spec: SyncSpec, plan: DiffPlan, new: pa.Table, old: pa.Table,
                  pending: pa.Table | None) -> pa.Table:
    """The rows a run is about to send (resends aside: already held), plus rows still of unknown fate."""
    parts = []
    if spec.sends_removes:
        parts.append(old.take(pa.array(plan.remove, pa.int64())))
    if spec.sends_adds:
        parts += [new.take(pa.array(plan.update_new, pa.int64())), new.take(pa.array(plan.add, pa.int64()))]
    if pending is not None and pending.num_rows:
        planned = pa.concat_arrays([p[KEY].combine_chunks() for p in parts]) if parts else pa.array([], pa.string())
        parts.append(pending.filter(pc.invert(pc.is_in(pending[KEY], value_set=planned))))
    parts = [p.select(old.schema.names).cast(old.schema) for p in parts if p.num_rows]
    return pa.concat_tables(parts) if parts else old.schema.empty_table()


def _unanswered(journal: pa.Table | None, ops: list[Operation], answered: dict[str, np.ndarray]) -> pa.Table | None:
    """Journal rows the destination gave no answer for: their fate stays unknown."""
    if journal is None:
        return None
    sent = [op for op in ops if op.name != "resend"]
    if journal.num_rows == sum(len(op.positions) for op in sent) and all(answered[op.name].all() for op in sent):
        return journal.slice(0, 0)  # the journal is exactly what was sent, and every row was answered
    done = [op.table[KEY].take(pa.array(op.positions[answered[op.name]], pa.int64())).combine_chunks()
            for op in ops if op.name != "resend"]
    if not done:
        return journal
    return journal.filter(pc.invert(pc.is_in(journal[KEY], value_set=pa.concat_arrays(done))))


def _match_columns(spec: SyncSpec, destination: Destination) -> list[str]:
    """Sent columns the platform matches a person on by themselves (empty: it matches by key)."""
    matches = destination.capabilities.match_identifiers
    if not matches:
        return []
    strong = [destination.identifier_column(k) for k in spec.identifiers if k in matches]
    return strong or [destination.identifier_column(k) for k in spec.identifiers]


def _guard_mass_removal(spec: SyncSpec, removes: int, held: int, kept: int, options: RunOptions,
                        result: SyncResult) -> None:
    """Stop before anything is sent when the run would remove more than the sync allows.

    `kept`: members the audience keeps (adds, updates and unchanged)."""
    if not spec.sends_removes or held == 0 or options.allow_mass_removal:
        return
    share = removes / held
    if share > spec.max_removal_share:
        raise MassRemovalBlocked(
            f"sync '{spec.name}' would remove {removes} of the {held} members the destination holds "
            f"({share:.0%}), more than its mass-removal guard allows ({spec.max_removal_share:.0%}); "
            f"the audience now has {kept} rows. Nothing was sent and the snapshot is unchanged. If the removal is intended, "
            f"{options.allow_mass_removal_hint}.",
            removes=removes, held=held, limit=spec.max_removal_share, result=result,
        )


def _operations(spec: SyncSpec, plan: DiffPlan, payload: Payload, old: pa.Table, full: bool,
                result: SyncResult, match_columns: list[str], replace: bool,
                still: StillSent | None = None) -> list[Operation]:
    """The run's operations; `still`: identifier values still sent across the whole membership
    (default: found in this payload, when it is the whole membership)."""
    ops: list[Operation] = []
    new = payload.table
    if match_columns and still is None:
        leaving = [plan.remove] if spec.sends_removes else []
        leaving += [plan.update_old] if spec.sends_adds else []
        still = StillSent.collect([old.take(pa.array(np.concatenate(leaving), pa.int64()))] if leaving else [],
                                  [new], payload.identifier_columns)
    if spec.sends_removes:
        # A replace session drops departed members when it closes: nothing to send for them.
        remove = Operation("remove", "removed", plan.remove, old, implicit=replace)
        if match_columns:
            remove.sent, remove.silent = withdrawals(still, old, plan.remove, payload.identifier_columns,
                                                     match_columns)
        ops.append(remove)
    else:
        result.skipped += len(plan.remove)
    if spec.sends_adds:
        update = Operation("update", "updated", plan.update_new, new, previous_positions=plan.update_old,
                           previous_sent=None if replace else old.take(pa.array(plan.update_old, pa.int64())))
        if match_columns:
            update.previous_sent, update.previous_silent = withdrawals(still, old, plan.update_old,
                                                                       payload.identifier_columns, match_columns)
        ops.append(update)
        ops.append(Operation("add", "added", plan.add, new))
        if full:
            ops.append(Operation("resend", "resent", plan.unchanged_new, new))
        else:
            result.unchanged += len(plan.unchanged_new)
    else:
        result.skipped += len(plan.add) + len(plan.update_new)
        result.unchanged += len(plan.unchanged_new)
    return ops


def _next_snapshot(new: pa.Table, changed: pa.Table, ops: list[Operation], accepted: dict[str, np.ndarray],
                   unchanged: np.ndarray) -> pa.Table:
    """Held rows the run removes or updates (`changed`), less those accepted; plus the payload's rows of
    accepted updates and adds and of `unchanged` members (equal to what is held, by their row hash).

    After a replace, held rows it did not carry (`dropped`) leave the snapshot too.
    """
    keep_old = np.ones(changed.num_rows, dtype=bool)
    take_new, gone = [], np.zeros(new.num_rows, dtype=bool)
    for op in ops:
        ok = accepted[op.name]
        if op.name == "remove":
            keep_old[op.positions[ok]] = False
        elif op.name == "update":
            keep_old[op.previous_positions[ok]] = False
            take_new.append(op.positions[ok])
        elif op.name == "add":
            take_new.append(op.positions[ok])
        if op.dropped is not None:
            if op.previous_positions is not None:
                keep_old[op.previous_positions[op.dropped]] = False
            elif op.name == "resend":
                gone[op.positions[op.dropped]] = True
    take_new.append(unchanged[~gone[unchanged]])
    idx = np.sort(np.concatenate(take_new)).astype(np.int64)
    kept = changed if keep_old.all() else changed.filter(pa.array(keep_old))
    # A first sync that landed whole is the payload as it is: no copy of every column.
    taken = new if len(idx) == new.num_rows and np.array_equal(idx, np.arange(len(idx))) \
        else new.take(pa.array(idx, pa.int64()))
    return pa.concat_tables([kept, taken])
