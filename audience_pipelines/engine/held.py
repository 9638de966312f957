"""What the destination holds as far as the snapshot knows, and rows whose fate an interrupted run left
unknown: marked so the diff sends them again, journalled before sending, cleared once answered."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from audience_pipelines.contract import KEY, ROW_HASH
from audience_pipelines.engine.diff import DiffPlan
from audience_pipelines.engine.dispatch import Operation
from audience_pipelines.engine.partitions import ClusteredFile
from audience_pipelines.engine.snapshot import Manifest, SnapshotStore
from audience_pipelines.engine.spec import SyncSpec

UNKNOWN = 0  # row hash meaning "state at the destination unknown": never equal to a real row


def held_file(spec: SyncSpec, store: SnapshotStore, manifest: Manifest | None, audience_id: str | None,
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


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
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


def with_uncertain(old: pa.Table, pending: pa.Table) -> pa.Table:
    """The snapshot with rows of unknown fate marked so the diff sends them again.

    A pending row already in the snapshot gets an unknown row hash (so it is
    updated or removed); one missing from it is added with an unknown hash (so
    it is removed if the member has left, resent if not).
    """
    return pa.concat_tables(uncertain_parts(old, last_per_key(pending))).combine_chunks()


def uncertain_parts(old: pa.Table, pending: pa.Table) -> tuple[pa.Table, pa.Table]:
    """`old` with its pending rows' hashes unknown, and the pending rows it lacks (one per key) likewise."""
    in_old = pc.is_in(old[KEY], value_set=pending[KEY])
    rh = pc.if_else(in_old, pa.scalar(UNKNOWN, pa.uint64()), old[ROW_HASH])
    old = old.set_column(old.column_names.index(ROW_HASH), ROW_HASH, rh)
    extra = pending.filter(pc.invert(pc.is_in(pending[KEY], value_set=old[KEY])))
    extra = extra.set_column(extra.column_names.index(ROW_HASH), ROW_HASH,
                             pa.array(np.full(extra.num_rows, UNKNOWN, np.uint64)))
    return old, extra


def last_per_key(table: pa.Table) -> pa.Table:
    idx = pa.array(np.arange(table.num_rows))
    last = table.append_column("_i", idx).group_by(KEY).aggregate([("_i", "max")])["_i_max"]
    return table.take(last)


def journal_rows(spec: SyncSpec, plan: DiffPlan, new: pa.Table, old: pa.Table,
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


def unanswered_rows(journal: pa.Table | None, ops: list[Operation], answered: dict[str, np.ndarray]) -> pa.Table | None:
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
