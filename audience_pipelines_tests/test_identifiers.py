import hashlib

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audience_pipelines.identifiers import KINDS, META_FIELDS, Normalized, normalize, sha256_hex, to_meta
from audience_pipelines.identifiers.hashing import is_sha256_hex


def sha(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


def norm(kind, values, **kw) -> tuple[list, list]:
    out = normalize(kind, pa.array(values), **kw)
    return out.values.to_pylist(), out.invalid.to_pylist()


# --- email ---------------------------------------------------------------

def test_email_trim_and_lowercase():
    values, invalid = norm("email", ["  John.Doe@Example.COM ", "\tA+b@Sub.Example.org\n"])
    assert values == ["john.doe@example.com", "a+b@sub.example.org"]
    assert invalid == [False, False]


@pytest.mark.parametrize(
    "bad", ["no-at-sign", "a@b", "two@@x.com", "sp ace@x.com", "@x.com", "a@.com", "a@x.", "a@x..com",
            "name at example.com", "name@"],
)
def test_malformed_emails_are_invalid(bad):
    assert norm("email", [bad]) == ([None], [True])


def test_null_and_blank_are_null_but_not_invalid():
    assert norm("email", [None, "", "   "]) == ([None, None, None], [False, False, False])


def test_chunked_and_dictionary_input():
    chunked = pa.chunked_array([["A@X.COM"], [None, "b@y.io"]])
    assert normalize("email", chunked).values.to_pylist() == ["a@x.com", None, "b@y.io"]
    encoded = pa.array(["A@X.COM", "A@X.COM"]).dictionary_encode()
    assert normalize("email", encoded).values.to_pylist() == ["a@x.com", "a@x.com"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(), st.emails()), max_size=20))
def test_email_normalization_is_idempotent_and_total(xs):
    once = normalize("email", pa.array(xs, pa.string()))
    twice = normalize("email", once.values)
    assert twice.values.equals(once.values)
    assert not any(twice.invalid.to_pylist())


@settings(max_examples=100, deadline=None)
@given(st.emails())
def test_generated_emails_are_valid(email):
    values, invalid = norm("email", [email])
    assert invalid == [False] and values == [email.lower()]


# --- phone ---------------------------------------------------------------

def test_phone_national_and_international_formats():
    assert norm("phone", ["(415) 555-2671", "415.555.2671", "+1 415-555-2671"], default_region="US") == (
        ["+14155552671"] * 3, [False] * 3)
    assert norm("phone", ["+44 20 7946 0958", "0044 20 7946 0958", "020 7946 0958"], default_region="GB") == (
        ["+442079460958"] * 3, [False] * 3)


def test_phone_00_prefix_works_whatever_the_region():
    # NANP's international prefix is 011, so phonenumbers alone would misread this.
    assert norm("phone", ["0044 20 7946 0958", "0033 1 42 68 53 00"], default_region="US")[0] == [
        "+442079460958", "+33142685300"]


def test_phone_without_region_needs_international_format():
    assert norm("phone", ["+44 20 7946 0958", "020 7946 0958"]) == (["+442079460958", None], [False, True])


@pytest.mark.parametrize("bad", ["12", "n/a", "555-CALL-NOW", "+1 555 123 4567", "0000000000", "+999 1234"])
def test_invalid_phones(bad):
    assert norm("phone", [bad], default_region="US") == ([None], [True])


def test_phone_extension_is_dropped():
    assert norm("phone", ["+1 650 253 0000 ext. 12"])[0] == ["+16502530000"]


def test_phone_per_row_region():
    values, invalid = norm(
        "phone", ["(415) 555-2671", "020 7946 0958", "020 7946 0958", "01 42 68 53 00"],
        default_region=pa.array(["US", "GB", None, "fr"]),
    )
    assert values == ["+14155552671", "+442079460958", None, "+33142685300"]
    assert invalid == [False, False, True, False]


def test_phone_region_length_must_match():
    with pytest.raises(ValueError):
        normalize("phone", pa.array(["1"]), default_region=pa.array(["US", "GB"]))


# --- names, country, other kinds ----------------------------------------

def test_unicode_names():
    decomposed = "Jose\u0301"  # "José" with a combining accent
    values, invalid = norm("first_name", ["  José ", "ZOË", "Müller-Lüdenscheidt", "O'Brien", decomposed, "123", "Mary Ann"])
    assert values == ["josé", "zoë", "müller-lüdenscheidt", "o'brien", "josé", None, "mary ann"]
    assert invalid == [False, False, False, False, False, True, False]


def test_country():
    values, invalid = norm("country", ["us", " US ", "gb", "UK", "USA", "1x", "", None])
    assert values == ["US", "US", "GB", "GB", None, None, None, None]
    assert invalid == [False, False, False, False, True, True, False, False]


def test_ids_cast_and_trim():
    assert norm("user_id", pa.array([42, None, 7], pa.int64()))[0] == ["42", None, "7"]
    assert norm("external_id", [" Ab-1 ", ""])[0] == ["Ab-1", None]
    assert norm("device_id", [" 6D92078A-8246-4BA4-AE5B-76104861E7DC "])[0] == ["6d92078a-8246-4ba4-ae5b-76104861e7dc"]
    assert norm("zip", [" 94107-1234 "])[0] == ["94107-1234"]


def test_gender_and_birth_year():
    assert norm("gender", ["M", "Female", "x"]) == (["m", "f", None], [False, False, True])
    assert norm("birth_year", pa.array([1990, 2999, None]))[0] == ["1990", None, None]


def test_unknown_kind():
    with pytest.raises(ValueError):
        normalize("fax", pa.array(["1"]))


def test_all_kinds_accept_empty_input():
    for kind in KINDS:
        out = normalize(kind, pa.array([], pa.string()))
        assert isinstance(out, Normalized) and len(out.values) == 0 and out.values.type == pa.string()


def test_prehashed_values_survive_normalization():
    digest = sha("john.doe@example.com")
    assert norm("email", [digest.upper(), f" {digest} "])[0] == [digest, digest]
    assert norm("phone", [digest], default_region="US") == ([digest], [False])


# --- hashing ----------------------------------------------------------------

def test_sha256_hex():
    out = sha256_hex(pa.array(["a", None, "a", "é"]))
    assert out.to_pylist() == [sha("a"), None, sha("a"), sha("é")]
    assert is_sha256_hex(pa.array([sha("a"), sha("a").upper(), "abc", None])).to_pylist() == [True, False, False, False]


# --- Meta ------------------------------------------------------------------

def meta(kind, raw, **kw):
    return to_meta(kind, normalize(kind, pa.array(raw), **kw).values).to_pylist()


def test_meta_fields_cover_mapped_kinds():
    assert META_FIELDS["email"] == "EMAIL" and META_FIELDS["device_id"] == "MADID"
    assert set(META_FIELDS) <= set(KINDS)
    with pytest.raises(ValueError):
        to_meta("user_id", pa.array(["1"]))


def test_meta_email_and_phone():
    assert meta("email", ["  John.Doe@Example.COM "]) == [sha("john.doe@example.com")]
    assert meta("phone", ["+1 650 253 0000", "(650) 253-0000", "020 7946 0958"], default_region="US")[:2] == [
        sha("16502530000")] * 2
    assert meta("phone", ["020 7946 0958"], default_region="GB") == [sha("442079460958")]


def test_meta_names_keep_utf8_letters_drop_punctuation():
    assert meta("first_name", ["  José ", "ZOË", "Müller-Lüdenscheidt", "O'Brien", "Mary Ann"]) == [
        sha("josé"), sha("zoë"), sha("müllerlüdenscheidt"), sha("obrien"), sha("maryann")]


def test_meta_location_fields():
    assert meta("city", ["San Francisco", "St. Louis", "東京"]) == [sha("sanfrancisco"), sha("stlouis"), None]
    assert meta("state", [" CA "]) == [sha("ca")]
    assert meta("zip", ["94107-1234", "94107", "SW1A 1AA", "00-950"]) == [
        sha("94107"), sha("94107"), sha("sw1a1aa"), sha("00950")]
    assert meta("country", [" us ", "GB"]) == [sha("us"), sha("gb")]
    assert meta("gender", ["Male"]) == [sha("m")]
    assert meta("birth_year", pa.array([1984])) == [sha("1984")]


def test_meta_unhashed_fields():
    assert meta("device_id", ["6D92078A-8246-4BA4-AE5B-76104861E7DC", None]) == [
        "6d92078a-8246-4ba4-ae5b-76104861e7dc", None]
    assert meta("external_id", ["CUS_001", None]) == ["CUS_001", None]


def test_meta_prehashed_passthrough_and_nulls():
    digest = sha("john.doe@example.com")
    assert to_meta("email", pa.array([digest, None, "a@b.co"])).to_pylist() == [digest, None, sha("a@b.co")]
    # A digest must not be shaped first (digits-only would mangle it).
    assert to_meta("phone", pa.array([digest])).to_pylist() == [digest]


def test_invalid_counts():
    out = normalize("email", pa.array(["ok@x.com", "bad", None, "", "bad@", "Ok@X.com"]))
    assert pc.sum(out.invalid).as_py() == 2
    assert out.values.null_count == 4


def test_large_repetitive_input_keeps_every_row():
    # Its speed is measured by benchmarks/identifiers.py, not asserted here (a wall-clock limit fails on a busy machine).
    base = [f"({415 + i % 3}) 555-{2600 + i % 50:04d}" for i in range(500)]
    phones = pa.array(base * 200)  # 100k rows, 150 distinct
    out = normalize("phone", phones, default_region="US")
    hashed = to_meta("phone", out.values)
    assert len(hashed) == 100_000 and out.values.null_count == 0
    assert hashed[:3].to_pylist() == [sha("14155552600"), sha("14165552601"), sha("14175552602")]
    assert len(pc.unique(hashed)) == 150


def test_sha256_of_many_distinct_values_is_hashlibs_in_order():
    # Past 10,000 distinct values the hashes come from DuckDB's native sha256, in the values' order.
    values = [None if i % 11 == 0 else f"pérson{i}@example.com" if i % 3 else f"{i}" for i in range(30_000)]
    values += ["", "ß" * 500, "p1@example.com"]
    expected = [None if v is None else hashlib.sha256(v.encode()).hexdigest() for v in values]
    assert sha256_hex(pa.chunked_array([values[:7000], values[7000:]], pa.string())).to_pylist() == expected
