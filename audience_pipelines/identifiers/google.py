"""Google Ads Customer Match: the exact value sent for each identifier kind.

Input is the canonical form from `canonical.normalize`. Rules follow destination-apis.md
section 0: email trimmed and lowercased, phone in E.164 *with* the "+", first and last name
trimmed and lowercased, each then SHA-256 hashed; country code (ISO-2), postal code, mobile id
and third-party user id are sent in plain text. Gmail dots are kept: Customer Match says
removing them is not required, and a hash of the address as given matches what people typed.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from audience_pipelines.identifiers.kinds import ADDRESS_KINDS
from audience_pipelines.identifiers.hashing import as_string_array, blank_to_null, hash_shaped, is_sha256_hex

# Identifier kind -> the UserIdentifier field (or addressInfo subfield) that carries it.
GOOGLE_FIELDS: dict[str, str] = {
    "email": "hashedEmail",
    "phone": "hashedPhoneNumber",
    "first_name": "hashedFirstName",
    "last_name": "hashedLastName",
    "country": "countryCode",
    "zip": "postalCode",
    "user_id": "thirdPartyUserId",
    "device_id": "mobileId",
}
HASHED_KINDS = frozenset({"email", "phone", "first_name", "last_name"})
# addressInfo is matched only with all four parts (Google's rule for name + address matching).

_NULL_STR = pa.scalar(None, pa.string())


def _country(values: pa.Array) -> pa.Array:
    # Sent in plain text, so a hashed value cannot be used; anything but ISO-2 letters is dropped.
    upper = pc.utf8_upper(pc.utf8_trim_whitespace(values))
    return pc.if_else(pc.fill_null(pc.match_substring_regex(upper, r"^[A-Z]{2}$"), False), upper, _NULL_STR)


def _plain(values: pa.Array) -> pa.Array:
    return blank_to_null(pc.utf8_trim_whitespace(values))


def _zip(values: pa.Array) -> pa.Array:
    # Plain text too: a pre-hashed postal code cannot be sent.
    plain = _plain(values)
    return pc.if_else(is_sha256_hex(pc.utf8_lower(plain)), _NULL_STR, plain)


def to_google(kind: str, canonical_values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The value Google expects in `GOOGLE_FIELDS[kind]`; null where nothing usable is left."""
    if kind not in GOOGLE_FIELDS:
        raise ValueError(f"Google Customer Match has no field for kind {kind!r}; kinds: {sorted(GOOGLE_FIELDS)}")
    values = as_string_array(canonical_values)
    if kind in HASHED_KINDS:
        return hash_shaped(values)
    if kind == "country":
        return _country(values)
    if kind == "zip":
        return _zip(values)
    if kind == "device_id":
        return pc.utf8_lower(_plain(values))
    return _plain(values)
