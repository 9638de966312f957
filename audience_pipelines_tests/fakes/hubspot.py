"""Stateful fake of HubSpot CRM contacts + Lists v3 (destination-apis.md §5)."""

from __future__ import annotations

import base64
import itertools
import json
import re
import time
import uuid
from collections import deque, namedtuple
from datetime import datetime, timezone
from urllib.parse import unquote

from ._server import FakeServer, Request, Response, json_response

CONTACTS = "0-1"  # objectTypeId of contacts
# Contact properties and their HubSpot types (a set of names in the constructor means strings).
DEFAULT_CONTACT_PROPERTIES = {
    **{p: "string" for p in "email firstname lastname phone company plan city country".split()},
    "lifecyclestage": "enumeration", "lifetime_value": "number", "last_purchase_at": "datetime",
    "marketing_opt_in": "bool", "birthdate": "date",
}
MAX_BATCH = 100
MEMBERS_PAGE_DEFAULT, MEMBERS_PAGE_MAX = 100, 250
SEARCH_COUNT_DEFAULT, SEARCH_COUNT_MAX = 20, 500
PROCESSING_TYPES = ("MANUAL", "SNAPSHOT", "DYNAMIC")
EDITABLE_TYPES = ("MANUAL", "SNAPSHOT")
RATE_POLICIES = ("TEN_SECONDLY_ROLLING", "SECONDLY", "DAILY")
INJECTION_SCOPES = ("all", "upsert", "memberships", "lists", "other")
# OAuth scopes each endpoint needs (HubSpot's granular names).
READ_CONTACTS, WRITE_CONTACTS = "crm.objects.contacts.read", "crm.objects.contacts.write"
READ_LISTS, WRITE_LISTS = "crm.lists.read", "crm.lists.write"
SYSTEM_PROPERTIES = ("hs_object_id", "createdate", "lastmodifieddate")
DEFAULT_READ_PROPERTIES = ("email", "firstname", "lastname")

HubSpotRequest = namedtuple("HubSpotRequest", "method path n_items status")  # one per request

# Date-versioned paths (/crm/lists/2026-03/...) mirror /crm/v3/...; accept both.
_DATED = re.compile(r"^/crm/(lists|objects)/\d{4}-\d{2}(?=/|$)")
_ROUTES = [  # (method, path pattern, handler name, OAuth scope, injection scope)
    ("POST", r"/crm/v3/objects/contacts/batch/upsert", "_upsert", WRITE_CONTACTS, "upsert"),
    ("POST", r"/crm/v3/objects/contacts/batch/read", "_batch_read", READ_CONTACTS, "other"),
    ("POST", r"/crm/v3/objects/contacts/batch/update", "_batch_update", WRITE_CONTACTS, "upsert"),
    ("GET", r"/crm/v3/properties/contacts", "_properties", READ_CONTACTS, "other"),
    ("GET", r"/crm/v3/objects/contacts/(?P<cid>[^/]+)", "_get_contact", READ_CONTACTS, "other"),
    ("POST", r"/crm/v3/lists/?", "_create_list", WRITE_LISTS, "lists"),
    ("POST", r"/crm/v3/lists/search", "_search_lists", READ_LISTS, "lists"),
    ("GET", r"/crm/v3/lists/object-type-id/(?P<otid>[^/]+)/name/(?P<name>[^/]+)",
     "_get_list_by_name", READ_LISTS, "lists"),
    ("GET", r"/crm/v3/lists/(?P<lid>[^/]+)", "_get_list", READ_LISTS, "lists"),
    ("DELETE", r"/crm/v3/lists/(?P<lid>[^/]+)", "_delete_list_http", WRITE_LISTS, "lists"),
    ("PUT", r"/crm/v3/lists/(?P<lid>[^/]+)/memberships/(?P<op>add|remove|add-and-remove)",
     "_change_members", WRITE_LISTS, "memberships"),
    ("GET", r"/crm/v3/lists/(?P<lid>[^/]+)/memberships", "_list_members", READ_LISTS, "lists"),
]
_ROUTES = [(m, re.compile(p), h, s, i) for m, p, h, s, i in _ROUTES]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _cid() -> str:
    return str(uuid.uuid4())


class HubSpotError(Exception):
    """Generic HubSpot error body: {status, message, correlationId, category, ...}."""

    def __init__(self, status, category, message, *, sub_category=None, context=None,
                 errors=None, headers=None, body=None):
        super().__init__(message)
        self.status, self.category, self.message = status, category, message
        self.sub_category, self.context, self.errors = sub_category, context, errors
        self.headers = headers or {}
        self.body = body  # replaces the generic shape (429 has its own)

    def response(self) -> Response:
        body = self.body or {"status": "error", "message": self.message,
                             "correlationId": _cid(), "category": self.category}
        if self.sub_category:
            body["subCategory"] = self.sub_category
        if self.errors is not None:
            body["errors"] = self.errors
        if self.context is not None:
            body["context"] = self.context
        return json_response(self.status, body, self.headers)


def _invalid(message, **kw) -> HubSpotError:
    return HubSpotError(400, "VALIDATION_ERROR", message, **kw)


def _not_found(message, **kw) -> HubSpotError:
    return HubSpotError(404, "OBJECT_NOT_FOUND", message, **kw)


def _property_errors(items: list[dict]) -> str:
    # HubSpot embeds a JSON list of per-property findings in the message text.
    return "Property values were not valid: " + json.dumps(items)


def _json(req: Request, default=None):
    if not req.body.strip():
        if default is not None:
            return default
        raise _invalid("Invalid input JSON: request body is empty")
    try:
        return req.json()
    except ValueError as e:
        raise _invalid(f"Invalid input JSON: {e}") from None


def _record_ids(value, field: str) -> list[str]:
    """Record ids arrive as strings (or, leniently, JSON integers); order kept, dups dropped."""
    if not isinstance(value, list):
        raise _invalid(f"{field} must be a JSON array of record ids")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise _invalid(f"{field}: record ids must be strings, got {v!r}")
        if str(v) not in out:
            out.append(str(v))
    return out


def _int_param(value, name: str, default: int, maximum: int, minimum: int = 1) -> int:
    if value in (None, ""):
        return default
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise _invalid(f"{name} must be an integer") from None
    if not minimum <= n <= maximum:
        raise _invalid(f"{name} must be between {minimum} and {maximum}")
    return n


def _property_value(v) -> str:
    # HubSpot stores every property as a string; null clears it.
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


class FakeHubSpot(FakeServer):
    injection_scopes = INJECTION_SCOPES

    def __init__(self, access_token="test-token", portal_id=12345, rate_limit=None, *,
                 scopes=None, contact_properties=DEFAULT_CONTACT_PROPERTIES,
                 rate_window=10.0, clock=time.monotonic, membership_results="records"):
        """`scopes`: granted OAuth scopes (None = all). `rate_limit`: requests per rolling
        `rate_window` seconds (None = unlimited); `clock` lets tests move time.
        `membership_results`: "records" ({recordId, membershipTimestamp}) or "ids" (strings).
        """
        super().__init__()
        if membership_results not in ("records", "ids"):
            raise ValueError("membership_results must be 'records' or 'ids'")
        self.access_token, self.portal_id = access_token, int(portal_id)
        self.rate_limit, self.rate_window, self._clock = rate_limit, rate_window, clock
        self.scopes = None if scopes is None else frozenset(scopes)
        self.contact_properties = dict(contact_properties) if isinstance(contact_properties, dict) \
            else {p: "string" for p in contact_properties}
        self.membership_results = membership_results
        self._window: deque[float] = deque()  # admission times inside the rolling window
        self._contacts: dict[str, dict] = {}  # id -> {id, properties, createdAt, ...}
        self._by_email: dict[str, str] = {}  # lower-cased email -> live contact id
        self._lists: dict[str, dict] = {}
        self._members: dict[str, dict[str, str]] = {}  # list id -> record id -> timestamp
        self._rejected: dict[str, str | None] = {}  # lower-cased email -> message
        self._contact_ids = itertools.count(1001)  # distinct ranges catch id mix-ups
        self._list_ids = itertools.count(1)

    # -- inspection / seeding ---------------------------------------------
    @property
    def url(self) -> str:
        return self.origin

    @property
    def contacts(self) -> dict[str, dict]:
        """Live (non-archived) contacts: id -> properties."""
        with self._lock:
            return {cid: dict(c["properties"]) for cid, c in self._contacts.items()
                    if not c["archived"]}

    def contact_by_email(self, email: str) -> dict | None:
        """{id, properties, createdAt, updatedAt, archived} of the live contact, or None."""
        with self._lock:
            cid = self._by_email.get(email.strip().lower())
            if cid is None:
                return None
            c = self._contacts[cid]
            return {**c, "properties": dict(c["properties"])}

    def create_contact(self, email: str, **properties) -> str:
        """Seed a contact directly (no HTTP, no validation); returns its id."""
        with self._lock:
            cid, _ = self._upsert_one(email, properties)
            return cid

    def delete_contact(self, contact_id: str) -> None:
        """Archive a contact as if deleted in HubSpot: it leaves every list, its id then
        reports as missing, and its email is free for a new contact."""
        with self._lock:
            c = self._contacts[str(contact_id)]
            if c["archived"]:
                return
            c["archived"] = True
            c["updatedAt"] = _now()
            self._by_email.pop(c["properties"].get("email", ""), None)
            for members in self._members.values():
                members.pop(c["id"], None)

    @property
    def lists(self) -> dict[str, dict]:
        with self._lock:
            return {lid: self._view(lid) for lid in self._lists}

    def members(self, list_id: str) -> set[str]:
        with self._lock:
            return set(self._members[str(list_id)])

    def member_emails(self, list_id: str) -> set[str]:
        with self._lock:
            return {self._contacts[rid]["properties"].get("email", "")
                    for rid in self._members[str(list_id)]}

    def list_id_by_name(self, name: str) -> str | None:
        with self._lock:
            ids = [lid for lid, lst in self._lists.items()
                   if lst["name"].lower() == name.lower()]
        if len(ids) > 1:
            raise LookupError(f"{len(ids)} lists are named {name!r}: {ids}")
        return ids[0] if ids else None

    def create_list(self, name: str, processing_type: str = "MANUAL") -> str:
        """Seed a list directly (no HTTP); same name rules as the API. Returns its id."""
        if processing_type not in PROCESSING_TYPES:
            raise ValueError(f"processing_type must be one of {PROCESSING_TYPES}")
        with self._lock:
            if self._list_named(name) is not None:
                raise ValueError(f"a list named {name!r} already exists")
            lid, now = str(next(self._list_ids)), _now()
            self._lists[lid] = {"listId": lid, "listVersion": 1, "name": name,
                                "objectTypeId": CONTACTS, "processingStatus": "COMPLETE",
                                "processingType": processing_type, "createdAt": now,
                                "updatedAt": now}
            self._members[lid] = {}
            return lid

    def delete_list(self, list_id: str) -> None:
        """As if deleted in HubSpot: later calls on it get 404."""
        with self._lock:
            del self._lists[str(list_id)]
            del self._members[str(list_id)]

    # -- injections -------------------------------------------------------
    # Faults (rate limit, server error, locked) share one FIFO queue; each use is taken by
    # the next authenticated, admitted request in scope: "upsert" (batch/upsert),
    # "memberships" (membership PUTs), "lists" (other list endpoints), "other", or "all".
    def reject_emails(self, emails, message: str | None = None) -> None:
        """Persistent: upserts of these emails fail per input (207). `message` may hold
        "{email}"; default "Email address <email> is invalid"."""
        with self._lock:
            for e in emails:
                self._rejected[e.strip().lower()] = message

    def clear_rejected_emails(self) -> None:
        with self._lock:
            self._rejected.clear()

    def inject_rate_limit(self, times=1, policy="TEN_SECONDLY_ROLLING", scope="all") -> None:
        if policy not in RATE_POLICIES:
            raise ValueError(f"policy must be one of {RATE_POLICIES}")
        self._push("fault", times, scope, fault="rate_limit", policy=policy)

    def inject_server_error(self, times=1, status=500, scope="all") -> None:
        if status not in (500, 502, 503, 504):
            raise ValueError("status must be 500, 502, 503 or 504")
        self._push("fault", times, scope, fault="server", status=status)

    def inject_locked(self, times=1, scope="all") -> None:
        self._push("fault", times, scope, fault="locked")

    def inject_delay(self, seconds: float, times=1, scope="all") -> None:
        self._push("delay", times, scope, seconds=seconds)

    # -- HTTP plumbing ----------------------------------------------------
    def _route(self, req: Request):
        path = _DATED.sub(lambda m: f"/crm/v3/{m.group(1)}", req.path)
        for method, pattern, handler, oauth, inj in _ROUTES:
            if method == req.method and (m := pattern.fullmatch(path)):
                params = {k: unquote(v) for k, v in m.groupdict().items()}
                return getattr(self, handler), params, oauth, inj
        return None

    def _scope(self, req: Request) -> str:
        route = self._route(req)
        return route[3] if route else "other"

    def _log_entry(self, req: Request, resp: Response):
        return HubSpotRequest(req.method, req.path, req.notes.get("n_items"), resp.status)

    def _handle(self, req: Request) -> Response:
        remaining = None
        try:
            self._check_auth(req)
            remaining = self._admit()
            route = self._route(req)
            if route is None:
                raise _not_found(f"No such endpoint in the fake: {req.method} {req.path}")
            handler, params, oauth, inj = route
            if self.scopes is not None and oauth not in self.scopes:
                raise self._missing_scope(oauth)
            if fault := self._pop("fault", inj):
                raise self._fault(fault)
            status, body = handler(req, **params)
            resp = json_response(status, body) if body is not None else Response(status)
        except HubSpotError as e:
            resp = e.response()
        resp.headers = {**self._rate_headers(remaining), **resp.headers}
        return resp

    def _check_auth(self, req: Request) -> None:
        auth = req.headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        if token != self.access_token:
            raise HubSpotError(
                401, "INVALID_AUTHENTICATION",
                "Authentication credentials not found. This API supports OAuth 2.0 "
                "authentication and you can find more details at "
                "https://developers.hubspot.com/docs/methods/auth/oauth-overview")

    def _admit(self) -> int | None:
        """Rolling window: refuse (429, not counted) when full; else count this request."""
        if self.rate_limit is None:
            return None
        with self._lock:
            now = self._clock()
            while self._window and self._window[0] <= now - self.rate_window:
                self._window.popleft()
            if len(self._window) >= self.rate_limit:
                raise self._rate_limited("TEN_SECONDLY_ROLLING")
            self._window.append(now)
            return self.rate_limit - len(self._window)

    def _rate_headers(self, remaining: int | None) -> dict[str, str]:
        if self.rate_limit is None:
            return {}
        if remaining is None:  # not admitted (401, 429): report the window as it stands
            with self._lock:
                now = self._clock()
                used = sum(1 for t in self._window if t > now - self.rate_window)
            remaining = max(self.rate_limit - used, 0)
        return {"X-HubSpot-RateLimit-Max": str(self.rate_limit),
                "X-HubSpot-RateLimit-Remaining": str(remaining),
                "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(self.rate_window * 1000))}

    def _rate_limited(self, policy: str) -> HubSpotError:
        message = f"You have reached your {policy.lower()} limit."
        body = {"status": "error", "message": message, "errorType": "RATE_LIMIT",
                "correlationId": _cid(), "policyName": policy, "requestId": _cid()}
        if policy == "DAILY":
            headers = {"X-HubSpot-RateLimit-Daily": "250000",
                       "X-HubSpot-RateLimit-Daily-Remaining": "0"}
        else:  # no Retry-After: HubSpot sends none reliably
            headers = {"X-HubSpot-RateLimit-Max": str(self.rate_limit or 100),
                       "X-HubSpot-RateLimit-Remaining": "0",
                       "X-HubSpot-RateLimit-Interval-Milliseconds":
                           str(int(self.rate_window * 1000))}
        return HubSpotError(429, "RATE_LIMITS", message, headers=headers, body=body)

    @staticmethod
    def _missing_scope(scope: str) -> HubSpotError:
        return HubSpotError(
            403, "MISSING_SCOPES",
            "This app hasn't been granted all required scopes to make this call. Read more "
            "about required scopes here: https://developers.hubspot.com/scopes.",
            errors=[{"message": "One or more of the following scopes are required.",
                     "context": {"requiredGranularScopes": [scope]}}])

    def _fault(self, inj: dict) -> HubSpotError:
        if inj["fault"] == "rate_limit":
            return self._rate_limited(inj["policy"])
        if inj["fault"] == "locked":
            return HubSpotError(423, "LOCKED", "The resource is locked by another request. "
                                "Wait at least 2 seconds before retrying.")
        return HubSpotError(inj["status"], "INTERNAL_ERROR", "internal error")

    # -- contacts ---------------------------------------------------------
    def _upsert_one(self, email: str, properties: dict) -> tuple[str, bool]:
        """Create or update by email (case-insensitive); caller holds the lock."""
        key, now = email.strip().lower(), _now()
        props = {k: _property_value(v) for k, v in properties.items()}
        props["email"] = key  # HubSpot keys and stores emails lower-cased
        cid = self._by_email.get(key)
        if cid is not None:
            c = self._contacts[cid]
            c["properties"].update(props)
            c["updatedAt"] = now
            return cid, False
        cid = str(next(self._contact_ids))
        self._contacts[cid] = {"id": cid, "properties": props, "createdAt": now,
                               "updatedAt": now, "archived": False}
        self._by_email[key] = cid
        return cid, True

    def _result(self, cid: str, wanted=None) -> dict:
        c = self._contacts[cid]
        system = {"hs_object_id": cid, "createdate": c["createdAt"],
                  "lastmodifieddate": c["updatedAt"]}
        if wanted is None:
            props = {**c["properties"], **system}
        else:  # asked-for properties, null when unset, plus the system ones
            props = {**{p: c["properties"].get(p) for p in wanted}, **system}
        return {"id": cid, "properties": props, "createdAt": c["createdAt"],
                "updatedAt": c["updatedAt"], "archived": False}

    def _inputs(self, req: Request, body) -> list:
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
            raise _invalid("The request body must be an object with an 'inputs' array")
        inputs = body["inputs"]
        req.notes["n_items"] = len(inputs)
        if len(inputs) > MAX_BATCH:
            raise _invalid(f"Batch input limit exceeded: {len(inputs)} inputs "
                           f"(maximum {MAX_BATCH})", context={"maxInputs": [str(MAX_BATCH)]})
        for i, inp in enumerate(inputs):
            if not isinstance(inp, dict) or not isinstance(inp.get("id"), (str, int)):
                raise _invalid(f"inputs[{i}] must be an object with an 'id'")
        return inputs

    def _upsert(self, req: Request):
        started = _now()
        inputs = self._inputs(req, _json(req))
        unknown, seen, dups = [], set(), []
        for i, inp in enumerate(inputs):
            id_property = inp.get("idProperty") or req.query.get("idProperty")
            if id_property != "email":
                raise _invalid(f"inputs[{i}]: idProperty must be 'email' in this fake "
                               f"(got {id_property!r})")
            props = inp.get("properties", {})
            if not isinstance(props, dict):
                raise _invalid(f"inputs[{i}].properties must be an object")
            unknown += [p for p in props if p not in self.contact_properties and p not in unknown]
            key = str(inp["id"]).strip().lower()
            if key in seen and key not in dups:
                dups.append(key)
            seen.add(key)
        if unknown:  # one bad property name fails the whole request
            raise _invalid(_property_errors([
                {"isValid": False, "message": f'Property "{p}" does not exist',
                 "error": "PROPERTY_DOESNT_EXIST", "name": p,
                 "localizedErrorMessage": f'Property "{p}" does not exist',
                 "portalId": self.portal_id} for p in unknown]),
                sub_category="PROPERTY_DOESNT_EXIST", context={"properties": unknown})
        if dups:
            raise _invalid(f"Duplicate IDs found in batch input: {dups}. IDs must be unique",
                           context={"ids": dups})
        results, errors = [], []
        with self._lock:
            for inp in inputs:
                email = str(inp["id"]).strip()
                key = email.lower()
                if "@" not in key or key in self._rejected:
                    text = (self._rejected.get(key) or "Email address {email} is invalid")
                    text = text.replace("{email}", email)
                    errors.append({
                        "status": "error", "category": "VALIDATION_ERROR",
                        "message": _property_errors([{"isValid": False, "message": text,
                                                      "error": "INVALID_EMAIL", "name": "email"}]),
                        "context": {"ids": [str(inp["id"])]}, "errors": [], "links": {}})
                    continue
                cid, new = self._upsert_one(email, inp.get("properties", {}))
                results.append({**self._result(cid), "new": new})
        body = {"status": "COMPLETE", "results": results, "startedAt": started,
                "completedAt": _now()}
        if errors:
            body.update(numErrors=len(errors), errors=errors)
            return 207, body
        return 200, body

    def _live_id(self, value: str, id_property: str) -> str | None:
        if id_property == "email":
            return self._by_email.get(value.strip().lower())
        c = self._contacts.get(value)
        return value if c and not c["archived"] else None

    def _properties(self, req: Request):
        field_types = {"string": "text", "number": "number", "date": "date", "datetime": "date",
                       "bool": "booleancheckbox", "enumeration": "select"}
        return 200, {"results": [{"name": name, "label": name, "type": kind, "fieldType": field_types[kind],
                                  "groupName": "contactinformation"}
                                 for name, kind in self.contact_properties.items()]}

    def _batch_update(self, req: Request):
        """Properties of existing contacts by id; an id of no live contact is an error (never created)."""
        started = _now()
        inputs = self._inputs(req, _json(req))
        named = {p for inp in inputs for p in (inp.get("properties") or {})}
        unknown = sorted(named - set(self.contact_properties))
        if unknown:
            raise _invalid(f"Property values were not valid: {unknown} do not exist",
                           sub_category="PROPERTY_DOESNT_EXIST", context={"properties": unknown})
        results, missing = [], []
        with self._lock:
            for inp in inputs:
                cid = self._live_id(str(inp["id"]), "hs_object_id")
                if cid is None:
                    missing.append(str(inp["id"]))
                    continue
                c = self._contacts[cid]
                c["properties"].update({k: _property_value(v) for k, v in (inp.get("properties") or {}).items()})
                c["updatedAt"] = _now()
                results.append(self._result(cid, list(inp.get("properties") or {})))
        out = {"status": "COMPLETE", "results": results, "startedAt": started, "completedAt": _now()}
        if missing:
            out.update(numErrors=1, errors=[{
                "status": "error", "category": "OBJECT_NOT_FOUND", "message": "Could not update some CONTACT "
                "objects, they may be deleted or not exist.", "context": {"ids": missing}}])
            return 207, out
        return 200, out

    def _batch_read(self, req: Request):
        started = _now()
        body = _json(req)
        inputs = self._inputs(req, body)
        id_property = body.get("idProperty") or "hs_object_id"
        if id_property not in ("hs_object_id", "email"):
            raise _invalid(f"idProperty must be 'hs_object_id' or 'email' in this fake "
                           f"(got {id_property!r})")
        wanted = body.get("properties") or list(DEFAULT_READ_PROPERTIES)
        if not isinstance(wanted, list):
            raise _invalid("properties must be an array of property names")
        results, missing, done = [], [], set()
        with self._lock:
            for inp in inputs:
                cid = self._live_id(str(inp["id"]), id_property)
                if cid is None:
                    missing.append(str(inp["id"]))
                elif cid not in done:
                    done.add(cid)
                    results.append(self._result(cid, wanted))
        out = {"status": "COMPLETE", "results": results, "startedAt": started,
               "completedAt": _now()}
        if missing:  # HubSpot groups every id it could not find into one error
            out.update(numErrors=1, errors=[{
                "status": "error", "category": "OBJECT_NOT_FOUND",
                "message": "Could not get some CONTACT objects, they may be deleted or not "
                           "exist. Check that ids are valid.",
                "context": {"ids": missing}, "errors": [], "links": {}}])
            return 207, out
        return 200, out

    def _get_contact(self, req: Request, cid: str):
        id_property = req.query.get("idProperty") or "hs_object_id"
        wanted = [p for p in req.query.get("properties", "").split(",") if p]
        with self._lock:
            found = self._live_id(cid, id_property)
            if found is None:
                raise _not_found(f"Object not found: contact {cid}", context={"id": [cid]})
            return 200, self._result(found, wanted or list(DEFAULT_READ_PROPERTIES))

    # -- lists ------------------------------------------------------------
    def _list_named(self, name: str) -> str | None:
        # Names are unique case-insensitively in this fake, and looked up the same way.
        for lid, lst in self._lists.items():
            if lst["name"].lower() == name.lower():
                return lid
        return None

    def _view(self, lid: str) -> dict:
        n = len(self._members[lid])
        return {**self._lists[lid], "size": n,
                "additionalProperties": {"hs_list_size": str(n),
                                         "hs_list_reference_count": "0"}}

    def _list_or_404(self, lid: str) -> dict:
        if lid not in self._lists:
            raise _not_found(f"List does not exist with id {lid}.", context={"listId": [lid]})
        return self._lists[lid]

    def _create_list(self, req: Request):
        body = _json(req)
        if not isinstance(body, dict):
            raise _invalid("The request body must be a JSON object")
        name, otid, ptype = body.get("name"), body.get("objectTypeId"), body.get("processingType")
        if not isinstance(name, str) or not name.strip():
            raise _invalid("name is required")
        if otid != CONTACTS:
            raise _invalid(f"objectTypeId must be '{CONTACTS}' (contacts) in this fake, "
                           f"got {otid!r}")
        if ptype not in PROCESSING_TYPES:
            raise _invalid(f"processingType must be one of {list(PROCESSING_TYPES)}, "
                           f"got {ptype!r}")
        with self._lock:
            if self._list_named(name) is not None:
                raise _invalid(f"A list with name '{name}' already exists.",
                               sub_category="ILS.DUPLICATE_LIST_NAMES",
                               context={"listName": [name]})
            lid = self.create_list(name, ptype)
            return 200, {"list": self._view(lid)}

    def _get_list_by_name(self, req: Request, otid: str, name: str):
        with self._lock:
            lid = self._list_named(name) if otid == CONTACTS else None
            if lid is None:
                raise _not_found(f"List does not exist with name {name} and object type "
                                 f"{otid}.", context={"listName": [name]})
            return 200, {"list": self._view(lid)}

    def _get_list(self, req: Request, lid: str):
        with self._lock:  # includeFilters is accepted and ignored: no filters here
            self._list_or_404(lid)
            return 200, {"list": self._view(lid)}

    def _delete_list_http(self, req: Request, lid: str):
        with self._lock:
            self._list_or_404(lid)
            self.delete_list(lid)
        return 204, None

    def _search_lists(self, req: Request):
        body = _json(req, default={})
        if not isinstance(body, dict):
            raise _invalid("The request body must be a JSON object")
        query = str(body.get("query") or "").lower()
        types = body.get("processingTypes") or None
        ids = {str(i) for i in body["listIds"]} if body.get("listIds") else None
        count = _int_param(body.get("count"), "count", SEARCH_COUNT_DEFAULT, SEARCH_COUNT_MAX)
        offset = _int_param(body.get("offset"), "offset", 0, 10**9, minimum=0)
        with self._lock:
            hits = [self._view(lid) for lid, lst in self._lists.items()
                    if query in lst["name"].lower()
                    and (types is None or lst["processingType"] in types)
                    and (ids is None or lid in ids)]
        page = hits[offset:offset + count]
        end = offset + len(page)
        return 200, {"offset": end, "hasMore": end < len(hits), "lists": page,
                     "total": len(hits)}

    # -- memberships ------------------------------------------------------
    def _change_members(self, req: Request, lid: str, op: str):
        body = _json(req)
        if op == "add-and-remove":
            if not isinstance(body, dict):
                raise _invalid("The request body must be an object with recordIdsToAdd "
                               "and recordIdsToRemove")
            add = _record_ids(body.get("recordIdsToAdd", []), "recordIdsToAdd")
            remove = _record_ids(body.get("recordIdsToRemove", []), "recordIdsToRemove")
        else:
            ids = _record_ids(body, "body")
            add, remove = (ids, []) if op == "add" else ([], ids)
        req.notes["n_items"] = len(add) + len(remove)
        added, removed, missing = [], [], []
        with self._lock:
            lst = self._list_or_404(lid)
            if lst["processingType"] not in EDITABLE_TYPES:
                raise _invalid("List is not a MANUAL or SNAPSHOT list",
                               context={"listId": [lid],
                                        "processingType": [lst["processingType"]]})
            members = self._members[lid]
            # Removals first, so an id in both lists ends up a member.
            for rid in remove:
                if self._live_id(rid, "hs_object_id") is None:
                    missing.append(rid)
                elif members.pop(rid, None) is not None:
                    removed.append(rid)
            now = _now()
            for rid in add:
                if self._live_id(rid, "hs_object_id") is None:
                    if rid not in missing:
                        missing.append(rid)
                elif rid not in members:  # already a member: silently ignored
                    members[rid] = now
                    added.append(rid)
        # "recordsIdsAdded" is misspelled on purpose: that is HubSpot's key.
        return 200, {"recordsIdsAdded": added, "recordIdsRemoved": removed,
                     "recordIdsMissing": missing}

    def _list_members(self, req: Request, lid: str):
        limit = _int_param(req.query.get("limit"), "limit", MEMBERS_PAGE_DEFAULT,
                           MEMBERS_PAGE_MAX)
        after = -1
        if cursor := req.query.get("after"):
            try:  # opaque to clients; here base64 of the last record id returned
                after = int(base64.urlsafe_b64decode(cursor.encode()).decode())
            except ValueError:
                raise _invalid(f"Invalid 'after' cursor: {cursor!r}") from None
        with self._lock:
            self._list_or_404(lid)
            # Ordered by record id, and the cursor is an id: stable while members change.
            rows = sorted((int(r), t) for r, t in self._members[lid].items() if int(r) > after)
        page = rows[:limit]
        if self.membership_results == "ids":
            results = [str(r) for r, _ in page]
        else:
            results = [{"recordId": str(r), "membershipTimestamp": t} for r, t in page]
        out = {"results": results}
        if len(rows) > limit:
            nxt = base64.urlsafe_b64encode(str(page[-1][0]).encode()).decode()
            out["paging"] = {"next": {"after": nxt}}
        return 200, out
