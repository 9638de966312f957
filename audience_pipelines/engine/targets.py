"""A target named by a column: one destination audience per distinct value.

Each value is a sync of its own over the members holding that value, with its own snapshot and
mass-removal guard, so a member whose value changes is added to the new audience and, in mirror
mode, removed from the old one. A value no member holds any more is still synced (with no members)
until its audience is empty, so its members are withdrawn and the guard protects it like any other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pyarrow as pa
import pyarrow.compute as pc

from audience_pipelines.contract import KEY, Destination, Target
from audience_pipelines.engine.errors import AudiencePipelinesError, MassRemovalBlocked, SyncAborted, SyncInputError
from audience_pipelines.engine.payload import SAMPLE
from audience_pipelines.engine.snapshot import SnapshotStore
from audience_pipelines.engine.spec import RunOptions, SyncResult, SyncSpec
from audience_pipelines.engine.sync import run_sync

VALUE_FILE = "target_name.txt"


def value_store(store: SnapshotStore, value: str) -> SnapshotStore:
    """The snapshot of one value's audience, inside the sync's own folder: a readable prefix plus a
    hash, so distinct values never share one."""
    digest = hashlib.sha256(value.encode()).hexdigest()[:12]
    return SnapshotStore(store.dir / "targets", f"{value[:40]}-{digest}")


def known_values(store: SnapshotStore) -> list[str]:
    """Values synced by earlier runs (each value's folder records the value it serves)."""
    base = store.dir / "targets"
    if not base.is_dir():
        return []
    return sorted(p.read_text() for p in base.glob(f"*/{VALUE_FILE}"))


def _emptied(store: SnapshotStore) -> bool:
    manifest = store.manifest()
    return manifest is not None and manifest.rows == 0 and store.read_pending() is None and \
        store.read_session() is None


def split_by_value(spec: SyncSpec, members: pa.Table) -> tuple[dict[str, pa.Table], pa.Table]:
    """Members per distinct value of the target column, and the members with no value."""
    column = spec.target_column
    if column not in members.column_names:
        raise SyncInputError(f"sync '{spec.name}': the target column '{column}' is not a column of the membership "
                             f"({members.num_rows} rows; columns: {members.column_names})")
    values = members[column]
    if not pa.types.is_string(values.type):
        values = pc.cast(values, pa.string())
    values = pc.utf8_trim_whitespace(values)
    empty = pc.fill_null(pc.equal(values, ""), True)
    groups = {}
    present = members.filter(pc.invert(empty))
    present_values = values.filter(pc.invert(empty))
    for value in pc.unique(present_values).to_pylist():
        groups[value] = present.filter(pc.equal(present_values, value))
    return groups, members.filter(empty)


def run_by_column(spec: SyncSpec, members: pa.Table, destination: Destination, store: SnapshotStore,
                  options: RunOptions) -> tuple[SyncResult, dict[str, SyncResult]]:
    """Sync each value's members to the audience named by the value; the combined result and each value's.

    Every value is run even when another fails; then the failures are raised together, with the
    combined result of what got through.
    """
    groups, no_value = split_by_value(spec, members)
    empty = members.schema.empty_table()
    results: dict[str, SyncResult] = {}
    failures: dict[str, AudiencePipelinesError] = {}
    for value in sorted(set(groups) | set(known_values(store))):
        part = value_store(store, value)
        if value not in groups and _emptied(part):
            continue  # withdrawn in full by an earlier run
        part.dir.mkdir(parents=True, exist_ok=True)
        (part.dir / VALUE_FILE).write_text(value)
        sub = dataclasses.replace(spec, name=f"{spec.name}[{value}]", target=Target(name=value), target_column=None)
        if options.progress:
            options.progress(f"sync '{spec.name}': destination audience '{value}', "
                             f"{groups.get(value, empty).num_rows:,} members")
        try:
            results[value] = run_sync(sub, groups.get(value, empty), destination, part, options)
        except AudiencePipelinesError as exc:
            failures[value] = exc
            partial = getattr(exc, "result", None)
            if partial is not None:
                results[value] = partial
    combined = combine(spec, options.run_id, results, no_value)
    if failures:
        text = "; ".join(f"audience '{v}': {e}" for v, e in failures.items())
        ok = sorted(set(results) - set(failures))
        message = (f"sync '{spec.name}': {len(failures)} of {len(failures) + len(ok)} destination audiences "
                   f"failed ({text})" + (f"; the others ({', '.join(ok)}) were synced" if ok else ""))
        blocked = [e for e in failures.values() if isinstance(e, MassRemovalBlocked)]
        if len(blocked) == len(failures):
            raise MassRemovalBlocked(message, removes=sum(e.removes for e in blocked),
                                     held=sum(e.held for e in blocked), limit=spec.max_removal_share,
                                     result=combined)
        raise SyncAborted(message, result=combined)
    return combined, results


_SUMMED = ("added", "removed", "updated", "resent", "failed", "set_aside", "skipped", "skipped_no_profile",
           "shared_not_withdrawn", "unchanged", "membership_rows", "snapshot_rows", "held_before")


def combine(spec: SyncSpec, run_id: str, results: dict[str, SyncResult], no_value: pa.Table) -> SyncResult:
    """One result for the sync: counts summed over its audiences, samples and notes labelled by audience."""
    first = next(iter(results.values()), None)
    out = SyncResult(sync=spec.name, run_id=run_id, run_kind=first.run_kind if first else "first_run",
                     sync_mode=spec.mode, destination_audience_id=", ".join(r.destination_audience_id
                                                                           for r in results.values()))
    for value, r in results.items():
        for name in _SUMMED:
            setattr(out, name, getattr(out, name) + getattr(r, name))
        for name in ("invalid_identifiers", "invalid_identifiers_set_aside", "destination_stats"):
            merged = getattr(out, name)
            for k, n in getattr(r, name).items():
                merged[k] = merged.get(k, 0) + n
        out.errors_sample += [{**e, "audience": value} for e in r.errors_sample]
        out.set_aside_sample += [{**e, "audience": value} for e in r.set_aside_sample]
        out.skipped_sample += [{**e, "audience": value} for e in r.skipped_sample]
        out.notes += [f"audience '{value}': {n}" for n in r.notes]
        out.duration_s += r.duration_s
        out.replaced = out.replaced or r.replaced
        if r.audience_size is not None:
            out.audience_size = (out.audience_size or 0) + r.audience_size
    sizes = [r for r in results.values() if r.match_rate is not None and r.snapshot_rows]
    if sizes:  # weighted by members held, so a tiny audience does not sway it
        held = sum(r.snapshot_rows for r in sizes)
        out.match_rate = sum(r.match_rate * r.snapshot_rows for r in sizes) / held
        out.match_rate_basis = sizes[0].match_rate_basis
    if no_value.num_rows:
        out.membership_rows += no_value.num_rows
        out.set_aside += no_value.num_rows
        out.set_aside_sample += [{"key": k, "reason": f"no destination audience: column '{spec.target_column}' is "
                                  "empty"} for k in no_value[KEY].to_pylist()[:SAMPLE]]
    for samples in ("errors_sample", "set_aside_sample", "skipped_sample"):
        setattr(out, samples, getattr(out, samples)[:SAMPLE])
    out.per_audience = {v: {"id": r.destination_audience_id, "members": r.snapshot_rows, "added": r.added,
                            "removed": r.removed, "updated": r.updated, "failed": r.failed}
                        for v, r in results.items()}
    return out
