"""One sync run: payload -> diff vs snapshot -> dispatch -> commit what was accepted."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from audience_pipelines.destinations.base import Destination, Target
from audience_pipelines.engine.diff import KEY, ROW_HASH, DiffPlan, plan_diff
from audience_pipelines.engine.dispatch import Dispatcher, Operation
from audience_pipelines.engine.errors import ConfigError, DestinationError, MassRemovalBlocked, SyncAborted
from audience_pipelines.engine.payload import SAMPLE, Payload, build_payload
from audience_pipelines.engine.snapshot import Manifest, SnapshotStore

MODES = ("mirror", "additive", "subtractive")
REMOVALS = ("remove", "do_nothing")
# What one run sends: everything (no snapshot yet, or a full resend asked for) or only the changes.
FIRST_RUN, FULL_RESEND, DIFF = "first_run", "full_resend", "diff"
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
    members: pa.Table,
    destination: Destination,
    store: SnapshotStore,
    options: RunOptions,
) -> SyncResult:
    """Run one sync. Raises MassRemovalBlocked before sending, SyncAborted after a partial commit."""
    started = time.monotonic()
    with store.lock(options.run_id):
        payload = build_payload(spec.name, members, destination, spec.identifiers, spec.fields,
                                spec.default_region, spec.region_column)
        try:
            audience_id = destination.resolve_target(spec.target)
        except DestinationError as exc:
            raise DestinationError(f"sync '{spec.name}': could not open the destination audience "
                                   f"({spec.target.describe()}): {exc}", status=exc.status, fatal=True) from exc
        manifest = store.manifest()
        notes: list[str] = []
        old = None
        audience_changed = bool(manifest and manifest.snapshot_file
                                and manifest.destination_audience_id != audience_id)
        if manifest and manifest.snapshot_file:
            if audience_changed:
                notes.append(
                    f"destination audience changed from {manifest.destination_audience_id} to {audience_id}; "
                    "the new audience gets the full membership and the old one is left as it is"
                )
            else:
                old = store.read()
            if manifest.config_fingerprint != spec.fingerprint():
                notes.append("sync configuration changed since the last run")
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
        result = SyncResult(
            sync=spec.name, run_id=options.run_id,
            run_kind=FIRST_RUN if first_run else FULL_RESEND if options.full_resync else DIFF,
            sync_mode=spec.mode, destination_audience_id=audience_id,
            membership_rows=members.num_rows, set_aside=payload.set_aside, held_before=old.num_rows,
            set_aside_sample=payload.set_aside_samples, invalid_identifiers=payload.invalid_identifiers,
            invalid_identifiers_set_aside=payload.invalid_identifiers_set_aside, notes=notes,
        )
        _guard_mass_removal(spec, plan, old.num_rows, options, result)
        ops = _operations(spec, plan, payload, old, options, result, _match_columns(spec, destination))
        # Journal what is about to be sent: if this run dies, the next one resends it.
        journal = _journal(ops, pending)
        store.write_pending(journal)
        dispatcher = Dispatcher(destination, audience_id, spec.name, options, spec.batch_size)
        outcome = dispatcher.run(ops)
        result.destination_stats = outcome.stats
        accepted = outcome.accepted
        for op in ops:
            n_ok = int(accepted[op.name].sum())
            n_silent = int(op.silent.sum()) if op.silent is not None else 0
            setattr(result, op.counter, getattr(result, op.counter) + n_ok - n_silent)
            result.shared_not_withdrawn += n_silent
            result.failed += len(op.positions) - n_ok
        if result.shared_not_withdrawn:
            notes.append(f"{result.shared_not_withdrawn} departed members were not withdrawn: every identifier "
                         "the platform matches them on is still sent by a current member")
        result.errors_sample = outcome.rejections[:SAMPLE]
        if outcome.rejections:
            keys = [r["key"] for r in outcome.rejections]
            result.rejected_path = str(store.write_rejections(options.run_id, pa.table({
                "key": pa.array(keys, pa.string()),
                "operation": [r["operation"] for r in outcome.rejections],
                "reason": [r["reason"] for r in outcome.rejections],
            })))
        snapshot = _next_snapshot(payload.table, old, ops, accepted)
        # Rows marked unknown from the journal must be persisted as unknown, even when rejected.
        changed = first_run or pending is not None or any(
            int(a.sum()) for name, a in accepted.items() if name != "resend")
        store.commit(snapshot if changed else None, Manifest(
            sync=spec.name, snapshot_file=None, run_id=options.run_id,
            committed_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            rows=0, destination_audience_id=audience_id, config_fingerprint=spec.fingerprint(),
            counts={"added": result.added, "removed": result.removed, "updated": result.updated,
                    "resent": result.resent, "failed": result.failed},
        ))
        store.write_pending(_unanswered(journal, ops, outcome.answered))
        result.snapshot_rows = store.manifest().rows
        if outcome.error is not None:
            result.duration_s = time.monotonic() - started
            raise SyncAborted(
                f"sync '{spec.name}' stopped after {outcome.rows_done} of {outcome.rows_total} rows: "
                f"{outcome.error}. What the destination accepted before that was committed "
                f"(added {result.added}, removed {result.removed}, updated {result.updated}); "
                "the next run sends the rest.", result=result,
            ) from outcome.error
        try:
            result.audience_size = destination.audience_size(audience_id)
        except Exception as exc:  # a size read-back is informative only
            notes.append(f"could not read the audience size back: {type(exc).__name__}")
    result.duration_s = time.monotonic() - started
    return result


_UNKNOWN = 0  # row hash meaning "state at the destination unknown": never equal to a real row


def _with_uncertain(old: pa.Table, pending: pa.Table) -> pa.Table:
    """The snapshot with rows of unknown fate marked so the diff sends them again.

    A pending row already in the snapshot gets an unknown row hash (so it is
    updated or removed); one missing from it is added with an unknown hash (so
    it is removed if the member has left, resent if not).
    """
    pending = _last_per_key(pending)
    in_old = pc.is_in(old[KEY], value_set=pending[KEY])
    rh = pc.if_else(in_old, pa.scalar(_UNKNOWN, pa.uint64()), old[ROW_HASH])
    old = old.set_column(old.column_names.index(ROW_HASH), ROW_HASH, rh)
    extra = pending.filter(pc.invert(pc.is_in(pending[KEY], value_set=old[KEY])))
    extra = extra.set_column(extra.column_names.index(ROW_HASH), ROW_HASH,
                             pa.array(np.full(extra.num_rows, _UNKNOWN, np.uint64)))
    return pa.concat_tables([old, extra]).combine_chunks()


def _last_per_key(table: pa.Table) -> pa.Table:
    idx = pa.array(np.arange(table.num_rows))
    last = table.append_column("_i", idx).group_by(KEY).aggregate([("_i", "max")])["_i_max"]
    return table.take(last)


def _journal(ops: list[Operation], pending: pa.Table | None) -> pa.Table | None:
    parts = [op.table.take(pa.array(op.positions, pa.int64())) for op in ops if op.name != "resend"]
    if pending is not None:
        planned = pa.concat_arrays([p[KEY].combine_chunks() for p in parts]) if parts else pa.array([], pa.string())
        parts.append(pending.filter(pc.invert(pc.is_in(pending[KEY], value_set=planned))))
    parts = [p for p in parts if p.num_rows]
    return pa.concat_tables(parts) if parts else None


def _unanswered(journal: pa.Table | None, ops: list[Operation], answered: dict[str, np.ndarray]) -> pa.Table | None:
    """Journal rows the destination gave no answer for: their fate stays unknown."""
    if journal is None:
        return None
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


def _guard_mass_removal(spec: SyncSpec, plan: DiffPlan, held: int, options: RunOptions,
                        result: SyncResult) -> None:
    removes = len(plan.remove)
    if not spec.sends_removes or held == 0 or options.allow_mass_removal:
        return
    share = removes / held
    if share > spec.max_removal_share:
        raise MassRemovalBlocked(
            f"sync '{spec.name}' would remove {removes} of the {held} members the destination holds "
            f"({share:.0%}), more than its mass-removal guard allows ({spec.max_removal_share:.0%}); "
            f"the audience now has {plan.counts['adds'] + plan.counts['updates'] + plan.counts['unchanged']} "
            f"rows. Nothing was sent and the snapshot is unchanged. If the removal is intended, "
            f"{options.allow_mass_removal_hint}.",
            removes=removes, held=held, limit=spec.max_removal_share, result=result,
        )


def _withdrawals(payload: Payload, old: pa.Table, positions: np.ndarray,
                 match_columns: list[str]) -> tuple[pa.Table, np.ndarray]:
    """Snapshot rows as they may be withdrawn from a platform that matches on identifiers.

    Every identifier value some current member still sends is blanked, so the
    withdrawal cannot take that member out too; a row left with no value the
    platform matches on is not sent at all (the second array marks those).
    """
    rows = old.take(pa.array(positions, pa.int64()))
    if rows.num_rows == 0:
        return rows, np.zeros(0, dtype=bool)
    for c in payload.identifier_columns:
        # Probe the (large) payload against the (small) withdrawals, not the other way round.
        sent = payload.table[c]
        still = pc.unique(sent.filter(pc.is_in(sent, value_set=rows[c].combine_chunks(), skip_nulls=True)))
        shared = pc.is_in(rows[c], value_set=still, skip_nulls=True)
        blanked = pc.if_else(shared, pa.scalar(None, rows.schema.field(c).type), rows[c])
        rows = rows.set_column(rows.column_names.index(c), c, blanked)
    left = np.zeros(rows.num_rows, dtype=bool)
    for c in match_columns:
        left |= np.asarray(rows[c].is_valid(), dtype=bool)
    return rows, ~left


def _operations(spec: SyncSpec, plan: DiffPlan, payload: Payload, old: pa.Table, options: RunOptions,
                result: SyncResult, match_columns: list[str]) -> list[Operation]:
    ops: list[Operation] = []
    new = payload.table
    if spec.sends_removes:
        remove = Operation("remove", "removed", plan.remove, old)
        if match_columns:
            remove.sent, remove.silent = _withdrawals(payload, old, plan.remove, match_columns)
        ops.append(remove)
    else:
        result.skipped += len(plan.remove)
    if spec.sends_adds:
        update = Operation("update", "updated", plan.update_new, new, previous_positions=plan.update_old,
                           previous_sent=old.take(pa.array(plan.update_old, pa.int64())))
        if match_columns:
            update.previous_sent, update.previous_silent = _withdrawals(payload, old, plan.update_old,
                                                                         match_columns)
        ops.append(update)
        ops.append(Operation("add", "added", plan.add, new))
        if options.full_resync:
            ops.append(Operation("resend", "resent", plan.unchanged_new, new))
        else:
            result.unchanged = len(plan.unchanged_new)
    else:
        result.skipped += len(plan.add) + len(plan.update_new)
        result.unchanged = len(plan.unchanged_new)
    return ops


def _next_snapshot(new: pa.Table, old: pa.Table, ops: list[Operation],
                   accepted: dict[str, np.ndarray]) -> pa.Table:
    """Old snapshot - accepted removes - accepted updates (old side) + accepted adds and updates."""
    keep_old = np.ones(old.num_rows, dtype=bool)
    take_new = []
    for op in ops:
        ok = accepted[op.name]
        if op.name == "remove":
            keep_old[op.positions[ok]] = False
        elif op.name == "update":
            keep_old[op.previous_positions[ok]] = False
            take_new.append(op.positions[ok])
        elif op.name == "add":
            take_new.append(op.positions[ok])
    idx = np.concatenate(take_new) if take_new else np.empty(0, dtype=np.int64)
    parts = [old.filter(pa.array(keep_old)), new.take(pa.array(idx, pa.int64()))]
    return pa.concat_tables(parts).combine_chunks()
