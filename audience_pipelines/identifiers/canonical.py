"""Canonical (platform-neutral) form of each identifier kind, on Arrow arrays.

Canonical means "cleaned but not yet shaped for a platform": emails trimmed and
lowercased, phones in E.164 with "+", names NFC-lowercased. Platform modules
(`meta.py`, ...) derive their sent form from this.

Blank input becomes null and is *not* invalid (nothing to send); a non-blank
value that fails its rule becomes null *and* is flagged invalid, so pipelines
can count and report it.

Phone validity uses `phonenumbers.is_valid_number`, not `is_possible_number`:
the latter is a length check that accepts junk such as "+1 555 123 4567",
which no platform can ever match. Letters (vanity numbers) are rejected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc

from audience_pipelines.identifiers.kinds import KINDS
from audience_pipelines.identifiers.hashing import as_string_array, is_sha256_hex, map_unique


# Kinds that platforms hash: a 64-hex value here is a pre-hashed warehouse
# column and is passed through instead of failing e.g. the email pattern.
_HASHABLE = frozenset(
    {"email", "phone", "first_name", "last_name", "country", "zip", "city", "state",
     "gender", "birth_year"}
)

# No whitespace, separators or control chars anywhere; exactly one "@";
# a domain of at least two non-empty dot-separated labels.
_EMAIL_RE = r"^[^@\s\p{Z}\p{Cc}]+@[^@.\s\p{Z}\p{Cc}]+(\.[^@.\s\p{Z}\p{Cc}]+)+$"
_COUNTRY_ALIASES = {"UK": "GB"}  # "UK" is ISO-reserved for GB and common in CRMs
_GENDERS = {"m": "m", "male": "m", "man": "m", "f": "f", "female": "f", "woman": "f"}
_NULL_STR = pa.scalar(None, pa.string())


@dataclass(frozen=True)
class Normalized:
    values: pa.Array  # string; null where input was null/blank or invalid
    invalid: pa.Array  # bool; True where input was non-blank but failed its rule


def _blank_to_null(values: pa.Array) -> pa.Array:
    return pc.if_else(pc.equal(values, ""), _NULL_STR, values)


def _keep_if(mask: pa.Array, values: pa.Array) -> pa.Array:
    return pc.if_else(pc.fill_null(mask, False), values, _NULL_STR)


def _email(lower: pa.Array) -> pa.Array:
    """`lower`: already lowercased (normalize lowers every hashable kind once)."""
    return _keep_if(pc.match_substring_regex(lower, _EMAIL_RE), lower)


def _name(v: pa.Array) -> pa.Array:
    # NFC first so "e" + combining acute and "é" agree; again after lowering
    # because case mapping is per code point and may leave decomposed output.
    folded = pc.utf8_normalize(pc.utf8_lower(pc.utf8_normalize(v, "NFC")), "NFC")
    return _keep_if(pc.match_substring_regex(folded, r"\p{L}"), folded)


def _country(v: pa.Array) -> pa.Array:
    upper = pc.utf8_upper(v)
    for alias, code in _COUNTRY_ALIASES.items():
        upper = pc.if_else(pc.equal(upper, alias), code, upper)
    return _keep_if(pc.match_substring_regex(upper, r"^[A-Z]{2}$"), upper)


def _gender(v: pa.Array) -> pa.Array:
    return map_unique(pc.utf8_lower(v), _GENDERS.get)


def _birth_year(v: pa.Array) -> pa.Array:
    return _keep_if(pc.match_substring_regex(v, r"^(19|20)[0-9]{2}$"), v)


# A trailing extension ("x12", "ext. 12") is allowed; any other letter is not.
_EXTENSION = re.compile(r"\s*(?:ext\.?|extension|x|#)\s*\d+\s*$", re.IGNORECASE)
_LETTER = re.compile(r"[^\W\d_]")


def _to_e164(text: str, region: str | None) -> str | None:
    # phonenumbers maps vanity letters to digits ("555-CALL-NOW" -> a valid GB
    # number); in customer data letters mean junk, so reject them up front.
    if _LETTER.search(_EXTENSION.sub("", text)):
        return None
    # "00" is the international prefix almost everywhere but NANP (011), and
    # phonenumbers only honours it when it matches the default region's.
    if text.startswith("00"):
        text = "+" + text[2:]
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _region_code(region: str | None) -> str | None:
    if not region or not region.strip():
        return None
    region = region.strip().upper()
    return _COUNTRY_ALIASES.get(region, region)


_SEP = "\x1f"  # joins region and number into one dedup key; never in a region code


def _phone(v: pa.Array, default_region: str | pa.Array | pa.ChunkedArray | None) -> pa.Array:
    if default_region is None or isinstance(default_region, str):
        region = _region_code(default_region)
        return map_unique(v, lambda s: _to_e164(s, region))
    regions = as_string_array(default_region)
    if len(regions) != len(v):
        raise ValueError(f"default_region has {len(regions)} rows, values have {len(v)}")
    # Dedupe on (region, number) pairs so per-row regions stay cheap.
    keys = pc.binary_join_element_wise(pc.fill_null(regions, ""), v, _SEP)

    def convert(key: str) -> str | None:
        region, _, text = key.partition(_SEP)
        return _to_e164(text, _region_code(region))

    return map_unique(keys, convert)


_RULES = {
    "email": _email,
    "first_name": _name,
    "last_name": _name,
    "country": _country,
    "gender": _gender,
    "birth_year": _birth_year,
    "device_id": pc.utf8_lower,  # MADIDs (IDFA/GAID) compare case-insensitively
}


def normalize(
    kind: str,
    values: pa.Array | pa.ChunkedArray,
    *,
    default_region: str | pa.Array | pa.ChunkedArray | None = None,
) -> Normalized:
    """Canonicalize one identifier column.

    `default_region` (ISO-2, e.g. "US") is only used for `phone`, to parse
    national formats such as "(415) 555-2671". It may also be a per-row array
    (e.g. the customer's country column); null regions mean "international
    format only". Non-string input (int user ids) is cast to string first.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown identifier kind {kind!r}; expected one of {KINDS}")
    trimmed = _blank_to_null(pc.utf8_trim_whitespace(as_string_array(values)))
    lowered = pc.utf8_lower(trimmed) if kind in _HASHABLE else None
    if kind == "phone":
        out = _phone(trimmed, default_region)
    else:
        out = _RULES.get(kind, lambda v: v)(lowered if kind == "email" else trimmed)
    if lowered is not None:
        prehashed = is_sha256_hex(lowered)
        if pc.any(prehashed).as_py():
            out = pc.if_else(prehashed, lowered, out)
    invalid = pc.and_(pc.is_valid(trimmed), pc.is_null(out))
    return Normalized(values=out, invalid=invalid)
