"""TikTok custom audiences: the exact SHA-256 value sent for each identifier kind.

Input is the canonical form from `canonical.normalize`. Rules follow destination-apis.md
section 0: an email loses any "+suffix" and every dot of its local part (for every domain,
as Segment's TikTok client does), then is lowercased and hashed; a phone keeps digits only (no
"+", leading zeros dropped, country code kept), then is hashed; a device id (IDFA or GAID) is
lowercased, then hashed. Values already 64 lowercase hex pass through unhashed.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from audience_pipelines.identifiers.hashing import as_string_array, hash_shaped, phone_digits, trim_lower

# Identifier kind -> TikTok's id schema (device ids: IDFA_SHA256 or GAID_SHA256, by setting).
TIKTOK_SCHEMAS: dict[str, str] = {"email": "EMAIL_SHA256", "phone": "PHONE_SHA256"}


def tiktok_email(values: pa.Array) -> pa.Array:
    """No "+suffix", no dots before the "@": "first.last+ads@example.com" -> "firstlast@example.com"."""
    v = trim_lower(values)
    local = pc.replace_substring_regex(v, r"@.*$", "")
    domain = pc.replace_substring_regex(v, r"^[^@]*", "")  # "@example.com"
    local = pc.replace_substring(pc.replace_substring_regex(local, r"\+.*$", ""), ".", "")
    return pc.if_else(pc.match_substring(v, "@"), pc.binary_join_element_wise(local, domain, ""), v)


_SHAPERS = {"email": tiktok_email, "phone": phone_digits, "device_id": trim_lower}


def to_tiktok(kind: str, canonical_values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The SHA-256 hex TikTok expects for this kind; null where nothing usable is left."""
    if kind not in _SHAPERS:
        raise ValueError(f"TikTok has no id schema for kind {kind!r}; kinds: {sorted(_SHAPERS)}")
    return hash_shaped(as_string_array(canonical_values), _SHAPERS[kind])
