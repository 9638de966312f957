"""LinkedIn Matched Audiences: the exact value sent for each identifier kind.

Input is the canonical form from `canonical.normalize`. Rules follow destination-apis.md
section 0: an email is trimmed, lowercased and SHA-256 hashed (`SHA256_EMAIL`); a mobile
advertising id is sent as given (`GOOGLE_AID`, canonical form lowercased); first name, last name
and country (ISO-2) are sent in plain text beside the user ids, so a pre-hashed value of those
cannot be sent and is dropped.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from audience_pipelines.identifiers.hashing import as_string_array, blank_to_null, hash_shaped, is_sha256_hex

# Identifier kind -> LinkedIn's idType (a `userIds` entry) or element field (plain-text extras).
LINKEDIN_FIELDS: dict[str, str] = {
    "email": "SHA256_EMAIL",
    "device_id": "GOOGLE_AID",
    "first_name": "firstName",
    "last_name": "lastName",
    "country": "country",
}
ID_TYPES = frozenset({"SHA256_EMAIL", "GOOGLE_AID"})

_NULL_STR = pa.scalar(None, pa.string())


def _plain(values: pa.Array) -> pa.Array:
    # Plain text: a 64-hex value is a pre-hashed warehouse column, which LinkedIn cannot read.
    trimmed = blank_to_null(pc.utf8_trim_whitespace(values))
    return pc.if_else(is_sha256_hex(pc.utf8_lower(trimmed)), _NULL_STR, trimmed)


def _country(values: pa.Array) -> pa.Array:
    upper = pc.utf8_upper(pc.utf8_trim_whitespace(values))
    return pc.if_else(pc.fill_null(pc.match_substring_regex(upper, r"^[A-Z]{2}$"), False), upper, _NULL_STR)


def to_linkedin(kind: str, canonical_values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The value LinkedIn expects for `LINKEDIN_FIELDS[kind]`; null where nothing usable is left."""
    if kind not in LINKEDIN_FIELDS:
        raise ValueError(f"LinkedIn Matched Audiences has no field for kind {kind!r}; kinds: {sorted(LINKEDIN_FIELDS)}")
    values = as_string_array(canonical_values)
    if kind == "email":
        return hash_shaped(values)
    if kind == "country":
        return _country(values)
    return _plain(values)
