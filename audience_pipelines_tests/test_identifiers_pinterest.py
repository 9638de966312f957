"""Pinterest records: known SHA-256 vectors for emails and MAIDs."""

import pyarrow as pa
import pytest

from audience_pipelines.identifiers import normalize
from audience_pipelines.identifiers.pinterest import to_pinterest

EMAIL_VECTOR = "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"  # sha256("test@example.com")
# sha256("ab12cd34-0000-4000-8000-00000000abcd")
MAID_VECTOR = "4ce232bc11007c5fea80bded062f824e2543907c42fa1b776cd1c789407edbc1"


def sent(kind, values):
    return to_pinterest(kind, normalize(kind, pa.array(values, pa.string())).values).to_pylist()


def test_email_is_trimmed_lowercased_and_hashed():
    assert sent("email", ["  Test@Example.COM ", "test@example.com"]) == [EMAIL_VECTOR, EMAIL_VECTOR]


def test_maid_is_lowercased_and_hashed():
    assert sent("device_id", ["AB12CD34-0000-4000-8000-00000000ABCD", " ab12cd34-0000-4000-8000-00000000abcd "]) == [
        MAID_VECTOR, MAID_VECTOR]


def test_prehashed_values_pass_through_and_blanks_become_null():
    assert to_pinterest("email", pa.array([EMAIL_VECTOR, None, "  "])).to_pylist() == [EMAIL_VECTOR, None, None]
    # Canonical emails arrive lowercased, so an upper-case hash column is passed through as a hash too.
    assert sent("email", [EMAIL_VECTOR.upper()]) == [EMAIL_VECTOR]


def test_other_kinds_are_refused():
    with pytest.raises(ValueError, match="Pinterest customer lists take no 'phone'"):
        to_pinterest("phone", pa.array(["+14155552671"]))
