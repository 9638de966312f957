"""Parquet files clustered by key-hash partition, so a run reads one partition at a time.

A member's partition is the top `bits` bits of its key hash. A clustered file holds each
partition in its own row groups, in partition order; the key_hash column's row-group
statistics say which partition a group holds, so no separate index is needed. A file written
at another level, or not clustered at all (written before partitions existed), still reads
correctly: a group spanning several partitions is read and filtered.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from audience_pipelines.contract.columns import KEY, KEY_HASH, ROW_HASH

PARTITION_ROWS = 1_000_000  # members per partition a run aims for: memory is bounded by a few of them
MAX_BITS = 10
ROW_GROUP_ROWS = 256 * 1024


def partition_bits(rows: int, partition_rows: int = PARTITION_ROWS) -> int:
    """The level (2**bits partitions) that keeps partitions near `partition_rows` members."""
    if rows <= partition_rows:
        return 0
    return min(MAX_BITS, math.ceil(math.log2(rows / partition_rows)))


def partition_of(kh: np.ndarray, bits: int) -> np.ndarray:
    if bits == 0:
        return np.zeros(len(kh), dtype=np.int64)
    return (np.asarray(kh, dtype=np.uint64) >> np.uint64(64 - bits)).astype(np.int64)


def key_hashes(table: pa.Table) -> np.ndarray:
    if KEY_HASH in table.column_names:
        return np.asarray(table[KEY_HASH].to_numpy(), dtype=np.uint64)
    from audience_pipelines.engine.hashing import key_hash
    return key_hash(table[KEY])


def split(table: pa.Table, bits: int) -> list[pa.Table]:
    """The table's rows of each partition, in partition order (row order kept within one)."""
    if bits == 0:
        return [table]
    part = partition_of(key_hashes(table), bits).astype(np.uint16)  # MAX_BITS fits: numpy's radix sort
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange((1 << bits) + 1))
    idx = pa.array(order, pa.int64())
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # one column per thread
        columns = list(pool.map(lambda c: c.take(idx), table.columns))
    ordered = pa.Table.from_arrays(columns, schema=table.schema)
    return [ordered.slice(bounds[p], bounds[p + 1] - bounds[p]) for p in range(1 << bits)]


class TableSource:
    """A membership table in memory, read partition by partition like a clustered file."""

    def __init__(self, table: pa.Table):
        self.table, self.rows, self.schema = table, table.num_rows, table.schema
        self._parts: tuple[int, list[pa.Table]] | None = None

    def read(self, partition: int, bits: int, columns: list[str] | None = None) -> pa.Table:
        if self._parts is None or self._parts[0] != bits:
            self._parts = (bits, split(self.table, bits))
        part = self._parts[1][partition]
        return part.select(columns) if columns is not None else part


class ClusteredWriter:
    """Writes partitions in order to a temporary file; `close` makes it the file at `path`, fsynced.

    Nothing appears at `path` unless every partition was written and closed."""

    def __init__(self, path: Path, schema: pa.Schema, bits: int):
        self.path, self.schema, self.bits = Path(path), schema, bits
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Unique values (keys, hashes) skip the dictionary a Parquet writer tries first, and a small
        # dictionary limit gives it up early on other unique columns (emails); only the key hash
        # needs statistics (they say which partition a row group holds).
        self._writer = pq.ParquetWriter(
            self.tmp, schema, compression="zstd", compression_level=1, dictionary_pagesize_limit=64 * 1024,
            use_dictionary=[c for c in schema.names if c not in (KEY, KEY_HASH, ROW_HASH)],
            write_statistics=[KEY_HASH] if KEY_HASH in schema.names else False)
        self.rows = 0
        self._next = 0

    def write(self, partition: int, table: pa.Table) -> None:
        if partition < self._next - 1:
            raise ValueError(f"partition {partition} written after partition {self._next - 1}")
        self._next = partition + 1
        if table.num_rows:
            self._writer.write_table(table.select(self.schema.names).cast(self.schema),
                                     row_group_size=ROW_GROUP_ROWS)
            self.rows += table.num_rows

    def close(self) -> Path:
        self._writer.close()
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
        return self.path

    def abandon(self) -> None:
        self._writer.close()
        self.tmp.unlink(missing_ok=True)


def write_clustered(table: pa.Table, path: Path, bits: int) -> Path:
    writer = ClusteredWriter(path, table.schema, bits)
    try:
        for p, part in enumerate(split(table, bits)):
            writer.write(p, part)
    except BaseException:
        writer.abandon()
        raise
    return writer.close()


class ClusteredFile:
    """One Parquet file read partition by partition at any level."""

    def __init__(self, path: Path, read_dictionary: list[str] | None = None):
        self.path = Path(path)
        self._read_dictionary = read_dictionary
        # One open file (positioned reads are thread-safe; a file replaced at the path later is not
        # read) and a Parquet reader per thread: one reader used by two threads at once can fail
        # ("ReadRangeCache did not find matching cache entry", seen reading 100M members).
        self._source = pa.OSFile(str(self.path))
        self._local = threading.local()
        self._local.reader = pq.ParquetFile(self._source, read_dictionary=read_dictionary)
        self._meta = self.file.metadata
        self.rows = self._meta.num_rows
        self.schema = self.file.schema_arrow
        self._spans = self._group_spans(self._meta)

    @property
    def file(self) -> pq.ParquetFile:
        reader = getattr(self._local, "reader", None)
        if reader is None:
            reader = self._local.reader = pq.ParquetFile(self._source, metadata=self._meta,
                                                         read_dictionary=self._read_dictionary)
        return reader

    def _group_spans(self, meta) -> list[tuple[int, int] | None]:
        """Each row group's (min, max) key hash; None where the file cannot say."""
        if KEY_HASH not in self.schema.names:
            return [None] * meta.num_row_groups
        col = self.schema.get_field_index(KEY_HASH)
        spans: list[tuple[int, int] | None] = []
        for g in range(meta.num_row_groups):
            stats = meta.row_group(g).column(col).statistics
            ok = stats is not None and stats.has_min_max
            spans.append((int(stats.min), int(stats.max)) if ok else None)
        return spans

    def _groups(self, partition: int, bits: int) -> tuple[list[int], list[int]]:
        """The row groups holding only `partition`, and those holding it among others."""
        whole, mixed = [], []
        for g, span in enumerate(self._spans):
            if span is None:
                mixed.append(g)
                continue
            lo, hi = (int(v) for v in partition_of(np.array(span, dtype=np.uint64), bits))
            if lo == hi == partition:
                whole.append(g)
            elif lo <= partition <= hi:
                mixed.append(g)
        return whole, mixed

    def _filtered(self, groups: list[int], partition: int, bits: int, want: list[str] | None) -> pa.Table:
        hashed_by = KEY_HASH if KEY_HASH in self.schema.names else KEY
        need = None if want is None or hashed_by in want else want + [hashed_by]
        rows = self.file.read_row_groups(groups, columns=need)
        rows = rows.filter(pa.array(partition_of(key_hashes(rows), bits) == partition))
        return rows.select(want) if want is not None else rows

    def _empty(self, want: list[str] | None) -> pa.Table:
        return self.schema.empty_table() if want is None else self.schema.empty_table().select(want)

    def read(self, partition: int, bits: int, columns: list[str] | None = None) -> pa.Table:
        """The rows of `partition` at level `bits`, with `columns` (all by default)."""
        if bits == 0:
            return self.file.read(columns=columns)
        whole, mixed = self._groups(partition, bits)
        want = None if columns is None else list(columns)
        parts = []
        if whole:
            parts.append(self.file.read_row_groups(whole, columns=want))
        if mixed:
            parts.append(self._filtered(mixed, partition, bits, want))
        if not parts:
            return self._empty(want)
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    def take(self, partition: int, bits: int, positions: np.ndarray, columns: list[str] | None = None) -> pa.Table:
        """Rows at `positions` (ascending) of what `read(partition, bits, columns)` returns. Only row
        groups holding one of them are read, and only the rows asked for are kept."""
        whole, mixed = self._groups(partition, bits) if bits else (list(range(self.file.num_row_groups)), [])
        want = None if columns is None else list(columns)
        starts = np.cumsum([0] + [self.file.metadata.row_group(g).num_rows for g in whole])
        hit = [g for i, g in enumerate(whole)
               if np.searchsorted(positions, starts[i + 1]) > np.searchsorted(positions, starts[i])]
        out = []
        if hit:
            rows = self.file.read_row_groups(hit, columns=want)
            # Positions are counted over every whole group; those not read shift the rest down.
            read = set(hit)
            skipped = np.cumsum([0] + [self.file.metadata.row_group(g).num_rows if g not in read else 0
                                       for g in whole])
            in_whole = positions[positions < starts[-1]]
            group = np.searchsorted(starts, in_whole, side="right") - 1
            out.append(rows.take(pa.array(in_whole - skipped[group], pa.int64())))
        rest = positions[positions >= starts[-1]] - starts[-1]
        if len(rest):
            out.append(self._filtered(mixed, partition, bits, want).take(pa.array(rest, pa.int64())))
        return pa.concat_tables(out) if out else self._empty(want)

    def partitions(self, bits: int, columns: list[str] | None = None) -> Iterator[tuple[int, pa.Table]]:
        for p in range(1 << bits):
            yield p, self.read(p, bits, columns)


class DerivedSource:
    """A clustered membership read partition by partition with columns derived from each partition
    (related fields, segment membership), so memory stays about one partition's whatever the size.

    `derive(rows, partition, bits)` gets the partition's rows (an empty table once, for the schema)."""

    def __init__(self, file: ClusteredFile, derive: Callable[[pa.Table, int, int], pa.Table]):
        self.file, self._derive, self.rows = file, derive, file.rows
        self.schema = derive(file.schema.empty_table(), 0, 0).schema

    def read(self, partition: int, bits: int, columns: list[str] | None = None) -> pa.Table:
        rows = self._derive(self.file.read(partition, bits), partition, bits)
        return rows.select(columns) if columns is not None else rows
