"""Membership rows -> the rows a destination receives, as it will receive them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from audience_pipelines.contract import KEY, KEY_HASH, RECORD_ID, ROW_HASH, Destination
from audience_pipelines.engine.errors import SyncInputError
from audience_pipelines.engine.hashing import key_hash, row_hash
from audience_pipelines.identifiers import normalize

SAMPLE = 10


@dataclass
class Payload:
    table: pa.Table  # key, key_hash, row_hash, sent identifier and field columns
    identifier_columns: list[str]
    field_columns: list[str]
    set_aside: int = 0
    set_aside_samples: list[dict] = field(default_factory=list)
    invalid_identifiers: dict[str, int] = field(default_factory=dict)  # kind -> values that failed
    # kind -> members with a failed value who were set aside: no other usable identifier was left
    invalid_identifiers_set_aside: dict[str, int] = field(default_factory=dict)


def _string(values: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_string(values.type):
        return values
    if pa.types.is_dictionary(values.type) or pa.types.is_large_string(values.type):
        return values.cast(pa.string())
    return values


def build_payload(
    sync: str,
    members: pa.Table,
    destination: Destination,
    identifiers: dict[str, str],
    fields: dict[str, str],
    default_region: str | None = None,
    region_column: str | None = None,
    rows: int | None = None,
) -> Payload:
    """Normalise identifiers, apply the platform's form and hashes, hash rows.

    Rows the destination cannot use (no usable identifier where one is needed)
    are set aside and counted, never dropped silently. `rows`: the whole audience's size, when
    `members` is one partition of it (errors name the audience's size).
    """
    n = members.num_rows
    wanted = {KEY: "key", **{c: f"identifier '{k}'" for k, c in identifiers.items()},
              **{c: f"field '{f}'" for f, c in fields.items()}}
    if region_column:
        wanted[region_column] = "phone region column"
    missing = [c for c in wanted if c not in members.column_names]
    if missing:
        raise SyncInputError(
            f"sync '{sync}': the audience has no column "
            + ", ".join(f"'{c}' (mapped as {wanted[c]})" for c in missing)
            + f"; it has {n if rows is None else rows} rows with columns {members.column_names}"
        )
    unsupported = sorted(set(identifiers) - destination.capabilities.identifier_kinds)
    if unsupported:
        raise SyncInputError(
            f"sync '{sync}': destination type '{destination.type_name}' does not take identifier(s) "
            f"{unsupported}; it takes {sorted(destination.capabilities.identifier_kinds)}"
        )
    keys = _string(members[KEY]).cast(pa.string())
    cols: dict[str, pa.ChunkedArray | pa.Array] = {KEY: keys}
    id_cols: list[str] = []
    invalid: dict[str, int] = {}
    invalid_masks: dict[str, np.ndarray] = {}
    valid: dict[str, np.ndarray] = {}
    for kind, col in identifiers.items():
        region = members[region_column] if region_column and kind == "phone" else default_region
        norm = normalize(kind, members[col], default_region=region)
        bad = int(pc.sum(norm.invalid).as_py() or 0)
        if bad:
            invalid[kind] = bad
            invalid_masks[kind] = np.asarray(norm.invalid.fill_null(False), dtype=bool)
        sent = destination.transform_identifier(kind, norm.values)
        name = destination.identifier_column(kind)
        cols[name] = sent
        id_cols.append(name)
        valid[kind] = np.asarray(sent.is_valid(), dtype=bool)
    caps = destination.capabilities
    usable = _usable({k: m for k, m in valid.items() if k not in caps.companion_kinds}, caps.identifier_groups, n)
    known_kh = members[KEY_HASH] if KEY_HASH in members.column_names else None  # computed where written
    field_cols = []
    for name, col in fields.items():
        values = members[col]
        cols[name] = values.cast(pa.string()) if pa.types.is_dictionary(values.type) else values
        field_cols.append(name)
    table = pa.table(cols)
    set_aside, samples = 0, []
    invalid_set_aside: dict[str, int] = {}
    if destination.capabilities.requires_identifier and not usable.all():
        invalid_set_aside = {k: int((m & ~usable).sum()) for k, m in invalid_masks.items()}
        drop = ~usable
        set_aside = int(drop.sum())
        sample_keys = keys.filter(pa.array(drop)).slice(0, SAMPLE).to_pylist()
        samples = [{"key": k, "reason": f"no usable identifier among {sorted(identifiers)}"} for k in sample_keys]
        table = table.filter(pa.array(usable))
        known_kh = known_kh.filter(pa.array(usable)) if known_kh is not None else None
    kh = key_hash(table[KEY]) if known_kh is None else known_kh.cast(pa.uint64()).to_numpy()
    rh = row_hash([table[c] for c in id_cols + field_cols], table[KEY])
    table = table.append_column(KEY_HASH, pa.array(kh, pa.uint64())).append_column(ROW_HASH, pa.array(rh, pa.uint64()))
    if destination.capabilities.keeps_record_ids:  # filled from the snapshot and the platform's answers
        table = table.append_column(RECORD_ID, pa.nulls(table.num_rows, pa.string()))
    return Payload(table, id_cols, field_cols, set_aside, samples, invalid, invalid_set_aside)


def _usable(valid: dict[str, np.ndarray], groups: tuple[frozenset[str], ...], n: int) -> np.ndarray:
    """Rows with a value for some identifier kind, or for every kind of a group that only counts whole."""
    usable = np.zeros(n, dtype=bool)
    grouped = set().union(*groups) if groups else set()
    for kind, mask in valid.items():
        if kind not in grouped:
            usable |= mask
    for group in groups:
        if group <= set(valid):
            usable |= np.logical_and.reduce([valid[k] for k in group])
    return usable
