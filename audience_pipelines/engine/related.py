"""Related fields: columns of another table joined many-to-one onto the members (a contact's company name).

A sync maps `<relation>.<column>`; the relation says which table holds it, its key, and the member
column that refers to it. A relation that matches a member to two rows is refused, never joined.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from audience_pipelines.engine.errors import SyncInputError
from audience_pipelines.engine.warehouse import read_table


@dataclass(frozen=True)
class Relation:
    name: str
    table: str
    key: str  # the related table's column
    on: str  # the member column holding that key


def split(column: str) -> tuple[str, str] | None:
    """`company.name` -> ("company", "name"); a plain column -> None."""
    relation, dot, rest = column.partition(".")
    return (relation, rest) if dot and relation and rest else None


def wanted(columns: list[str]) -> dict[str, list[str]]:
    """Relation -> the related columns these mapped columns name, in order."""
    out: dict[str, list[str]] = {}
    for column in columns:
        parts = split(column)
        if parts and parts[1] not in out.setdefault(parts[0], []):
            out[parts[0]].append(parts[1])
    return out


def read_related(engine: sa.Engine, relation: Relation, columns: list[str]) -> pa.Table:
    quote = engine.dialect.identifier_preparer.quote
    select = ", ".join(quote(c) for c in [relation.key, *columns])
    try:
        return read_table(engine, f"SELECT {select} FROM {relation.table}")
    except Exception as exc:  # noqa: BLE001 - name the relation; the driver's text says what is wrong
        raise SyncInputError(f"relation '{relation.name}': reading {', '.join(columns)} from table "
                             f"{relation.table} failed: {str(exc).splitlines()[0][:300]}") from exc


def join_related(sync: str, members: pa.Table, relation: Relation, related: pa.Table,
                 of_total: int | None = None) -> pa.Table:
    """The members with the related columns as `<relation>.<column>`; a member with no related row gets nulls.

    `of_total`: the members are one key-hash partition of that many (an error says so)."""
    on, key = members[relation.on], related[relation.key]
    if key.type != on.type:
        key = key.cast(on.type)
    position = related.column_names.index(relation.key)
    referenced = related.set_column(position, relation.key, key).filter(
        pc.is_in(key, value_set=on.combine_chunks().drop_null()))
    counts = referenced.group_by(relation.key).aggregate([([], "count_all")])
    repeated = counts.filter(pc.greater(counts["count_all"], 1))
    if repeated.num_rows:
        sample, n = repeated[relation.key][0].as_py(), repeated["count_all"][0].as_py()
        scope = f" (one key-hash partition of {of_total:,})" if of_total is not None else ""
        raise SyncInputError(
            f"sync '{sync}': relation '{relation.name}' (table {relation.table}) is not many-to-one: "
            f"{repeated.num_rows:,} key value(s) the {members.num_rows:,} members{scope} refer to match more than one "
            f"row, e.g. {relation.key} = {sample!r} matches {n} rows. A member must have at most one "
            f"related row; point the relation at a table (or view) with one row per {relation.key}.")
    renamed = referenced.rename_columns([
        "__related_key" if c == relation.key else f"{relation.name}.{c}" for c in referenced.column_names])
    joined = members.join(renamed, keys=relation.on, right_keys="__related_key", join_type="left outer",
                          coalesce_keys=True)
    return joined.select([*members.column_names, *(c for c in renamed.column_names if c != "__related_key")])
