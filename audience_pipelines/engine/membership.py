"""Audience rows -> a membership table with one row per unique, non-null key.

Rows with a null or duplicated key are set aside (all rows of a duplicated
key: picking one would be a guess) and reported with counts and samples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from audience_pipelines.contract.columns import KEY_HASH
from audience_pipelines.engine.diff import KEY
from audience_pipelines.engine.hashing import key_hash
from audience_pipelines.engine.partitions import partition_bits, write_clustered
from audience_pipelines.engine.errors import AudienceError

SAMPLE = 10


@dataclass
class Membership:
    table: pa.Table  # `key` first, then the query's other columns
    key_hash: np.ndarray  # of each kept row's key, computed once (write_membership stores it)
    set_aside: pa.Table  # the set-aside rows plus a `reason` column
    null_keys: int = 0
    duplicate_keys: int = 0  # distinct keys that appeared more than once
    duplicate_rows: int = 0
    samples: list[dict] = field(default_factory=list)


def build_membership(audience: str, rows: pa.Table, key_column: str) -> Membership:
    if key_column not in rows.column_names:
        raise AudienceError(
            f"audience '{audience}': the query returned no key column '{key_column}' "
            f"({rows.num_rows} rows, columns {rows.column_names})"
        )
    key = rows[key_column]
    if not pa.types.is_string(key.type):
        key = pc.cast(key, pa.string())
    # The original key column stays too, so syncs can map it as a field.
    table = rows.drop_columns([KEY]) if KEY in rows.column_names and key_column != KEY else rows
    table = table.set_column(table.column_names.index(KEY), KEY, key) if KEY in table.column_names \
        else table.add_column(0, KEY, key)
    filled = key.fill_null("")
    null = np.asarray(pc.is_null(key), dtype=bool) | (np.asarray(pc.binary_length(filled), dtype=np.int64) == 0) \
        | np.asarray(pc.utf8_is_space(filled), dtype=bool)
    kh = key_hash(key)
    dup_values, dup = _duplicates(key, kh, null)
    bad = null | dup
    reasons = np.where(null, "null key", "duplicate key")
    set_aside = table.filter(pa.array(bad)).append_column("reason", pa.array(reasons[bad], pa.string()))
    samples = [{"key": r[KEY], "reason": r["reason"]}
               for r in set_aside.select([KEY, "reason"]).slice(0, SAMPLE).to_pylist()]
    return Membership(
        table=table.filter(pa.array(~bad)) if bad.any() else table,
        key_hash=kh[~bad] if bad.any() else kh,
        set_aside=set_aside,
        null_keys=int(null.sum()),
        duplicate_keys=len(dup_values),
        duplicate_rows=int(dup.sum()),
        samples=samples,
    )


def _duplicates(key: pa.ChunkedArray, kh: np.ndarray, null: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """Keys held by more than one row, and those rows. Equal key hashes find the few candidates
    (sorting 64-bit hashes beats counting strings); the strings decide."""
    live = np.sort(kh[~null])
    twice = np.unique(live[1:][live[1:] == live[:-1]])
    if len(twice) == 0:
        return pa.array([], pa.string()), np.zeros(len(kh), dtype=bool)
    candidate = np.isin(kh, twice) & ~null
    counts = pc.value_counts(key.filter(pa.array(candidate)))
    dup_values = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    dup = np.asarray(pc.is_in(key, value_set=dup_values).fill_null(False), dtype=bool) & candidate
    return dup_values, dup


def write_membership(table: pa.Table, path: str | Path, kh: np.ndarray | None = None) -> Path:
    """The membership with its key hash (computed once, by build_membership), clustered by key-hash
    partition so a sync reads it one partition at a time (engine.partitions)."""
    kh = pa.array(key_hash(table[KEY]) if kh is None else kh, pa.uint64())
    table = table.drop_columns([KEY_HASH]) if KEY_HASH in table.column_names else table
    return write_clustered(table.append_column(KEY_HASH, kh), Path(path), partition_bits(table.num_rows))


def write_parquet_atomic(table: pa.Table, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd", compression_level=1)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
