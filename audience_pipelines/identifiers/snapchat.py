"""Snapchat Ads customer lists: the SHA-256 value sent for each identifier kind.

Snap takes one schema per request: `EMAIL_SHA256`, `PHONE_SHA256` or `MOBILE_AD_ID_SHA256`,
each a lowercase-hex SHA-256 (destination-apis.md, Part 2 §1). Normalisation follows Snap's
best practices: email trimmed and lowercased; mobile ad id lowercased with its hyphens kept;
phone with its country code kept, a leading "00" dropped, then a leading "0", then every
non-digit removed. From the canonical E.164 form ("+17067675127") that leaves the digits
without the "+"; the rule is applied in full so raw forms ("001(706)-767-5127") agree too.
A value that already is 64 lowercase hex is taken as pre-hashed and sent as it is.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from audience_pipelines.identifiers.hashing import as_string_array, hash_shaped, trim_lower

# Identifier kind -> Snap's schema name (the sent column is named after it).
SNAP_SCHEMAS: dict[str, str] = {
    "email": "EMAIL_SHA256",
    "phone": "PHONE_SHA256",
    "device_id": "MOBILE_AD_ID_SHA256",
}


def snap_phone(values: pa.Array) -> pa.Array:
    """Snap's phone rule: drop a leading "00", then a leading "0", then every non-digit."""
    values = pc.utf8_trim_whitespace(values)
    values = pc.replace_substring_regex(values, r"^00", "")
    values = pc.replace_substring_regex(values, r"^0", "")
    return pc.replace_substring_regex(values, r"[^0-9]", "")


def snap_device_id(values: pa.Array) -> pa.Array:
    # IDFA / GAID: lowercase, hyphens kept.
    return pc.utf8_lower(pc.utf8_trim_whitespace(values))


_SHAPERS = {"email": trim_lower, "phone": snap_phone, "device_id": snap_device_id}


def to_snap(kind: str, canonical_values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Lowercase SHA-256 hex of Snap's form of each value; null where nothing is left."""
    if kind not in SNAP_SCHEMAS:
        raise ValueError(f"Snapchat has no schema for kind {kind!r}; kinds: {sorted(SNAP_SCHEMAS)}")
    return hash_shaped(as_string_array(canonical_values), _SHAPERS[kind])
