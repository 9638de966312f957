"""Google Ads Customer Match end to end: run_sync against FakeGoogleAds, asserting its final state."""

import hashlib
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audience_pipelines.contract import CredentialsError, Target, TerminalError
from audience_pipelines.destinations.google_ads import GoogleAds, GoogleAdsSettings
from audience_pipelines.destinations.google_ads.client import GoogleAdsDestination
from audience_pipelines.engine import RunOptions, SnapshotStore, SyncSpec, run_sync
from audience_pipelines_tests.fakes.google_ads import FakeGoogleAds
from audience_pipelines_tests.memory_destination import Crash

CID = "1234567890"
EMAIL_VECTOR = "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"  # sha256("test@example.com")
CONTACT = {"email": "email", "phone": "phone"}


def h(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


@pytest.fixture
def ads():
    with FakeGoogleAds(customer_id=CID) as server:
        yield server


@pytest.fixture
def store(tmp_path):
    return SnapshotStore(tmp_path / "syncs", "g")


def destination(ads, sleep=None, clock=None, **overrides) -> GoogleAdsDestination:
    values = {"customer_id": "123-456-7890", "developer_token": ads.developer_token, "client_id": ads.client_id,
              "client_secret": ads.client_secret, "refresh_token": ads.refresh_token, "base_url": ads.origin,
              "token_url": ads.token_url, "timeout_s": 5, "poll_interval_s": 1, "poll_timeout_s": 5, **overrides}
    kwargs = {"sleep": sleep or (lambda s: None)}
    if clock is not None:
        kwargs["clock"] = clock
    return GoogleAdsDestination(GoogleAdsSettings(**values), **kwargs)


def table(rows: dict, columns=("email", "phone")) -> pa.Table:
    return pa.table({"key": pa.array(list(rows), pa.string()),
                     **{c: pa.array([r.get(c) for r in rows.values()], pa.string()) for c in columns}})


def run(ads, store, members, run_id, *, target=None, dest=None, identifiers=None, batch_size=None):
    dest = dest or destination(ads)
    spec = SyncSpec(name=store.sync, audience="a", destination="google", target=target or Target(name="vip"),
                    identifiers=identifiers or CONTACT, batch_size=batch_size)
    try:
        return run_sync(spec, members, dest, store, RunOptions(run_id=run_id))
    finally:
        dest.close()


def people(n, start=0) -> dict:
    return {f"k{i}": {"email": f"user{i}@example.com", "phone": f"+1650253{1000 + i}"} for i in range(start, start + n)}


def member(email=None, phone=None, address=None) -> frozenset:
    """A member as FakeGoogleAds stores it."""
    pairs = set()
    if email:
        pairs.add(("hashedEmail", h(email)))
    if phone:
        pairs.add(("hashedPhoneNumber", h(phone)))
    if address:
        pairs.add(("addressInfo", tuple(sorted(address.items()))))
    return frozenset(pairs)


def members_of(rows: dict) -> set:
    return {member(r.get("email"), r.get("phone")) for r in rows.values()}


def token_requests(ads) -> int:
    return sum(1 for r in ads.requests if r.path == "/token")


def statuses(ads, action: str) -> list[int]:
    return [r.status for r in ads.requests if r.path.endswith(action)]


def assert_holds(ads, store, rows: dict) -> None:
    """Google holds exactly these members and the snapshot agrees."""
    assert ads.members(ads.user_list_id_by_name("vip")) == members_of(rows)
    assert set(store.read()["key"].to_pylist()) == set(rows)


def test_settings_and_capabilities():
    settings = GoogleAdsSettings(customer_id="123-456-7890", login_customer_id="111-222-3333", developer_token="d",
                                 client_id="c", client_secret="s", refresh_token="r")
    assert (settings.customer_id, settings.login_customer_id) == (CID, "1112223333")
    assert GoogleAds.account(settings) == CID
    caps = GoogleAds.capabilities(settings)
    assert caps.identifier_kinds == {"email", "phone", "first_name", "last_name", "country", "zip"}
    assert caps.uses_jobs and caps.reports_size and caps.reports_match_rate and not caps.accepts_fields
    assert GoogleAds.capabilities(settings.model_copy(update={"upload_key_type": "CRM_ID"})).identifier_kinds == {
        "user_id"}
    for bad in ({"customer_id": "12a"}, {"membership_life_span_days": 541}, {"app_id": "com.x"}):
        with pytest.raises(ValueError):
            GoogleAdsSettings(**{**settings.model_dump(), "developer_token": "d", "client_secret": "s",
                                 "refresh_token": "r", **bad})


def test_first_run_creates_the_list_once_and_adds_hashed_identifiers(ads, store):
    rows = {
        "k1": {"email": " Test@Example.com ", "phone": "+1 650-253-1234", "fn": " John ", "ln": "DOE",
               "country": "us", "zip": "94043"},
        "k2": {"email": "jane@example.org", "fn": "Jane"},  # half an address: only the email goes
        "k3": {"fn": "Solo", "ln": "Name"},  # no email, phone or whole address: set aside by the engine
        "k4": {"email": "not-an-email"},  # no usable identifier: set aside by the engine
    }
    members = table(rows, ("email", "phone", "fn", "ln", "country", "zip"))
    ids = {**CONTACT, "first_name": "fn", "last_name": "ln", "country": "country", "zip": "zip"}
    first = run(ads, store, members, "r1", identifiers=ids)
    lid = ads.user_list_id_by_name("vip")
    assert first.destination_audience_id == lid
    created = ads.user_lists[lid]
    assert created["description"] == "Managed by audience_pipelines" and created["membershipLifeSpan"] == "10000"
    assert created["crmBasedUserList"]["uploadKeyType"] == "CONTACT_INFO"
    assert h("test@example.com") == EMAIL_VECTOR
    assert ads.members(lid) == {
        frozenset({("hashedEmail", EMAIL_VECTOR), ("hashedPhoneNumber", h("+16502531234")),
                   ("addressInfo", (("countryCode", "US"), ("hashedFirstName", h("john")),
                                    ("hashedLastName", h("doe")), ("postalCode", "94043")))}),
        member("jane@example.org"),
    }
    assert (first.added, first.failed, first.set_aside) == (2, 0, 2)
    assert {s["key"] for s in first.set_aside_sample} == {"k3", "k4"}
    assert first.errors_sample == []
    (job,) = ads.jobs.values()
    assert job["status"] == "SUCCESS" and job["consent"] == {"adUserData": "GRANTED", "adPersonalization": "GRANTED"}
    assert (first.audience_size, first.match_rate) == (2, 0.8)

    second = run(ads, store, members, "r2", identifiers=ids)  # a fresh client finds the list
    assert second.destination_audience_id == lid and len(ads.user_lists) == 1
    assert (second.added, second.failed, second.unchanged, second.set_aside) == (0, 0, 2, 2)
    assert len(ads.jobs) == 1  # nothing to send: no job
    assert statuses(ads, "userLists:mutate") == [200]

    ads.set_size(lid, size_for_search=1234, match_rate=55)
    third = run(ads, store, members, "r3", identifiers=ids)
    assert (third.audience_size, third.match_rate) == (1234, 0.55)


def test_second_run_removes_updates_and_adds_exactly(ads, store):
    base = people(5)
    run(ads, store, table(base), "r1")
    assert_holds(ads, store, base)
    new = {k: v for k, v in base.items() if k != "k0"}
    new["k2"] = {"email": "changed2@example.com", "phone": base["k2"]["phone"]}
    new["k9"] = {"email": "user9@example.com", "phone": "+16502539999"}
    result = run(ads, store, table(new), "r2")
    assert (result.added, result.removed, result.updated, result.failed) == (1, 1, 1, 0)
    assert_holds(ads, store, new)
    job = list(ads.jobs.values())[-1]
    # Remove, then the update (old email withdrawn, the phone k2 still sends kept), then the add.
    assert job["operations"] == [
        ("remove", member("user0@example.com", base["k0"]["phone"])),
        ("remove", member("user2@example.com")),
        ("create", member("changed2@example.com", base["k2"]["phone"])),
        ("create", member("user9@example.com", "+16502539999")),
    ]
    assert len(ads.jobs) == 2 and len(ads.user_lists) == 1 and result.audience_size == 5


def test_an_existing_list_is_found_by_name_and_searches_page(ads, store):
    for i in range(3):
        ads.create_user_list(f"other {i}")
    name = "O'Brien \\ \"VIP\""
    lid = ads.create_user_list(name)
    result = run(ads, store, table(people(2)), "r1", target=Target(name=name))
    assert result.destination_audience_id == lid and len(ads.user_lists) == 4
    assert ads.members(lid) == members_of(people(2))
    ads.page_size = 2
    dest = destination(ads)
    assert len(list(dest._search("SELECT user_list.id FROM user_list"))) == 4
    dest.close()


def test_a_list_of_another_upload_key_type_is_refused(ads, store):
    ads.create_user_list("vip", "CRM_ID")
    with pytest.raises(TerminalError, match="takes CRM_ID identifiers"):
        run(ads, store, table(people(1)), "r1")
    assert ads.jobs == {}


def test_two_runs_racing_on_one_name_create_it_once(ads, tmp_path):
    results, errors = [], []

    def go(sync):
        try:
            results.append(run(ads, SnapshotStore(tmp_path / "syncs", sync), table(people(3)), f"run-{sync}"))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(s,)) for s in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(ads.user_lists) == 1
    lid = ads.user_list_id_by_name("vip")
    assert {r.destination_audience_id for r in results} == {lid}
    assert statuses(ads, "userLists:mutate") == [200] and ads.members(lid) == members_of(people(3))


def test_partial_failure_rejects_the_row_and_the_next_run_retries_it(ads, store):
    ids = {"device_id": "madid"}
    good = {f"d{i}": {"madid": f"AB12CD34-0000-4000-8000-00000000000{i}"} for i in range(3)}
    rows = {**good, "bad": {"madid": "not-a-device-id"}}
    dest = destination(ads, upload_key_type="MOBILE_ADVERTISING_ID", app_id="com.example.app")
    first = run(ads, store, table(rows, ("madid",)), "r1", identifiers=ids, dest=dest)
    lid = ads.user_list_id_by_name("vip")
    assert ads.user_lists[lid]["crmBasedUserList"] == {
        "uploadKeyType": "MOBILE_ADVERTISING_ID", "dataSourceType": "FIRST_PARTY", "appId": "com.example.app"}
    assert (first.added, first.failed) == (3, 1)
    assert first.errors_sample == [{"key": "bad", "operation": "add", "reason": (
        "Google Ads offlineUserDataJobError INVALID_MOBILE_ID_FORMAT: The mobile ID is malformed.")}]
    assert ads.member_values(lid, "mobileId") == {r["madid"].lower() for r in good.values()}
    assert set(store.read()["key"].to_pylist()) == set(good)

    rows["bad"] = {"madid": "AB12CD34-0000-4000-8000-0000000000FF"}
    dest = destination(ads, upload_key_type="MOBILE_ADVERTISING_ID", app_id="com.example.app")
    second = run(ads, store, table(rows, ("madid",)), "r2", identifiers=ids, dest=dest)
    assert (second.added, second.failed) == (1, 0)
    assert ads.member_values(lid, "mobileId") == {r["madid"].lower() for r in rows.values()}


def test_crm_id_lists_get_plain_third_party_user_ids(ads, store):
    rows = {"a": {"uid": "u-1"}, "b": {"uid": " u-2 "}}
    dest = destination(ads, upload_key_type="CRM_ID")
    result = run(ads, store, table(rows, ("uid",)), "r1", identifiers={"user_id": "uid"}, dest=dest)
    assert result.added == 2 and ads.member_values(result.destination_audience_id, "thirdPartyUserId") == {
        "u-1", "u-2"}


def test_a_failed_job_leaves_rows_unsent_and_the_next_run_sends_them(ads, store):
    rows = people(4)
    ads.fail_next_job(reason="PROCESSING_FAILURE")
    first = run(ads, store, table(rows), "r1")
    lid = ads.user_list_id_by_name("vip")
    assert (first.added, first.failed) == (0, 4) and ads.members(lid) == set()
    assert "failed: PROCESSING_FAILURE" in first.errors_sample[0]["reason"]
    assert store.read().num_rows == 0
    second = run(ads, store, table(rows), "r2")
    assert (second.added, second.failed) == (4, 0)
    assert_holds(ads, store, rows)
    assert [j["status"] for j in ads.jobs.values()] == ["FAILED", "SUCCESS"]


@pytest.mark.parametrize("inject, seen", [
    (lambda a: a.inject_resource_exhausted(times=2, retry_delay="30s"), 429),
    (lambda a: a.inject_concurrent_modification(times=2), 400),
    (lambda a: a.inject_concurrent_modification(times=2, status=409), 409),
    (lambda a: a.inject_server_error(times=2, status=503), 503),
], ids=["resource-exhausted", "concurrent-400", "concurrent-409", "503"])
def test_throttles_and_concurrent_modification_are_retried(ads, store, inject, seen):
    waits = []
    inject(ads)
    run(ads, store, table(people(3)), "r1", dest=destination(ads, sleep=waits.append))
    assert statuses(ads, ":addOperations") == [seen, seen, 200]
    assert_holds(ads, store, people(3))
    if seen == 429:
        assert waits[:2] == [30.0, 30.0]  # Google's retryDelay, honoured


def test_an_expired_access_token_is_renewed_once(ads, store):
    dest = destination(ads)
    dest.check_access()
    ads.expire_access_tokens()
    run(ads, store, table(people(2)), "r1", dest=dest)
    assert token_requests(ads) == 2
    assert_holds(ads, store, people(2))


@pytest.mark.parametrize("override, setting", [
    ({"refresh_token": "1//wrong-refresh-s3cret"}, "'refresh_token'"),
    ({"client_secret": "wrong-client-s3cret"}, "'client_id/client_secret'"),
    ({"developer_token": "wrong-dev-s3cret"}, "'developer_token'"),
    ({"login_customer_id": "999"}, "'login_customer_id'"),
], ids=["refresh-token", "client-secret", "developer-token", "login-customer-id"])
def test_bad_credentials_fail_before_anything_is_created(ads, store, override, setting):
    with pytest.raises(CredentialsError) as err:
        run(ads, store, table(people(2)), "r1", dest=destination(ads, **override))
    text = f"{err.value} {err.value.__cause__!r}"
    assert setting in text
    assert ads.jobs == {} and ads.user_lists == {}
    for secret in override.values():
        if "s3cret" in secret:
            assert secret not in text


def test_a_target_id_that_does_not_exist_is_a_clear_error(ads, store):
    with pytest.raises(TerminalError, match="user list 999 does not exist"):
        run(ads, store, table(people(2)), "r1", target=Target(id="999"))
    assert ads.jobs == {} and ads.user_lists == {}


def crash_after_first_send(dest: GoogleAdsDestination) -> GoogleAdsDestination:
    """The process dies right after the first addOperations: the job is created but never run."""
    open_session = dest.open_session

    class Dying:
        def __init__(self, session):
            self.session = session

        def send(self, *args):
            self.session.send(*args)
            raise Crash("killed after the first batch")

        def finish(self, complete):
            return self.session.finish(complete)

    dest.open_session = lambda ctx: Dying(open_session(ctx))
    return dest


def test_a_run_killed_before_its_job_ran_is_resent_exactly(ads, store):
    base = people(5)
    run(ads, store, table(base), "r1")
    new = {k: v for k, v in base.items() if k != "k0"}
    new["k2"] = {"email": "changed2@example.com", "phone": base["k2"]["phone"]}
    new["k9"] = {"email": "user9@example.com", "phone": "+16502539999"}
    with pytest.raises(Crash):
        run(ads, store, table(new), "r2", dest=crash_after_first_send(destination(ads)), batch_size=1)
    killed = list(ads.jobs.values())[-1]
    assert killed["status"] == "PENDING" and killed["n_operations"] == 1  # the remove of k0, staged only
    assert_holds(ads, store, base)  # nothing applied, nothing committed

    third = run(ads, store, table(new), "r3", batch_size=1)
    assert any("never ran; abandoned" in n for n in third.notes)
    jobs = list(ads.jobs.values())
    assert [j["status"] for j in jobs] == ["SUCCESS", "PENDING", "SUCCESS"]
    # k9, journalled by the killed run, is held as "unknown": it is sent again as an update.
    assert (third.removed, third.updated + third.added, third.failed) == (1, 2, 0)
    assert_holds(ads, store, new)


def test_a_run_killed_while_its_job_ran_is_settled_by_the_next(ads, store):
    rows = people(3)
    dest = destination(ads)

    def die(job):
        raise Crash("killed while polling")

    dest._wait = die
    with pytest.raises(Crash):
        run(ads, store, table(rows), "r1", dest=dest)
    (job,) = ads.jobs.values()
    assert job["status"] == "RUNNING"
    second = run(ads, store, table(rows), "r2")
    assert any(f"job {job['resource_name']} ended SUCCESS" in n for n in second.notes)
    assert (second.added + second.updated, second.failed) == (3, 0)  # journalled rows are sent again
    assert_holds(ads, store, rows)


def test_a_job_still_running_at_the_poll_timeout_is_settled_by_the_next_run(ads, store):
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    ads.running_polls = 1_000
    rows = people(2)
    dest = destination(ads, sleep=sleep, clock=lambda: now[0], poll_interval_s=30, poll_timeout_s=90)
    first = run(ads, store, table(rows), "r1", dest=dest)
    assert (first.added, first.failed) == (0, 0)
    assert any("still RUNNING after 90 s" in n for n in first.notes)
    assert store.read_pending().num_rows == 2 and store.read_session()["state"]["stage"] == "running"
    ads.finish_jobs()
    second = run(ads, store, table(rows), "r2")
    assert any("ended SUCCESS" in n for n in second.notes) and store.read_session() is None
    assert (second.added + second.updated, second.failed) == (2, 0)  # journalled rows are sent again
    assert_holds(ads, store, rows)


def test_rejections_are_written_with_google_reasons(ads, store):
    ads.reject_values([h("b@example.com")])
    rows = {"a": {"email": "a@example.com"}, "b": {"email": "b@example.com"}}
    result = run(ads, store, table(rows, ("email",)), "r1", identifiers={"email": "email"})
    t = pq.read_table(result.rejected_path)
    assert t["key"].to_pylist() == ["b"] and t["operation"].to_pylist() == ["add"]
    assert "INVALID_VALUE" in t["reason"][0].as_py() or "invalid" in t["reason"][0].as_py().lower()


def test_a_lost_answer_to_run_is_settled_by_polling(ads, store):
    # The retried :run hears JOB_ALREADY_STARTED; the job's status shows it ran.
    ads.inject_lost_answer(scope="run")
    result = run(ads, store, table(people(2)), "r1")
    assert statuses(ads, ":run")[-1] == 400 and result.added == 2
    assert_holds(ads, store, people(2))


def test_requests_stay_under_googles_identifier_limit(ads, store, monkeypatch):
    from audience_pipelines.destinations.google_ads import client

    monkeypatch.setattr(client, "MAX_IDENTIFIERS_PER_REQUEST", 5)
    ads.max_identifiers_per_request = 5
    result = run(ads, store, table(people(5)), "r1")  # 2 identifiers a row, one batch
    assert result.added == 5 and statuses(ads, ":addOperations") == [200, 200, 200]
    assert_holds(ads, store, people(5))


def test_google_forms_of_canonical_identifiers():
    from audience_pipelines.identifiers.google import to_google

    def sent(kind, values):
        return to_google(kind, pa.array(values, pa.string())).to_pylist()

    assert sent("email", ["test@example.com", EMAIL_VECTOR, None]) == [EMAIL_VECTOR, EMAIL_VECTOR, None]
    assert sent("phone", ["+16502531234"]) == [h("+16502531234")]  # E.164 with the "+", then hashed
    assert sent("first_name", ["josé"]) == [h("josé")]
    assert sent("country", ["GB", "usa", EMAIL_VECTOR]) == ["GB", None, None]  # plain ISO-2 only
    assert sent("zip", [" 94043 ", EMAIL_VECTOR, ""]) == ["94043", None, None]  # plain: a hash cannot be sent
    assert sent("device_id", ["AB12CD34-0000-4000-8000-00000000ABCD"]) == ["ab12cd34-0000-4000-8000-00000000abcd"]
    assert sent("user_id", ["u-1"]) == ["u-1"]
