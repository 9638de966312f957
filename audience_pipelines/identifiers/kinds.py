"""Identifier kinds and each platform's name for them: plain data, light to import."""

from __future__ import annotations

KINDS: tuple[str, ...] = (
    "email", "phone", "first_name", "last_name", "country", "zip", "city", "state",
    "gender", "birth_year", "user_id", "external_id", "device_id",
)

META_FIELDS: dict[str, str] = {
    "email": "EMAIL",
    "phone": "PHONE",
    "first_name": "FN",
    "last_name": "LN",
    "country": "COUNTRY",
    "zip": "ZIP",
    "city": "CT",
    "state": "ST",
    "gender": "GEN",
    "birth_year": "DOBY",
    "external_id": "EXTERN_ID",
    "device_id": "MADID",
}

# Google matches on a name and address only whole: first and last name, country and postal code.
ADDRESS_KINDS: tuple[str, ...] = ("first_name", "last_name", "country", "zip")
