"""The fake Google Ads server behaves as destination-apis.md §2 describes."""

import hashlib
import time

import httpx
import pytest

from audience_pipelines_tests.fakes.google_ads import FakeGoogleAds, GoogleAdsRequest

CID = "1234567890"
FAILURE = "type.googleapis.com/google.ads.googleads.v22.errors.GoogleAdsFailure"


def h(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@pytest.fixture
def ads():
    with FakeGoogleAds(page_size=2) as server:
        yield server


@pytest.fixture
def api(ads):
    headers = {"Authorization": f"Bearer {ads.issue_access_token()}",
               "developer-token": "test-developer-token"}
    with httpx.Client(base_url=f"{ads.url}/customers/{CID}", headers=headers) as client:
        yield client


def errors_of(resp) -> list[dict]:
    body = resp.json()["error"]
    assert body["details"][0]["@type"] == FAILURE and body["details"][0]["requestId"]
    return body["details"][0]["errors"]


def search(api, query, **extra):
    return api.post("/googleAds:search", json={"query": query, **extra})


def new_list(api, name, key="CONTACT_INFO"):
    r = api.post("/userLists:mutate", json={"operations": [{"create": {
        "name": name, "description": "d", "membershipLifeSpan": 10000,
        "crmBasedUserList": {"uploadKeyType": key}}}]})
    assert r.status_code == 200, r.text
    return r.json()["results"][0]["resourceName"].rsplit("/", 1)[1]


def new_job(api, list_id):
    r = api.post("/offlineUserDataJobs:create", json={"job": {
        "type": "CUSTOMER_MATCH_USER_LIST", "customerMatchUserListMetadata": {
            "userList": f"customers/{CID}/userLists/{list_id}",
            "consent": {"adUserData": "GRANTED", "adPersonalization": "GRANTED"}}}})
    assert r.status_code == 200, r.text
    return r.json()["resourceName"].rsplit("/", 1)[1]


def job_status(api, job_id):
    r = search(api, "SELECT offline_user_data_job.resource_name, offline_user_data_job.status, "
                    "offline_user_data_job.failure_reason FROM offline_user_data_job "
                    f"WHERE offline_user_data_job.id = {job_id}")
    assert r.status_code == 200, r.text
    return r.json()["results"][0]["offlineUserDataJob"]


def person(*pairs):
    return {"userIdentifiers": [{k: v} for k, v in pairs]}


def test_token_exchange_and_auth_errors(ads):
    form = {"grant_type": "refresh_token", "client_id": ads.client_id,
            "client_secret": ads.client_secret, "refresh_token": ads.refresh_token}
    tokens = [httpx.post(ads.token_url, data=form).json() for _ in range(2)]
    assert tokens[0]["expires_in"] == 3599 and tokens[0]["token_type"] == "Bearer"
    assert tokens[0]["access_token"] != tokens[1]["access_token"]

    bad = {"refresh_token": ("x", 400, "invalid_grant"),
           "client_secret": ("x", 401, "invalid_client"),
           "client_id": ("x", 401, "invalid_client"),
           "grant_type": ("code", 400, "unsupported_grant_type")}
    for key, (value, status, error) in bad.items():
        r = httpx.post(ads.token_url, data={**form, key: value})
        assert (r.status_code, r.json()["error"]) == (status, error)
    assert httpx.post(ads.token_url, data={**form, "refresh_token": "x"}).json() == {
        "error": "invalid_grant", "error_description": "Token has been expired or revoked."}

    url = f"{ads.url}/customers/{CID}/googleAds:search"
    body = {"query": "SELECT user_list.id FROM user_list"}
    good = {"Authorization": f"Bearer {tokens[0]['access_token']}",
            "developer-token": "test-developer-token"}
    assert httpx.post(url, json=body, headers=good).status_code == 200
    cases = [
        ({"Authorization": "Bearer nope"}, 401, "UNAUTHENTICATED",
         {"authenticationError": "OAUTH_TOKEN_INVALID"}),
        ({"Authorization": ""}, 401, "UNAUTHENTICATED",
         {"authenticationError": "OAUTH_TOKEN_HEADER_INVALID"}),
        ({"developer-token": "wrong"}, 401, "UNAUTHENTICATED",
         {"authenticationError": "DEVELOPER_TOKEN_INVALID"}),
        ({"developer-token": ""}, 400, "INVALID_ARGUMENT",
         {"requestError": "DEVELOPER_TOKEN_PARAMETER_MISSING"}),
        ({"login-customer-id": "999"}, 403, "PERMISSION_DENIED",
         {"authorizationError": "USER_PERMISSION_DENIED"}),
    ]
    for override, status, rpc, code in cases:
        headers = {k: v for k, v in {**good, **override}.items() if v}
        r = httpx.post(url, json=body, headers=headers)
        assert (r.status_code, r.json()["error"]["status"]) == (status, rpc), override
        assert r.json()["error"]["code"] == status and errors_of(r)[0]["errorCode"] == code
    other = httpx.post(url.replace(CID, "555"), json=body, headers=good)
    dashed = httpx.post(url.replace(CID, "123-456-7890"), json=body, headers=good)
    assert other.status_code == 403 and errors_of(dashed)[0]["errorCode"] == {
        "requestError": "INVALID_CUSTOMER_ID"}

    ads.expire_access_tokens()
    r = httpx.post(url, json=body, headers=good)
    assert errors_of(r)[0]["errorCode"] == {"authenticationError": "OAUTH_TOKEN_EXPIRED"}
    ads.revoke_refresh_token()
    assert httpx.post(ads.token_url, data=form).status_code == 400
    assert ads.requests[0] == GoogleAdsRequest("POST", "/token", None, 200)


def test_login_customer_id_required_when_configured():
    with FakeGoogleAds(login_customer_id="1111111111") as ads:
        headers = {"Authorization": f"Bearer {ads.issue_access_token()}",
                   "developer-token": ads.developer_token}
        url = f"{ads.url}/customers/{CID}/googleAds:search"
        body = {"query": "SELECT user_list.id FROM user_list"}
        assert httpx.post(url, json=body, headers=headers).status_code == 403
        ok = httpx.post(url, json=body, headers={**headers, "login-customer-id": "1111111111"})
        assert ok.status_code == 200 and "results" not in ok.json()


def test_create_list_duplicate_and_search_pages(ads, api):
    ids = [new_list(api, f"list {i}") for i in range(5)]
    assert ads.user_list_id_by_name("list 3") == ids[3] and ads.user_list_id_by_name("x") is None
    dup = api.post("/userLists:mutate", json={"operations": [{"create": {
        "name": "list 1", "crmBasedUserList": {"uploadKeyType": "CRM_ID"}}}]})
    assert dup.status_code == 400 and dup.json()["error"]["status"] == "INVALID_ARGUMENT"
    err = errors_of(dup)[0]
    assert err["errorCode"] == {"userListError": "NAME_ALREADY_USED"}
    assert err["location"]["fieldPathElements"][0] == {"fieldName": "operations", "index": 0}
    assert len(ads.user_lists) == 5

    query = ("SELECT user_list.id, user_list.name, user_list.resource_name, "
             "user_list.size_for_search FROM user_list WHERE user_list.type = 'CRM_BASED'")
    seen, token = [], None
    for _ in range(3):
        page = search(api, query, **({"pageToken": token} if token else {})).json()
        seen += [row["userList"]["id"] for row in page["results"]]
        token = page.get("nextPageToken")
    assert seen == ids and token is None
    assert page["fieldMask"] == ("userList.id,userList.name,userList.resourceName,"
                                 "userList.sizeForSearch")

    one = search(api, query + " AND user_list.name = 'list 4'").json()["results"]
    ul = one[0]["userList"]
    assert len(one) == 1 and ul["resourceName"] == f"customers/{CID}/userLists/{ids[4]}"
    assert (ul["type"], ul["crmBasedUserList"]["uploadKeyType"]) == ("CRM_BASED", "CONTACT_INFO")
    assert (ul["sizeForSearch"], ul["matchRatePercentage"]) == ("0", 80)
    by_rn = search(api, "SELECT user_list.id FROM user_list WHERE user_list.resource_name = "
                        f"'customers/{CID}/userLists/{ids[2]}'").json()["results"]
    assert [r["userList"]["id"] for r in by_rn] == [ids[2]]
    none = search(api, query + " AND user_list.name = 'it''s'")
    assert none.status_code == 400  # GAQL escapes with a backslash, not by doubling
    assert "results" not in search(api, query + r" AND user_list.name = 'it\'s'").json()

    for bad_query, code in [("SELECT campaign.id FROM campaign",
                             "BAD_RESOURCE_TYPE_IN_FROM_CLAUSE"),
                            ("user_list.id FROM user_list", "EXPECTED_SELECT"),
                            ("SELECT user_list.id FROM user_list WHERE user_list.bogus = 1",
                             "UNRECOGNIZED_FIELD")]:
        r = search(api, bad_query)
        assert r.status_code == 400 and errors_of(r)[0]["errorCode"] == {"queryError": code}
    assert errors_of(search(api, query, pageToken="garbage"))[0]["errorCode"] == {
        "requestError": "INVALID_PAGE_TOKEN"}
    assert errors_of(search(api, query, pageSize=10))[0]["errorCode"] == {
        "requestError": "PAGE_SIZE_NOT_SUPPORTED"}


def test_job_partial_failure_run_poll_and_apply(ads, api):
    lid = new_list(api, "vip")
    ads.add_members(lid, [{"hashedEmail": h("old@example.com"), "hashedPhoneNumber": h("+1555")}])
    jid = new_job(api, lid)
    assert ads.jobs[jid]["consent"] == {"adUserData": "GRANTED", "adPersonalization": "GRANTED"}

    a, b = h("a@example.com"), h("b@example.com")
    ops = [{"create": person(("hashedEmail", a), ("hashedPhoneNumber", h("+15551234567")))},
           {"create": person(("hashedEmail", "A@EXAMPLE.COM"))},
           {"create": {"user_identifiers": [{"hashed_email": b}]}},  # snake_case is accepted too
           {"create": person(*[("hashedEmail", h(str(i))) for i in range(21)])},
           {"create": person(("thirdPartyUserId", "k1"))},
           {"remove": person(("hashedPhoneNumber", h("+1555")))}]
    strict = api.post(f"/offlineUserDataJobs/{jid}:addOperations", json={"operations": ops})
    assert strict.status_code == 400 and ads.jobs[jid]["n_operations"] == 0  # all or nothing
    assert {e["location"]["fieldPathElements"][0]["index"] for e in errors_of(strict)} == {1, 3, 4}

    r = api.post(f"/offlineUserDataJobs/{jid}:addOperations",
                 json={"operations": ops, "enablePartialFailure": True})
    assert r.status_code == 200
    pfe = r.json()["partialFailureError"]
    assert pfe["code"] == 3 and pfe["details"][0]["@type"] == FAILURE
    errs = pfe["details"][0]["errors"]
    assert [(e["location"]["fieldPathElements"][0], list(e["errorCode"].values())[0])
            for e in errs] == [
        ({"fieldName": "operations", "index": 1}, "INVALID_SHA256_FORMAT"),
        ({"fieldName": "operations", "index": 3}, "TOO_MANY_USER_IDENTIFIERS"),
        ({"fieldName": "operations", "index": 4}, "INCOMPATIBLE_UPLOAD_KEY_TYPE")]
    assert errs[0]["location"]["fieldPathElements"][1:] == [
        {"fieldName": "create"}, {"fieldName": "user_identifiers", "index": 0},
        {"fieldName": "hashed_email"}]
    assert "at operations[1].create.user_identifiers[0].hashed_email" in pfe["message"]
    assert ads.jobs[jid]["n_operations"] == 3 and ads.jobs[jid]["status"] == "PENDING"
    assert ads.requests[-1].n_operations == 6

    run = api.post(f"/offlineUserDataJobs/{jid}:run", json={})
    assert run.json()["name"].startswith(f"customers/{CID}/operations/")
    late = api.post(f"/offlineUserDataJobs/{jid}:addOperations", json={"operations": ops[:1]})
    assert errors_of(late)[0]["errorCode"] == {"offlineUserDataJobError": "JOB_ALREADY_STARTED"}
    assert ads.jobs[jid]["status"] == "RUNNING"
    assert job_status(api, jid)["status"] == "RUNNING"
    assert ads.member_values(lid, "hashedEmail") == {h("old@example.com")}  # not yet applied
    job = job_status(api, jid)
    assert job["status"] == "SUCCESS" and "failureReason" not in job
    assert job["resourceName"] == f"customers/{CID}/offlineUserDataJobs/{jid}"
    # The remove by phone took out the seeded member that also had an email.
    assert ads.members(lid) == {
        frozenset({("hashedEmail", a), ("hashedPhoneNumber", h("+15551234567"))}),
        frozenset({("hashedEmail", b)})}
    ul = search(api, f"SELECT user_list.size_for_search FROM user_list WHERE user_list.id = {lid}")
    assert ul.json()["results"][0]["userList"]["sizeForSearch"] == "2"


def test_job_failed_never_run_remove_all_and_bad_list(ads, api):
    lid = new_list(api, "crm", key="CRM_ID")
    ads.add_members(lid, [{"thirdPartyUserId": "old"}])
    failing, idle, clearing = new_job(api, lid), new_job(api, lid), new_job(api, lid)
    for jid in (failing, idle):
        assert api.post(f"/offlineUserDataJobs/{jid}:addOperations", json={"operations": [
            {"create": person(("thirdPartyUserId", "k1"))}]}).json() == {}
    ads.fail_next_job(reason="UNKNOWN")
    api.post(f"/offlineUserDataJobs/{failing}:run")
    assert job_status(api, failing)["status"] == "RUNNING"
    job = job_status(api, failing)
    assert (job["status"], job["failureReason"]) == ("FAILED", "UNKNOWN")
    assert ads.members(lid) == {frozenset({("thirdPartyUserId", "old")})}
    assert ads.jobs[idle]["status"] == "PENDING"

    bad_order = api.post(f"/offlineUserDataJobs/{clearing}:addOperations", json={"operations": [
        {"create": person(("thirdPartyUserId", "k2"))}, {"removeAll": True}]})
    assert errors_of(bad_order)[0]["errorCode"] == {
        "offlineUserDataJobError": "INVALID_OPERATION_ORDER"}
    api.post(f"/offlineUserDataJobs/{clearing}:addOperations", json={"operations": [
        {"removeAll": True}, {"create": person(("thirdPartyUserId", "k2"))}]})
    api.post(f"/offlineUserDataJobs/{clearing}:run")
    ads.finish_jobs()
    assert ads.jobs[clearing]["status"] == "SUCCESS"
    assert ads.members(lid) == {frozenset({("thirdPartyUserId", "k2")})}

    missing = api.post("/offlineUserDataJobs:create", json={"job": {
        "type": "CUSTOMER_MATCH_USER_LIST",
        "customerMatchUserListMetadata": {"userList": f"customers/{CID}/userLists/42"}}})
    assert errors_of(missing)[0]["errorCode"] == {"offlineUserDataJobError": "INVALID_USER_LIST_ID"}
    unknown_field = api.post(f"/offlineUserDataJobs/{idle}:addOperations", json={
        "operations": [{"create": person(("thirdPartyUserId", "k"))}], "partialFailure": True})
    assert unknown_field.status_code == 400
    assert unknown_field.json()["error"]["details"][0]["@type"].endswith("google.rpc.BadRequest")


def test_identifier_limit_per_request():
    with FakeGoogleAds(max_identifiers_per_request=3) as ads:
        lid = ads.create_user_list("l", "CRM_ID")
        headers = {"Authorization": f"Bearer {ads.issue_access_token()}",
                   "developer-token": ads.developer_token}
        with httpx.Client(base_url=f"{ads.url}/customers/{CID}", headers=headers) as api:
            jid = new_job(api, lid)
            ops = [{"create": person(("thirdPartyUserId", f"k{i}"), ("thirdPartyUserId", "x"))}
                   for i in range(2)]
            r = api.post(f"/offlineUserDataJobs/{jid}:addOperations",
                         json={"operations": ops, "enablePartialFailure": True})
            assert r.status_code == 400 and errors_of(r)[0]["errorCode"] == {
                "offlineUserDataJobError": "TOO_MANY_USER_IDENTIFIERS"}
            assert ads.jobs[jid]["n_operations"] == 0


def test_injected_faults(ads, api):
    lid = new_list(api, "l")
    jid = new_job(api, lid)
    add = {"operations": [{"create": person(("hashedEmail", h("a")))}]}

    ads.inject_resource_exhausted(times=1, retry_delay=2)
    assert search(api, "SELECT user_list.id FROM user_list").status_code == 200  # out of scope
    r = api.post(f"/offlineUserDataJobs/{jid}:addOperations", json=add)
    assert r.status_code == 429 and r.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    err = errors_of(r)[0]
    assert err["errorCode"] == {"quotaError": "RESOURCE_EXHAUSTED"}
    assert err["details"]["quotaErrorDetails"] == {
        "rateScope": "ACCOUNT", "rateName": "Requests per service per method", "retryDelay": "2s"}
    assert ads.jobs[jid]["n_operations"] == 0

    ads.inject_concurrent_modification(times=1)
    ads.inject_concurrent_modification(times=1, status=409)
    ads.inject_server_error(times=1, status=503, scope="all")
    r1, r2 = (api.post(f"/offlineUserDataJobs/{jid}:addOperations", json=add) for _ in range(2))
    r3 = search(api, "SELECT user_list.id FROM user_list")
    assert [(r.status_code, r.json()["error"]["status"]) for r in (r1, r2, r3)] == [
        (400, "INVALID_ARGUMENT"), (409, "ABORTED"), (503, "UNAVAILABLE")]
    assert errors_of(r1)[0]["errorCode"] == {"databaseError": "CONCURRENT_MODIFICATION"}
    assert errors_of(r3)[0]["errorCode"] == {"internalError": "TRANSIENT_ERROR"}

    ads.inject_delay(0.2, scope="run")
    ads.inject_reset(times=1, scope="operations")
    with pytest.raises(httpx.TransportError):
        api.post(f"/offlineUserDataJobs/{jid}:addOperations", json=add)
    assert ads.jobs[jid]["n_operations"] == 0
    ads.inject_lost_answer(times=1, scope="operations")
    with pytest.raises(httpx.TransportError):
        api.post(f"/offlineUserDataJobs/{jid}:addOperations", json=add)
    assert ads.jobs[jid]["n_operations"] == 1  # handled, answer lost
    start = time.monotonic()
    assert api.post(f"/offlineUserDataJobs/{jid}:run").status_code == 200
    assert time.monotonic() - start >= 0.2
    assert [(q.path.rsplit(":", 1)[-1], q.n_operations, q.status) for q in ads.requests[-4:]] == [
        ("search", None, 503), ("addOperations", None, 0), ("addOperations", 1, 0),
        ("run", None, 200)]
    assert not ads.errors
