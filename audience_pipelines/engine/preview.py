"""Preview: the run a sync would make now, computed without sending anything or touching its files.

The membership is shaped, hashed and diffed exactly as `run_sync` does, against the snapshot of
what the destination holds, with an interrupted run's rows counted as they would be sent again.
The destination is never called: the client only shapes identifiers as they would leave.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import dataclass, field, replace

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from audience_pipelines.contract import KEY, RECORD_ID, ROW_HASH, Destination, without_engine_columns
from audience_pipelines.engine.audiences import AudienceRegistry
from audience_pipelines.engine.diff import plan_diff
from audience_pipelines.engine.errors import ConfigError, MassRemovalBlocked, SyncAborted
from audience_pipelines.engine.held import conform, held_file, with_uncertain
from audience_pipelines.engine.operations import (
    guard_mass_removal, operations, platform_match_columns, with_old_record_ids,
)
from audience_pipelines.engine.passes import Planned, new_result
from audience_pipelines.engine.payload import Payload, build_payload
from audience_pipelines.engine.snapshot import Manifest, SnapshotStore
from audience_pipelines.engine.spec import REGISTRY_DIR, RUN_KIND_TEXT, RunOptions, SyncSpec
from audience_pipelines.engine.sync import run_sync

SAMPLE_ROWS = 5


@dataclass
class Preview:
    sync: str
    run_kind: str  # first_run | full_resend | diff
    destination_audience_id: str | None  # None: found or created by name when the sync runs
    target: str  # the sync's target, as configured
    counts: dict[str, int]  # add, remove, update, resend, unchanged, set_aside, not_sent_by_mode, ...
    guard: str  # what the mass-removal guard would say
    blocked: bool  # the guard would stop the run before anything is sent
    samples: dict[str, list[dict]] = field(default_factory=dict)  # operation -> rows as they would leave
    set_aside_sample: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        """The preview as a person reads it in a terminal or a run's metadata."""
        lines = [f"sync '{self.sync}': {RUN_KIND_TEXT[self.run_kind]} to "
                 + (f"audience {self.destination_audience_id}" if self.destination_audience_id
                    else f"the audience with {self.target} (found or created when the sync runs)"),
                 "  " + ", ".join(f"{k} {v:,}" for k, v in self.counts.items()),
                 f"  mass-removal guard: {self.guard}"]
        for name, rows in self.samples.items():
            if rows:
                lines.append(f"  {name} (first {len(rows)} as sent):")
                lines.extend(f"    {row}" for row in rows)
        if self.set_aside_sample:
            lines.append(f"  set aside (first {len(self.set_aside_sample)}): {self.set_aside_sample}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def preview_sync(spec: SyncSpec, members: pa.Table, destination: Destination, store: SnapshotStore,
                 options: RunOptions, sample_rows: int = SAMPLE_ROWS) -> Preview:
    """The run `run_sync` would make now: counts, the guard's verdict and sample rows, nothing sent."""
    payload = build_payload(spec.name, members, destination, spec.identifiers, spec.fields,
                            spec.default_region, spec.region_column)
    notes: list[str] = []
    manifest = store.manifest()
    audience_id = spec.target.id or (manifest.destination_audience_id if manifest else None)
    if spec.target.id and manifest and manifest.destination_audience_id not in (None, spec.target.id):
        notes.append(f"the target is now audience {spec.target.id}: the run sends it the full membership")
    old, audience_changed = _held(spec, store, manifest, audience_id, notes)
    if store.read_session() is not None:
        notes.append("an earlier run left a session open; the run settles it first (it may replace the audience)")
    old, _pending, plan, _first, full, replace, result = _plan(
        spec, payload, members, destination, store, options, old, audience_changed, False, audience_id, notes)
    blocked, guard = False, _guard_text(spec, len(plan.remove), old.num_rows, options)
    try:
        guard_mass_removal(spec, len(plan.remove), old.num_rows,
                           len(plan.add) + len(plan.update_new) + len(plan.unchanged_new), options, result)
    except MassRemovalBlocked as exc:
        blocked, guard = True, f"would block the run: {exc}"
    ops = operations(spec, plan, payload, old, full, result,
                     [] if replace else platform_match_columns(spec, destination), replace)
    counts = {op.name: len(op.positions) for op in ops if not op.implicit}
    for op in ops:
        if op.silent is not None and op.silent.any():  # leavers whose identifiers a member still sends
            counts[f"{op.name}_not_sent_shared"] = int(op.silent.sum())
    counts |= {"unchanged": result.unchanged, "set_aside": result.set_aside}
    if result.skipped:
        counts["not_sent_by_mode"] = result.skipped
    samples = {}
    for op in ops:
        if op.implicit or not len(op.positions):
            continue
        rows, _, _ = op.batch(0, min(sample_rows, len(op.positions)))
        samples[op.name] = without_engine_columns(rows).to_pylist()
    if replace:
        notes.append("a full resend replaces the audience in one session: departed members drop out when it closes")
    return Preview(spec.name, result.run_kind, audience_id, spec.target.describe(), counts, guard, blocked, samples,
                   result.set_aside_sample, notes)


def _guard_text(spec: SyncSpec, removes: int, held: int, options: RunOptions) -> str:
    if not spec.sends_removes:
        return f"not applicable (mode {spec.mode}, removal {spec.removal}: nothing is removed)"
    if options.allow_mass_removal:
        return f"allowed for this run ({removes:,} of {held:,} removed)"
    if held == 0:
        return "passes (the destination holds nobody yet)"
    return (f"passes: {removes:,} of {held:,} removed ({removes / held:.0%}; the guard stops a run above "
            f"{spec.max_removal_share:.0%})")


MAX_TEST_MEMBERS = 10  # a handful; every member's outcome is then known from the run's samples


@dataclass
class TestSyncResult:
    sync: str
    destination_audience_id: str
    outcomes: dict[str, str]  # key -> added | updated | resent | rejected: ... | skipped: ... | no answer yet
    committed: bool
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"sync '{self.sync}': test sync of {len(self.outcomes)} member(s) to audience "
                 f"{self.destination_audience_id} ("
                 + ("committed to the snapshot" if self.committed else "not committed: the next run sends them again")
                 + ")"]
        lines.extend(f"  {key}: {outcome}" for key, outcome in self.outcomes.items())
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def choose_test_members(spec: SyncSpec, members: pa.Table, destination: Destination, store: SnapshotStore,
                        options: RunOptions, keys: list[str] | None = None, first: int | None = None) -> list[str]:
    """The keys a test sync sends: those asked for (each must be a member), else the first `first` rows the
    preview would add or update."""
    if keys:
        member_keys = members[KEY].cast(pa.string())
        known = set(member_keys.filter(pc.is_in(member_keys, value_set=pa.array(keys, pa.string()))).to_pylist())
        missing = [k for k in keys if k not in known]
        if missing:
            raise ConfigError(f"sync '{spec.name}': test sync: {len(missing)} key(s) are not members of audience "
                              f"'{spec.audience}' ({members.num_rows:,} members): {missing[:10]}")
        chosen = list(dict.fromkeys(keys))
    else:
        want = first or 1
        preview = preview_sync(spec, members, destination, store, options, sample_rows=want)
        chosen = [row[KEY] for op in ("add", "update") for row in preview.samples.get(op, [])][:want]
        if not chosen:
            raise ConfigError(f"sync '{spec.name}': test sync: the preview adds and updates nobody; name the "
                              "members to send by key")
    if len(chosen) > MAX_TEST_MEMBERS:
        raise ConfigError(f"sync '{spec.name}': test sync sends at most {MAX_TEST_MEMBERS} members; "
                          f"{len(chosen)} were asked for")
    return chosen


def run_test_sync(spec: SyncSpec, members: pa.Table, destination: Destination, store: SnapshotStore,
                  options: RunOptions, keys: list[str], commit: bool = False) -> TestSyncResult:
    """Send these members (adds, or updates of members held) to the sync's real destination audience and
    report each one's outcome. Nothing is removed. The snapshot stays as it is unless `commit`, which
    records the members the platform accepted as held, as a run would."""
    caps = destination.capabilities
    if not caps.can_list_audiences and not spec.target.id:
        raise ConfigError(f"sync '{spec.name}': test sync is not available for destination type "
                          f"'{destination.type_name}': the platform cannot list its audiences, so a test could "
                          "not be told apart from the sync's own audience afterwards; preview the sync instead")
    if spec.target_column:
        raise ConfigError(f"sync '{spec.name}': test sync is not available for a target named by a column")
    chosen = members.filter(pc.is_in(members[KEY].cast(pa.string()), value_set=pa.array(keys, pa.string())))
    test_spec = replace(spec, mode="additive")  # never removes anybody
    with store.lock(options.run_id), tempfile.TemporaryDirectory(prefix="test-sync-") as tmp:
        if store.read_pending() is not None or store.read_session() is not None:
            raise ConfigError(f"sync '{spec.name}': an earlier run was interrupted and its rows are journalled; "
                              "run the sync to settle them before a test sync")
        manifest = store.manifest()
        held = store.read()
        scratch = SnapshotStore(tmp, spec.name)
        if manifest is not None:  # the scratch copy knows what is held, so held members are updated
            scratch.commit(held, replace(manifest))
        registry = options.registry or AudienceRegistry(store.root / REGISTRY_DIR)
        try:
            result = run_sync(test_spec, chosen, destination, scratch,
                              replace(options, full_resync=True, registry=registry))
        except SyncAborted as exc:
            raise SyncAborted(f"sync '{spec.name}': the test sync stopped: {exc.__cause__ or exc}. The snapshot is "
                              "unchanged; members the platform took before the stop are sent again by the next "
                              "run.", result=exc.result) from exc
        outcomes = _outcomes(keys, held, scratch, result)
        if commit:
            accepted = scratch.read()
            store.commit(accepted, Manifest(
                sync=spec.name, snapshot_file=None, run_id=options.run_id,
                committed_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), rows=0,
                destination_audience_id=result.destination_audience_id,
                # The sync's own configuration: its next run must not think it changed.
                config_fingerprint=manifest.config_fingerprint if manifest else spec.fingerprint(),
                counts={"added": result.added, "updated": result.updated, "resent": result.resent,
                        "failed": result.failed, "removed": 0}))
    return TestSyncResult(spec.name, result.destination_audience_id, outcomes, commit, result.notes)


def _outcomes(keys: list[str], held: pa.Table | None, scratch: SnapshotStore, result) -> dict[str, str]:
    rejected = {}
    if result.rejected_path:
        table = pq.read_table(result.rejected_path)
        rejected = dict(zip(table[KEY].to_pylist(), table["reason"].to_pylist()))
    skipped = {s["key"]: s["reason"] for s in result.skipped_sample}
    pending = scratch.read_pending()
    unknown = set(pending[KEY].to_pylist()) if pending is not None else set()
    before = dict(zip(held[KEY].to_pylist(), held[ROW_HASH].to_pylist())) if held is not None else {}
    after = scratch.read()
    now = dict(zip(after[KEY].to_pylist(), after[ROW_HASH].to_pylist())) if after is not None else {}
    outcomes = {}
    for key in keys:
        if key in rejected:
            outcomes[key] = f"rejected: {rejected[key]}"
        elif key in skipped:
            outcomes[key] = f"skipped: {skipped[key]}"
        elif key in unknown or key not in now:
            outcomes[key] = "no answer yet (the platform has not confirmed it)"
        elif key not in before:
            outcomes[key] = "added"
        else:
            outcomes[key] = "resent (unchanged)" if before[key] == now[key] else "updated"
    return outcomes


def _held(spec: SyncSpec, store: SnapshotStore, manifest: Manifest | None, audience_id: str | None,
          notes: list[str]) -> tuple[pa.Table | None, bool]:
    """As `held_file`, read whole."""
    held, changed = held_file(spec, store, manifest, audience_id, notes)
    return (held.file.read() if held is not None else None), changed


def _plan(spec: SyncSpec, payload: Payload, members: pa.Table, destination: Destination, store: SnapshotStore,
          options: RunOptions, old: pa.Table | None, audience_changed: bool, replace_again: bool,
          audience_id: str | None, notes: list[str]):
    """The diff of the membership against what is held (with rows of an interrupted run as unknown), and
    the kind of run it makes: (old, pending, plan, first run, full, replace, result)."""
    first_run = old is None
    schema = payload.table.schema
    old = conform(old, schema) if old is not None else schema.empty_table()
    pending = store.read_pending()
    if pending is not None and not audience_changed:
        pending = conform(pending, schema)
        old = with_uncertain(old, pending)
        notes.append(f"{pending.num_rows} rows from an interrupted run are sent again")
    else:
        pending = None
    plan = plan_diff(payload.table, old)
    if RECORD_ID in schema.names:  # members already held keep the platform's record id
        payload.table = with_old_record_ids(payload.table, old, plan)
    full = options.full_resync or replace_again
    replace = (full and not first_run and destination.capabilities.replaces_audience and spec.mode == "mirror"
               and spec.sends_removes and payload.table.num_rows > 0)
    planned = Planned(held=old.num_rows, set_aside=payload.set_aside, set_aside_sample=payload.set_aside_samples,
                      invalid=payload.invalid_identifiers, invalid_set_aside=payload.invalid_identifiers_set_aside)
    result = new_result(spec, options, first_run, full, audience_id, members.num_rows, planned, notes, replace)
    return old, pending, plan, first_run, full, replace, result
