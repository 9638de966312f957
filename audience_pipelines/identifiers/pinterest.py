"""Pinterest customer lists: the record sent for each identifier kind.

Input is the canonical form from `canonical.normalize`. Pinterest takes emails lowercase, plain
or hashed (SHA1, SHA256 or MD5), and MAIDs/IDFAs only hashed (destination-apis.md Part 2 §2).
Both leave here as SHA-256 hex: the email trimmed and lowercased, the device id lowercased
(IDFA/GAID compare case-insensitively), so plain PII never leaves the process. A value that
already is 64 lowercase hex is taken as pre-hashed and passed through.
"""

from __future__ import annotations

import pyarrow as pa

from audience_pipelines.identifiers.hashing import as_string_array, hash_shaped, trim_lower

PINTEREST_KINDS = frozenset({"email", "device_id"})


def to_pinterest(kind: str, canonical_values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The record Pinterest gets for one identifier: SHA-256 hex, null where nothing is left."""
    if kind not in PINTEREST_KINDS:
        raise ValueError(f"Pinterest customer lists take no {kind!r}; kinds: {sorted(PINTEREST_KINDS)}")
    return hash_shaped(as_string_array(canonical_values), trim_lower)
