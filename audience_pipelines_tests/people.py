"""Test helpers shared by the CRM destinations' tests: a membership table from rows, and a recorded sleep."""

from __future__ import annotations

import pyarrow as pa


def people_table(rows: dict, columns: tuple[str, ...], date_column: str | None = None) -> pa.Table:
    """rows: key -> the `columns` values in order, then the date; missing trailing values are null."""
    width = len(columns) + (1 if date_column else 0)
    values = [(*v, *([None] * width))[:width] for v in rows.values()]
    table = {"key": pa.array(list(rows), pa.string())}
    table |= {c: pa.array([v[i] for v in values], pa.string()) for i, c in enumerate(columns)}
    if date_column:
        table[date_column] = pa.array([v[-1] for v in values], pa.date32())
    return pa.table(table)


class Sleeps(list):
    """A sleep that records how long it was asked to wait, and returns at once."""

    def __call__(self, seconds):
        self.append(seconds)
