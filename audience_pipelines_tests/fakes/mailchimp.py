"""Stateful fake of the Mailchimp Marketing API 3.0: lists, members, merge fields, tags (destination-apis.md §8).

Served under `/3.0`, authenticated like Mailchimp (HTTP Basic `anystring:<key>`, or a Bearer key);
a key naming another data center than the fake's is refused as Mailchimp refuses it (401 "API Key
Invalid ... wrong datacenter").

- `GET /lists/{id}`; `GET /lists/{id}/merge-fields` (count 10 by default, 1000 at most).
- Members by subscriber hash (MD5 of the lowercased email): `GET`, `PUT` (upsert: `status_if_new`
  for a new member only, `status` changes an existing one), `PATCH` (update only: 404 when absent).
- Batch subscribe `POST /lists/{id}`: at most 500 members, always 200 with `new_members`,
  `updated_members` and per-member `errors` (`ERROR_CONTACT_EXISTS` for an existing member unless
  `update_existing`); each member needs `status`, or `status_if_new` (accepted too, as the
  reference allows).
- Tags are static segments: `GET /lists/{id}/segments?type=static` (paged), `POST` to create,
  `GET /segments/{sid}` (with `member_count`), `POST /segments/{sid}` with `members_to_add` /
  `members_to_remove` (at most 500 each; emails not on the list come back in `errors`; members
  already tagged, or already untagged, are ignored), and `POST /members/{hash}/tags`.
- Merge fields are checked by type (number, date YYYY-MM-DD, birthday MM/DD, unknown tags, required
  fields of a new member); a refusal names the field like Mailchimp (`errors: [{field, message}]`).

Errors are `application/problem+json` `{type,title,status,detail,instance[,errors]}`. Faults: a 429
throttle (Mailchimp's concurrency limit, no Retry-After), a bare 403 (no problem body, as at extreme
volume), a 403 with a problem body (the key may not), 5xx, resets, delays (a delayed request holds its
connection), answers lost after the change, per-member refusals; more than `max_connections` requests
at once are answered 429 too. Archived members are off the list: they
cannot be tagged, and a PUT or batch subscribe brings them back with `status_if_new`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import re
import threading
import time
import uuid
from collections import namedtuple
from datetime import datetime, timezone

from ._server import FakeServer, Request, Response, json_response

API_KEY = "0123456789abcdef0123456789abcdef-us21"
LIST_ID = "a1b2c3d4e5"
MAX_MEMBERS = 500  # batch subscribe, and each of members_to_add / members_to_remove
PAGE_DEFAULT, PAGE_MAX = 10, 1000
STATUSES = ("subscribed", "unsubscribed", "cleaned", "pending", "transactional")
MERGE_TYPES = ("text", "number", "address", "phone", "date", "url", "imageurl", "radio", "dropdown",
               "birthday", "zip")
# (tag, type, required): Mailchimp's defaults for a new audience, plus PLAN for the contract suite.
DEFAULT_MERGE_FIELDS = (("FNAME", "text", False), ("LNAME", "text", False), ("ADDRESS", "address", False),
                        ("PHONE", "phone", False), ("BIRTHDAY", "birthday", False), ("PLAN", "text", False))
SCOPES = ("all", "members", "segments", "lists")
ERROR_DOCS = "https://mailchimp.com/developer/marketing/docs/errors/"
NOT_ON_LIST = "Email address is not a member of this list"

MailchimpRequest = namedtuple("MailchimpRequest", "method path n_items status")  # one per request

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_BIRTHDAY = re.compile(r"^(0[1-9]|1[0-2])/(0[1-9]|[12]\d|3[01])$")
_ROUTES = [  # (method, path pattern under /3.0, handler, injection scope)
    ("GET", r"/ping", "_ping", "lists"),
    ("GET", r"/lists/(?P<lid>[^/]+)", "_get_list", "lists"),
    ("POST", r"/lists/(?P<lid>[^/]+)", "_batch_subscribe", "members"),
    ("GET", r"/lists/(?P<lid>[^/]+)/merge-fields", "_merge_fields", "lists"),
    ("GET", r"/lists/(?P<lid>[^/]+)/segments", "_list_segments", "lists"),
    ("POST", r"/lists/(?P<lid>[^/]+)/segments", "_create_segment", "lists"),
    ("GET", r"/lists/(?P<lid>[^/]+)/segments/(?P<sid>[^/]+)", "_get_segment", "lists"),
    ("POST", r"/lists/(?P<lid>[^/]+)/segments/(?P<sid>[^/]+)", "_change_segment", "segments"),
    ("GET", r"/lists/(?P<lid>[^/]+)/members/(?P<mid>[^/]+)", "_get_member", "lists"),
    ("PUT", r"/lists/(?P<lid>[^/]+)/members/(?P<mid>[^/]+)", "_put_member", "members"),
    ("PATCH", r"/lists/(?P<lid>[^/]+)/members/(?P<mid>[^/]+)", "_patch_member", "members"),
    ("POST", r"/lists/(?P<lid>[^/]+)/members/(?P<mid>[^/]+)/tags", "_member_tags", "members"),
]
_ROUTES = [(m, re.compile(p), h, s) for m, p, h, s in _ROUTES]


def md5_hash(email: str) -> str:
    return hashlib.md5(email.strip().lower().encode("utf-8")).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Problem(Exception):
    """A Mailchimp error: `application/problem+json`."""

    def __init__(self, status: int, title: str, detail: str, errors=None):
        super().__init__(detail)
        self.status, self.title, self.detail, self.errors = status, title, detail, errors

    def response(self) -> Response:
        body = {"type": ERROR_DOCS, "title": self.title, "status": self.status, "detail": self.detail,
                "instance": str(uuid.uuid4())}
        if self.errors is not None:
            body["errors"] = self.errors
        resp = json_response(self.status, body)
        resp.headers["Content-Type"] = "application/problem+json; charset=utf-8"
        return resp


def _invalid(detail: str, errors=None) -> Problem:
    return Problem(400, "Invalid Resource", detail, errors)


def _not_found() -> Problem:
    return Problem(404, "Resource Not Found", "The requested resource could not be found.")


def _json_body(req: Request) -> dict:
    try:
        body = req.json()
    except ValueError:
        raise Problem(400, "JSON Parse Exception", "We encountered an unspecified JSON parsing error.") from None
    if not isinstance(body, dict):
        raise _invalid("The resource submitted could not be validated: the body must be a JSON object.")
    return body


def _page(req: Request) -> tuple[int, int]:
    try:
        count, offset = int(req.query.get("count", PAGE_DEFAULT)), int(req.query.get("offset", 0))
    except ValueError:
        raise _invalid("count and offset must be integers") from None
    if not 1 <= count <= PAGE_MAX or offset < 0:
        raise _invalid(f"count must be between 1 and {PAGE_MAX}, offset at least 0")
    return count, offset


class MemberRefused(Exception):
    """One member refused: its field (when one is to blame) and message."""

    def __init__(self, message: str, field: str = "", title: str = "Invalid Resource"):
        super().__init__(message)
        self.message, self.field, self.title = message, field, title


class FakeMailchimp(FakeServer):
    injection_scopes = SCOPES

    def __init__(self, api_key: str = API_KEY, list_id: str = LIST_ID, *, list_name: str = "Customers",
                 merge_fields=DEFAULT_MERGE_FIELDS, max_connections: int = 10):
        super().__init__()
        self.api_key, self.list_id = api_key, list_id
        self.dc = api_key.rpartition("-")[2]
        self.max_connections = max_connections
        self._lists = {list_id: {"id": list_id, "web_id": 1, "name": list_name, "date_created": _now(),
                                 "double_optin": False}}
        self._members: dict[str, dict[str, dict]] = {list_id: {}}  # list -> hash -> member
        self._merge: dict[str, list[dict]] = {list_id: []}
        self._segments: dict[str, dict[int, dict]] = {list_id: {}}  # list -> id -> segment (members: hashes)
        self._rejected: dict[str, str] = {}  # lower-cased email -> message
        self._segment_ids = itertools.count(20001)
        self._merge_ids = itertools.count(1)
        self._web_ids = itertools.count(1001)
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        for tag, kind, required in merge_fields:
            self.add_merge_field(tag, kind, required=required)

    # -- seeding and inspection ----------------------------------------------------
    @property
    def url(self) -> str:
        return self.origin + "/3.0"

    def add_merge_field(self, tag: str, kind: str = "text", *, required: bool = False, name: str | None = None,
                        list_id: str | None = None) -> None:
        if kind not in MERGE_TYPES:
            raise ValueError(f"merge field type must be one of {MERGE_TYPES}")
        lid = list_id or self.list_id
        with self._lock:
            self._merge[lid].append({
                "merge_id": next(self._merge_ids), "tag": tag, "name": name or tag.title(), "type": kind,
                "required": required, "default_value": "", "public": False,
                "display_order": len(self._merge[lid]) + 2, "options": {}, "help_text": "", "list_id": lid})

    def add_member(self, email: str, status: str = "subscribed", **merge_fields) -> str:
        """Seed a member directly (no HTTP, no validation); returns its subscriber hash."""
        with self._lock:
            return self._put(self.list_id, email, status, merge_fields)["id"]

    def member(self, email: str) -> dict | None:
        """The member (any status, archived too) with this email, or None."""
        with self._lock:
            m = self._members[self.list_id].get(md5_hash(email))
            return self._view(self.list_id, m) if m else None

    def members(self) -> dict[str, dict]:
        """email (lower-cased) -> member view, for every member of the list, archived ones included."""
        with self._lock:
            return {m["email_address"].lower(): self._view(self.list_id, m)
                    for m in self._members[self.list_id].values()}

    def archive_member(self, email: str) -> None:
        """As if archived in Mailchimp: off the list (untaggable) but still readable, status 'archived'."""
        with self._lock:
            self._members[self.list_id][md5_hash(email)]["status"] = "archived"

    def delete_member(self, email: str) -> None:
        """As if deleted permanently: gone, and gone from every tag."""
        with self._lock:
            mid = md5_hash(email)
            del self._members[self.list_id][mid]
            for seg in self._segments[self.list_id].values():
                seg["members"].discard(mid)

    @property
    def tags(self) -> dict[int, dict]:
        """Static segments (tags) of the list by id, in creation order: {id: {name, ...}}."""
        with self._lock:
            return {sid: self._segment_view(self.list_id, s) for sid, s in self._segments[self.list_id].items()
                    if s["type"] == "static"}

    def segment_id_by_name(self, name: str) -> int | None:
        with self._lock:
            ids = [sid for sid, s in self._segments[self.list_id].items()
                   if s["type"] == "static" and s["name"] == name]
        if len(ids) > 1:
            raise LookupError(f"{len(ids)} tags are named {name!r}: {ids}")
        return ids[0] if ids else None

    def create_segment(self, name: str, kind: str = "static") -> int:
        """Seed a tag ("static") or a saved segment ("saved") directly; returns its id."""
        with self._lock:
            return self._new_segment(self.list_id, name, kind)

    def tagged(self, segment_id) -> set[str]:
        """Emails (lower-cased) of the members carrying the tag."""
        with self._lock:
            members = self._members[self.list_id]
            return {members[mid]["email_address"].lower()
                    for mid in self._segments[self.list_id][int(segment_id)]["members"]}

    def tag(self, segment_id, *emails: str) -> None:
        with self._lock:
            for e in emails:
                self._segments[self.list_id][int(segment_id)]["members"].add(md5_hash(e))

    # -- faults ----------------------------------------------------------------------
    def reject_emails(self, emails, message: str = "{email} looks fake or invalid, please enter a real email "
                                                     "address.") -> None:
        """Persistent: adding or updating these members is refused per member ("{email}" is filled in)."""
        with self._lock:
            for e in emails:
                self._rejected[e.strip().lower()] = message

    def clear_rejected_emails(self) -> None:
        with self._lock:
            self._rejected.clear()

    def inject_throttle(self, times=1, scope="all") -> None:
        """429 Too Many Requests, the concurrency limit's answer (no Retry-After, no rate headers)."""
        self._push("fault", times, scope, fault="throttle")

    def inject_bare_forbidden(self, times=1, scope="all") -> None:
        """A bare 403 with no problem body, as Mailchimp answers at extreme volume."""
        self._push("fault", times, scope, fault="bare403")

    def inject_forbidden(self, times=1, scope="all") -> None:
        """403 with a problem body: the key may not do this (a disabled user, a missing permission)."""
        self._push("fault", times, scope, fault="forbidden")

    def inject_server_error(self, times=1, status=500, scope="all") -> None:
        if status not in (500, 502, 503, 504):
            raise ValueError("status must be 500, 502, 503 or 504")
        self._push("fault", times, scope, fault="server", status=status)

    def inject_delay(self, seconds: float, times=1, scope="all") -> None:
        """Answer the next requests in scope `seconds` late (then apply them), holding their connection meanwhile."""
        self._push("hold", times, scope, seconds=seconds)

    # -- plumbing ------------------------------------------------------------------------
    def _route(self, req: Request):
        if not req.path.startswith("/3.0/"):
            return None
        path = req.path[len("/3.0"):].rstrip("/") or "/"
        for method, pattern, handler, scope in _ROUTES:
            if method == req.method and (m := pattern.fullmatch(path)):
                return getattr(self, handler), m.groupdict(), scope
        return None

    def _scope(self, req: Request) -> str:
        route = self._route(req)
        return route[2] if route else "lists"

    def _log_entry(self, req: Request, resp: Response):
        return MailchimpRequest(req.method, req.path, req.notes.get("n_items"), resp.status)

    def _handle(self, req: Request) -> Response:
        with self._inflight_lock:
            self._inflight += 1
            busy = self._inflight > self.max_connections
        try:
            self._check_auth(req)
            if busy:
                raise self._throttled()
            if hold := self._pop("hold", self._scope(req)):
                time.sleep(hold["seconds"])  # counted as a connection in use meanwhile
            route = self._route(req)
            if route is None:
                raise _not_found()
            handler, params, scope = route
            if fault := self._pop("fault", scope):
                if fault["fault"] == "bare403":
                    return Response(403, b"<html><body>Access Denied</body></html>",
                                    {"Content-Type": "text/html"})
                if fault["fault"] == "throttle":
                    raise self._throttled()
                if fault["fault"] == "forbidden":
                    raise Problem(403, "Forbidden", "User does not have access to the requested operation.")
                raise Problem(fault["status"], "Internal Server Error",
                              "An unexpected internal error has occurred. Please contact Support for more "
                              "information.")
            status, body = handler(req, **params)
            return json_response(status, body) if body is not None else Response(status)
        except Problem as p:
            return p.response()
        finally:
            with self._inflight_lock:
                self._inflight -= 1

    @staticmethod
    def _throttled() -> Problem:
        return Problem(429, "Too Many Requests", "You have exceeded the limit of 10 simultaneous connections.")

    def _check_auth(self, req: Request) -> None:
        auth = req.headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        key = None
        if scheme.lower() == "basic":
            try:
                key = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                key = None
        elif scheme.lower() == "bearer":
            key = value.strip()
        if not key:
            raise Problem(401, "API Key Missing", "Your request did not include an API key.")
        if key != self.api_key or key.rpartition("-")[2] != self.dc:
            raise Problem(401, "API Key Invalid", "Your API key may be invalid, or you've attempted to access the "
                                                  "wrong datacenter.")

    def _list(self, lid: str) -> dict:
        if lid not in self._lists:
            raise _not_found()
        return self._lists[lid]

    # -- members -------------------------------------------------------------------------
    def _view(self, lid: str, m: dict) -> dict:
        tags = [{"id": sid, "name": s["name"]} for sid, s in self._segments[lid].items()
                if s["type"] == "static" and m["id"] in s["members"]]
        return {**{k: v for k, v in m.items()}, "merge_fields": dict(m["merge_fields"]), "tags": tags,
                "tags_count": len(tags), "list_id": lid}

    def _merge_values(self, lid: str, values, new: bool) -> dict:
        """Merge field values as stored; raises MemberRefused naming the field."""
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise MemberRefused("merge_fields must be an object", "merge_fields")
        fields = {f["tag"]: f for f in self._merge[lid]}
        out = {}
        for tag, value in values.items():
            f = fields.get(tag)
            if f is None:
                raise MemberRefused(f"Your merge fields were invalid: {tag} is not a merge field of this audience",
                                    tag)
            kind = f["type"]
            if value is None or value == "":
                out[tag] = ""
            elif kind == "number":
                try:
                    float(value)
                except (TypeError, ValueError):
                    raise MemberRefused("Please enter a number", tag) from None
                out[tag] = value
            elif kind == "date" and not (isinstance(value, str) and _DATE.match(value)):
                raise MemberRefused("Please enter the date in the format YYYY-MM-DD", tag)
            elif kind == "birthday" and not (isinstance(value, str) and _BIRTHDAY.match(value)):
                raise MemberRefused("Please enter a month (01-12) and a day (01-31) as MM/DD", tag)
            elif kind == "address":
                if not isinstance(value, (dict, str)):
                    raise MemberRefused("Please enter a complete address", tag)
                out[tag] = value
            elif isinstance(value, (dict, list)):
                raise MemberRefused("Please enter a text value", tag)
            else:
                out[tag] = value if isinstance(value, str) else str(value)
        if new:
            for tag, f in fields.items():
                if f["required"] and not out.get(tag):
                    raise MemberRefused("This value should not be blank.", tag)
        return out

    def _put(self, lid: str, email: str, status: str | None, merge: dict, status_if_new: str | None = None,
             checked: bool = False) -> dict:
        """Create or update one member (caller holds the lock). `status` changes an existing member's status;
        `status_if_new` sets only a new (or archived) one's."""
        mid = md5_hash(email)
        members = self._members[lid]
        m = members.get(mid)
        new = m is None or m["status"] == "archived"
        values = self._merge_values(lid, merge, new) if checked else dict(merge)
        now = _now()
        if m is None:
            m = members[mid] = {
                "id": mid, "email_address": email.strip(), "unique_email_id": uuid.uuid4().hex[:10],
                "contact_id": uuid.uuid4().hex, "web_id": next(self._web_ids), "email_type": "html",
                "status": None, "merge_fields": {f["tag"]: "" for f in self._merge[lid]},
                "timestamp_signup": "", "timestamp_opt": "", "last_changed": now, "source": "API - Generic",
            }
        if new:
            m["status"] = status or status_if_new
            m["timestamp_signup"] = now
        elif status:
            if status == "subscribed" and m["status"] in ("unsubscribed", "cleaned"):
                raise MemberRefused(f"{email} is already a list member in compliance state due to unsubscribe, "
                                    "bounce, or compliance review and cannot be subscribed.",
                                    title="Member In Compliance State")
            m["status"] = status
        m["merge_fields"].update(values)
        m["last_changed"] = now
        return m

    def _check_email(self, email) -> str:
        if not isinstance(email, str) or not _EMAIL.match(email.strip()):
            raise MemberRefused(f"{email} looks fake or invalid, please enter a real email address.",
                                "email_address")
        key = email.strip().lower()
        if key in self._rejected:
            raise MemberRefused(self._rejected[key].replace("{email}", email.strip()), "email_address")
        return email

    @staticmethod
    def _refused(e: MemberRefused) -> Problem:
        if e.title != "Invalid Resource":
            return Problem(400, e.title, e.message)
        errors = [{"field": e.field, "message": e.message}] if e.field else []
        return _invalid(e.message if not e.field or e.field == "email_address"
                        else "The resource submitted could not be validated. For field-specific details, see the "
                             "'errors' array.", errors)

    def _get_member(self, req: Request, lid: str, mid: str):
        with self._lock:
            self._list(lid)
            m = self._members[lid].get(mid.lower())
            if m is None:
                raise _not_found()
            req.notes["n_items"] = 1
            return 200, self._view(lid, m)

    def _put_member(self, req: Request, lid: str, mid: str):
        body = _json_body(req)
        req.notes["n_items"] = 1
        email, status, if_new = body.get("email_address"), body.get("status"), body.get("status_if_new")
        with self._lock:
            self._list(lid)
            try:
                self._check_email(email)
                if md5_hash(email) != mid.lower():
                    raise MemberRefused("The subscriber hash in the path does not match the email address.",
                                        "email_address")
                for field, value in (("status", status), ("status_if_new", if_new)):
                    if value is not None and value not in STATUSES:
                        raise MemberRefused(f"Invalid {field}: must be one of {', '.join(STATUSES)}", field)
                existing = self._members[lid].get(mid.lower())
                if (existing is None or existing["status"] == "archived") and not (status or if_new):
                    raise MemberRefused("The status_if_new field is required for a new member", "status_if_new")
                m = self._put(lid, email, status, body.get("merge_fields"), if_new, checked=True)
            except MemberRefused as e:
                raise self._refused(e) from None
            return 200, self._view(lid, m)

    def _patch_member(self, req: Request, lid: str, mid: str):
        body = _json_body(req)
        req.notes["n_items"] = 1
        with self._lock:
            self._list(lid)
            m = self._members[lid].get(mid.lower())
            if m is None:
                raise _not_found()
            try:
                self._check_email(m["email_address"])
                if body.get("status") is not None and body["status"] not in STATUSES:
                    raise MemberRefused("Invalid status", "status")
                m = self._put(lid, m["email_address"], body.get("status"), body.get("merge_fields"), checked=True)
            except MemberRefused as e:
                raise self._refused(e) from None
            return 200, self._view(lid, m)

    def _batch_subscribe(self, req: Request, lid: str):
        body = _json_body(req)
        members = body.get("members")
        if not isinstance(members, list):
            raise _invalid("The resource submitted could not be validated: 'members' must be an array.",
                           [{"field": "members", "message": "Schema describes array, object found instead"}])
        req.notes["n_items"] = len(members)
        if len(members) > MAX_MEMBERS:
            raise _invalid(f"You may only add or update up to {MAX_MEMBERS} members in a single request.",
                           [{"field": "members", "message": f"{len(members)} members sent"}])
        update = bool(body.get("update_existing"))
        skip_duplicates = bool(req.query.get("skip_duplicate_check") == "true" or body.get("skip_duplicate_check"))
        new, updated, errors, seen = [], [], [], set()
        with self._lock:
            self._list(lid)
            for item in members:
                email = item.get("email_address") if isinstance(item, dict) else None
                try:
                    if not isinstance(item, dict):
                        raise MemberRefused("each member must be an object")
                    self._check_email(email)
                    key = email.strip().lower()
                    if key in seen and not skip_duplicates:
                        raise MemberRefused(f"{email} was included more than once in this batch", "email_address")
                    seen.add(key)
                    status = item.get("status")
                    if_new = item.get("status_if_new")
                    if status is None and if_new is None:
                        raise MemberRefused("The status field is required", "status")
                    for field, value in (("status", status), ("status_if_new", if_new)):
                        if value is not None and value not in STATUSES:
                            raise MemberRefused(f"Invalid {field}: must be one of {', '.join(STATUSES)}", field)
                    existing = self._members[lid].get(md5_hash(email))
                    is_new = existing is None or existing["status"] == "archived"
                    if not is_new and not update:
                        errors.append({"email_address": email, "error": f"{email} is already a list member, do "
                                       "you want to update? please provide update_existing:true in the request "
                                       "body", "error_code": "ERROR_CONTACT_EXISTS", "field": "",
                                       "field_message": ""})
                        continue
                    m = self._put(lid, email, status, item.get("merge_fields"), if_new, checked=True)
                    (new if is_new else updated).append(self._view(lid, m))
                except MemberRefused as e:
                    errors.append({"email_address": email, "error": e.message, "error_code": "ERROR_GENERIC",
                                   "field": e.field, "field_message": e.message if e.field else ""})
        return 200, {"new_members": new, "updated_members": updated, "errors": errors,
                     "total_created": len(new), "total_updated": len(updated), "error_count": len(errors),
                     "_links": []}

    def _member_tags(self, req: Request, lid: str, mid: str):
        body = _json_body(req)
        tags = body.get("tags")
        if not isinstance(tags, list) or not all(isinstance(t, dict) and t.get("name") and
                                                 t.get("status") in ("active", "inactive") for t in tags):
            raise _invalid("The resource submitted could not be validated.",
                           [{"field": "tags", "message": "each tag needs a name and a status active|inactive"}])
        req.notes["n_items"] = len(tags)
        with self._lock:
            self._list(lid)
            m = self._members[lid].get(mid.lower())
            if m is None or m["status"] == "archived":
                raise _not_found()
            for t in tags:
                sid = next((i for i, s in self._segments[lid].items()
                            if s["type"] == "static" and s["name"] == t["name"]), None)
                if sid is None and t["status"] == "active":
                    sid = self._new_segment(lid, t["name"], "static")
                if sid is not None:
                    (self._segments[lid][sid]["members"].add if t["status"] == "active"
                     else self._segments[lid][sid]["members"].discard)(m["id"])
        return 204, None

    # -- lists, merge fields ---------------------------------------------------------------
    def _ping(self, req: Request):
        return 200, {"health_status": "Everything's Chimpy!"}

    def _get_list(self, req: Request, lid: str):
        with self._lock:
            lst = self._list(lid)
            live = [m for m in self._members[lid].values() if m["status"] != "archived"]
            stats = {"member_count": sum(m["status"] == "subscribed" for m in live),
                     "unsubscribe_count": sum(m["status"] == "unsubscribed" for m in live),
                     "cleaned_count": sum(m["status"] == "cleaned" for m in live),
                     "total_contacts": len(live)}
            return 200, {**lst, "stats": stats}

    def _merge_fields(self, req: Request, lid: str):
        count, offset = _page(req)
        with self._lock:
            self._list(lid)
            fields = [dict(f) for f in self._merge[lid] if req.query.get("type") in (None, f["type"])]
        return 200, {"merge_fields": fields[offset:offset + count], "list_id": lid, "total_items": len(fields)}

    # -- segments (tags) ------------------------------------------------------------------
    def _new_segment(self, lid: str, name: str, kind: str) -> int:
        if any(s["name"].lower() == name.lower() for s in self._segments[lid].values()):
            raise ValueError(f"a segment or tag named {name!r} already exists")
        sid, now = next(self._segment_ids), _now()
        self._segments[lid][sid] = {"id": sid, "name": name, "type": kind, "members": set(),
                                    "created_at": now, "updated_at": now}
        return sid

    def _segment_view(self, lid: str, s: dict) -> dict:
        members = self._members[lid]
        count = sum(1 for mid in s["members"] if mid in members and members[mid]["status"] != "archived")
        view = {k: v for k, v in s.items() if k != "members"}
        if s["type"] == "saved":
            view["options"] = {"match": "all", "conditions": []}
        return {**view, "member_count": count, "list_id": lid}

    def _segment(self, lid: str, sid: str) -> dict:
        self._list(lid)
        try:
            return self._segments[lid][int(sid)]
        except (ValueError, KeyError):
            raise _not_found() from None

    def _list_segments(self, req: Request, lid: str):
        count, offset = _page(req)
        kind = req.query.get("type")
        with self._lock:
            self._list(lid)
            segs = [self._segment_view(lid, s) for s in self._segments[lid].values() if kind in (None, s["type"])]
        return 200, {"segments": segs[offset:offset + count], "list_id": lid, "total_items": len(segs)}

    def _create_segment(self, req: Request, lid: str):
        body = _json_body(req)
        name = body.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            raise _invalid("The resource submitted could not be validated.",
                           [{"field": "name", "message": "A name of 1 to 100 characters is required"}])
        static = body.get("static_segment")
        if static is None and body.get("options") is None:
            raise _invalid("A segment needs either static_segment or options.",
                           [{"field": "static_segment", "message": "Required when options is not given"}])
        if static is not None and (not isinstance(static, list) or len(static) > MAX_MEMBERS):
            raise _invalid(f"static_segment must be an array of at most {MAX_MEMBERS} emails")
        with self._lock:
            self._list(lid)
            try:
                sid = self._new_segment(lid, name, "static" if static is not None else "saved")
            except ValueError:
                raise _invalid(f"A tag or segment named '{name}' already exists in this audience.",
                               [{"field": "name", "message": "Name must be unique"}]) from None
            for e in static or []:
                m = self._members[lid].get(md5_hash(str(e)))
                if m is not None and m["status"] != "archived":
                    self._segments[lid][sid]["members"].add(m["id"])
            return 200, self._segment_view(lid, self._segments[lid][sid])

    def _get_segment(self, req: Request, lid: str, sid: str):
        with self._lock:
            return 200, self._segment_view(lid, self._segment(lid, sid))

    def _change_segment(self, req: Request, lid: str, sid: str):
        body = _json_body(req)
        add, remove = body.get("members_to_add", []), body.get("members_to_remove", [])
        for field, emails in (("members_to_add", add), ("members_to_remove", remove)):
            if not isinstance(emails, list) or not all(isinstance(e, str) for e in emails):
                raise _invalid("The resource submitted could not be validated.",
                               [{"field": field, "message": "Schema describes array of strings"}])
            if len(emails) > MAX_MEMBERS:
                raise _invalid(f"A maximum of {MAX_MEMBERS} members can be sent in {field}.",
                               [{"field": field, "message": f"{len(emails)} sent"}])
        req.notes["n_items"] = len(add) + len(remove)
        with self._lock:
            seg = self._segment(lid, sid)
            if seg["type"] != "static":
                raise _invalid("Members can only be added to or removed from a static segment or tag.")
            members, missing, added, removed = self._members[lid], [], [], []
            for emails, apply, done in ((remove, seg["members"].discard, removed), (add, seg["members"].add, added)):
                for e in emails:
                    m = members.get(md5_hash(e))
                    if m is None or m["status"] == "archived":
                        if e not in missing:
                            missing.append(e)
                        continue
                    before = m["id"] in seg["members"]
                    apply(m["id"])
                    if before != (m["id"] in seg["members"]):
                        done.append(self._view(lid, m))
            if added or removed:
                seg["updated_at"] = _now()
        errors = [{"email_addresses": missing, "error": NOT_ON_LIST}] if missing else []
        return 200, {"members_added": added, "members_removed": removed, "errors": errors,
                     "total_added": len(added), "total_removed": len(removed), "error_count": len(missing),
                     "_links": []}
