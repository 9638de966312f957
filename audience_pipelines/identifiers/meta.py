"""Meta Custom Audiences: the exact per-field value sent in `payload.data`.

Input is the canonical form from `canonical.normalize`. Rules follow the
reference table (destination-apis.md section 0); where the Python SDK and
RudderStack differ on names we keep UTF-8 letters (RudderStack), so "José"
hashes as "josé", not "jos".
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from audience_pipelines.identifiers.kinds import META_FIELDS
from audience_pipelines.identifiers.hashing import as_string_array, hash_shaped, phone_digits, trim_lower

_clean = trim_lower


def _name(v: pa.Array) -> pa.Array:
    # Drops spaces, hyphens, apostrophes, digits; keeps letters and combining marks.
    return pc.replace_substring_regex(_clean(v), r"[^\p{L}\p{M}]", "")


def _city_state(v: pa.Array) -> pa.Array:
    return pc.replace_substring_regex(_clean(v), r"[^a-z]", "")


def _zip(v: pa.Array) -> pa.Array:
    # Only US zip+4 is cut at the dash; "00-950" (PL) must not become "00".
    v = pc.replace_substring_regex(_clean(v), r"^([0-9]{5})\s*-\s*[0-9]{4}$", r"\1")
    return pc.replace_substring_regex(v, r"[\s-]", "")


_SHAPERS = {
    "email": _clean,
    "phone": phone_digits,
    "first_name": _name,
    "last_name": _name,
    "country": _clean,
    "zip": _zip,
    "city": _city_state,
    "state": _city_state,
    "gender": _clean,
    "birth_year": _clean,
}


def to_meta(kind: str, canonical_values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Value Meta expects for `META_FIELDS[kind]`: SHA-256 hex, or plain for MADID/EXTERN_ID.

    Values that already are 64 lowercase hex pass through unhashed; values
    that shape to "" (e.g. a city with no a-z letters) become null.
    """
    if kind not in META_FIELDS:
        raise ValueError(f"Meta has no field for kind {kind!r}; mapped kinds: {sorted(META_FIELDS)}")
    values = as_string_array(canonical_values)
    if kind == "device_id":
        return pc.utf8_lower(values)
    if kind == "external_id":
        return values
    return hash_shaped(values, _SHAPERS[kind])
