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
from audience_pipelines.identifiers.hashing import as_string_array, is_sha256_hex, sha256_hex


_NULL_STR = pa.scalar(None, pa.string())


def _clean(v: pa.Array) -> pa.Array:
    return pc.utf8_lower(pc.utf8_trim_whitespace(v))


def _phone(v: pa.Array) -> pa.Array:
    # E.164 "+14155552671" -> "14155552671": digits only, country code kept.
    digits = pc.replace_substring_regex(v, r"[^0-9]", "")
    return pc.replace_substring_regex(digits, r"^0+", "")


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
    "phone": _phone,
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
    prehashed = is_sha256_hex(values)
    shaped = _SHAPERS[kind](pc.if_else(prehashed, _NULL_STR, values))
    shaped = pc.if_else(pc.equal(shaped, ""), _NULL_STR, shaped)
    return pc.if_else(prehashed, values, sha256_hex(shaped))
