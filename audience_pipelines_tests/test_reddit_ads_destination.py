"""Reddit Ads custom audiences end to end: run_sync against FakeReddit, asserting its final state."""

import hashlib
import json

import httpx
import pyarrow as pa
import pytest
from pydantic import ValidationError

from audience_pipelines.contract import CredentialsError, DestinationError, Target, TerminalError
from audience_pipelines.destinations.reddit_ads import RedditAds, RedditAdsSettings
from audience_pipelines.destinations.reddit_ads.client import RedditAdsDestination
from audience_pipelines.engine import RunOptions, SnapshotStore, SyncAborted, SyncSpec, run_sync
from audience_pipelines_tests.fakes.reddit import FakeReddit

SECRET = "reddit-client-s3cret"
REFRESH = "reddit-refresh-s3cret"
EMAIL_VECTOR = "ff8d9819fc0e12bf0d24892e45987e249a28dce836a85cad60e28eaaa8c6d976"
IDFA_VECTOR = "70574fa9c8f498a7b2e5c8712b1126de7b1406fd02fdc591821c5bd33092fd1c"
AAID_VECTOR = "f23b554b2a8fb732a8b973733832e70f018da7bc294dfea289735a07d5dd2c9f"
IDS = {"email": "email", "device_id": "maid"}


def h(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@pytest.fixture
def reddit():
    with FakeReddit(client_secret=SECRET, refresh_token=REFRESH) as server:
        yield server


@pytest.fixture
def store(tmp_path):
    return SnapshotStore(tmp_path / "syncs", "r")


def settings(fake, **overrides) -> RedditAdsSettings:
    return RedditAdsSettings(**{
        "ad_account_id": fake.ad_account_id, "client_id": fake.client_id, "client_secret": SECRET,
        "refresh_token": REFRESH, "reddit_username": "audience_bot", "base_url": fake.url,
        "token_url": fake.token_url, "timeout_s": 5, **overrides})


def destination(fake, sleep=None, **overrides) -> RedditAdsDestination:
    return RedditAdsDestination(settings(fake, **overrides), sleep=sleep or (lambda s: None))


def table(rows: dict, columns=("email", "maid")) -> pa.Table:
    return pa.table({"key": pa.array(list(rows), pa.string()),
                     **{c: pa.array([r.get(c) for r in rows.values()], pa.string()) for c in columns}})


def run(fake, store, rows: dict, run_id, *, target=None, dest=None, identifiers=None, batch_size=None):
    dest = dest or destination(fake)
    spec = SyncSpec(name=store.sync, audience="a", destination="reddit", target=target or Target(name="vip"),
                    identifiers=identifiers or {"email": "email"}, batch_size=batch_size)
    try:
        return run_sync(spec, table(rows), dest, store, RunOptions(run_id=run_id))
    finally:
        dest.close()


def people(n, start=0) -> dict:
    return {f"k{i}": {"email": f"user{i}@example.com"} for i in range(start, start + n)}


def emails(rows: dict) -> set:
    return {frozenset({("EMAIL_SHA256", h(r["email"]))}) for r in rows.values()}


def patches(fake, action=None) -> list:
    return [r for r in fake.requests if r.path.endswith("/users") and (action is None or r.action == action)]


def assert_holds(fake, store, rows: dict) -> None:
    assert fake.members(fake.audience_id_by_name("vip")) == emails(rows)
    assert set(store.read()["key"].to_pylist()) == set(rows)


def test_settings_capabilities_and_user_agent(reddit):
    s = settings(reddit, reddit_username=" u/Some_Dev-1 ")
    assert s.reddit_username == "Some_Dev-1" and RedditAds.account(s) == reddit.ad_account_id
    caps = RedditAds.capabilities(s)
    assert caps.identifier_kinds == {"email", "device_id"} == caps.match_identifiers  # no phone
    assert caps.max_batch_rows == 2500 and caps.hashes_identifiers and caps.requires_identifier
    assert caps.can_list_audiences and caps.reports_size and not caps.reports_match_rate and not caps.accepts_fields
    for bad in ({"batch_size": 2501}, {"reddit_username": "me"}, {"reddit_username": "not a name"},
                {"ad_account_id": " "}):
        with pytest.raises(ValidationError):
            settings(reddit, **bad)
    with pytest.raises(ValidationError):
        RedditAdsSettings(ad_account_id="a", client_id="c", client_secret="s", refresh_token="r")  # no username
    dest = destination(reddit)
    assert dest.user_agent.startswith(f"audience_pipelines:{reddit.client_id}:")
    assert dest.user_agent.endswith(" (by /u/audience_bot)")
    dest.close()


def test_the_fake_refuses_a_generic_user_agent_like_reddit(reddit):
    dest = destination(reddit)
    dest.check_access()
    token = dest.oauth.current
    dest.close()
    url = f"{reddit.url}/ad_accounts/{reddit.ad_account_id}/custom_audiences"
    generic = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
    assert generic.status_code == 403 and "User-Agent" in generic.json()["error"]["message"]
    assert httpx.post(reddit.token_url, auth=(reddit.client_id, SECRET),
                      data={"grant_type": "refresh_token", "refresh_token": REFRESH}).status_code == 403


def test_first_run_creates_the_audience_once_and_adds_hashed_rows(reddit, store):
    rows = {
        "k1": {"email": "Al.ice$+Apple@Example.Com", "maid": "EA7583CD-A667-48BC-B806-42ECB2B48606"},
        "k2": {"email": "bob@example.org"},
        "k3": {"maid": "cdda802e-fb9c-47ad-9866-0794d394c912"},
        "k4": {"email": "not-an-email"},  # no usable identifier: set aside by the engine
    }
    first = run(reddit, store, rows, "r1", identifiers=IDS, dest=destination(reddit, device_id_case="upper"))
    aid = reddit.audience_id_by_name("vip")
    assert first.destination_audience_id == aid and reddit.audiences[aid]["type"] == "CUSTOMER_LIST"
    # device_id_case "upper" gives the IDFA its vendor casing back; the AAID then hashes upper case too.
    assert reddit.members(aid) == {
        frozenset({("EMAIL_SHA256", EMAIL_VECTOR), ("MAID_SHA256", IDFA_VECTOR)}),
        frozenset({("EMAIL_SHA256", h("bob@example.org"))}),
        frozenset({("MAID_SHA256", h("cdda802e-fb9c-47ad-9866-0794d394c912".upper()))}),
    }
    assert (first.added, first.failed, first.set_aside) == (3, 0, 1)
    assert [(r.method, r.action, r.n_rows, r.status) for r in patches(reddit)] == [("PATCH", "ADD", 3, 204)]
    # A second run with the same members finds the audience and sends nothing.
    again = run(reddit, store, rows, "r2", identifiers=IDS, dest=destination(reddit, device_id_case="upper"))
    assert again.destination_audience_id == aid and len(reddit.audiences) == 1 and len(patches(reddit)) == 1


def test_device_ids_keep_the_case_the_engine_hands_over(reddit, store):
    rows = {"k1": {"maid": "cdda802e-fb9c-47ad-9866-0794d394c912"}}
    run(reddit, store, rows, "r1", identifiers={"device_id": "maid"})
    assert reddit.member_values(reddit.audience_id_by_name("vip"), "MAID_SHA256") == {AAID_VECTOR}


def test_the_patch_body_is_reddits_shape(reddit, store, monkeypatch):
    bodies = []
    dest = destination(reddit)
    original = dest.http.request

    def spy(method, url, **kw):
        if url.endswith("/users"):
            bodies.append(kw["json"])
        return original(method, url, **kw)

    monkeypatch.setattr(dest.http, "request", spy)
    run(reddit, store, {"k1": {"email": "a@example.com"}, "k2": {"maid": "cdda802e-fb9c-47ad-9866-0794d394c912"}},
        "r1", identifiers=IDS, dest=dest)
    assert bodies == [{"data": {"action_type": "ADD", "column_order": ["EMAIL_SHA256", "MAID_SHA256"],
                                "user_data": [[h("a@example.com"), ""], ["", AAID_VECTOR]]}}]


def test_an_existing_audience_is_found_by_name_through_the_pages(reddit, store):
    for i in range(5):
        reddit.create_audience(f"other {i}")
    aid = reddit.create_audience("vip")
    result = run(reddit, store, people(2), "r1")
    assert result.destination_audience_id == aid and len(reddit.audiences) == 6
    lists = [r for r in reddit.requests if r.path.endswith("/custom_audiences") and r.method == "GET"]
    assert len(lists) == 1 + 3  # check_access, then pages of 2
    assert_holds(reddit, store, people(2))


def test_an_audience_of_another_type_is_refused(reddit, store):
    reddit.create_audience("vip", type="LOOKALIKE")
    with pytest.raises(TerminalError, match="LOOKALIKE audience, not a CUSTOMER_LIST"):
        run(reddit, store, people(2), "r1")
    assert len(reddit.audiences) == 1 and patches(reddit) == []


def test_a_target_id_is_used_and_an_unknown_one_is_a_clear_error(reddit, store, tmp_path):
    aid = reddit.create_audience("by id")
    result = run(reddit, store, people(2), "r1", target=Target(id=aid))
    assert result.destination_audience_id == aid and reddit.members(aid) == emails(people(2))
    with pytest.raises(TerminalError, match="custom audience t2_nope does not exist") as err:
        run(reddit, SnapshotStore(tmp_path / "other", "o"), people(2), "r1", target=Target(id="t2_nope"))
    assert err.value.status == 404 and len(reddit.audiences) == 1


def test_removes_and_identifier_changes_are_exact(reddit, store):
    run(reddit, store, people(4), "r1")
    new = {**people(3), "k1": {"email": "moved1@example.com"}, **people(1, start=9)}
    del new["k0"]
    second = run(reddit, store, new, "r2")
    assert (second.added, second.removed, second.updated, second.failed) == (1, 2, 1, 0)
    assert_holds(reddit, store, new)
    assert [r.action for r in patches(reddit)][1:] == ["REMOVE", "REMOVE", "ADD", "ADD"]


def test_batches_stop_at_reddits_limit(reddit, store):
    rows = people(2501)
    result = run(reddit, store, rows, "r1")
    assert [r.n_rows for r in patches(reddit)] == [2500, 1] and result.added == 2501
    assert_holds(reddit, store, rows)


def test_a_smaller_batch_size_setting_is_honoured(reddit, store):
    run(reddit, store, people(7), "r1", dest=destination(reddit, batch_size=3))
    assert [r.n_rows for r in patches(reddit)] == [3, 3, 1]


def test_the_fake_refuses_more_than_2500_rows_and_the_client_does_not_split_it(reddit):
    dest = destination(reddit)
    aid = reddit.create_audience("vip")
    rows = pa.table({"key": [str(i) for i in range(2501)], "EMAIL_SHA256": [h(str(i)) for i in range(2501)]})
    with pytest.raises(DestinationError, match="Limited to 2,500 user_data entries per request") as err:
        dest.patch_users(aid, "ADD", rows)
    assert type(err.value) is DestinationError and not err.value.fatal
    dest.close()


@pytest.mark.parametrize("inject, waits", [
    (lambda f: f.inject_throttle(times=3, retry_after=7), [7.0, 7.0, 7.0]),
    (lambda f: f.inject_throttle(times=2, reset=4), [4.0, 4.0]),
], ids=["retry-after", "x-ratelimit-reset"])
def test_throttles_are_retried_after_the_time_reddit_gives(reddit, store, inject, waits):
    slept = []
    inject(reddit)
    run(reddit, store, people(3), "r1", dest=destination(reddit, sleep=slept.append))
    assert [r.status for r in patches(reddit)] == [429] * len(waits) + [204]
    assert slept == waits
    assert_holds(reddit, store, people(3))


def test_server_errors_are_retried(reddit, store):
    reddit.inject_server_error(times=2, status=502)
    run(reddit, store, people(3), "r1")
    assert [r.status for r in patches(reddit)] == [502, 502, 204]
    assert_holds(reddit, store, people(3))


def test_retries_exhausted_abort_and_the_next_run_converges(reddit, store):
    run(reddit, store, people(2), "r1")
    before = store.read()
    reddit.inject_throttle(times=6)
    with pytest.raises(SyncAborted, match="gave up after 6 attempts.*HTTP 429.*Reddit error 429: Too Many Requests"):
        run(reddit, store, people(4), "r2")
    assert store.read().equals(before)
    third = run(reddit, store, people(4), "r3")
    assert (third.added + third.updated, third.failed) == (2, 0)
    assert_holds(reddit, store, people(4))


def test_a_refused_row_fails_alone_and_the_next_run_retries_it(reddit, store):
    rows = people(6)
    reddit.reject_values([h("user4@example.com")])
    first = run(reddit, store, rows, "r1")
    aid = reddit.audience_id_by_name("vip")
    assert (first.added, first.failed) == (5, 1)
    (error,) = first.errors_sample
    assert error["key"] == "k4" and "data.user_data[" in error["reason"] and "invalid value" in error["reason"]
    assert reddit.members(aid) == emails({k: v for k, v in rows.items() if k != "k4"})
    reddit.clear_rejected_values()
    second = run(reddit, store, rows, "r2")
    assert (second.added, second.failed) == (1, 0)
    assert_holds(reddit, store, rows)


def test_misaligned_rows_are_accepted_like_reddit_does(reddit):
    dest = destination(reddit)
    dest.check_access()
    aid = reddit.create_audience("vip")
    body = {"data": {"action_type": "ADD", "column_order": ["EMAIL_SHA256", "MAID_SHA256"],
                     "user_data": [[h("a")], [h("b"), h("c"), h("extra")]]}}
    answer = httpx.patch(f"{reddit.url}/custom_audiences/{aid}/users", content=json.dumps(body),
                         headers={"Authorization": f"Bearer {dest.oauth.current}", "User-Agent": dest.user_agent})
    assert (answer.status_code, answer.content) == (204, b"")
    assert reddit.members(aid) == {frozenset({("EMAIL_SHA256", h("a"))}),
                                   frozenset({("EMAIL_SHA256", h("b")), ("MAID_SHA256", h("c"))})}
    dest.close()


@pytest.mark.parametrize("override, setting", [
    ({"refresh_token": "revoked-refresh-s3cret"}, "'refresh_token'"),
    ({"client_secret": "wrong-client-s3cret"}, "'client_id/client_secret'"),
], ids=["refresh-token", "client-secret"])
def test_bad_credentials_fail_before_anything_is_created(reddit, store, override, setting):
    with pytest.raises(CredentialsError) as err:
        run(reddit, store, people(2), "r1", dest=destination(reddit, **override))
    text = f"{err.value} {err.value.__cause__!r}"
    assert setting in text and "s3cret" not in text
    assert reddit.audiences == {} and store.manifest() is None


def test_an_expired_access_token_is_renewed_once(reddit, store):
    dest = destination(reddit)
    dest.check_access()
    reddit.expire_access_tokens()
    run(reddit, store, people(2), "r1", dest=dest)
    assert sum(r.path == "/api/v1/access_token" for r in reddit.requests) == 2
    assert_holds(reddit, store, people(2))


@pytest.mark.parametrize("as_text", [False, True], ids=["json", "plain-text"])
def test_an_access_token_refused_twice_names_the_refresh_token(store, as_text):
    with FakeReddit(client_secret=SECRET, refresh_token=REFRESH, token_lifetime=0) as fake:
        fake.unauthorized_as_text = as_text
        with pytest.raises(CredentialsError, match="setting 'refresh_token' was refused twice") as err:
            run(fake, store, people(2), "r1")
        assert "Authorization Required" in str(err.value)
        assert [r.status for r in fake.requests] == [200, 401, 200, 401]
        assert SECRET not in str(err.value) and REFRESH not in str(err.value)


def test_a_token_without_adsedit_is_a_terminal_error_naming_scope_and_user_agent(store):
    with FakeReddit(client_secret=SECRET, refresh_token=REFRESH, scopes="adsread") as fake:
        with pytest.raises(TerminalError) as err:
            run(fake, store, people(2), "r1")
        text = str(err.value)
        assert "HTTP 403 on POST" in text and "lacks the adsedit scope" in text and "(by /u/audience_bot)" in text
        assert fake.audiences == {}


def test_an_unknown_ad_account_names_the_setting(reddit, store):
    with pytest.raises(TerminalError, match="ad account a2_other not found; check the setting 'ad_account_id'"):
        run(reddit, store, people(2), "r1", dest=destination(reddit, ad_account_id="a2_other"))


def test_audience_size_is_read_back(reddit, store):
    result = run(reddit, store, people(4), "r1")
    aid = result.destination_audience_id
    assert result.audience_size == 4
    reddit.set_size(aid, 1000, 2000)
    dest = destination(reddit)
    assert dest.audience_stats(aid).size == 1000 and dest.audience_stats(aid).match_rate is None
    reddit.set_size(aid, None)
    assert dest.audience_stats(aid) is None
    dest.close()


def test_a_next_page_on_another_host_is_not_followed(reddit):
    dest = destination(reddit)
    assert dest._relative(f"{reddit.url}/ad_accounts/x/custom_audiences?page.token=Mg") == \
        "ad_accounts/x/custom_audiences?page.token=Mg"
    with pytest.raises(DestinationError, match="outside base_url"):
        dest._relative("https://evil.example/api/v3/ad_accounts/x/custom_audiences")
    dest.close()
