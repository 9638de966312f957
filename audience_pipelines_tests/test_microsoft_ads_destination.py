"""Microsoft Advertising Customer Match end to end: run_sync against FakeMicrosoftAds, asserting its final state."""

import hashlib

import pyarrow as pa
import pytest

from audience_pipelines.contract import CredentialsError, Target, TerminalError
from audience_pipelines.destinations.microsoft_ads import MicrosoftAds, MicrosoftAdsSettings
from audience_pipelines.destinations.microsoft_ads.client import MicrosoftAdsDestination
from audience_pipelines.engine import RunOptions, SnapshotStore, SyncAborted, SyncSpec, run_sync
from audience_pipelines_tests.fakes.microsoft_ads import FakeMicrosoftAds

# The Bulk doc's value for test@contoso.com (the Campaign Management doc's a8e34c39... is wrong).
CONTOSO = "f25ad364d33972379a7a4f4df33db142205f5c40eb19cfdb2fc5aaf117e10101"
TERMS_UI = "Tools > Audiences > Customer Match"


def h(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


@pytest.fixture
def ads():
    with FakeMicrosoftAds() as server:
        yield server


@pytest.fixture
def store(tmp_path):
    return SnapshotStore(tmp_path / "syncs", "ms")


def settings(ads, **overrides) -> MicrosoftAdsSettings:
    values = {"customer_id": ads.customer_id, "account_id": ads.account_id, "developer_token": ads.developer_token,
              "client_id": ads.client_id, "client_secret": ads.client_secret, "refresh_token": ads.refresh_token,
              "base_url": ads.url, "token_url": ads.token_url, "timeout_s": 5, **overrides}
    return MicrosoftAdsSettings(**{k: v for k, v in values.items() if v is not None})


def destination(ads, sleep=None, **overrides) -> MicrosoftAdsDestination:
    return MicrosoftAdsDestination(settings(ads, **overrides), sleep=sleep or (lambda s: None))


def table(rows: dict) -> pa.Table:
    return pa.table({"key": pa.array(list(rows), pa.string()), "email": pa.array(list(rows.values()), pa.string())})


def run(ads, store, rows: dict, run_id, *, target=None, dest=None, batch_size=None):
    dest = dest or destination(ads)
    spec = SyncSpec(name=store.sync, audience="a", destination="microsoft_ads", target=target or Target(name="vip"),
                    identifiers={"email": "email"}, batch_size=batch_size)
    try:
        return run_sync(spec, table(rows), dest, store, RunOptions(run_id=run_id))
    finally:
        dest.close()


def people(n, start=0) -> dict:
    return {f"k{i}": f"user{i}@example.com" for i in range(start, start + n)}


def hashes(rows: dict) -> set:
    return {h(e.strip().lower()) for e in rows.values()}


def requests(ads, route: str) -> list:
    return [r for r in ads.requests if r.route == route]


def assert_holds(ads, store, rows: dict, name="vip") -> None:
    """The list holds exactly these hashed emails and the snapshot agrees."""
    assert ads.members(ads.audience_id_by_name(name)) == hashes(rows)
    assert set(store.read()["key"].to_pylist()) == set(rows)


def test_settings_and_capabilities():
    s = MicrosoftAdsSettings(customer_id=" 1000001 ", account_id=2000001, developer_token="d", client_id="c",
                             refresh_token="r")
    assert (s.customer_id, s.account_id, s.client_secret, s.scope, s.membership_duration_days) == (
        "1000001", "2000001", None, "Account", 30)
    assert s.batch_size == 1000 and not s.accept_customer_match_terms
    assert MicrosoftAds.account(s) == "2000001"
    caps = MicrosoftAds.capabilities(s)
    assert caps.identifier_kinds == {"email"} and caps.match_identifiers == {"email"}
    assert caps.hashes_identifiers and caps.requires_identifier and caps.reports_size and not caps.accepts_fields
    assert caps.can_list_audiences and caps.can_create_audiences and not caps.reports_match_rate
    assert MicrosoftAds.capabilities(s.model_copy(update={"batch_size": 5})).max_batch_rows == 5
    base = {"customer_id": "1", "account_id": "2", "developer_token": "d", "client_id": "c", "refresh_token": "r"}
    for bad in ({"batch_size": 1001}, {"membership_duration_days": 391}, {"membership_duration_days": 0},
                {"account_id": "12-34"}, {"scope": "Campaign"}):
        with pytest.raises(ValueError):
            MicrosoftAdsSettings(**{**base, **bad})
    assert MicrosoftAdsSettings(**base, membership_duration_days=-1).membership_duration_days == -1


def test_emails_are_trimmed_lowercased_and_hashed(ads):
    dest = destination(ads)
    sent = dest.transform_identifier("email", pa.array(["test@contoso.com", " Test@Contoso.COM ", CONTOSO, None, ""]))
    assert sent.to_pylist() == [CONTOSO, CONTOSO, CONTOSO, None, None]
    assert dest.identifier_column("email") == "Email"
    dest.close()


def test_first_run_creates_the_list_once_and_adds_hashed_emails(ads, store):
    rows = {"a": "Test@Contoso.com", "b": "jane@example.org", "c": "not-an-email"}
    first = run(ads, store, rows, "r1")
    aid = ads.audience_id_by_name("vip")
    assert first.destination_audience_id == aid
    assert ads.members(aid) == {CONTOSO, h("jane@example.org")}
    assert (first.added, first.failed, first.set_aside) == (2, 0, 1)
    created = ads.audiences[aid]
    assert (created["Type"], created["Scope"], created["ParentId"], created["MembershipDuration"]) == (
        "CustomerList", "Account", ads.account_id, 30)
    assert created["Description"] == "Managed by audience_pipelines"
    # The fake fills SearchSize at the first upload, as Microsoft does hours later.
    assert first.audience_size == 2
    assert first.match_rate_basis != "reported by the platform"  # Microsoft gives no match rate
    (apply,) = requests(ads, "apply")
    assert (apply.n_items, apply.accept_terms, apply.status) == (2, None, 200)  # no AcceptCustomerMatchTerm

    second = run(ads, store, rows, "r2")  # a fresh client finds the list by name
    assert second.destination_audience_id == aid and len(ads.audiences) == 1
    assert (second.added, second.unchanged) == (0, 2)
    assert [r.status for r in requests(ads, "create")] == [200]


def test_customer_scope_and_membership_duration(ads, store):
    dest = destination(ads, scope="Customer", membership_duration_days=-1)
    run(ads, store, people(1), "r1", dest=dest)
    created = ads.audiences[ads.audience_id_by_name("vip")]
    assert (created["Scope"], created["ParentId"], created["MembershipDuration"]) == ("Customer", ads.customer_id, -1)


@pytest.mark.parametrize("ids_as_strings", [True, False], ids=["string-ids", "number-ids"])
def test_a_list_given_by_id_is_used(ids_as_strings, store):
    with FakeMicrosoftAds(ids_as_strings=ids_as_strings) as ads:
        ads.create_audience("other")
        aid = ads.create_audience("crm list")
        result = run(ads, store, people(3), "r1", target=Target(id=aid))
        assert result.destination_audience_id == aid and ads.members(aid) == hashes(people(3))
        assert requests(ads, "create") == [] and result.audience_size == 3


def test_an_unknown_id_or_another_kind_of_audience_is_a_clear_error(ads, store):
    with pytest.raises(TerminalError, match="customer list 9999999999 does not exist in account 2000001"):
        run(ads, store, people(2), "r1", target=Target(id="9999999999"))
    remarketing = ads.create_audience("site visitors", "RemarketingList")
    with pytest.raises(TerminalError, match="AudienceIdDoNotMatchAudienceType"):
        run(ads, store, people(2), "r1", target=Target(id=remarketing))
    with pytest.raises(TerminalError, match="not a number"):
        run(ads, store, people(2), "r1", target=Target(id="vip-list"))
    assert list(ads.audiences) == [remarketing] and requests(ads, "apply") == []
    # A remarketing list of the same name is not taken for the customer list, nor replaced by one.
    ads.create_audience("vip", "RemarketingList")
    with pytest.raises(TerminalError, match="customer list 'vip' was not created: DuplicateAudienceName"):
        run(ads, store, people(1), "r2")
    assert len(ads.audiences) == 2


def test_a_name_taken_since_the_lookup_is_used(ads):
    aid = ads.create_audience("vip")
    dest = destination(ads)
    assert dest.create_audience("vip") == aid  # DuplicateAudienceName: found again by name
    (create,) = requests(ads, "create")
    assert create.status == 200 and len(ads.audiences) == 1
    dest.close()


def test_second_run_removes_updates_and_adds_exactly(ads, store):
    base = people(5)
    run(ads, store, base, "r1")
    new = {k: v for k, v in base.items() if k != "k0"}
    new["k2"] = "changed2@example.com"
    new["k9"] = "user9@example.com"
    result = run(ads, store, new, "r2")
    assert (result.added, result.removed, result.updated, result.failed) == (1, 1, 1, 0)
    assert_holds(ads, store, new)
    assert h("user2@example.com") not in ads.members(ads.audience_id_by_name("vip"))  # the old email withdrawn


def test_batches_stay_within_the_batch_size_and_microsofts_limit(ads, store):
    run(ads, store, people(5), "r1", dest=destination(ads, batch_size=2))
    assert [r.n_items for r in requests(ads, "apply")] == [2, 2, 1]
    many = people(1001, start=100)
    run(ads, SnapshotStore(store.dir.parent, "limit"), many, "r2", target=Target(name="big"))
    assert [r.n_items for r in requests(ads, "apply")][3:] == [1000, 1]
    assert ads.members(ads.audience_id_by_name("big")) == hashes(many)


@pytest.mark.parametrize("status, envelope", [(429, "AdApiFaultDetail"), (400, "ApiFaultDetail"),
                                              (500, "AdApiFaultDetail")], ids=["429", "400-operation", "500"])
def test_call_rate_exceeded_waits_a_minute_and_retries(ads, store, status, envelope):
    waits = []
    ads.inject_call_rate_exceeded(times=2, status=status, kind=envelope)
    run(ads, store, people(3), "r1", dest=destination(ads, sleep=waits.append))
    assert [r.status for r in requests(ads, "apply")] == [status, status, 200]
    assert waits == [60.0, 60.0]
    assert_holds(ads, store, people(3))


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_retried(ads, store, status):
    ads.inject_server_error(times=2, status=status)
    run(ads, store, people(3), "r1")
    assert [r.status for r in requests(ads, "apply")] == [status, status, 200]
    assert_holds(ads, store, people(3))


def test_a_throttle_that_outlasts_the_retries_stops_the_run_and_the_next_converges(ads, store):
    ads.inject_call_rate_exceeded(times=6)
    with pytest.raises(SyncAborted, match=r"CallRateExceeded \(117\)") as err:
        run(ads, store, people(3), "r1")
    assert "gave up after 6 attempts" in str(err.value.__cause__)
    assert ads.members(ads.audience_id_by_name("vip")) == set()
    assert run(ads, store, people(3), "r2").failed == 0
    assert_holds(ads, store, people(3))


def test_per_item_errors_are_mapped_to_their_rows(ads, store):
    # b and b2 share an email: one item, whose refusal belongs to both rows.
    rows = {"a": "a@example.com", "b": "b@example.com", "b2": "B@example.com ", "c": "c@example.com"}
    ads.reject_items([h("b@example.com")])
    result = run(ads, store, rows, "r1")
    assert (result.added, result.failed) == (2, 2)
    assert {e["key"] for e in result.errors_sample} == {"b", "b2"}
    assert all("EmailMustBeHashed (8004)" in e["reason"] for e in result.errors_sample)
    (apply,) = requests(ads, "apply")
    assert apply.n_items == 3  # the shared email went once
    ads.clear_rejected()
    assert run(ads, store, rows, "r2").added == 2
    assert_holds(ads, store, rows)


def test_a_plain_email_is_refused_by_index(ads):
    aid = ads.create_audience("vip")
    dest = destination(ads)
    rows = pa.table({"key": ["x", "y", "z"], "Email": [h("x@example.com"), "y@example.com", h("z@example.com")]})
    result = dest.apply("Add", aid, rows)
    assert list(result.rejected) == [1] and "EmailMustBeHashed" in result.rejected[1]
    assert ads.members(aid) == {h("x@example.com"), h("z@example.com")}
    dest.close()


def test_errors_naming_no_item_are_isolated_by_resending_parts(ads, store):
    ads.reject_items([h("user2@example.com")], code=0, indexed=False)
    result = run(ads, store, people(4), "r1")
    assert (result.added, result.failed) == (3, 1)
    assert [e["key"] for e in result.errors_sample] == ["k2"]
    assert "did not apply the item: InternalError (0)" in result.errors_sample[0]["reason"]
    assert ads.members(ads.audience_id_by_name("vip")) == hashes(people(4)) - {h("user2@example.com")}


def test_unaccepted_terms_stop_create_with_what_to_do(store):
    with FakeMicrosoftAds(terms_accepted=False) as ads:
        with pytest.raises(TerminalError) as err:
            run(ads, store, people(2), "r1")
        text = str(err.value)
        assert "CustomerListTermsAndConditionsNotAccepted" in text and TERMS_UI in text
        assert "accept_customer_match_terms: true" in text
        assert ads.audiences == {} and store.manifest() is None
        # With the setting on, creating still needs the terms: the message says why and what to do.
        with pytest.raises(TerminalError, match="accept_customer_match_terms is set.*existing customer list by id"):
            run(ads, store, people(2), "r1", dest=destination(ads, accept_customer_match_terms=True))


@pytest.mark.parametrize("form", ["partial", "operation"])
def test_unaccepted_terms_on_upload_stop_the_run_until_accepted(store, form):
    with FakeMicrosoftAds(terms_accepted=False, terms_error=form) as ads:
        aid = ads.create_audience("vip")
        with pytest.raises(SyncAborted, match="accept_customer_match_terms: true") as err:
            run(ads, store, people(2), "r1")
        assert isinstance(err.value.__cause__, TerminalError) and TERMS_UI in str(err.value)
        assert ads.members(aid) == set() and not ads.terms_accepted
        # Accepted through the API: AcceptCustomerMatchTerm=true on the upload.
        result = run(ads, store, people(2), "r2", dest=destination(ads, accept_customer_match_terms=True))
        assert result.failed == 0 and ads.terms_accepted
        assert [r.accept_terms for r in requests(ads, "apply")] == [None, True]
        assert_holds(ads, store, people(2))


def test_an_expired_access_token_is_renewed_once(ads, store):
    dest = destination(ads)
    dest.check_access()
    ads.expire_access_tokens()
    run(ads, store, people(2), "r1", dest=dest)
    assert len(requests(ads, "token")) == 2
    assert_holds(ads, store, people(2))


@pytest.mark.parametrize("override, setting, kind", [
    ({"refresh_token": "M.C1-wrong-refresh-s3cret"}, "'refresh_token'", CredentialsError),
    ({"client_secret": "wrong-client-s3cret"}, "'client_id/client_secret'", CredentialsError),
    ({"developer_token": "WRONG-DEV-S3CRET"}, "'developer_token'", CredentialsError),
    ({"account_id": "2999999"}, "'account_id'", TerminalError),
], ids=["refresh-token", "client-secret", "developer-token", "account-id"])
def test_bad_credentials_fail_before_anything_is_created(ads, store, override, setting, kind):
    with pytest.raises(kind) as err:
        run(ads, store, people(2), "r1", dest=destination(ads, **override))
    text = f"{err.value} {err.value.__cause__!r}"
    assert setting in text
    assert ads.audiences == {} and requests(ads, "create") == [] and requests(ads, "apply") == []
    for secret in override.values():
        if "s3cret" in secret.lower():
            assert secret not in text
    for secret in (ads.developer_token, ads.refresh_token, ads.client_secret):
        assert secret not in text


def test_a_public_client_sends_no_secret(store):
    with FakeMicrosoftAds(client_secret=None) as ads:
        run(ads, store, people(2), "r1")
        assert_holds(ads, store, people(2))
        with pytest.raises(CredentialsError, match="'client_id/client_secret'.*AADSTS700025"):
            run(ads, store, people(2), "r2", dest=destination(ads, client_secret="not-for-public-clients"))


def test_audience_size_is_read_back(ads, store):
    aid = ads.create_audience("vip")
    dest = destination(ads)
    assert dest.audience_stats(aid).size is None  # nil until Microsoft has counted (up to 48 h)
    ads.set_size(aid, network_size=750)
    assert dest.audience_stats(aid).size == 750  # the Audience network size when search has none
    dest.close()
    ads.set_size(aid, search_size=1234, network_size=750)
    assert run(ads, store, people(2), "r1").audience_size == 1234
