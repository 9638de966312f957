"""SHA-256 of identifier values as lowercase hex, computed once per distinct value."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.compute as pc

_SHA256_HEX = r"^[0-9a-f]{64}$"


def as_string_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous `string` array (decoding dictionaries, casting ints and nulls)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], values.type)
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if not pa.types.is_string(values.type):
        values = pc.cast(values, pa.string())
    return values


def map_unique(values: pa.Array, fn) -> pa.Array:
    """Apply a Python `str -> str | None` to each distinct value, then gather per row.

    Warehouse columns repeat a lot (names, cities), so this bounds the Python
    work by the number of distinct values, not rows. Nulls stay null.
    """
    encoded = pc.dictionary_encode(values)
    mapped = pa.array([fn(v) for v in encoded.dictionary.to_pylist()], type=pa.string())
    return mapped.take(encoded.indices)


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def sha256_hex(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Lowercase 64-hex SHA-256 of each UTF-8 value; nulls stay null."""
    return map_unique(as_string_array(values), _sha256)


def is_sha256_hex(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """True where the value is exactly 64 lowercase hex chars; False for nulls (usable as a mask)."""
    values = as_string_array(values)
    return pc.fill_null(pc.match_substring_regex(values, _SHA256_HEX), False)
