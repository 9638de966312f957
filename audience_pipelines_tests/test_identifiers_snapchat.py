"""Snapchat's identifier forms, with the known vectors from destination-apis.md Part 2 §1."""

import hashlib

import pyarrow as pa
import pytest

from audience_pipelines.destinations.snapchat_ads import SNAP_KINDS
from audience_pipelines.identifiers.canonical import normalize
from audience_pipelines.identifiers.snapchat import SNAP_SCHEMAS, snap_phone, to_snap

PHONE_VECTOR = "2fd199db6d3fa9fe754886ff1822f2867fcb104a6639495eca25c2978efe4ed4"  # sha256("17067675127")
EMAIL_VECTOR = "b375b7bbddb3de3298fbc7641063d9f03a38e118aa4480c8ab9f58740982e8bd"  # sha256("person@email.com")


def h(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def sent(kind, values):
    return to_snap(kind, pa.array(values, pa.string())).to_pylist()


def test_phone_vectors_keep_the_country_code_and_drop_00_then_0():
    raw = ["+1(706)-767-5127", "001(706)-767-5127", "01(706)-767-5127"]
    assert snap_phone(pa.array(raw)).to_pylist() == ["17067675127"] * 3
    assert sent("phone", raw) == [PHONE_VECTOR] * 3
    assert h("17067675127") == PHONE_VECTOR
    # One "00", then one "0": "0001" -> "01" -> "1".
    assert snap_phone(pa.array(["0044 20 7946 0958", "0001"])).to_pylist() == ["442079460958", "1"]


def test_phone_from_the_canonical_e164_form():
    canonical = normalize("phone", pa.array(["+1(706)-767-5127", "001 706 767 5127"])).values
    assert canonical.to_pylist() == ["+17067675127", "+17067675127"]
    assert sent("phone", canonical.to_pylist()) == [PHONE_VECTOR, PHONE_VECTOR]


def test_email_vector_is_trimmed_and_lowercased():
    assert sent("email", ["Person@email.com ", "person@email.com"]) == [EMAIL_VECTOR, EMAIL_VECTOR]
    canonical = normalize("email", pa.array(["Person@email.com "])).values
    assert sent("email", canonical.to_pylist()) == [EMAIL_VECTOR]


def test_mobile_ad_id_is_lowercased_with_its_hyphens():
    madid = "AB12CD34-0000-4000-8000-0000000000FF"
    assert sent("device_id", [madid]) == [h("ab12cd34-0000-4000-8000-0000000000ff")]


def test_prehashed_values_pass_and_blanks_are_null():
    assert sent("email", [EMAIL_VECTOR, None, "  "]) == [EMAIL_VECTOR, None, None]
    assert sent("phone", [PHONE_VECTOR, "+-()"]) == [PHONE_VECTOR, None]


def test_schemas_and_kinds_agree():
    assert set(SNAP_SCHEMAS) == SNAP_KINDS
    assert set(SNAP_SCHEMAS.values()) == {"EMAIL_SHA256", "PHONE_SHA256", "MOBILE_AD_ID_SHA256"}
    with pytest.raises(ValueError, match="no schema for kind 'first_name'"):
        sent("first_name", ["x"])
