"""The fake HubSpot server behaves as destination-apis.md §5 describes."""

import threading

import httpx
import pytest

from audience_pipelines_tests.fakes.hubspot import FakeHubSpot, HubSpotRequest

AUTH = {"Authorization": "Bearer test-token"}
UPSERT = "/crm/v3/objects/contacts/batch/upsert"


@pytest.fixture
def hs():
    with FakeHubSpot() as server:
        yield server


@pytest.fixture
def api(hs):
    with httpx.Client(base_url=hs.url, headers=AUTH) as client:
        yield client


def upsert(api, *emails, **props):
    return api.post(UPSERT, json={"inputs": [
        {"idProperty": "email", "id": e, "properties": {"email": e, **props}} for e in emails]})


def members_op(api, list_id, op, body):
    return api.put(f"/crm/v3/lists/{list_id}/memberships/{op}", json=body)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_auth_and_scopes():
    with FakeHubSpot(scopes={"crm.lists.read"}) as hs:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "test-token"}):
            r = httpx.post(hs.url + UPSERT, json={"inputs": []}, headers=headers)
            body = r.json()
            assert r.status_code == 401 and body["category"] == "INVALID_AUTHENTICATION"
            assert body["status"] == "error" and body["correlationId"]
            assert body["message"].startswith("Authentication credentials not found")
        r = httpx.post(hs.url + UPSERT, json={"inputs": []}, headers=AUTH)
        assert r.status_code == 403 and r.json()["category"] == "MISSING_SCOPES"
        assert r.json()["errors"][0]["context"] == {
            "requiredGranularScopes": ["crm.objects.contacts.write"]}
        ok = httpx.post(hs.url + "/crm/v3/lists/search", json={}, headers=AUTH)
        assert ok.status_code == 200 and ok.json()["total"] == 0
        assert hs.requests[0] == HubSpotRequest("POST", UPSERT, None, 401)
        assert not hs.errors


def test_upsert_create_update_case_insensitive(hs, api):
    r = upsert(api, "A@X.com", "b@x.com", firstname="Ann", plan=3)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "COMPLETE"
    assert body["startedAt"] and body["completedAt"] and "errors" not in body
    a, b = body["results"]
    assert a["new"] is True and a["archived"] is False and a["id"].isdigit()
    assert a["properties"]["email"] == "a@x.com" and a["properties"]["plan"] == "3"
    assert a["properties"]["hs_object_id"] == a["id"] and a["createdAt"] and a["updatedAt"]

    # idProperty as a query parameter, email in another case: same contact, updated.
    r = api.post(UPSERT, params={"idProperty": "email"}, json={"inputs": [
        {"id": "a@X.COM", "properties": {"lastname": "Lee", "firstname": None}}]})
    again = r.json()["results"][0]
    assert r.status_code == 200 and again["new"] is False and again["id"] == a["id"]
    assert hs.contacts[a["id"]] == {"email": "a@x.com", "firstname": "", "lastname": "Lee",
                                    "plan": "3"}
    assert hs.contact_by_email("B@x.com")["id"] == b["id"] and len(hs.contacts) == 2
    assert hs.requests[-1].n_items == 1

    no_id_property = api.post(UPSERT, json={"inputs": [{"id": "c@x.com", "properties": {}}]})
    dup = upsert(api, "d@x.com", "D@x.com")
    too_many = upsert(api, *(f"u{i}@x.com" for i in range(101)))
    for r in (no_id_property, dup, too_many):
        assert r.status_code == 400 and r.json()["category"] == "VALIDATION_ERROR"
    assert "Duplicate IDs" in dup.json()["message"] and len(hs.contacts) == 2
    assert hs.requests[-1].n_items == 101


def test_upsert_partial_failure_and_unknown_property(hs, api):
    hs.reject_emails(["Bad@x.com"], message="Email {email} bounced")
    r = upsert(api, "ok@x.com", "no-at-sign", "bad@x.com")
    body = r.json()
    assert r.status_code == 207 and body["numErrors"] == 2
    assert [x["properties"]["email"] for x in body["results"]] == ["ok@x.com"]
    e1, e2 = body["errors"]
    assert e1["status"] == "error" and e1["category"] == "VALIDATION_ERROR"
    assert e1["message"].startswith("Property values were not valid: ")
    assert "no-at-sign" in e1["message"] and e1["context"] == {"ids": ["no-at-sign"]}
    assert "Email bad@x.com bounced" in e2["message"] and e2["context"] == {"ids": ["bad@x.com"]}
    assert list(hs.contacts.values()) == [{"email": "ok@x.com"}]

    r = upsert(api, "new@x.com", favourite_color="red")
    assert r.status_code == 400 and r.json()["category"] == "VALIDATION_ERROR"
    assert "favourite_color" in r.json()["message"]
    assert "PROPERTY_DOESNT_EXIST" in r.json()["message"]
    assert hs.contact_by_email("new@x.com") is None  # whole request refused
    with FakeHubSpot(contact_properties={"email", "favourite_color"}) as hs2:
        r = httpx.post(hs2.url + UPSERT, headers=AUTH, json={"inputs": [{
            "idProperty": "email", "id": "n@x.com", "properties": {"favourite_color": "red"}}]})
        assert r.status_code == 200


def test_batch_read_and_get_contact(hs, api):
    a = hs.create_contact("a@x.com", firstname="Ann")
    b = hs.create_contact("b@x.com")
    r = api.post("/crm/v3/objects/contacts/batch/read", json={
        "idProperty": "email", "properties": ["firstname"],
        "inputs": [{"id": "A@x.com"}, {"id": "zz@x.com"}, {"id": "b@x.com"}]})
    body = r.json()
    assert r.status_code == 207 and [x["id"] for x in body["results"]] == [a, b]
    assert body["results"][0]["properties"]["firstname"] == "Ann"
    assert body["results"][1]["properties"]["firstname"] is None
    assert body["errors"][0]["category"] == "OBJECT_NOT_FOUND"
    assert body["errors"][0]["context"] == {"ids": ["zz@x.com"]}
    by_id = api.post("/crm/v3/objects/contacts/batch/read", json={"inputs": [{"id": a}]})
    assert by_id.status_code == 200
    assert by_id.json()["results"][0]["properties"]["email"] == "a@x.com"

    got = api.get(f"/crm/v3/objects/contacts/{a}")
    assert got.status_code == 200 and got.json()["properties"]["firstname"] == "Ann"
    hs.delete_contact(a)
    for path in (f"/crm/v3/objects/contacts/{a}", "/crm/v3/objects/contacts/999999"):
        r = api.get(path)
        assert r.status_code == 404 and r.json()["category"] == "OBJECT_NOT_FOUND"
    assert a not in hs.contacts and hs.contact_by_email("a@x.com") is None
    # The email is free again: a new upsert creates a new contact.
    assert upsert(api, "a@x.com").json()["results"][0]["id"] not in (a, b)


def test_lists_create_duplicate_find_search(hs, api):
    r = api.post("/crm/v3/lists", json={"name": "VIP / gold", "objectTypeId": "0-1",
                                         "processingType": "MANUAL"})
    lst = r.json()["list"]
    assert r.status_code == 200 and lst["listId"].isdigit() and lst["listVersion"] == 1
    assert (lst["name"], lst["objectTypeId"], lst["processingStatus"], lst["processingType"]) \
        == ("VIP / gold", "0-1", "COMPLETE", "MANUAL")
    assert lst["size"] == 0 and lst["additionalProperties"]["hs_list_size"] == "0"
    assert lst["createdAt"] and lst["updatedAt"]

    dup = api.post("/crm/v3/lists", json={"name": "vip / GOLD", "objectTypeId": "0-1",
                                           "processingType": "MANUAL"})
    assert dup.status_code == 400 and dup.json()["category"] == "VALIDATION_ERROR"
    assert "already exists" in dup.json()["message"] and len(hs.lists) == 1
    bad_type = api.post("/crm/v3/lists", json={"name": "x", "objectTypeId": "0-1",
                                                "processingType": "WHATEVER"})
    assert bad_type.status_code == 400

    found = api.get("/crm/v3/lists/object-type-id/0-1/name/VIP%20%2F%20gold")
    assert found.status_code == 200 and found.json()["list"]["listId"] == lst["listId"]
    absent = api.get("/crm/v3/lists/object-type-id/0-1/name/nope")
    assert absent.status_code == 404 and absent.json()["category"] == "OBJECT_NOT_FOUND"
    assert api.get(f"/crm/v3/lists/{lst['listId']}").json()["list"]["name"] == "VIP / gold"
    assert api.get("/crm/v3/lists/999", params={"includeFilters": "true"}).status_code == 404
    assert hs.list_id_by_name("VIP / gold") == lst["listId"]
    assert hs.list_id_by_name("other") is None

    hs.create_list("VIP silver")
    hs.create_list("vip dynamic", processing_type="DYNAMIC")
    hs.create_list("unrelated")
    page = api.post("/crm/v3/lists/search", json={"query": "vip", "count": 2, "offset": 0}).json()
    assert page["total"] == 3 and page["hasMore"] is True and page["offset"] == 2
    assert [x["name"] for x in page["lists"]] == ["VIP / gold", "VIP silver"]
    rest = api.post("/crm/v3/lists/search", json={"query": "vip", "count": 2, "offset": 2}).json()
    assert [x["name"] for x in rest["lists"]] == ["vip dynamic"] and rest["hasMore"] is False
    manual = api.post("/crm/v3/lists/search", json={"query": "VIP",
                                                    "processingTypes": ["MANUAL"]}).json()
    assert manual["total"] == 2
    with pytest.raises(ValueError):
        hs.create_list("UNRELATED")

    assert api.delete(f"/crm/v3/lists/{lst['listId']}").status_code == 204
    assert api.get(f"/crm/v3/lists/{lst['listId']}").status_code == 404


def test_memberships(hs, api):
    lid = hs.create_list("vip")
    ids = [hs.create_contact(f"u{i}@x.com") for i in range(4)]
    r = members_op(api, lid, "add", [ids[0], ids[1], "424242"])
    assert r.status_code == 200
    assert r.json() == {"recordsIdsAdded": [ids[0], ids[1]], "recordIdsRemoved": [],
                        "recordIdsMissing": ["424242"]}
    assert hs.requests[-1] == HubSpotRequest("PUT", f"/crm/v3/lists/{lid}/memberships/add", 3, 200)
    # Already members are silently ignored.
    assert members_op(api, lid, "add", [ids[1], ids[2]]).json()["recordsIdsAdded"] == [ids[2]]
    assert hs.members(lid) == set(ids[:3])
    assert hs.member_emails(lid) == {"u0@x.com", "u1@x.com", "u2@x.com"}
    assert api.get(f"/crm/v3/lists/{lid}").json()["list"]["additionalProperties"][
        "hs_list_size"] == "3"

    r = members_op(api, lid, "remove", [ids[0], ids[3], "999"]).json()
    assert r == {"recordsIdsAdded": [], "recordIdsRemoved": [ids[0]], "recordIdsMissing": ["999"]}
    r = members_op(api, lid, "add-and-remove", {"recordIdsToAdd": [ids[3]],
                                                "recordIdsToRemove": [ids[1]]}).json()
    assert r == {"recordsIdsAdded": [ids[3]], "recordIdsRemoved": [ids[1]],
                 "recordIdsMissing": []}
    assert hs.members(lid) == {ids[2], ids[3]}

    # A contact deleted in HubSpot leaves its lists and then reports missing.
    hs.delete_contact(ids[2])
    assert hs.members(lid) == {ids[3]}
    assert members_op(api, lid, "add", [ids[2]]).json()["recordIdsMissing"] == [ids[2]]

    dyn = hs.create_list("dyn", processing_type="DYNAMIC")
    r = members_op(api, dyn, "add", [ids[3]])
    assert r.status_code == 400 and r.json()["message"] == "List is not a MANUAL or SNAPSHOT list"
    assert members_op(api, "777", "add", [ids[3]]).status_code == 404
    assert members_op(api, lid, "add", {"not": "a list"}).status_code == 400


def test_membership_pagination():
    with FakeHubSpot(membership_results="records") as hs, \
            httpx.Client(base_url=hs.url, headers=AUTH) as api:
        lid = hs.create_list("big")
        ids = [hs.create_contact(f"p{i}@x.com") for i in range(5)]
        members_op(api, lid, "add", list(reversed(ids)))
        seen, params = [], {"limit": 2}
        while True:
            page = api.get(f"/crm/v3/lists/{lid}/memberships", params=params).json()
            assert all(row["membershipTimestamp"] for row in page["results"])
            seen += [row["recordId"] for row in page["results"]]
            if "paging" not in page:
                break
            params = {"limit": 2, "after": page["paging"]["next"]["after"]}
        assert seen == ids  # ordered by record id, each once
        assert api.get(f"/crm/v3/lists/{lid}/memberships", params={"limit": 0}).status_code == 400
        assert api.get("/crm/v3/lists/555/memberships").status_code == 404
    with FakeHubSpot(membership_results="ids") as hs:
        lid = hs.create_list("plain")
        cid = hs.create_contact("q@x.com")
        httpx.put(f"{hs.url}/crm/v3/lists/{lid}/memberships/add", json=[cid], headers=AUTH)
        r = httpx.get(f"{hs.url}/crm/v3/lists/{lid}/memberships", headers=AUTH)
        assert r.json() == {"results": [cid]}


def test_rate_limit_window_and_headers():
    clock = Clock()
    with FakeHubSpot(rate_limit=2, clock=clock) as hs, \
            httpx.Client(base_url=hs.url, headers=AUTH) as api:
        r1 = api.post("/crm/v3/lists/search", json={})
        assert r1.headers["X-HubSpot-RateLimit-Max"] == "2"
        assert r1.headers["X-HubSpot-RateLimit-Remaining"] == "1"
        assert r1.headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "10000"
        clock.now += 6
        assert api.post("/crm/v3/lists/search", json={}).headers[
            "X-HubSpot-RateLimit-Remaining"] == "0"
        r3 = api.post("/crm/v3/lists/search", json={})
        body = r3.json()
        assert r3.status_code == 429 and "Retry-After" not in r3.headers
        assert body["policyName"] == "TEN_SECONDLY_ROLLING" and body["errorType"] == "RATE_LIMIT"
        assert body["message"] == "You have reached your ten_secondly_rolling limit."
        assert body["status"] == "error" and body["correlationId"] and body["requestId"]
        assert r3.headers["X-HubSpot-RateLimit-Remaining"] == "0"
        clock.now += 4.5  # the first request left the rolling window; the refused one never counted
        r4 = api.post("/crm/v3/lists/search", json={})
        assert r4.status_code == 200 and r4.headers["X-HubSpot-RateLimit-Remaining"] == "0"
        assert [r.status for r in hs.requests] == [200, 200, 429, 200]
    with FakeHubSpot() as hs:  # unlimited: no rate headers
        r = httpx.post(hs.url + "/crm/v3/lists/search", json={}, headers=AUTH)
        assert "X-HubSpot-RateLimit-Max" not in r.headers


def test_injections(hs, api):
    lid = hs.create_list("vip")
    cid = hs.create_contact("a@x.com")
    hs.inject_rate_limit(policy="DAILY", scope="memberships")
    hs.inject_server_error(times=2, status=503, scope="upsert")
    hs.inject_locked(scope="upsert")

    assert api.get(f"/crm/v3/lists/{lid}").status_code == 200  # out of scope
    r = members_op(api, lid, "add", [cid])
    assert r.status_code == 429 and r.json()["policyName"] == "DAILY"
    assert r.json()["message"] == "You have reached your daily limit."
    assert r.headers["X-HubSpot-RateLimit-Daily-Remaining"] == "0" and hs.members(lid) == set()
    statuses = [upsert(api, "b@x.com").status_code for _ in range(4)]
    assert statuses == [503, 503, 423, 200]  # FIFO across fault kinds
    assert upsert(api, "c@x.com").status_code == 200

    hs.inject_rate_limit()  # default: next request of any kind
    r = api.post("/crm/v3/lists/search", json={})
    assert r.status_code == 429 and r.json()["policyName"] == "TEN_SECONDLY_ROLLING"
    assert r.headers["X-HubSpot-RateLimit-Remaining"] == "0" and "Retry-After" not in r.headers

    hs.inject_reset(scope="memberships")
    with pytest.raises(httpx.TransportError):
        members_op(api, lid, "add", [cid])
    assert hs.members(lid) == set()  # reset before handling: nothing applied
    hs.inject_lost_answer(scope="memberships")
    with pytest.raises(httpx.TransportError):
        members_op(api, lid, "add", [cid])
    assert hs.members(lid) == {cid}  # applied, answer lost

    hs.inject_delay(0.3, scope="lists")
    with pytest.raises(httpx.ReadTimeout):
        api.get(f"/crm/v3/lists/{lid}", timeout=0.1)
    with pytest.raises(ValueError):
        hs.inject_locked(scope="contacts")
    assert not hs.errors


def test_dated_paths_unknown_route_and_concurrency(hs, api):
    lid = hs.create_list("dated")
    assert api.get(f"/crm/lists/2026-03/{lid}").json()["list"]["listId"] == lid
    r = api.get("/crm/v3/nothing/here")
    assert r.status_code == 404 and r.json()["category"] == "OBJECT_NOT_FOUND"

    def worker(n):
        with httpx.Client(base_url=hs.url, headers=AUTH) as c:
            for i in range(5):
                upsert(c, f"w{n}-{i}@x.com", "shared@x.com" if i % 2 else f"z{n}@x.com")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(hs.contacts) == 4 * 5 + 4 + 1 and not hs.errors
