"""One sync run: payload -> diff vs snapshot -> dispatch -> commit what was accepted."""

from __future__ import annotations

import datetime as dt
import time

import pyarrow as pa

from audience_pipelines.contract import KEY, RECORD_ID, Destination, DestinationError, Target, TerminalError
from audience_pipelines.contract.fields import FieldsRefused
from audience_pipelines.engine import partitions
from audience_pipelines.engine.audiences import AudienceRegistry, open_audience
from audience_pipelines.engine.dispatch import Progress
from audience_pipelines.engine.errors import ConfigError, SyncAborted
from audience_pipelines.engine.held import held_file, unanswered_rows
from audience_pipelines.engine.operations import (
    count_outcome, drop_unreplaced, guard_mass_removal, next_snapshot, operations, platform_match_columns,
    with_record_ids,
)
from audience_pipelines.engine.partitions import ClusteredFile, DerivedSource, TableSource, partition_bits
from audience_pipelines.engine.passes import Partitions, Sender, new_result
from audience_pipelines.engine.payload import SAMPLE, build_payload
from audience_pipelines.engine.snapshot import Manifest, SnapshotStore
from audience_pipelines.engine.spec import REGISTRY_DIR, RunOptions, SyncResult, SyncSpec
from audience_pipelines.engine.withdrawals import StillSent


def run_sync(
    spec: SyncSpec,
    members: pa.Table | ClusteredFile | DerivedSource,
    destination: Destination,
    store: SnapshotStore,
    options: RunOptions,
) -> SyncResult:
    """Run one sync. Raises MassRemovalBlocked before sending, SyncAborted after a partial commit.

    `members` is the membership as a table, or its Parquet file (read one partition at a time, with
    derived columns joined on per partition by a DerivedSource).
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
        source = TableSource(members) if isinstance(members, pa.Table) else members
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
        held, audience_changed = held_file(spec, store, manifest, audience_id, notes)
        replace_again, resume = _recover_session(destination, store, audience_id, audience_changed, notes)
        first_run = held is None
        full = options.full_resync or replace_again
        # A replace session takes the whole audience in one session: one partition.
        may_replace = (full and not first_run and destination.capabilities.replaces_audience
                       and spec.mode == "mirror" and spec.sends_removes)
        bits = 0 if may_replace else partition_bits(max(source.rows, held.rows if held else 0),
                                                    options.partition_rows or partitions.PARTITION_ROWS)
        parts = Partitions(spec, source, destination, shape, held, store.read_pending() if not audience_changed
                           else None, bits, store.staging_path(options.run_id))
        if parts.pending is not None:
            notes.append(f"{parts.pending.num_rows} rows from an interrupted run are sent again")
        match_columns = [] if may_replace else platform_match_columns(spec, destination)
        try:
            caps = destination.capabilities
            batch_rows = min(spec.batch_size, caps.max_batch_rows) if spec.batch_size else caps.max_batch_rows
            planned = parts.plan_all(store, match_columns, full, may_replace, batch_rows)
            replace = may_replace and planned.payload_rows > 0
            if may_replace and not replace:  # nothing left to replace with: removes are sent (one partition)
                planned.to_send += planned.removes
                planned.batches += -(-planned.removes // batch_rows)
            result = new_result(spec, options, first_run, full, audience_id, source.rows, planned, notes, replace)
            guard_mass_removal(spec, planned.removes, planned.held, planned.kept, options, result)
            still = StillSent.collect(planned.withdrawn, parts.payloads(shape.identifier_columns + [KEY, RECORD_ID]),
                                      shape.identifier_columns) if match_columns else StillSent()
        except BaseException:
            parts.abandon()
            raise
        # Journal what is about to be sent: if this run dies, the next one resends it.
        journal = parts.commit_journal(store)
        run = Sender(spec, destination, store, audience_id, options, replace, resume if replace else None,
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
                ops = operations(spec, part.plan, part.payload, part.old, full, result, match_columns, replace,
                                 still)
                outcome = run.send(ops, last=p == (1 << bits) - 1)
                count_outcome(result, ops, outcome)
                if replace:  # rows a replace did not carry are gone from the audience, whatever they were
                    drop_unreplaced(ops, outcome)
                new = with_record_ids(part.payload.table, ops, outcome)
                writer.write(p, next_snapshot(new, part.old, ops, outcome.accepted, part.plan.unchanged_new))
                left = unanswered_rows(journal_p, ops, outcome.answered)
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
