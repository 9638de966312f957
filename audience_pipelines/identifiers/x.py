"""X (Twitter) Ads custom audiences: the exact value sent under each user-object key.

Input is the canonical form from `canonical.normalize`. X's "Custom Audiences User Data" page:
every key except `partner_user_id` is SHA-256 hex (lowercase, no salt) of the normalized value.
- email: trimmed, lowercased.
- twitter_id (our `user_id`): the plain integer ("143567"), then hashed, as the page says and
  as X's own example request shows (64-hex twitter_id values).
- device_id: IDFA lowercased with dashes; AdID not capitalized, with dashes; kept as given otherwise.
- handle: no "@", trimmed, lowercased (sha256("adsapi") is X's example). No identifier kind maps to
  it yet (`kinds.KINDS` has no handle); `handle_hash` is here for when one does.
- phone_number: X documents no rule [unverified]. We send E.164 *with* the "+" ("+14155552671",
  the ITU form, which the OSS client the reference cites uses); the destination setting
  `phone_format: digits` sends "14155552671" instead.
- partner_user_id: plain text, trimmed.
A value already 64 lowercase hex is taken as pre-hashed and passes through.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from audience_pipelines.identifiers.hashing import (
    as_string_array, blank_to_null, hash_shaped, phone_digits, trim_lower,
)

# Identifier kind -> the key of X's user object.
X_FIELDS: dict[str, str] = {
    "email": "email",
    "phone": "phone_number",
    "user_id": "twitter_id",
    "device_id": "device_id",
    "external_id": "partner_user_id",
}
PHONE_FORMATS = ("e164", "digits")
_NULL_STR = pa.scalar(None, pa.string())


def _twitter_id(values: pa.Array) -> pa.Array:
    # A standard integer: digits only, no leading zeros; anything else cannot be an X user id.
    trimmed = pc.utf8_trim_whitespace(values)
    digits = pc.if_else(pc.fill_null(pc.match_substring_regex(trimmed, r"^[0-9]+$"), False), trimmed, _NULL_STR)
    return pc.replace_substring_regex(digits, r"^0+([0-9])", r"\1")


def _handle(values: pa.Array) -> pa.Array:
    return pc.replace_substring_regex(trim_lower(values), r"^@", "")


def handle_hash(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """SHA-256 of an @handle as X wants it: "@AdsAPI " -> sha256("adsapi")."""
    return hash_shaped(values, _handle)


def to_x(kind: str, canonical_values: pa.Array | pa.ChunkedArray, phone_format: str = "e164") -> pa.Array:
    """The value X expects under `X_FIELDS[kind]`; null where nothing usable is left."""
    if kind not in X_FIELDS:
        raise ValueError(f"X custom audiences have no key for kind {kind!r}; kinds: {sorted(X_FIELDS)}")
    if phone_format not in PHONE_FORMATS:
        raise ValueError(f"phone_format is one of {PHONE_FORMATS}, got {phone_format!r}")
    values = as_string_array(canonical_values)
    if kind == "external_id":
        return blank_to_null(pc.utf8_trim_whitespace(values))
    if kind == "user_id":
        return hash_shaped(values, _twitter_id)
    if kind == "phone":
        return hash_shaped(values, phone_digits if phone_format == "digits" else pc.utf8_trim_whitespace)
    return hash_shaped(values, trim_lower)  # email, device_id
