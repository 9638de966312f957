"""X custom audiences: the value sent under each user-object key, with known SHA-256 vectors."""

import pyarrow as pa
import pytest

from audience_pipelines.destinations.x_ads import X_KINDS
from audience_pipelines.identifiers import normalize
from audience_pipelines.identifiers.x import X_FIELDS, handle_hash, to_x

ADSAPI = "49e0be2aeccfb51a8dee4c945c8a70a9ac500cf6f5cb08112575f74db9b1470d"  # X's documented example
JOHN = "855f96e983f1f8e8be944692b6f719fd54329826cb62e98015efee8e2e071dd4"  # sha256("john@example.com")
ID_143567 = "617b8747525a154b1ecf75a42d883df00e0dd6d0f981bea57ac7bdce73e57eae"  # sha256("143567")
PHONE_E164 = "cb6880e416769253645cb9c6b8989154bf66a56a77fc14c81fb1019663cbb928"  # sha256("+14155552671")
PHONE_DIGITS = "758fbf68945f21c416814c539ab578876c8d98fb69e6da692def92cd52417fe0"  # sha256("14155552671")
IDFA = "225859d35b46df63b4fb381eb3f815b2ef4620bec0a79f2115a6a3eb71a5fa1a"  # sha256 of X's IDFA example
ANDROID_ID = "38bb33cb239524887c276ca99f9a077bc7161629804b914f4fd52e19dcffe92c"  # sha256("af3802a465767e36")


def sent(kind, values, **kw):
    return to_x(kind, normalize(kind, pa.array(values, pa.string()), default_region="US").values, **kw).to_pylist()


def test_handle_vector_from_x_docs():
    assert handle_hash(pa.array(["adsapi", "@AdsAPI", " @adsapi "])).to_pylist() == [ADSAPI] * 3


def test_email_trimmed_lowercased_hashed():
    assert sent("email", [" John@Example.com ", "john@example.com", None, ""]) == [JOHN, JOHN, None, None]


def test_twitter_id_is_the_hashed_plain_integer():
    assert sent("user_id", ["143567", " 0143567 ", "@jack", "12ab", None]) == [ID_143567, ID_143567, None, None, None]


def test_phone_e164_with_plus_by_default_digits_on_request():
    numbers = ["+1 415 555 2671", "(415) 555-2671", "0014155552671"]
    assert sent("phone", numbers) == [PHONE_E164] * 3
    assert sent("phone", numbers, phone_format="digits") == [PHONE_DIGITS] * 3


def test_device_ids_lowercased_dashes_kept():
    assert sent("device_id", ["4B61639E-47CC-4056-A16A-C8217E029462", "af3802a465767e36"]) == [IDFA, ANDROID_ID]


def test_partner_user_id_is_plain():
    assert sent("external_id", [" u-1 ", "U-2", "", None]) == ["u-1", "U-2", None, None]


def test_prehashed_values_pass_through():
    assert sent("email", [JOHN.upper(), JOHN]) == [JOHN, JOHN]
    assert sent("phone", [PHONE_E164]) == [PHONE_E164]
    assert to_x("user_id", pa.array([ID_143567])).to_pylist() == [ID_143567]


def test_kinds_and_errors():
    assert set(X_FIELDS) == X_KINDS
    assert set(X_FIELDS.values()) == {"email", "phone_number", "twitter_id", "device_id", "partner_user_id"}
    with pytest.raises(ValueError, match="no key for kind 'first_name'"):
        to_x("first_name", pa.array(["x"]))
    with pytest.raises(ValueError, match="phone_format"):
        to_x("phone", pa.array(["+14155552671"]), phone_format="plus")
