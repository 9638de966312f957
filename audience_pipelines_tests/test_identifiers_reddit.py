"""Reddit's identifier rules on known vectors (destination-apis.md Part 2 §3)."""

import hashlib

import pyarrow as pa
import pytest

from audience_pipelines.identifiers import normalize
from audience_pipelines.identifiers.reddit import reddit_email, to_reddit

EMAIL_VECTOR = "ff8d9819fc0e12bf0d24892e45987e249a28dce836a85cad60e28eaaa8c6d976"
IDFA = "EA7583CD-A667-48BC-B806-42ECB2B48606"
IDFA_VECTOR = "70574fa9c8f498a7b2e5c8712b1126de7b1406fd02fdc591821c5bd33092fd1c"
AAID = "cdda802e-fb9c-47ad-9866-0794d394c912"
AAID_VECTOR = "f23b554b2a8fb732a8b973733832e70f018da7bc294dfea289735a07d5dd2c9f"


def h(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def reddit(kind, values, **kw):
    return to_reddit(kind, pa.array(values, pa.string()), **kw).to_pylist()


def canonical_then_reddit(kind, values, **kw):
    """The engine's path: canonical form first (trimmed, lowercased, validated), then Reddit's."""
    return to_reddit(kind, normalize(kind, pa.array(values, pa.string())).values, **kw).to_pylist()


def test_email_vector_raw_and_through_the_canonical_form():
    raw = ["alice@example.com", "Al.ice$+Apple@Example.Com"]
    assert reddit("email", raw) == [EMAIL_VECTOR, EMAIL_VECTOR]
    assert canonical_then_reddit("email", [" Al.ice$+Apple@Example.Com ", "ALICE@example.com"]) == [
        EMAIL_VECTOR, EMAIL_VECTOR]


def test_email_rules_apply_to_every_domain():
    assert reddit_email(pa.array([
        "first.last+news@company.co.uk",  # dots and +suffix gone, not only for Gmail
        "o'brien-smith_1@mail.example.org",  # every symbol of the username goes
        "a+b+c@x.io",  # cut from the first "+"
        "dots.in@sub.domain.com",  # the domain keeps its dots
    ])).to_pylist() == ["firstlast@company.co.uk", "obriensmith1@mail.example.org", "a@x.io", "dotsin@sub.domain.com"]


def test_nothing_usable_is_null_and_prehashed_passes_through():
    assert reddit("email", [None, "", "+tag@example.com", "...@example.com", "a" * 64]) == [
        None, None, None, None, "a" * 64]


def test_device_ids_keep_vendor_casing():
    assert reddit("device_id", [IDFA, AAID, None]) == [IDFA_VECTOR, AAID_VECTOR, None]


def test_canonical_form_lowercases_idfas_so_upper_restores_them():
    # canonical.normalize lowercases device ids: kept as given, an IDFA hashes to what Reddit never matches.
    assert canonical_then_reddit("device_id", [IDFA]) == [h(IDFA.lower())] != [IDFA_VECTOR]
    assert canonical_then_reddit("device_id", [IDFA], device_id_case="upper") == [IDFA_VECTOR]
    assert canonical_then_reddit("device_id", [AAID]) == [AAID_VECTOR]
    assert reddit("device_id", [IDFA], device_id_case="lower") == [h(IDFA.lower())]


def test_phone_is_not_a_reddit_identifier():
    with pytest.raises(ValueError, match="no column for kind 'phone'"):
        to_reddit("phone", pa.array(["+14155552671"]))
