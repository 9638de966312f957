"""Engine behaviour without Dagster: inputs, locking, snapshots, files, hashing."""

from __future__ import annotations

import csv
import json
import multiprocessing

import numpy as np
import pyarrow as pa
import pytest

from audience_pipelines.contract import Target
from audience_pipelines.destinations.file import FileSettings
from audience_pipelines.destinations.file.client import FileDestination
from audience_pipelines.engine import (
    RunOptions, SnapshotStore, SyncAlreadyRunning, SyncInputError, SyncSpec, build_membership, run_sync,
)
from audience_pipelines.engine.diff import plan_diff
from audience_pipelines.engine.hashing import hash_strings, key_hash, row_hash
from audience_pipelines_tests.memory_destination import MemoryDestination

SPEC = SyncSpec(name="crm_sync", audience="vip", destination="mem", target=Target(name="vip"),
                identifiers={"email": "email", "phone": "phone"}, fields={"plan": "plan"}, default_region="US")


def members(n: int = 4, **overrides) -> pa.Table:
    cols = {
        "key": [f"c{i}" for i in range(n)],
        "email": [f" User{i}@Example.com " for i in range(n)],
        "phone": ["(415) 555-2671"] * n,
        "plan": ["pro"] * n,
    }
    cols.update(overrides)
    return pa.table(cols)


def test_missing_column_names_sync_column_and_rows(tmp_path):
    with pytest.raises(SyncInputError) as info:
        run_sync(SPEC, members().drop_columns(["plan"]), MemoryDestination(), SnapshotStore(tmp_path, "crm_sync"),
                 RunOptions(run_id="r1"))
    message = str(info.value)
    assert "sync 'crm_sync'" in message and "'plan'" in message and "4 rows" in message
    assert SnapshotStore(tmp_path, "crm_sync").manifest() is None


def test_malformed_identifiers_are_counted_and_normalised(tmp_path):
    table = members(4, email=[" A@X.com", "not-an-email", None, "b@y.org"], phone=["415 555 2671", "12", None, "n/a"])
    dest = MemoryDestination(batch_rows=10)
    result = run_sync(SPEC, table, dest, SnapshotStore(tmp_path, "crm_sync"), RunOptions(run_id="r1"))
    assert result.invalid_identifiers == {"email": 1, "phone": 2}
    assert dest.members("vip") == {
        "c0": {"email": "a@x.com", "phone": "+14155552671", "plan": "pro"},
        "c1": {"email": None, "phone": None, "plan": "pro"},
        "c2": {"email": None, "phone": None, "plan": "pro"},
        "c3": {"email": "b@y.org", "phone": None, "plan": "pro"},
    }


def test_null_and_duplicate_keys_are_set_aside_with_counts():
    rows = pa.table({"customer_id": ["a", None, "b", "b", "c", " "], "email": list("uvwxyz")})
    m = build_membership("vip", rows, "customer_id")
    assert m.table["key"].to_pylist() == ["a", "c"]
    assert (m.null_keys, m.duplicate_keys, m.duplicate_rows) == (2, 1, 2)
    assert sorted(m.set_aside["reason"].to_pylist()) == ["duplicate key", "duplicate key", "null key", "null key"]


def _hold_lock(root, ready, release):
    with SnapshotStore(root, "crm_sync").lock("holder-run"):
        ready.set()
        release.wait(20)


def test_a_second_concurrent_run_fails_clearly(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(20)
        dest = MemoryDestination()
        with pytest.raises(SyncAlreadyRunning) as info:
            run_sync(SPEC, members(), dest, SnapshotStore(tmp_path, "crm_sync"), RunOptions(run_id="second"))
        assert "sync 'crm_sync' is already running" in str(info.value) and "holder-run" in str(info.value)
        assert dest.batches == 0
    finally:
        release.set()
        holder.join(20)
    result = run_sync(SPEC, members(), MemoryDestination(), SnapshotStore(tmp_path, "crm_sync"), RunOptions(run_id="third"))
    assert result.added == 4


def test_manifest_and_snapshot_record_the_run(tmp_path):
    store = SnapshotStore(tmp_path, "crm_sync")
    run_sync(SPEC, members(), MemoryDestination(), store, RunOptions(run_id="r1"))
    manifest = json.loads(store.manifest_path.read_text())
    assert manifest["run_id"] == "r1" and manifest["rows"] == 4 and manifest["counts"]["added"] == 4
    snap = store.read()
    assert set(snap.column_names) >= {"key", "key_hash", "row_hash", "email", "phone", "plan"}
    assert [p.name for p in tmp_path.joinpath("crm_sync").iterdir() if p.suffix == ".parquet"] == [manifest["snapshot_file"]]
    run_sync(SPEC, members(3), MemoryDestination(), store, RunOptions(run_id="r2"))
    parquet = [p.name for p in tmp_path.joinpath("crm_sync").iterdir() if p.suffix == ".parquet"]
    assert parquet == ["snapshot-r2.parquet"]  # the previous file is gone once the manifest moved on


def test_file_destination_writes_each_operation(tmp_path):
    dest = FileDestination(FileSettings(path=str(tmp_path / "out"), format="csv"))
    store = SnapshotStore(tmp_path / "snap", "crm_sync")
    run_sync(SPEC, members(3), dest, store, RunOptions(run_id="r1"))
    run_sync(SPEC, members(3, plan=["pro", "free", "pro"]).slice(1), dest, store,
             RunOptions(run_id="r2", allow_mass_removal=True))
    folder = tmp_path / "out" / "vip"
    read = lambda p: list(csv.DictReader(open(p)))  # noqa: E731
    assert [r["key"] for r in read(folder / "r1" / "add-000001.csv")] == ["c0", "c1", "c2"]
    assert read(folder / "r2" / "remove-000001.csv")[0]["key"] == "c0"
    update = read(folder / "r2" / "update-000002.csv")
    assert update == [{"key": "c1", "email": "user1@example.com", "phone": "+14155552671", "plan": "free"}]


def test_string_hash_is_stable_across_chunking_and_lengths():
    values = ["", "a", "abcdefgh", "abcdefghi", "é", "x" * 300, None, "user_000000001"]
    whole = hash_strings(pa.array(values))
    parts = np.concatenate([hash_strings(pa.array(values[:3])), hash_strings(pa.array(values[3:]))])
    chunked = hash_strings(pa.chunked_array([values[:5], values[5:]]))
    assert (whole == parts).all() and (whole == chunked).all()
    assert len(set(whole.tolist())) == len(values)
    dictionary = hash_strings(pa.array(values).dictionary_encode())
    assert (dictionary == whole).all()


def test_key_and_row_hashes_keep_the_values_snapshots_already_hold():
    # Snapshots and membership files store these hashes: a change to how they are computed would
    # resend every member and move members between partitions. The digests are of today's values.
    import datetime as dt
    import hashlib

    n = 5_000
    keys = pa.array([None if i % 501 == 0 else ("é" if i % 5 == 0 else "k") + str(i * 7919) * (i % 9)
                     + ("x" * 300 if i % 97 == 0 else "") for i in range(n)])  # long ones: the ragged path
    columns = [pa.array([f"user{i}@example.com" if i % 13 else None for i in range(n)]),
               pa.array([["free", "pro", None][i % 3] for i in range(n)]).dictionary_encode(),
               pa.array([float(i) * 1.5 if i % 7 else (None if i % 2 else -0.0) for i in range(n)]),
               pa.array([i if i % 11 else None for i in range(n)], pa.int64()),
               pa.array([dt.date(2020, 1, 1) + dt.timedelta(days=i % 900) for i in range(n)])]

    def digest(hashes: np.ndarray) -> str:
        return hashlib.sha256(hashes.astype("<u8").tobytes()).hexdigest()[:32]

    assert digest(key_hash(keys)) == "c4160878e064f1ab72277ead06815bcb"
    assert digest(row_hash(columns, keys)) == "2910a5496fcd88e18b235ec084f6b02c"


def test_diff_classifies_and_survives_key_hash_collisions():
    new = pa.table({"key": ["a", "b", "c"], "v": [1, 2, 30]})
    old = pa.table({"key": ["b", "c", "d"], "v": [2, 3, 4]})

    def hashed(t, kh):
        return t.append_column("key_hash", pa.array(kh, pa.uint64())).append_column(
            "row_hash", pa.array(row_hash([t["v"]], t["key"]), pa.uint64()))

    plan = plan_diff(hashed(new, key_hash(new["key"])), hashed(old, key_hash(old["key"])))
    assert plan.counts == {"adds": 1, "updates": 1, "unchanged": 1, "removes": 1}
    # Force every key onto one hash: the diff must fall back to the string keys and agree.
    same = np.zeros(3, np.uint64)
    collided = plan_diff(hashed(new, same), hashed(old, same))
    assert collided.counts == plan.counts
    assert list(collided.add) == [0] and list(collided.remove) == [2]
    # Two different members with colliding key hashes and equal fields are still told apart.
    one_new, one_old = pa.table({"key": ["x"], "v": [7]}), pa.table({"key": ["y"], "v": [7]})
    pair = plan_diff(hashed(one_new, np.zeros(1, np.uint64)), hashed(one_old, np.zeros(1, np.uint64)))
    assert pair.counts == {"adds": 1, "updates": 0, "unchanged": 0, "removes": 1}


def test_dates_and_times_hash():
    import datetime as dt
    cols = [pa.array([dt.date(2026, 1, 1), None]), pa.array([dt.time(1, 2), None], pa.time32("s")),
            pa.array([dt.datetime(2026, 1, 1), None])]
    hashes = row_hash(cols, pa.array(["a", "b"]))
    assert len(set(hashes.tolist())) == 2


def test_a_new_target_audience_gets_everyone_and_the_old_one_is_left_alone(tmp_path):
    dest, store = MemoryDestination(), SnapshotStore(tmp_path, "crm_sync")
    run_sync(SPEC, members(3), dest, store, RunOptions(run_id="r1"))
    moved = SyncSpec(**{**SPEC.__dict__, "target": Target(name="vip_v2")})
    result = run_sync(moved, members(2), dest, store, RunOptions(run_id="r2"))
    assert (result.added, result.removed, result.run_kind) == (2, 0, "first_run")
    assert any("destination audience changed from vip to vip_v2" in n for n in result.notes)
    assert set(dest.members("vip")) == {"c0", "c1", "c2"} and set(dest.members("vip_v2")) == {"c0", "c1"}


def test_rows_counted_but_not_named_are_found_by_halving(tmp_path):
    dest, store = MemoryDestination(batch_rows=16), SnapshotStore(tmp_path, "crm_sync")
    dest.count_only = True
    dest.reject = {"c3", "c9", "c10"}
    result = run_sync(SPEC, members(16), dest, store, RunOptions(run_id="r1"))
    assert (result.added, result.failed) == (13, 3)
    assert {e["key"] for e in result.errors_sample} == {"c3", "c9", "c10"}
    assert all(e["reason"] == "counted, not named" for e in result.errors_sample)
    assert set(dest.members("vip")) == {f"c{i}" for i in range(16)} - dest.reject
    assert set(store.read()["key"].to_pylist()) == set(dest.members("vip"))
    assert dest.requests[0] == "crm_sync:r1:1" and "crm_sync:r1:1:1.2" in dest.requests
    assert len(set(dest.requests)) == len(dest.requests)  # every part has its own id
    assert result.destination_stats == {"isolation_requests": len(dest.requests) - 1}


def test_rows_left_unnamed_when_isolation_runs_out_are_retried_next_run(tmp_path, monkeypatch):
    from audience_pipelines.engine import dispatch

    monkeypatch.setattr(dispatch, "MAX_ISOLATION_REQUESTS", 2)
    dest, store = MemoryDestination(batch_rows=16), SnapshotStore(tmp_path, "crm_sync")
    dest.count_only = True
    dest.reject = {"c3", "c12"}
    first = run_sync(SPEC, members(16), dest, store, RunOptions(run_id="r1"))
    # One split: each half still holds an unnamed row, so all 16 stay uncommitted.
    assert (first.added, first.failed) == (0, 16) and len(dest.requests) == 3
    assert "retried next run" in first.errors_sample[0]["reason"]
    assert store.read().num_rows == 0
    dest.reject = set()
    second = run_sync(SPEC, members(16), dest, store, RunOptions(run_id="r2"))
    assert (second.added, second.failed) == (16, 0)
    assert set(store.read()["key"].to_pylist()) == set(dest.members("vip")) == {f"c{i}" for i in range(16)}
