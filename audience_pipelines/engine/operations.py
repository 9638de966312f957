"""A partition's diff as operations to send, and what the snapshot holds once the destination answered."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from audience_pipelines.contract import RECORD_ID, Destination
from audience_pipelines.engine.diff import DiffPlan
from audience_pipelines.engine.dispatch import Operation, Outcome
from audience_pipelines.engine.errors import MassRemovalBlocked
from audience_pipelines.engine.payload import Payload
from audience_pipelines.engine.spec import RunOptions, SyncResult, SyncSpec
from audience_pipelines.engine.withdrawals import StillSent, withdrawals


def platform_match_columns(spec: SyncSpec, destination: Destination) -> list[str]:
    """Sent columns the platform matches a person on by themselves (empty: it matches by key)."""
    matches = destination.capabilities.match_identifiers
    if not matches:
        return []
    strong = [destination.identifier_column(k) for k in spec.identifiers if k in matches]
    return strong or [destination.identifier_column(k) for k in spec.identifiers]


def guard_mass_removal(spec: SyncSpec, removes: int, held: int, kept: int, options: RunOptions,
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


def operations(spec: SyncSpec, plan: DiffPlan, payload: Payload, old: pa.Table, full: bool,
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


def count_outcome(result: SyncResult, ops: list[Operation], outcome: Outcome) -> None:
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


def drop_unreplaced(ops: list[Operation], outcome: Outcome) -> None:
    """After a replace, a held member the replace did not carry is no longer held: record it removed."""
    if outcome.finish is None or outcome.finish.status != "applied":
        return  # the replace did not close: nothing is known to be dropped
    for op in ops:
        if op.name in ("update", "resend"):
            op.dropped = outcome.answered[op.name] & ~outcome.accepted[op.name]


def with_old_record_ids(new: pa.Table, old: pa.Table, plan: DiffPlan) -> pa.Table:
    matched_new = np.concatenate([plan.update_new, plan.unchanged_new])
    matched_old = np.concatenate([plan.update_old, plan.unchanged_old])
    ids = np.full(new.num_rows, None, dtype=object)
    ids[matched_new] = np.asarray(old[RECORD_ID].to_pylist(), dtype=object)[matched_old] if len(matched_old) else []
    return new.set_column(new.column_names.index(RECORD_ID), RECORD_ID, pa.array(ids, pa.string()))


def with_record_ids(new: pa.Table, ops: list[Operation], outcome: Outcome) -> pa.Table:
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


def next_snapshot(new: pa.Table, changed: pa.Table, ops: list[Operation], accepted: dict[str, np.ndarray],
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
