"""Property test of the engine: many runs of random audiences, rejections and crashes, in every mode."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audience_pipelines.contract import Target
from audience_pipelines.engine import RunOptions, SnapshotStore, SyncSpec, run_sync
from audience_pipelines_tests.memory_destination import Crash, MemoryDestination, MemoryJobDestination

KEYS = [f"k{i}" for i in range(12)]
PLANS = ["free", "pro", None]

audiences = st.dictionaries(
    st.sampled_from(KEYS),
    st.tuples(st.sampled_from(["a@x.com", "b@x.com", "c@y.org"]), st.sampled_from(PLANS)),
    max_size=len(KEYS),
)
runs = st.lists(
    st.tuples(
        audiences,
        st.sampled_from(["mirror", "additive", "subtractive"]),
        st.sets(st.sampled_from(KEYS), max_size=4),  # keys the destination rejects this run
        # where the process dies: a batch, after the job ran (job destinations), or at commit
        st.one_of(st.none(), st.integers(1, 6), st.just("after job"), st.just("commit")),
        st.booleans(),  # full resend
    ),
    min_size=1,
    max_size=8,
)


def table(members: dict) -> pa.Table:
    keys = sorted(members)
    return pa.table({
        "key": pa.array(keys, pa.string()),
        "email": pa.array([members[k][0] for k in keys], pa.string()),
        "plan": pa.array([members[k][1] for k in keys], pa.string()),
    })


def sent(members: dict) -> dict:
    return {k: {"email": e, "plan": p} for k, (e, p) in members.items()}


def snapshot_state(store: SnapshotStore) -> dict:
    snap = store.read()
    if snap is None:
        return {}
    return {r["key"]: {"email": r["email"], "plan": r["plan"]} for r in snap.select(["key", "email", "plan"]).to_pylist()}


def unknown_keys(store: SnapshotStore) -> set:
    keys = set()
    pending = store.read_pending()
    if pending is not None:
        keys |= set(pending["key"].to_pylist())
    snap = store.read()
    if snap is not None:
        keys |= {r["key"] for r in snap.select(["key", "row_hash"]).to_pylist() if r["row_hash"] == 0}
    return keys


def promised(mode: str, before: dict, expected: dict, rejected: set) -> dict:
    """The destination's state after one run from `before` to the audience `expected`."""
    accepted = {k: v for k, v in expected.items() if k not in rejected}
    if mode == "mirror":  # adds, updates and removes
        return {**accepted, **{k: v for k, v in before.items() if k in rejected}}
    if mode == "additive":  # adds and updates, never removes
        return {**before, **accepted}
    # subtractive: removes departed members, never adds or updates
    return {k: v for k, v in before.items() if k in expected or k in rejected}


def run(spec, members, dest, store, run_id, full=False, partition_rows=None):
    return run_sync(spec, table(members), dest, store,
                    RunOptions(run_id=run_id, full_resync=full, allow_mass_removal=True, partition_rows=partition_rows))


def audience_id(dest) -> str:
    return "aud" if isinstance(dest, MemoryDestination) else next(iter(dest.audiences), "none")


# Per batch (every row answered at once) and per job (rows pending until the job runs at the
# session's finish, the job state journalled, a death after the job ran settled next run). With
# partitions of 2 members, a run of up to 12 goes over 8 key-hash partitions, one session each,
# and a crash may fall between two partitions' sends.
@pytest.mark.parametrize("partition_rows", [None, 2], ids=["one partition", "8 partitions"])
@pytest.mark.parametrize("flavor", [MemoryDestination, MemoryJobDestination])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=runs)
def test_destination_matches_what_each_mode_promises(tmp_path_factory, flavor, partition_rows, runs):
    root = tmp_path_factory.mktemp("snap")
    dest = flavor(batch_rows=3)
    store = SnapshotStore(root / "syncs", "prop")
    real_commit = store.commit
    held = {}
    for i, (members, mode, reject, crash, full) in enumerate(runs):
        spec = SyncSpec(name="prop", audience="a", destination="mem", target=Target(name="aud"), mode=mode,
                        identifiers={"email": "email"}, fields={"plan": "plan"})
        before = dict(dest.members(audience_id(dest)))
        dest.reject = set(reject)
        dest.crash_at_batch = crash if isinstance(crash, int) else None
        if isinstance(dest, MemoryJobDestination):
            dest.crash_after_job = crash == "after job"
        store.commit = real_commit
        if crash == "commit":
            def die(*a, **k):
                raise Crash("crash before commit")
            store.commit = die
        try:
            result = run(spec, members, dest, store, f"r{i}", full, partition_rows)
        except Crash:
            continue  # at-least-once: nothing to check until a run completes
        held = dest.members(audience_id(dest))
        # The snapshot is exactly what the destination holds after every completed run,
        # except rows whose fate is still unknown (journalled, or marked with row hash 0).
        unknown = unknown_keys(store)
        snap = snapshot_state(store)
        assert {k: v for k, v in snap.items() if k not in unknown} == {k: v for k, v in held.items() if k not in unknown}
        # Exactly what the destination holds after the run, as the mode promises it; a row the
        # destination rejected keeps the state it had before the run (held or not, old values).
        expected = sent(members)
        assert held == promised(mode, before, expected, reject)
        # Every rejected row the run had to send failed (all of the audience on a full resend).
        must_send = {k for k in reject if promised(mode, before, expected, set()).get(k) != before.get(k)}
        if full and mode != "subtractive":
            must_send |= reject & set(expected)
        assert len(must_send) <= result.failed <= len(reject)
    # A final clean mirror run converges: every rejected or interrupted row was retried.
    final = runs[-1][0]
    dest.reject, dest.crash_at_batch, store.commit = set(), None, real_commit
    dest.crash_after_job = False
    spec = SyncSpec(name="prop", audience="a", destination="mem", target=Target(name="aud"), mode="mirror",
                    identifiers={"email": "email"}, fields={"plan": "plan"})
    result = run(spec, final, dest, store, "final", partition_rows=partition_rows)
    assert result.failed == 0
    assert dest.members(audience_id(dest)) == sent(final)
    assert snapshot_state(store) == sent(final)
    assert store.read_pending() is None and store.read_session() is None
    # A name the platform cannot list resolved through the registry: one audience, created once.
    assert len(dest.audiences) == 1
    # And a second clean run sends nothing at all.
    again = run(spec, final, dest, store, "final-2")
    assert (again.added, again.removed, again.updated) == (0, 0, 0)
