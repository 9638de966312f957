"""LinkedIn's forms of canonical identifiers, with known SHA-256 vectors."""

import pyarrow as pa
import pytest

from audience_pipelines.identifiers import normalize
from audience_pipelines.identifiers.linkedin import LINKEDIN_FIELDS, to_linkedin

# sha256("test@example.com"), computed independently (e.g. `printf %s test@example.com | sha256sum`).
EMAIL_VECTOR = "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"


def sent(kind, values):
    return to_linkedin(kind, pa.array(values, pa.string())).to_pylist()


def test_email_is_trimmed_lowercased_and_hashed():
    assert sent("email", ["test@example.com", " Test@Example.COM ", EMAIL_VECTOR, None, ""]) == [
        EMAIL_VECTOR, EMAIL_VECTOR, EMAIL_VECTOR, None, None]
    # From raw warehouse text through the engine's canonical form.
    canonical = normalize("email", pa.array(["  TEST@example.com"])).values
    assert to_linkedin("email", canonical).to_pylist() == [EMAIL_VECTOR]


def test_plain_text_kinds():
    aid = "38400000-8cf0-11bd-b23e-10b96e40000d"
    assert sent("device_id", [aid, f" {aid} ", ""]) == [aid, aid, None]  # GOOGLE_AID: as given, not hashed
    assert sent("first_name", [" josé ", EMAIL_VECTOR]) == ["josé", None]  # a hash cannot be sent as a name
    assert sent("last_name", ["o'brien"]) == ["o'brien"]
    assert sent("country", ["us", "GB", "usa", EMAIL_VECTOR, None]) == ["US", "GB", None, None, None]


def test_fields_and_unknown_kinds():
    assert LINKEDIN_FIELDS == {"email": "SHA256_EMAIL", "device_id": "GOOGLE_AID", "first_name": "firstName",
                               "last_name": "lastName", "country": "country"}
    with pytest.raises(ValueError, match="phone"):
        sent("phone", ["+14155552671"])
