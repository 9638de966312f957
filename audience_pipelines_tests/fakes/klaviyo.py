"""Stateful fake of Klaviyo lists, profiles and bulk profile import jobs (destination-apis.md §9).

JSON:API throughout: `Authorization: Klaviyo-API-Key <key>` and a `revision` header on every call,
errors as `{"errors":[{id,status,code,title,detail,source}]}`, listings paged by `page[cursor]` in
`links.next`. An import job is queued when posted and does its work when polled: it ends `complete`
after `running_polls` polls that found it still running (or on `complete_jobs()`), creating or
updating each profile, putting it in the job's lists and keeping an import error for each profile
it refused. Assumptions where the reference is silent: a refused profile's error points at it
(`source.pointer` = `/data/attributes/profiles/data/<i>/...`) and repeats it (`original_payload`);
a profile id in a job that names no profile is refused; DELETE of list relationships ignores ids of
profiles not in the list; an `any(...)` filter takes at most 100 values; a body over 5 MB is a 413.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import uuid
from collections import namedtuple
from datetime import datetime, timedelta, timezone
from urllib.parse import urlencode

from ._server import FakeServer, Request, Response, json_response

JSON_API = "application/vnd.api+json"
MAX_JOB_PROFILES = 10_000
MAX_JOB_BYTES = 5 * 1024 * 1024
MAX_PROFILE_BYTES = 100 * 1024
MAX_RELATIONSHIP_IDS = 1000
MAX_FILTER_VALUES = 100
LISTS_PAGE = 10  # GET /lists: fixed page of 10
PROFILES_PAGE_DEFAULT, PROFILES_PAGE_MAX = 20, 100
LIST_CREATIONS_PER_DAY = 150
ALL_SCOPES = frozenset({"lists:read", "lists:write", "profiles:read", "profiles:write"})
INJECTION_SCOPES = ("all", "lists", "members", "jobs", "polls", "profiles")
IDENTIFIERS = ("email", "phone_number", "external_id")
STANDARD = ("first_name", "last_name", "organization", "title", "locale", "image")
LOCATION = ("address1", "address2", "city", "country", "region", "zip", "timezone", "ip", "latitude", "longitude")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_REVISION = re.compile(r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$")
_FILTER = re.compile(r"^(equals|any)\((\w+),(.*)\)$", re.S)

KlaviyoRequest = namedtuple("KlaviyoRequest", "method path query n_items status headers")

# (method, path, handler, scope needed, injection scope, query parameters allowed)
_ROUTES = [
    ("GET", r"/api/lists", "_get_lists", "lists:read", "lists",
     {"filter", "page[cursor]", "fields[list]", "sort", "include", "fields[tag]", "fields[flow]"}),
    ("POST", r"/api/lists", "_create_list", "lists:write", "lists", set()),
    ("GET", r"/api/lists/(?P<lid>[^/]+)", "_get_list", "lists:read", "lists",
     {"additional-fields[list]", "fields[list]", "include", "fields[tag]", "fields[flow]"}),
    ("POST", r"/api/lists/(?P<lid>[^/]+)/relationships/profiles", "_add_members", "lists:write", "members", set()),
    ("DELETE", r"/api/lists/(?P<lid>[^/]+)/relationships/profiles", "_remove_members", "lists:write", "members",
     set()),
    ("GET", r"/api/profiles", "_get_profiles", "profiles:read", "profiles",
     {"filter", "page[size]", "page[cursor]", "fields[profile]", "additional-fields[profile]", "sort"}),
    ("POST", r"/api/profile-bulk-import-jobs", "_create_job", "profiles:write", "jobs", set()),
    ("GET", r"/api/profile-bulk-import-jobs/(?P<jid>[^/]+)", "_get_job", "profiles:read", "polls",
     {"fields[profile-bulk-import-job]", "fields[list]", "include"}),
    ("GET", r"/api/profile-bulk-import-jobs/(?P<jid>[^/]+)/import-errors", "_get_import_errors", "profiles:read",
     "polls", {"page[size]", "page[cursor]", "fields[import-error]"}),
]
_ROUTES = [(m, re.compile(p + "/?"), h, s, i, q) for m, p, h, s, i, q in _ROUTES]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(t: datetime | None) -> str | None:
    return t.isoformat(timespec="seconds").replace("+00:00", "Z") if t else None


class KlaviyoError(Exception):
    """One JSON:API error answer."""

    def __init__(self, status: int, code: str, title: str, detail: str, *, source=None, headers=None, meta=None):
        super().__init__(detail)
        self.status, self.code, self.title, self.detail = status, code, title, detail
        self.source, self.headers, self.meta = source or {}, headers or {}, meta

    def item(self) -> dict:
        out = {"id": str(uuid.uuid4()), "status": self.status, "code": self.code, "title": self.title,
               "detail": self.detail, "source": self.source}
        if self.meta:
            out["meta"] = self.meta
        return out

    def response(self) -> Response:
        return json_response(self.status, {"errors": [self.item()]}, {"Content-Type": JSON_API, **self.headers})


def _invalid(detail: str, pointer: str = "/data/", **kw) -> KlaviyoError:
    return KlaviyoError(400, "invalid", "Invalid input.", detail, source={"pointer": pointer}, **kw)


def _not_found(detail: str, **kw) -> KlaviyoError:
    return KlaviyoError(404, "not_found", "Not found.", detail, **kw)


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o{offset}".encode()).decode()


def _offset(req: Request) -> int:
    cursor = req.query.get("page[cursor]")
    if not cursor:
        return 0
    try:
        return int(base64.urlsafe_b64decode(cursor.encode()).decode()[1:])
    except ValueError:
        raise _invalid(f"Invalid page cursor: {cursor!r}", source={"parameter": "page[cursor]"}) from None


def _page_size(req: Request, default: int, maximum: int) -> int:
    value = req.query.get("page[size]")
    if value in (None, ""):
        return default
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= maximum:
        raise KlaviyoError(400, "invalid", "Invalid input.", f"page[size] must be between 1 and {maximum}",
                           source={"parameter": "page[size]"})
    return n


def _parse_filter(text: str | None, fields: tuple[str, ...]) -> tuple[str, list] | None:
    """`equals(field,"v")` or `any(field,["a","b"])` (values in JSON) -> (field, values)."""
    if not text:
        return None
    m = _FILTER.match(text.strip())
    bad = KlaviyoError(400, "invalid", "Invalid input.", f"Invalid filter provided: {text}",
                       source={"parameter": "filter"})
    if not m or m.group(2) not in fields:
        raise bad
    try:
        value = json.loads(m.group(3))
    except ValueError:
        raise bad from None
    if m.group(1) == "equals":
        values = [value]
    elif isinstance(value, list):
        values = value
    else:
        raise bad
    if len(values) > MAX_FILTER_VALUES or not all(isinstance(v, str) for v in values):
        raise KlaviyoError(400, "invalid", "Invalid input.", f"'any' takes at most {MAX_FILTER_VALUES} strings",
                           source={"parameter": "filter"})
    return m.group(2), values


class FakeKlaviyo(FakeServer):
    injection_scopes = INJECTION_SCOPES

    def __init__(self, api_key: str = "pk_test_key", *, running_polls: int = 0, scopes=None,
                 list_creations_per_day: int = LIST_CREATIONS_PER_DAY, name_errors: str = "pointer"):
        """`running_polls`: how many polls find a job still running before it does its work. `scopes`: the
        key's scopes (None: all). `name_errors`: how an import error names its profile: "pointer" (and the
        payload), "payload" only, or "none" (only counted)."""
        super().__init__()
        self.api_key, self.running_polls = api_key, running_polls
        self.scopes = ALL_SCOPES if scopes is None else frozenset(scopes)
        self.list_creations_per_day, self.name_errors = list_creations_per_day, name_errors
        self._lists: dict[str, dict] = {}
        self._members: dict[str, dict[str, str]] = {}  # list id -> profile id -> when added
        self._profiles: dict[str, dict] = {}
        self._by: dict[str, dict[str, str]] = {k: {} for k in IDENTIFIERS}  # identifier -> value -> profile id
        self._jobs: dict[str, dict] = {}
        self._rejected: dict[str, str | None] = {}  # identifier value -> detail
        self._fail_jobs = 0
        self._list_ids, self._profile_ids, self._job_ids = itertools.count(1), itertools.count(1), itertools.count(1)
        self._created_today = 0

    # -- inspection and seeding --------------------------------------------------------------
    @property
    def url(self) -> str:
        """The base URL a client is given (Klaviyo's is https://a.klaviyo.com/api)."""
        return self.origin + "/api"

    @property
    def lists(self) -> dict[str, dict]:
        with self._lock:
            return {lid: dict(lst) for lid, lst in self._lists.items()}

    def list_id_by_name(self, name: str) -> str | None:
        with self._lock:
            ids = [lid for lid, lst in self._lists.items() if lst["name"] == name]
        if len(ids) > 1:
            raise LookupError(f"{len(ids)} lists are named {name!r}: {ids}")
        return ids[0] if ids else None

    def create_list(self, name: str) -> str:
        with self._lock:
            lid = f"Lk{next(self._list_ids):04d}"
            now = _iso(_now())
            self._lists[lid] = {"name": name, "created": now, "updated": now, "opt_in_process": "single_opt_in"}
            self._members[lid] = {}
            return lid

    def members(self, list_id: str) -> set[str]:
        with self._lock:
            return set(self._members[str(list_id)])

    def member_emails(self, list_id: str) -> set[str]:
        with self._lock:
            return {self._profiles[p].get("email") for p in self._members[str(list_id)]}

    @property
    def profiles(self) -> dict[str, dict]:
        with self._lock:
            return {pid: json.loads(json.dumps(p)) for pid, p in self._profiles.items()}

    def profile_id(self, **identifier) -> str | None:
        """The profile id holding an identifier, e.g. `profile_id(email="a@x.com")`."""
        (name, value), = identifier.items()
        with self._lock:
            return self._by[name].get(value.lower() if name == "email" else value)

    def profile_by_email(self, email: str) -> dict | None:
        pid = self.profile_id(email=email)
        return self.profiles[pid] if pid else None

    def create_profile(self, **attributes) -> str:
        """Seed a profile directly (no HTTP); returns its id."""
        with self._lock:
            pid, error = self._upsert({"type": "profile", "attributes": attributes}, [])
            if error:
                raise ValueError(error.detail)
            return pid

    def delete_profile(self, profile_id: str) -> None:
        with self._lock:
            p = self._profiles.pop(profile_id)
            for name in IDENTIFIERS:
                if p.get(name):
                    self._by[name].pop(p[name], None)
            for members in self._members.values():
                members.pop(profile_id, None)

    @property
    def jobs(self) -> dict[str, dict]:
        with self._lock:
            return {jid: self._job_view(job)["attributes"] for jid, job in self._jobs.items()}

    def complete_jobs(self) -> None:
        """Let every queued job do its work now."""
        with self._lock:
            for job in self._jobs.values():
                self._run(job)

    # -- faults ------------------------------------------------------------------------------
    def reject_values(self, values, detail: str | None = None) -> None:
        """Persistent: a job profile holding one of these emails, phone numbers or external ids is refused."""
        with self._lock:
            for v in values:
                self._rejected[v.lower() if "@" in v else v] = detail

    def clear_rejected_values(self) -> None:
        with self._lock:
            self._rejected.clear()

    def inject_throttle(self, times=1, retry_after: int | None = 1, scope="all") -> None:
        """429 throttled; `retry_after` seconds in the Retry-After header (None: only in the detail)."""
        self._push("fault", times, scope, fault="throttle", retry_after=retry_after)

    def inject_server_error(self, times=1, status=500, scope="all") -> None:
        if status not in (500, 502, 503, 504):
            raise ValueError("status must be 500, 502, 503 or 504")
        self._push("fault", times, scope, fault="server", status=status)

    def inject_delay(self, seconds: float, times=1, scope="all") -> None:
        self._push("delay", times, scope, seconds=seconds)

    def inject_job_failure(self, times=1) -> None:
        """The next `times` jobs end `failed`, having done nothing."""
        with self._lock:
            self._fail_jobs += times

    def clear_injections(self) -> None:
        super().clear_injections()
        with self._lock:
            self._fail_jobs = 0

    # -- HTTP plumbing -----------------------------------------------------------------------
    def _route(self, req: Request):
        for method, pattern, handler, needs, scope, allowed in _ROUTES:
            if method == req.method and (m := pattern.fullmatch(req.path)):
                return getattr(self, handler), m.groupdict(), needs, scope, allowed
        return None

    def _scope(self, req: Request) -> str:
        route = self._route(req)
        return route[3] if route else "all"

    def _log_entry(self, req: Request, resp: Response):
        return KlaviyoRequest(req.method, req.path, dict(req.query), req.notes.get("n_items"), resp.status,
                              req.headers)

    def _handle(self, req: Request) -> Response:
        try:
            self._check_headers(req)
            route = self._route(req)
            if route is None:
                raise _not_found(f"No such endpoint in the fake: {req.method} {req.path}")
            handler, params, needs, scope, allowed = route
            if needs not in self.scopes:
                raise KlaviyoError(403, "permission_denied", "You do not have permission to perform this action.",
                                   f"This API key is missing required scopes: {needs}")
            unknown = sorted(set(req.query) - allowed)
            if unknown:
                raise KlaviyoError(400, "invalid", "Invalid input.", f"'{unknown[0]}' is not a valid parameter",
                                   source={"parameter": unknown[0]})
            if fault := self._pop("fault", scope):
                raise self._fault(fault)
            status, body = handler(req, **params)
            resp = json_response(status, body, {"Content-Type": JSON_API}) if body is not None else Response(status)
        except KlaviyoError as e:
            resp = e.response()
        if resp.status != 429:
            resp.headers = {"RateLimit-Limit": "10", "RateLimit-Remaining": "9", "RateLimit-Reset": "1",
                            **resp.headers}
        return resp

    def _check_headers(self, req: Request) -> None:
        auth = req.headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme != "Klaviyo-API-Key" or key.strip() != self.api_key:
            raise KlaviyoError(401, "not_authenticated", "Authentication credentials were not provided.",
                               "Missing or invalid private key.", source={"pointer": "/data/"})
        revision = req.headers.get("revision")
        if not revision or not _REVISION.match(revision):
            raise KlaviyoError(400, "invalid", "Invalid input.",
                               "A valid revision header (YYYY-MM-DD) is required" if revision else
                               "Missing required header: revision", source={"header": "revision"})
        if req.body:
            ctype = req.headers.get("content-type", "").split(";")[0].strip()
            if ctype not in (JSON_API, "application/json"):
                raise KlaviyoError(415, "unsupported_media_type", "Unsupported media type.",
                                   f"Unsupported media type \"{ctype}\" in request.")

    def _fault(self, inj: dict) -> KlaviyoError:
        if inj["fault"] == "throttle":
            wait = inj["retry_after"]
            headers = {} if wait is None else {"Retry-After": str(wait)}
            return KlaviyoError(429, "throttled", "Request was throttled.",
                                f"Request was throttled. Expected available in {wait if wait is not None else 1} "
                                "seconds.", source={"pointer": "/data/"}, headers=headers)
        return KlaviyoError(inj["status"], "error", "A server error occurred.",
                            "An unexpected error occurred on our end. Please try again later.")

    def _body(self, req: Request) -> dict:
        try:
            body = req.json()
        except ValueError as e:
            raise KlaviyoError(400, "parse_error", "Malformed request.", f"JSON parse error - {e}") from None
        if not isinstance(body, dict) or not isinstance(body.get("data"), (dict, list)):
            raise _invalid("The request body must be a JSON:API document with 'data'.")
        return body

    def _links(self, req: Request, next_offset: int | None) -> dict:
        base = f"{self.origin}{req.path}"
        links = {"self": base + ("?" + urlencode(req.query) if req.query else ""), "prev": None, "next": None}
        if next_offset is not None:
            links["next"] = base + "?" + urlencode({**req.query, "page[cursor]": _cursor(next_offset)})
        return links

    # -- lists -------------------------------------------------------------------------------
    def _list_view(self, lid: str, additional: str = "") -> dict:
        attributes = {k: v for k, v in self._lists[lid].items()}
        if "profile_count" in additional.split(","):
            attributes["profile_count"] = len(self._members[lid])
        return {"type": "list", "id": lid, "attributes": attributes,
                "links": {"self": f"{self.origin}/api/lists/{lid}/"}}

    def _get_lists(self, req: Request):
        wanted = _parse_filter(req.query.get("filter"), ("name", "id"))
        offset = _offset(req)
        with self._lock:
            hits = [lid for lid, lst in self._lists.items()
                    if wanted is None or (lst["name"] if wanted[0] == "name" else lid) in wanted[1]]
            page = [self._list_view(lid) for lid in hits[offset:offset + LISTS_PAGE]]
        more = offset + LISTS_PAGE < len(hits)
        return 200, {"data": page, "links": self._links(req, offset + LISTS_PAGE if more else None)}

    def _create_list(self, req: Request):
        data = self._body(req)["data"]
        if not isinstance(data, dict) or data.get("type") != "list":
            raise _invalid("The 'type' must be 'list'.", "/data/type")
        name = (data.get("attributes") or {}).get("name")
        if not isinstance(name, str) or not name.strip():
            raise _invalid("'name' is a required field for the resource 'list'.", "/data/attributes/name")
        with self._lock:
            if self._created_today >= self.list_creations_per_day:
                raise KlaviyoError(429, "throttled", "Request was throttled.",
                                   "Request was throttled. Expected available in 43200 seconds.",
                                   headers={"Retry-After": "43200"})
            self._created_today += 1
            lid = self.create_list(name.strip())
            return 201, {"data": self._list_view(lid)}

    def _list_or_404(self, lid: str) -> dict:
        if lid not in self._lists:
            raise _not_found(f"A list with id {lid} does not exist.", source={"parameter": "id"})
        return self._lists[lid]

    def _get_list(self, req: Request, lid: str):
        with self._lock:
            self._list_or_404(lid)
            return 200, {"data": self._list_view(lid, req.query.get("additional-fields[list]", "")),
                         "links": {"self": f"{self.origin}/api/lists/{lid}/"}}

    def _relationship_ids(self, req: Request) -> list[str]:
        data = self._body(req)["data"]
        if not isinstance(data, list):
            raise _invalid("'data' must be an array of profile identifiers.")
        req.notes["n_items"] = len(data)
        if len(data) > MAX_RELATIONSHIP_IDS:
            raise _invalid(f"At most {MAX_RELATIONSHIP_IDS} profiles can be given per request, got {len(data)}.")
        for i, item in enumerate(data):
            if not isinstance(item, dict) or item.get("type") != "profile" or not isinstance(item.get("id"), str):
                raise _invalid("Each item must be {\"type\": \"profile\", \"id\": <profile id>}.", f"/data/{i}")
        return [item["id"] for item in data]

    def _add_members(self, req: Request, lid: str):
        ids = self._relationship_ids(req)
        with self._lock:
            self._list_or_404(lid)
            for i, pid in enumerate(ids):
                if pid not in self._profiles:
                    raise _invalid(f"Profile {pid} does not exist.", f"/data/{i}/id")
            for pid in ids:
                self._members[lid].setdefault(pid, _iso(_now()))
        return 204, None

    def _remove_members(self, req: Request, lid: str):
        ids = self._relationship_ids(req)
        with self._lock:
            self._list_or_404(lid)
            for pid in ids:  # the profile stays as it is: only its membership goes
                self._members[lid].pop(pid, None)
        return 204, None

    # -- profiles ----------------------------------------------------------------------------
    def _profile_view(self, pid: str) -> dict:
        p = self._profiles[pid]
        attributes = {**{k: p.get(k) for k in (*IDENTIFIERS, *STANDARD)}, "location": dict(p["location"]),
                      "properties": dict(p["properties"]), "created": p["created"], "updated": p["updated"]}
        return {"type": "profile", "id": pid, "attributes": attributes,
                "links": {"self": f"{self.origin}/api/profiles/{pid}/"}}

    def _get_profiles(self, req: Request):
        wanted = _parse_filter(req.query.get("filter"), (*IDENTIFIERS, "id"))
        size, offset = _page_size(req, PROFILES_PAGE_DEFAULT, PROFILES_PAGE_MAX), _offset(req)
        req.notes["n_items"] = len(wanted[1]) if wanted else None
        with self._lock:
            if wanted is None:
                hits = list(self._profiles)
            elif wanted[0] == "id":
                hits = [v for v in wanted[1] if v in self._profiles]
            else:
                index = self._by[wanted[0]]
                hits = [index[k] for v in wanted[1]
                        if (k := v.lower() if wanted[0] == "email" else v) in index]
            hits = list(dict.fromkeys(hits))
            page = [self._profile_view(pid) for pid in hits[offset:offset + size]]
        more = offset + size < len(hits)
        return 200, {"data": page, "links": self._links(req, offset + size if more else None)}

    def _upsert(self, item: dict, list_ids: list[str]) -> tuple[str | None, KlaviyoError | None]:
        """Create or update one profile and list it; (profile id, None) or (None, the error). Lock held."""
        attributes = item.get("attributes")
        if not isinstance(attributes, dict):
            return None, _invalid("'attributes' must be an object.", "attributes")
        idents = {k: attributes.get(k) for k in IDENTIFIERS if attributes.get(k)}
        if "email" in idents:
            idents["email"] = str(idents["email"]).strip().lower()
        for name, value in idents.items():
            value = str(value)
            if value in self._rejected or value.lower() in self._rejected:
                detail = self._rejected.get(value) or self._rejected.get(value.lower()) or \
                    f"The {name.replace('_', ' ')} {value} was rejected."
                return None, _invalid(detail, f"attributes/{name}")
        if "email" in idents and not _EMAIL.match(idents["email"]):
            return None, _invalid("Invalid email address", "attributes/email")
        if "phone_number" in idents and not _E164.match(str(idents["phone_number"])):
            return None, _invalid("Invalid phone number format (Example of a valid format: +12345678901)",
                                  "attributes/phone_number")
        pid = item.get("id")
        if pid is not None and pid not in self._profiles:
            return None, _not_found(f"Profile {pid} does not exist.", source={"pointer": "id"})
        if pid is None and not idents:
            return None, _invalid("One of 'email', 'phone_number' or 'external_id' is required.", "attributes")
        if pid is None:
            pid = next((self._by[k][v] for k, v in idents.items() if v in self._by[k]), None)
        for name, value in idents.items():  # each identifier belongs to one profile
            holder = self._by[name].get(value)
            if holder is not None and holder != pid:
                return None, KlaviyoError(409, "duplicate_profile", "Conflict.",
                                          "A profile already exists with one of these identifiers.",
                                          source={"pointer": f"attributes/{name}"},
                                          meta={"duplicate_profile_id": holder})
        now = _iso(_now())
        if pid is None:
            pid = f"01KLAV{next(self._profile_ids):020d}"
            self._profiles[pid] = {"location": {}, "properties": {}, "created": now}
        p = self._profiles[pid]
        for name, value in idents.items():
            if p.get(name) and p[name] != value:
                self._by[name].pop(p[name], None)
            p[name] = value
            self._by[name][value] = pid
        for k in STANDARD:
            if k in attributes:
                p[k] = attributes[k]
        p["location"].update({k: v for k, v in (attributes.get("location") or {}).items() if k in LOCATION})
        p["properties"].update(attributes.get("properties") or {})
        p["updated"] = now
        for lid in list_ids:
            self._members[lid].setdefault(pid, now)
        return pid, None

    # -- import jobs -------------------------------------------------------------------------
    def _create_job(self, req: Request):
        if len(req.body) > MAX_JOB_BYTES:
            raise KlaviyoError(413, "payload_too_large", "Request payload too large.",
                               f"The request payload is {len(req.body)} bytes; the maximum is {MAX_JOB_BYTES}.")
        data = self._body(req)["data"]
        if not isinstance(data, dict) or data.get("type") != "profile-bulk-import-job":
            raise _invalid("The 'type' must be 'profile-bulk-import-job'.", "/data/type")
        profiles = ((data.get("attributes") or {}).get("profiles") or {}).get("data")
        if not isinstance(profiles, list) or not profiles:
            raise _invalid("'profiles' is a required field.", "/data/attributes/profiles/data")
        req.notes["n_items"] = len(profiles)
        if len(profiles) > MAX_JOB_PROFILES:
            raise _invalid(f"A job takes at most {MAX_JOB_PROFILES} profiles, got {len(profiles)}.",
                           "/data/attributes/profiles/data")
        for i, p in enumerate(profiles):
            if not isinstance(p, dict) or p.get("type") != "profile" or not isinstance(p.get("attributes"), dict):
                raise _invalid("Each profile must be {\"type\": \"profile\", \"attributes\": {...}}.",
                               f"/data/attributes/profiles/data/{i}")
        lists = ((data.get("relationships") or {}).get("lists") or {}).get("data") or []
        if not isinstance(lists, list) or any(not isinstance(x, dict) or x.get("type") != "list" for x in lists):
            raise _invalid("'lists' must be an array of {\"type\": \"list\", \"id\"}.", "/data/relationships/lists")
        with self._lock:
            for i, x in enumerate(lists):
                if x.get("id") not in self._lists:
                    raise _not_found(f"A list with id {x.get('id')} does not exist.",
                                     source={"pointer": f"/data/relationships/lists/data/{i}/id"})
            jid = f"01KJOB{next(self._job_ids):020d}"
            fail = self._fail_jobs > 0
            self._fail_jobs -= fail
            self._jobs[jid] = {"id": jid, "status": "queued", "profiles": profiles, "lists": [x["id"] for x in lists],
                               "created_at": _now(), "started_at": None, "completed_at": None, "polls": 0,
                               "errors": [], "completed_count": 0, "failed_count": 0, "fail": fail}
            return 202, {"data": self._job_view(self._jobs[jid])}

    def _job_view(self, job: dict) -> dict:
        attributes = {"status": job["status"], "created_at": _iso(job["created_at"]),
                      "total_count": len(job["profiles"]), "completed_count": job["completed_count"],
                      "failed_count": job["failed_count"], "completed_at": _iso(job["completed_at"]),
                      "expires_at": _iso(job["created_at"] + timedelta(days=7)), "started_at": _iso(job["started_at"])}
        return {"type": "profile-bulk-import-job", "id": job["id"], "attributes": attributes,
                "relationships": {"lists": {"data": [{"type": "list", "id": lid} for lid in job["lists"]]}},
                "links": {"self": f"{self.origin}/api/profile-bulk-import-jobs/{job['id']}/"}}

    def _run(self, job: dict) -> None:
        """Do a queued job's work (lock held)."""
        if job["status"] in ("complete", "failed", "cancelled"):
            return
        job["started_at"] = job["started_at"] or _now()
        job["completed_at"] = _now()
        if job["fail"]:
            job["status"] = "failed"
            return
        lists = [lid for lid in job["lists"] if lid in self._lists]
        for i, item in enumerate(job["profiles"]):
            error = None
            if len(json.dumps(item)) > MAX_PROFILE_BYTES:
                error = _invalid(f"The profile is larger than {MAX_PROFILE_BYTES} bytes.", "")
            else:
                _, error = self._upsert(item, lists)
            if error is None:
                job["completed_count"] += 1
                continue
            job["failed_count"] += 1
            where = str(error.source.get("pointer") or "")
            attributes = {"code": error.code, "title": error.title, "detail": error.detail, "source": {},
                          "original_payload": item.get("attributes")}
            if self.name_errors == "pointer":
                attributes["source"] = {"pointer": f"/data/attributes/profiles/data/{i}/{where}".rstrip("/")}
            if self.name_errors == "none":
                attributes["original_payload"] = None
            job["errors"].append({"type": "import-error", "id": str(uuid.uuid4()), "attributes": attributes})
        job["status"] = "complete"

    def _job_or_404(self, jid: str) -> dict:
        if jid not in self._jobs:
            raise _not_found(f"A profile bulk import job with id {jid} does not exist.", source={"parameter": "id"})
        return self._jobs[jid]

    def _get_job(self, req: Request, jid: str):
        with self._lock:
            job = self._job_or_404(jid)
            job["polls"] += 1
            if job["status"] == "queued" and job["polls"] > 1:
                job["status"], job["started_at"] = "processing", _now()
            if job["polls"] > self.running_polls:
                self._run(job)
            return 200, {"data": self._job_view(job)}

    def _get_import_errors(self, req: Request, jid: str):
        size, offset = _page_size(req, PROFILES_PAGE_DEFAULT, PROFILES_PAGE_MAX), _offset(req)
        with self._lock:
            errors = self._job_or_404(jid)["errors"]
            page = errors[offset:offset + size]
            more = offset + size < len(errors)
        return 200, {"data": page, "links": self._links(req, offset + size if more else None)}
