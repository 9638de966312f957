"""Mapped fields against the properties a platform has: their kinds, and one clear refusal.

A CRM takes a sync's `fields` as profile properties. Before anything is sent, the destination
names the kind of each property the sync maps (`check_fields`), and a column that cannot go there
(a date to a number property, text to a boolean) stops the run with every mismatch named.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa

from audience_pipelines.contract.errors import TerminalError

# Kinds of platform properties: what each platform's type names map to.
STRING, NUMBER, INTEGER, BOOLEAN, DATE, DATETIME = "string", "number", "integer", "boolean", "date", "datetime"
FIELD_KINDS = (STRING, NUMBER, INTEGER, BOOLEAN, DATE, DATETIME)


def column_kind(arrow_type: pa.DataType) -> str:
    """The kind of a membership column, by its Arrow type."""
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_boolean(arrow_type):
        return BOOLEAN
    if pa.types.is_integer(arrow_type):
        return INTEGER
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return NUMBER
    if pa.types.is_date(arrow_type):
        return DATE
    if pa.types.is_timestamp(arrow_type):
        return DATETIME
    return STRING


# Column kind -> the property kinds that take it without losing meaning.
_TAKES = {
    STRING: {STRING},
    INTEGER: {INTEGER, NUMBER, STRING},
    NUMBER: {NUMBER, STRING},
    BOOLEAN: {BOOLEAN, STRING},
    DATE: {DATE, DATETIME, STRING},
    DATETIME: {DATETIME, STRING},
}


def mismatches(columns: Mapping[str, pa.DataType], properties: Mapping[str, str | None]) -> list[str]:
    """One line per mapped field the platform cannot take: no such property, or a kind it does not hold.

    `columns`: field name -> Arrow type of the column mapped to it. `properties`: property name -> its
    kind (None: a property of a kind this product does not send to, such as a picklist it cannot check).
    """
    problems = []
    for field, arrow_type in columns.items():
        if field not in properties:
            problems.append(f"field '{field}': the platform has no property '{field}'")
            continue
        kind, wanted = column_kind(arrow_type), properties[field]
        if wanted is not None and wanted not in _TAKES[kind]:
            problems.append(f"field '{field}': a {kind} column ({arrow_type}) cannot go to property '{field}', "
                            f"which holds a {wanted}")
    return problems


class FieldsRefused(TerminalError):
    """Mapped fields the platform cannot take; raised before anything is created or sent."""


def check_field_kinds(destination: str, columns: Mapping[str, pa.DataType],
                      properties: Mapping[str, str | None]) -> None:
    """Raise FieldsRefused naming every mapped field the platform cannot take (nothing was sent)."""
    problems = mismatches(columns, properties)
    if problems:
        raise FieldsRefused(f"{destination}: {len(problems)} mapped field(s) do not fit the platform's properties, so "
                            f"nothing was sent: " + "; ".join(problems))
