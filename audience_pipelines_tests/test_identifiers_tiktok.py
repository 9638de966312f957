"""TikTok's identifier rules (destination-apis.md section 0), with known SHA-256 vectors."""

import pyarrow as pa
import pytest

from audience_pipelines.identifiers.canonical import normalize
from audience_pipelines.identifiers.tiktok import tiktok_email, to_tiktok

# sha256 of the shaped values, computed independently (printf '%s' VALUE | sha256sum).
TEST_AT_EXAMPLE = "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"  # test@example.com
JOHNSMITH_GMAIL = "3586de92bb3636d0885a12eff961429a32e4ebd764b96f50d85d016f9338d586"  # johnsmith@gmail.com
JOHN_DOT_SMITH_GMAIL = "d0c648bc36f12061bec770df216cea2ab95851b9350fd54b658de53b0407767a"  # john.smith@gmail.com
PHONE_US = "758fbf68945f21c416814c539ab578876c8d98fb69e6da692def92cd52417fe0"  # 14155552671
DEVICE = "4ce232bc11007c5fea80bded062f824e2543907c42fa1b776cd1c789407edbc1"  # ab12cd34-0000-4000-8000-00000000abcd


def tiktok(kind, values, **kw):
    return to_tiktok(kind, normalize(kind, pa.array(values, pa.string()), **kw).values).to_pylist()


def test_email_loses_plus_suffix_and_every_dot_of_its_local_part():
    assert tiktok("email", [" Te.St+Promo@Example.com ", "test@example.com", "john.smith@gmail.com",
                            "John.Smith+news+more@Gmail.com"]) == [
        TEST_AT_EXAMPLE, TEST_AT_EXAMPLE, JOHNSMITH_GMAIL, JOHNSMITH_GMAIL]
    assert JOHN_DOT_SMITH_GMAIL not in tiktok("email", ["john.smith@gmail.com"])


def test_email_shape_keeps_the_domain_dots_on_every_domain():
    shaped = tiktok_email(pa.array(["a.b+c@mail.example.co.uk", "x.y@outlook.com", "plain@example.org", None]))
    assert shaped.to_pylist() == ["ab@mail.example.co.uk", "xy@outlook.com", "plain@example.org", None]


def test_phone_is_digits_with_country_code_and_no_plus():
    assert tiktok("phone", ["+1 415 555 2671", "(415) 555-2671", "0014155552671"], default_region="US") == \
        [PHONE_US] * 3
    assert to_tiktok("phone", pa.array(["+14155552671"])).to_pylist() == [PHONE_US]


def test_device_id_is_lowercased_then_hashed():
    assert tiktok("device_id", ["AB12CD34-0000-4000-8000-00000000ABCD", " ab12cd34-0000-4000-8000-00000000abcd "]) \
        == [DEVICE, DEVICE]


def test_prehashed_values_pass_through_and_blanks_are_null():
    assert tiktok("email", [TEST_AT_EXAMPLE.upper(), "", None]) == [TEST_AT_EXAMPLE, None, None]
    assert to_tiktok("device_id", pa.array([DEVICE, None])).to_pylist() == [DEVICE, None]


def test_every_value_is_lowercase_sha256_hex():
    out = tiktok("email", [f"user.{i}+x@example.com" for i in range(50)])
    assert len(set(out)) == 50 and all(len(v) == 64 and v == v.lower() for v in out)


def test_kinds_tiktok_has_no_schema_for_are_refused():
    with pytest.raises(ValueError, match="no id schema for kind 'first_name'"):
        to_tiktok("first_name", pa.array(["ann"]))
