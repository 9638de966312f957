"""Column names shared by the engine and every destination."""

from __future__ import annotations

import pyarrow as pa

KEY = "key"
KEY_HASH = "key_hash"
ROW_HASH = "row_hash"
# The platform's own id for a member's record (a CRM contact), kept in the snapshot so a
# removal never needs a search. Not part of the row hash: it is learnt, not sent.
RECORD_ID = "record_id"

ENGINE_COLUMNS = (KEY_HASH, ROW_HASH, RECORD_ID)


def sent_columns(rows: pa.Table) -> list[str]:
    """Identifier and field columns as they leave: everything but the key and the engine's own columns."""
    return [c for c in rows.column_names if c != KEY and c not in ENGINE_COLUMNS]


def without_engine_columns(rows: pa.Table) -> pa.Table:
    """The key plus what is sent."""
    return rows.drop_columns([c for c in ENGINE_COLUMNS if c in rows.column_names])
