"""Runs over key-hash partitions: the snapshot is clustered by partition, a snapshot from before
partitions is taken over without a resend, and a run killed between two partitions' sends loses
nothing (a real kill -9 of a process syncing into a DuckDB table)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from audience_pipelines.contract import Target
from audience_pipelines.engine import RunOptions, SnapshotStore, SyncSpec, run_sync
from audience_pipelines.engine.hashing import key_hash
from audience_pipelines.engine.partitions import ClusteredFile, partition_bits, partition_of, write_clustered
from audience_pipelines_tests.memory_destination import MemoryDestination

SPEC = SyncSpec(name="p", audience="a", destination="mem", target=Target(name="aud"),
                identifiers={"email": "email"}, fields={"plan": "plan"})


def members(lo: int, hi: int, plan: str = "gold", changed: range = range(0)) -> pa.Table:
    keys = [f"k{i:05d}" for i in range(lo, hi)]
    return pa.table({"key": keys, "email": [f"p{i}@example.com" for i in range(lo, hi)],
                     "plan": ["silver" if i in changed else plan for i in range(lo, hi)]})


def clustered_at(path, bits: int) -> bool:
    """Every row group of the file holds one partition, in partition order."""
    f = ClusteredFile(path)
    parts = [tuple(partition_of(np.array(span, dtype=np.uint64), bits)) for span in f._spans]
    return all(lo == hi for lo, hi in parts) and [lo for lo, _ in parts] == sorted(lo for lo, _ in parts)


def test_a_snapshot_is_clustered_by_partition_and_reads_back_whole(tmp_path):
    store = SnapshotStore(tmp_path, "p")
    dest = MemoryDestination(batch_rows=500)
    run_sync(SPEC, members(0, 5000), dest, store, RunOptions(run_id="r1", partition_rows=600))
    bits = partition_bits(5000, 600)
    assert bits == 4 and clustered_at(store.snapshot_path(), bits)
    f = store.snapshot_file()
    keys = [k for p in range(16) for k in f.read(p, bits, ["key"])["key"].to_pylist()]
    assert sorted(keys) == [f"k{i:05d}" for i in range(5000)]
    assert set(dest.members("aud")) == set(keys)


def test_a_snapshot_from_before_partitions_is_taken_over_without_a_resend(tmp_path):
    store = SnapshotStore(tmp_path, "p")
    dest = MemoryDestination(batch_rows=500)
    run_sync(SPEC, members(0, 3000), dest, store, RunOptions(run_id="r1"))
    # Rewrite it as version 1 wrote it: one file, rows in any order, row groups spanning every partition.
    path = store.snapshot_path()
    old = pq.read_table(path)
    pq.write_table(old.take(np.random.default_rng(7).permutation(old.num_rows)), path, row_group_size=700)
    manifest = json.loads(store.manifest_path.read_text())
    store.manifest_path.write_text(json.dumps({**manifest, "format_version": 1}))
    sent_before = dest.batches

    result = run_sync(SPEC, members(100, 3100, changed=range(500, 520)), dest, store,
                      RunOptions(run_id="r2", partition_rows=400))
    assert (result.added, result.removed, result.updated, result.resent) == (100, 100, 20, 0)
    assert result.unchanged == 2880 and result.run_kind == "diff"
    # At most a remove, an update and an add batch per partition: not the whole audience again.
    assert dest.batches - sent_before <= 3 * 8
    assert clustered_at(store.snapshot_path(), partition_bits(3000, 400))
    assert store.manifest().format_version == 2 and store.manifest().rows == 3000
    assert dest.members("aud") == {r["key"]: {"email": r["email"], "plan": r["plan"]}
                                   for r in members(100, 3100, changed=range(500, 520)).to_pylist()}


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    import pyarrow.parquet as pq
    from audience_pipelines.contract import Target
    from audience_pipelines.destinations.sql_table import SqlTableSettings
    from audience_pipelines.destinations.sql_table.client import SqlTableDestination
    from audience_pipelines.engine import RunOptions, SnapshotStore, SyncSpec, run_sync
    from audience_pipelines.engine.passes import Sender

    url, root, members_path, run_id, kill_before = sys.argv[1:6]
    kill_before = int(kill_before)
    send, sessions = Sender.send, []

    def send_then_die(self, ops, last):
        sessions.append(1)
        if len(sessions) == kill_before:  # every earlier partition was sent and answered
            os.kill(os.getpid(), signal.SIGKILL)
        return send(self, ops, last)

    Sender.send = send_then_die
    spec = SyncSpec(name="crm", audience="a", destination="crm", target=Target(name="vip"),
                    identifiers={"email": "email"}, fields={"plan": "plan"}, batch_size=100)
    dest = SqlTableDestination(SqlTableSettings(url=url, table="audience_members"))
    run_sync(spec, pq.read_table(members_path), dest, SnapshotStore(root, "crm"),
             RunOptions(run_id=run_id, partition_rows=250))
""")


def killed_run(url: str, root, table: pa.Table, tmp_path, run_id: str, kill_before: int) -> int:
    path = tmp_path / f"{run_id}.parquet"
    pq.write_table(table, path)
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, url, str(root), str(path), run_id, str(kill_before)],
                          capture_output=True, text=True, timeout=120, env={**os.environ})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    return proc.returncode


def table_rows(url: str) -> list[tuple[str, str]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return sorted(conn.execute(sa.text("select key, plan from audience_members where audience = 'vip'")))
    finally:
        engine.dispose()


def test_a_run_killed_between_two_partitions_loses_nothing(tmp_path):
    from audience_pipelines.destinations.sql_table import SqlTableSettings
    from audience_pipelines.destinations.sql_table.client import SqlTableDestination

    url = f"duckdb:///{tmp_path / 'crm.duckdb'}"
    root = tmp_path / "syncs"
    store = SnapshotStore(root, "crm")
    spec = SyncSpec(name="crm", audience="a", destination="crm", target=Target(name="vip"),
                    identifiers={"email": "email"}, fields={"plan": "plan"}, batch_size=100)

    def rerun(table: pa.Table, run_id: str):
        dest = SqlTableDestination(SqlTableSettings(url=url, table="audience_members"))
        try:
            return run_sync(spec, table, dest, store, RunOptions(run_id=run_id, partition_rows=250))
        finally:
            dest.close()

    # A first run dies after 3 of its 8 partitions were sent: nothing is committed, all is journalled.
    first = members(0, 2000)
    killed_run(url, root, first, tmp_path, "r1", kill_before=4)
    assert store.manifest() is None and store.read_pending().num_rows == 2000
    assert 0 < len(table_rows(url)) < 2000  # some partitions landed before the kill
    assert [p.name for p in store.dir.glob(".payload-*")] == [".payload-r1.parquet"]  # staged, left by the kill
    result = rerun(first, "r2")
    assert not list(store.dir.glob("*payload-*"))
    assert result.failed == 0 and table_rows(url) == [(f"k{i:05d}", "gold") for i in range(2000)]
    assert store.read_pending() is None and store.manifest().rows == 2000

    # An incremental run (200 leave, 200 join, 100 change) dies between partitions 5 and 6.
    second = members(200, 2200, changed=range(1000, 1100))
    killed_run(url, root, second, tmp_path, "r3", kill_before=6)
    assert store.manifest().run_id == "r2"  # the last commit stands whole
    assert store.read_pending().num_rows == 500
    result = rerun(second, "r4")
    assert result.failed == 0
    assert table_rows(url) == [(f"k{i:05d}", "silver" if i in range(1000, 1100) else "gold")
                               for i in range(200, 2200)]
    assert store.read_pending() is None
    snap = store.read()
    assert sorted(zip(snap["key"].to_pylist(), snap["plan"].to_pylist())) == table_rows(url)
    # What the killed run had sent was sent again (at least once), and nothing beyond the changes.
    assert result.added + result.removed + result.updated <= 500


def test_a_membership_file_is_read_one_partition_at_a_time(tmp_path, monkeypatch):
    from audience_pipelines.engine import partitions
    from audience_pipelines.engine.hashing import key_hash
    from audience_pipelines.engine.membership import write_membership

    table = members(0, 4000)
    path = write_membership(table, tmp_path / "members.parquet")
    f = ClusteredFile(path)
    assert f.rows == 4000 and f.schema.names == ["key", "email", "plan", "key_hash"]
    assert f.read(0, 0, ["key_hash"])["key_hash"].to_pylist() != []
    reads = []
    real_read = ClusteredFile.read

    def counted(self, partition, bits, columns=None):
        out = real_read(self, partition, bits, columns)
        if self.path == path:
            reads.append(out.num_rows)
        return out

    monkeypatch.setattr(partitions.ClusteredFile, "read", counted)
    store = SnapshotStore(tmp_path / "syncs", "p")
    dest = MemoryDestination(batch_rows=500)
    result = run_sync(SPEC, f, dest, store, RunOptions(run_id="r1", partition_rows=500))
    assert result.added == 4000 and set(dest.members("aud")) == set(table["key"].to_pylist())
    assert len(reads) == 8 and max(reads) < 4000  # 8 partitions, never the whole file at once
    snap = store.read()
    assert snap["key_hash"].to_pylist() == key_hash(snap["key"]).tolist()  # the file's key hash, reused


def test_a_run_reads_whole_held_rows_only_for_the_members_it_removes_or_updates(tmp_path, monkeypatch):
    from audience_pipelines.engine import partitions

    store = SnapshotStore(tmp_path, "p")
    dest = MemoryDestination(batch_rows=500)
    run_sync(SPEC, members(0, 3000), dest, store, RunOptions(run_id="r1", partition_rows=400))
    snapshot = store.snapshot_path()
    wide_rows, took = [], []
    real_read, real_take = ClusteredFile.read, ClusteredFile.take

    def read(self, partition, bits, columns=None):
        out = real_read(self, partition, bits, columns)
        if self.path == snapshot and set(out.column_names) - {"key", "key_hash", "row_hash"}:
            wide_rows.append(out.num_rows)
        return out

    def take(self, partition, bits, positions, columns=None):
        out = real_take(self, partition, bits, positions, columns)
        if self.path == snapshot:
            took.append(out.num_rows)
        return out

    monkeypatch.setattr(partitions.ClusteredFile, "read", read)
    monkeypatch.setattr(partitions.ClusteredFile, "take", take)
    # 100 leave, 20 change their plan, 100 join, 2,880 stay as they were, over 8 partitions.
    result = run_sync(SPEC, members(100, 3100, changed=range(500, 520)), dest, store,
                      RunOptions(run_id="r2", partition_rows=400))
    assert (result.added, result.removed, result.updated, result.unchanged) == (100, 100, 20, 2880)
    assert wide_rows == [] and sum(took) == 2 * 120  # each pass: the 100 leavers and the 20 changed rows
    monkeypatch.undo()
    # The next snapshot still holds every member whole: unchanged ones came from the payload.
    held = store.read().sort_by("key")
    assert held.select(["key", "email", "plan"]).to_pylist() == members(100, 3100, changed=range(500, 520)).to_pylist()
    assert dest.members("aud") == {r["key"]: {"email": r["email"], "plan": r["plan"]}
                                   for r in members(100, 3100, changed=range(500, 520)).to_pylist()}


def test_batches_are_numbered_across_partitions_and_only_the_runs_last_is_last(tmp_path):
    import pyarrow.csv as pacsv

    from audience_pipelines.destinations.file import FileSettings
    from audience_pipelines.destinations.file.client import FileDestination

    spec = SyncSpec(name="f", audience="a", destination="files", target=Target(name="vip"), batch_size=100)
    dest = FileDestination(FileSettings(path=str(tmp_path / "out"), format="csv"))
    seen = []
    send = dest.add

    def add(audience_id, rows, ctx):
        seen.append((ctx.seq, ctx.last, ctx.request_id))
        return send(audience_id, rows, ctx)

    dest.add = add
    run_sync(spec, members(0, 2000), dest, SnapshotStore(tmp_path / "syncs", "f"),
             RunOptions(run_id="r1", partition_rows=300))
    seqs = sorted(s for s, _, _ in seen)
    assert seqs == list(range(1, len(seen) + 1)) and len(seen) > 8  # 8 partitions, batches of at most 100
    assert [s for s, last, _ in seen if last] == [len(seen)]
    assert len({r for _, _, r in seen}) == len(seen)  # idempotency keys never repeat within a run
    written = pa.concat_tables([pacsv.read_csv(p) for p in (tmp_path / "out" / "vip" / "r1").glob("add-*.csv")])
    assert sorted(written["key"].to_pylist()) == [f"k{i:05d}" for i in range(2000)]


def test_a_job_still_running_holds_the_later_partitions_for_the_next_run(tmp_path):
    from audience_pipelines_tests.memory_destination import MemoryJobDestination

    dest = MemoryJobDestination(batch_rows=100)
    dest.jobs_left_running = 1
    store = SnapshotStore(tmp_path, "p")
    table = members(0, 1000)
    first = run_sync(SPEC, table, dest, store, RunOptions(run_id="r1", partition_rows=250))
    assert first.added == 0 and first.failed == 0 and dest.audiences[first.destination_audience_id] == {}
    assert any("still running" in n and "then sends the 3 partition(s) after it" in n for n in first.notes)
    assert store.read_session() is not None and store.read_pending().num_rows == 1000
    second = run_sync(SPEC, table, dest, store, RunOptions(run_id="r2", partition_rows=250))
    assert second.failed == 0 and any("ran: SUCCESS" in n for n in second.notes)
    assert dest.members(second.destination_audience_id) == {
        r["key"]: {"email": r["email"], "plan": r["plan"]} for r in table.to_pylist()}
    assert store.read_pending() is None and store.read_session() is None and store.manifest().rows == 1000


def test_a_clustered_file_reads_what_it_opened_from_any_thread_after_the_path_is_replaced(tmp_path):
    # Each thread gets its own Parquet reader (one shared reader fails under concurrent reads), but
    # all of them read the file opened first: a membership re-materialized meanwhile is not mixed in.
    def members(prefix: str, n: int) -> pa.Table:
        keys = pa.array([f"{prefix}{i:05d}" for i in range(n)])
        return pa.table({"key": keys, "key_hash": pa.array(key_hash(keys)), "n": pa.array(np.arange(n))})

    path = write_clustered(members("old", 5_000), tmp_path / "members.parquet", 2)
    opened = ClusteredFile(path)
    want = [opened.read(p, 2) for p in range(4)]
    os.replace(write_clustered(members("new", 7_000), tmp_path / "next.parquet", 2), path)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda p: opened.read(p, 2), [0, 1, 2, 3] * 3))
    assert [t.to_pylist() for t in got] == [t.to_pylist() for t in want] * 3
    assert sum(t.num_rows for t in want) == 5_000
