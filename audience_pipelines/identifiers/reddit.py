"""Reddit Ads custom audiences: the exact value sent in each `user_data` column.

Reddit takes two columns only, both SHA-256 lowercase hex (destination-apis.md, Part 2 §3):

- `EMAIL_SHA256`: Reddit's canonical email, for every domain (not only Gmail): lowercase, cut
  from the first "+" up to the "@", remove every character of the username that is not a-z or
  0-9, then hash. `Al.ice$+Apple@Example.Com` and `alice@example.com` hash alike. Reddit's page
  shows ASCII examples only; a non-ASCII letter in a username is removed like a symbol (as the
  third-party clients do) [unverified]. A username left empty means no usable email.
- `MAID_SHA256`: the device id hashed in its vendor casing (IDFA upper case, AAID lower case,
  dashes kept). `canonical.normalize` lowercases every device id, so an IDFA reaches this module
  lowercased and would hash to a value Reddit never matches: `case="upper"` restores it for a
  column of IDFAs only ("keep" hashes what it is given).

A value already 64 lowercase hex is a pre-hashed warehouse column and passes through.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from audience_pipelines.identifiers.hashing import as_string_array, hash_shaped

REDDIT_COLUMNS: dict[str, str] = {"email": "EMAIL_SHA256", "device_id": "MAID_SHA256"}

DeviceIdCase = Literal["keep", "upper", "lower"]
_NULL_STR = pa.scalar(None, pa.string())


def reddit_email(values: pa.Array) -> pa.Array:
    """Reddit's canonical email (unhashed); null where no username is left."""
    lower = pc.utf8_lower(pc.utf8_trim_whitespace(values))
    parts = pc.extract_regex(lower, r"^(?P<user>[^@]*)@(?P<domain>[^@]*)$")  # null unless exactly one "@"
    user = pc.replace_substring_regex(pc.struct_field(parts, "user"), r"\+.*$", "")
    user = pc.replace_substring_regex(user, r"[^a-z0-9]", "")
    email = pc.binary_join_element_wise(user, pc.struct_field(parts, "domain"), "@")
    return pc.if_else(pc.fill_null(pc.equal(user, ""), True), _NULL_STR, email)


def _device_id(case: DeviceIdCase):
    def shape(values: pa.Array) -> pa.Array:
        values = pc.utf8_trim_whitespace(values)
        if case == "upper":
            return pc.utf8_upper(values)
        if case == "lower":
            return pc.utf8_lower(values)
        return values
    return shape


def to_reddit(kind: str, canonical_values: pa.Array | pa.ChunkedArray,
              device_id_case: DeviceIdCase = "keep") -> pa.Array:
    """The hex digest Reddit expects in `REDDIT_COLUMNS[kind]`; null where nothing usable is left."""
    if kind not in REDDIT_COLUMNS:
        raise ValueError(f"Reddit has no column for kind {kind!r}; kinds: {sorted(REDDIT_COLUMNS)}")
    values = as_string_array(canonical_values)
    if kind == "email":
        return hash_shaped(values, reddit_email)
    return hash_shaped(values, _device_id(device_id_case))
