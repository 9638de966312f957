"""Withdrawing departed members from a platform that matches people on identifiers.

A leaver's identifier value that some current member still sends must not be withdrawn: the
platform would take that member out too. Members are spread over key-hash partitions while
identifier values are not, so the values still sent are found over the whole membership first
(`StillSent.collect`), against the few values about to be withdrawn, and each partition's
withdrawals are then shaped against that.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from audience_pipelines.contract import KEY, RECORD_ID


@dataclass
class StillSent:
    """Of the values about to be withdrawn, those a current member still sends, per sent column, and
    who holds the platform records about to be withdrawn (key, record id)."""

    values: dict[str, pa.Array] = field(default_factory=dict)
    holders: pa.Table | None = None

    @classmethod
    def collect(cls, withdrawn: Iterable[pa.Table], members: Iterable[pa.Table], columns: list[str]) -> StillSent:
        """`withdrawn`: the snapshot rows about to be withdrawn; `members`: the payload, part by part."""
        wanted: dict[str, list[pa.Array]] = {c: [] for c in columns}
        ids: list[pa.Array] = []
        for rows in withdrawn:
            for c in columns:
                wanted[c].append(rows[c].combine_chunks().drop_null())
            if RECORD_ID in rows.column_names:
                ids.append(rows[RECORD_ID].combine_chunks().drop_null())
        candidates = {c: pc.unique(pa.concat_arrays(v)) for c, v in wanted.items() if v}
        record_ids = pc.unique(pa.concat_arrays(ids)) if ids else None
        if not any(len(v) for v in candidates.values()) and not (record_ids is not None and len(record_ids)):
            # Nothing is withdrawn (a first sync, adds only): the membership need not be read.
            return cls({c: pa.array([], v.type) for c, v in candidates.items()})
        found: dict[str, list[pa.Array]] = {c: [] for c in candidates}
        holders: list[pa.Table] = []
        for part in members:
            for c, values in candidates.items():
                if len(values):
                    sent = part[c]
                    found[c].append(pc.unique(sent.filter(pc.is_in(sent, value_set=values, skip_nulls=True))))
            if record_ids is not None and len(record_ids) and RECORD_ID in part.column_names:
                hit = pc.is_in(part[RECORD_ID], value_set=record_ids).fill_null(False)
                holders.append(part.select([KEY, RECORD_ID]).filter(hit))
        values = {c: pc.unique(pa.concat_arrays(v)) if v else pa.array([], candidates[c].type)
                  for c, v in found.items()}
        return cls(values, pa.concat_tables(holders) if holders else None)


def withdrawals(still: StillSent, old: pa.Table, positions: np.ndarray, identifier_columns: list[str],
                match_columns: list[str]) -> tuple[pa.Table, np.ndarray]:
    """Snapshot rows as they may be withdrawn from a platform that matches on identifiers.

    Every identifier value some current member still sends is blanked, so the withdrawal cannot
    take that member out too; a row left with no value the platform matches on, or whose platform
    record a current member holds, is not sent at all (the second array marks those).
    """
    rows = old.take(pa.array(positions, pa.int64()))
    if rows.num_rows == 0:
        return rows, np.zeros(0, dtype=bool)
    for c in identifier_columns:
        shared = pc.is_in(rows[c], value_set=still.values.get(c, pa.array([], rows.schema.field(c).type)),
                          skip_nulls=True)
        blanked = pc.if_else(shared, pa.scalar(None, rows.schema.field(c).type), rows[c])
        rows = rows.set_column(rows.column_names.index(c), c, blanked)
    left = np.zeros(rows.num_rows, dtype=bool)
    for c in match_columns:
        left |= np.asarray(rows[c].is_valid(), dtype=bool)
    if RECORD_ID in rows.column_names and still.holders is not None and still.holders.num_rows:
        # A platform record (a CRM profile) another current member still holds is theirs too: never withdrawn.
        others = still.holders.filter(pc.invert(pc.is_in(still.holders[KEY], value_set=rows[KEY].combine_chunks())))
        held = others[RECORD_ID].combine_chunks()
        left &= ~np.asarray(pc.is_in(rows[RECORD_ID], value_set=held).fill_null(False), dtype=bool)
    return rows, ~left
