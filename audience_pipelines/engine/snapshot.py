"""Per-sync snapshot of what the destination holds, and the lock around a run.

Layout under `<root>/<sync>/`:
  manifest.json          the commit point: names the current snapshot file
  snapshot-<run>.parquet what was accepted, as sent, with key_hash and row_hash, clustered by
                         key-hash partition (engine.partitions) so a run reads one partition at a time
  pending.parquet        rows sent (or about to be) whose outcome is not known yet
  .payload-<run>.parquet a run's shaped payload, staged between its two passes (large audiences)
  session.json           the state of a destination session (a job, a replace) not yet finished
  runs/<run>/rejected.parquet
  .lock                  held for the whole run (flock)
A new snapshot file is written and fsynced first, then the manifest is
replaced atomically, so a crash at any point leaves the previous state whole.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from audience_pipelines.engine.errors import SyncAlreadyRunning
from audience_pipelines.engine.partitions import ClusteredFile, ClusteredWriter, partition_bits, write_clustered

# 2: snapshot files clustered by key-hash partition. A version 1 file (not clustered) still reads,
# partition by partition, and the next commit rewrites it clustered: no resend is needed.
FORMAT_VERSION = 2
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass
class Manifest:
    sync: str
    snapshot_file: str | None
    run_id: str
    committed_at: str
    rows: int
    destination_audience_id: str | None
    config_fingerprint: str
    counts: dict[str, int] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class SnapshotStore:
    def __init__(self, root: str | Path, sync: str):
        self.sync = sync
        self.root = Path(root)
        self.dir = self.root / _SAFE.sub("_", sync)

    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.json"

    def manifest(self) -> Manifest | None:
        try:
            raw = json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            return None
        return Manifest(**raw)

    def snapshot_path(self) -> Path | None:
        m = self.manifest()
        return self.dir / m.snapshot_file if m and m.snapshot_file else None

    def read(self, columns: list[str] | None = None, schema: pa.Schema | None = None) -> pa.Table | None:
        """The committed snapshot, or None before the first commit."""
        path = self.snapshot_path()
        if path is None:
            return None
        table = pq.read_table(path, columns=columns)
        return table.cast(schema) if schema is not None else table

    def schema(self) -> pa.Schema | None:
        path = self.snapshot_path()
        return pq.read_schema(path) if path else None

    def snapshot_file(self) -> ClusteredFile | None:
        path = self.snapshot_path()
        return ClusteredFile(path) if path else None

    def snapshot_writer(self, run_id: str, schema: pa.Schema, bits: int) -> ClusteredWriter:
        """A new snapshot written partition by partition; `commit(writer, ...)` makes it current."""
        return ClusteredWriter(self.dir / f"snapshot-{_SAFE.sub('_', run_id)}.parquet", schema, bits)

    def commit(self, table: pa.Table | ClusteredWriter | None, manifest: Manifest) -> None:
        """Make `table` (or what a snapshot writer wrote) the snapshot, None keeping the current file,
        and record the run."""
        self.dir.mkdir(parents=True, exist_ok=True)
        previous = self.manifest()
        if isinstance(table, ClusteredWriter):
            manifest.snapshot_file = table.close().name
            manifest.rows = table.rows
        elif table is not None:
            name = f"snapshot-{_SAFE.sub('_', manifest.run_id)}.parquet"
            write_clustered(table, self.dir / name, partition_bits(table.num_rows))
            manifest.snapshot_file = name
            manifest.rows = table.num_rows
        elif previous is not None:
            manifest.snapshot_file = previous.snapshot_file
            manifest.rows = previous.rows
        tmp = self.dir / ".manifest.json.tmp"
        _fsync_write(tmp, json.dumps(asdict(manifest), indent=2, sort_keys=True).encode())
        os.replace(tmp, self.manifest_path)
        _fsync_dir(self.dir)
        if previous and previous.snapshot_file and previous.snapshot_file != manifest.snapshot_file:
            with contextlib.suppress(FileNotFoundError):
                (self.dir / previous.snapshot_file).unlink()

    @property
    def pending_path(self) -> Path:
        return self.dir / "pending.parquet"

    def read_pending(self) -> pa.Table | None:
        """Rows whose fate at the destination is unknown (a run died, or a batch got no answer)."""
        try:
            table = pq.read_table(self.pending_path)
        except FileNotFoundError:
            return None
        return table if table.num_rows else None

    def close_pending(self, writer: ClusteredWriter) -> ClusteredFile | None:
        """Make what `writer` wrote the journal; an empty one leaves no journal."""
        path = writer.close()
        if writer.rows == 0:
            path.unlink(missing_ok=True)
            return None
        return ClusteredFile(path)

    def staging_path(self, run_id: str) -> Path:
        """Where a run stages its shaped payload between its two passes over the partitions."""
        return self.dir / f".payload-{_SAFE.sub('_', run_id)}.parquet"

    def clear_staging(self) -> None:
        """Drop what a killed run staged (only ever called under the sync's lock)."""
        if self.dir.exists():
            for stale in [*self.dir.glob(".payload-*"), *self.dir.glob("..payload-*")]:
                stale.unlink(missing_ok=True)

    def pending_writer(self, schema: pa.Schema, bits: int) -> ClusteredWriter:
        """The journal written partition by partition; it replaces the current one when closed."""
        return ClusteredWriter(self.pending_path, schema, bits)

    def write_pending(self, table: pa.Table | None) -> None:
        if table is None or table.num_rows == 0:
            with contextlib.suppress(FileNotFoundError):
                self.pending_path.unlink()
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / ".pending.parquet.tmp"
        pq.write_table(table, tmp, compression="zstd", compression_level=1)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.pending_path)

    @property
    def session_path(self) -> Path:
        return self.dir / "session.json"

    def read_session(self) -> dict | None:
        """The journalled state of a session a run left unfinished."""
        try:
            return json.loads(self.session_path.read_text())
        except FileNotFoundError:
            return None

    def write_session(self, entry: dict | None) -> None:
        if entry is None:
            with contextlib.suppress(FileNotFoundError):
                self.session_path.unlink()
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / ".session.json.tmp"
        _fsync_write(tmp, json.dumps(entry, indent=2, sort_keys=True).encode())
        os.replace(tmp, self.session_path)
        _fsync_dir(self.dir)

    def write_rejections(self, run_id: str, table: pa.Table) -> Path:
        run_dir = self.dir / "runs" / _SAFE.sub("_", run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "rejected.parquet"
        tmp = run_dir / ".rejected.parquet.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return path

    @contextlib.contextmanager
    def lock(self, run_id: str) -> Iterator[None]:
        """Hold the sync's lock for a run; a second run fails at once, naming the holder."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another run"
                raise SyncAlreadyRunning(
                    f"sync '{self.sync}' is already running ({holder}); "
                    "runs of one sync never overlap, so this run stopped before reading or sending anything"
                ) from None
            os.ftruncate(fd, 0)
            now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            os.pwrite(fd, f"run {run_id}, pid {os.getpid()}, since {now}".encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the flock


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
