"""Stateful fake of Braze: user tracking, export by id and partner cohorts (destination-apis.md §7).

`/users/track` creates or updates users by `external_id`, `user_alias` or `braze_id` (an alias or a
braze id only updates unless `_update_existing_only` is false, an external id creates unless it is
true), at most 75 objects across attributes, events and purchases. Refused objects come back in
`errors` with their index; a request with no valid object is the fatal 400. Standard attributes
with fixed types are checked (an invalid value refuses its object).
`/users/export/ids` (Braze's page; not in the reference): at most 50 external ids and aliases.
`/partners/{partner}/cohorts` names a cohort by the partner's id; `.../cohorts/users` adds or removes
users by external id or alias (at most 1,000 ids; unknown ids ignored). Both keys are in the body.
Rate limits per endpoint, in fixed windows, with X-RateLimit-Limit/-Remaining/-Reset (epoch seconds).
"""

from __future__ import annotations

import itertools
import re
import time
from collections import namedtuple
from datetime import datetime

from ._server import FakeServer, Request, Response, json_response

BrazeRequest = namedtuple("BrazeRequest", "method path n_items status body")  # body: the parsed JSON, or None
TRACK_MAX = 75
EXPORT_MAX = 50
COHORT_MAX = 1_000
# endpoint scope -> (requests, window seconds): /users/track 3,000 per 3 s; /users/export/ids 2,500 a minute.
RATE_LIMITS = {"track": (3_000, 3.0), "export": (2_500, 60.0)}
SCOPES = ("all", "track", "export", "cohorts")
NO_DATA = "Valid data must be provided in the 'attributes', 'events', or 'purchases' fields."
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_ENUMS = {"email_subscribe": {"opted_in", "subscribed", "unsubscribed"},
          "push_subscribe": {"opted_in", "subscribed", "unsubscribed"},
          "gender": {"M", "F", "O", "N", "P", "m", "f", "o", "n", "p"}}
_STRINGS = ("first_name", "last_name", "email", "phone", "home_city", "country", "language", "time_zone")
_BOOLS = ("email_open_tracking_disabled", "email_click_tracking_disabled")
_TIMES = ("date_of_first_session", "date_of_last_session", "marked_email_as_spam_at")


class _Refused(Exception):
    def __init__(self, status: int, message: str, errors=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.errors, self.headers = status, message, errors, headers or {}

    def response(self) -> Response:
        body = {"message": self.message}
        if self.errors is not None:
            body["errors"] = self.errors
        return json_response(self.status, body, self.headers)


def _standard_error(key: str, value) -> str | None:
    """Why a standard attribute's value is invalid, or None."""
    if value is None:
        return None
    if key == "dob" and not (isinstance(value, str) and _DATE.fullmatch(value)):
        return "'dob' must be a date string in the format YYYY-MM-DD"
    if key in _ENUMS and value not in _ENUMS[key]:
        return f"'{key}' is not valid"
    if key in _STRINGS and not isinstance(value, str):
        return f"'{key}' must be a string"
    if key in _BOOLS and not isinstance(value, bool):
        return f"'{key}' must be a boolean"
    if key in _TIMES:
        try:
            datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return f"'{key}' must be a time in ISO 8601"
    return None


class FakeBraze(FakeServer):
    injection_scopes = SCOPES

    def __init__(self, api_key="braze-rest-key", partner_name="audience_pipelines",
                 partner_api_key="partner-key", client_secret="data-import-key", *,
                 rate_limits=None, wall_clock=time.time):
        """`rate_limits`: scope -> (requests, window seconds), replacing Braze's; `wall_clock` moves windows."""
        super().__init__()
        self.api_key, self.partner_name = api_key, partner_name
        self.partner_api_key, self.client_secret = partner_api_key, client_secret
        self.rate_limits = {**RATE_LIMITS, **(rate_limits or {})}
        self._wall = wall_clock
        self._windows: dict[str, tuple[float, int]] = {}  # scope -> (window start, requests counted)
        self._users: dict[str, dict] = {}  # braze id -> {external_id, user_aliases, attributes}
        self._by_external: dict[str, str] = {}
        self._by_alias: dict[tuple[str, str], str] = {}  # (name, label) -> braze id
        self._cohorts: dict[str, dict] = {}  # cohort id -> {cohort_id, name, created_at}
        self._members: dict[str, set[str]] = {}  # cohort id -> braze ids
        self._rejected: dict[str, str | None] = {}  # external id or alias name -> message
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        return self.origin

    # -- inspection and seeding ---------------------------------------------
    def create_user(self, external_id: str | None = None, alias: tuple[str, str] | None = None,
                    **attributes) -> str:
        """Seed a user directly; `alias` is (alias_name, alias_label). Returns its braze id."""
        with self._lock:
            bid = self._new_user(external_id, alias)
            self._users[bid]["attributes"].update(attributes)
            return bid

    def user(self, external_id: str | None = None, alias: tuple[str, str] | None = None) -> dict | None:
        """{braze_id, external_id, user_aliases, attributes} of a user, or None."""
        with self._lock:
            bid = self._by_external.get(external_id) if external_id else self._by_alias.get(tuple(alias))
            return self._view(bid) if bid else None

    @property
    def users(self) -> dict[str, dict]:
        with self._lock:
            return {bid: self._view(bid) for bid in self._users}

    @property
    def cohorts(self) -> dict[str, dict]:
        """Named cohorts by id, in creation order."""
        with self._lock:
            return {cid: dict(c) for cid, c in self._cohorts.items()}

    def cohort_id_by_name(self, name: str) -> str | None:
        with self._lock:
            ids = [cid for cid, c in self._cohorts.items() if c["name"] == name]
        if len(ids) > 1:
            raise LookupError(f"{len(ids)} cohorts are named {name!r}: {ids}")
        return ids[0] if ids else None

    def members(self, cohort_id: str) -> list[dict]:
        """The users in a cohort, as `user()` gives them."""
        with self._lock:
            return [self._view(bid) for bid in sorted(self._members.get(cohort_id, ()))]

    def _view(self, bid: str) -> dict:
        u = self._users[bid]
        return {"braze_id": bid, "external_id": u["external_id"],
                "user_aliases": [dict(a) for a in u["user_aliases"]], "attributes": dict(u["attributes"])}

    # -- faults ----------------------------------------------------------------
    # Faults share one FIFO queue per kind; each use is taken by the next request in scope:
    # "track" (/users/track), "export" (/users/export/ids), "cohorts" (both partner endpoints), "all".
    def reject_values(self, values, message: str | None = None) -> None:
        """Persistent: attributes objects for these external ids or alias names are refused (by index)."""
        with self._lock:
            for v in values:
                self._rejected[v] = message

    def clear_rejected_values(self) -> None:
        with self._lock:
            self._rejected.clear()

    def inject_rate_limit(self, times=1, scope="all", reset_in=1.0) -> None:
        """429 with the X-RateLimit headers, the window resetting `reset_in` seconds from now."""
        self._push("fault", times, scope, fault="throttle", reset_in=reset_in)

    def inject_server_error(self, times=1, status=500, scope="all") -> None:
        self._push("fault", times, scope, fault="server", status=status)

    def inject_delay(self, seconds: float, times=1, scope="all") -> None:
        self._push("delay", times, scope, seconds=seconds)

    def revoke(self, setting: str = "api_key") -> None:
        """The key stops working (api_key, partner_api_key or client_secret)."""
        setattr(self, setting, object())

    # -- HTTP plumbing -------------------------------------------------------
    def _scope(self, req: Request) -> str:
        if req.path == "/users/track":
            return "track"
        if req.path == "/users/export/ids":
            return "export"
        if req.path.startswith("/partners/"):
            return "cohorts"
        return "other"

    def _log_entry(self, req: Request, resp: Response):
        return BrazeRequest(req.method, req.path, req.notes.get("n_items"), resp.status, req.notes.get("body"))

    def _handle(self, req: Request) -> Response:
        scope = self._scope(req)
        headers: dict[str, str] = {}
        try:
            if req.method != "POST" or scope == "other":
                raise _Refused(404, f"No such endpoint in the fake: {req.method} {req.path}")
            body = self._body(req)
            if scope == "cohorts":
                self._check_partner(req, body)
            else:
                self._check_key(req)
                headers = self._admit(scope)
            if fault := self._pop("fault", scope):
                raise self._fault(fault, scope)
            if scope == "track":
                status, out = self._track(req, body)
            elif scope == "export":
                status, out = self._export(req, body)
            elif re.fullmatch(r"/partners/[^/]+/cohorts/?", req.path):
                status, out = self._name_cohort(body)
            elif re.fullmatch(r"/partners/[^/]+/cohorts/users/?", req.path):
                status, out = self._cohort_users(req, body)
            else:
                raise _Refused(404, f"No such endpoint in the fake: {req.method} {req.path}")
            resp = json_response(status, out)
        except _Refused as e:
            resp = e.response()
        resp.headers = {**headers, **resp.headers}
        return resp

    @staticmethod
    def _body(req: Request) -> dict:
        try:
            body = req.json()
        except ValueError:
            raise _Refused(400, "Bad Request: the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _Refused(400, "Bad Request: the body must be a JSON object")
        req.notes["body"] = body
        return body

    def _check_key(self, req: Request) -> None:
        auth = req.headers.get("authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if key != self.api_key:
            raise _Refused(401, f"Invalid API key: {key}")  # Braze echoes the key it was given

    def _check_partner(self, req: Request, body: dict) -> None:
        partner = req.path.split("/")[2]
        if body.get("partner_api_key") != self.partner_api_key or partner != self.partner_name:
            raise _Refused(401, "Invalid Partner API key")
        if body.get("client_secret") != self.client_secret:
            secret = body.get("client_secret")
            raise _Refused(401, "Invalid client secret" if not secret else
                           f"Partner not enabled for client with client secret: {secret}")

    def _admit(self, scope: str) -> dict[str, str]:
        """Count the request in its endpoint's window; refuse it (not counted) when the window is full."""
        limit, window = self.rate_limits[scope]
        with self._lock:
            now = self._wall()
            start = now - now % window
            seen_start, used = self._windows.get(scope, (start, 0))
            if seen_start != start:
                used = 0
            reset = str(int(start + window + 0.999))
            if used >= limit:
                raise _Refused(429, "API rate limit reached", headers={
                    "X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset})
            self._windows[scope] = (start, used + 1)
            return {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": str(limit - used - 1),
                    "X-RateLimit-Reset": reset}

    def _fault(self, inj: dict, scope: str) -> _Refused:
        if inj["fault"] == "throttle":
            limit = self.rate_limits.get(scope, (0, 0))[0]
            return _Refused(429, "API rate limit reached", headers={
                "X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(int(self._wall() + inj["reset_in"]))})
        return _Refused(inj["status"], "Internal Server Error")

    # -- users -------------------------------------------------------------------
    def _new_user(self, external_id: str | None, alias: tuple[str, str] | None) -> str:
        bid = f"b{next(self._ids):06d}"
        self._users[bid] = {"external_id": external_id, "user_aliases": [], "attributes": {}}
        if external_id:
            self._by_external[external_id] = bid
        if alias:
            self._users[bid]["user_aliases"].append({"alias_name": alias[0], "alias_label": alias[1]})
            self._by_alias[tuple(alias)] = bid
        return bid

    @staticmethod
    def _alias(value) -> tuple[str, str] | None:
        if isinstance(value, dict) and isinstance(value.get("alias_name"), str) and value["alias_name"] \
                and isinstance(value.get("alias_label"), str) and value["alias_label"]:
            return value["alias_name"], value["alias_label"]
        return None

    def _track_one(self, obj) -> str | None:
        """Apply one attributes object; returns why it was refused, or None. Caller holds the lock."""
        if not isinstance(obj, dict):
            return "attributes object must be an object"
        ext, alias, bid = obj.get("external_id"), obj.get("user_alias"), obj.get("braze_id")
        if ext is not None:
            if not isinstance(ext, str) or not ext:
                return "'external_id' must be a non-empty string"
            key = ext
        elif alias is not None:
            if self._alias(alias) is None:
                return "'user_alias' must be an object with 'alias_name' and 'alias_label'"
            key = alias["alias_name"]
        elif bid is not None:
            key = str(bid)
        else:
            return "attributes object must specify an external_id, user_alias or braze_id"
        if key in self._rejected:
            return self._rejected[key] or f"'{key}' is not a valid user identifier"
        attrs = {k: v for k, v in obj.items() if k not in ("external_id", "user_alias", "braze_id",
                                                             "_update_existing_only")}
        for k, v in attrs.items():
            if why := _standard_error(k, v):
                return why
        # An external id creates by default; an alias or braze id only updates unless told otherwise.
        update_only = obj.get("_update_existing_only", ext is None)
        if ext is not None:
            found = self._by_external.get(ext)
        elif alias is not None:
            found = self._by_alias.get(self._alias(alias))
        else:
            found = bid if bid in self._users else None
        if found is None:
            if update_only or bid is not None:
                return None  # Update Only: an unknown user is skipped without an error
            found = self._new_user(ext, self._alias(alias) if ext is None else None)
        stored = self._users[found]["attributes"]
        for k, v in attrs.items():
            if v is None:
                stored.pop(k, None)  # null removes the attribute
            else:
                stored[k] = v
        return None

    def _track(self, req: Request, body: dict):
        arrays = {k: body.get(k) for k in ("attributes", "events", "purchases") if body.get(k) is not None}
        for k, v in arrays.items():
            if not isinstance(v, list):
                raise _Refused(400, f"'{k}' must be an array")
        n = sum(len(v) for v in arrays.values())
        req.notes["n_items"] = n
        if n > TRACK_MAX:
            raise _Refused(400, "Max Input Length Exceeded")
        errors, applied = [], 0
        with self._lock:
            for i, obj in enumerate(arrays.get("attributes", [])):
                if why := self._track_one(obj):
                    errors.append({"type": why, "input_array": "attributes", "index": i})
                else:
                    applied += 1
        others = sum(len(arrays.get(k, [])) for k in ("events", "purchases"))  # accepted, not kept
        if applied + others == 0:
            raise _Refused(400, NO_DATA, errors=errors)
        out = {"message": "success", "attributes_processed": applied}
        if others:
            out.update(events_processed=len(arrays.get("events", [])),
                       purchases_processed=len(arrays.get("purchases", [])))
        if errors:
            out["errors"] = errors
        return 201, out

    def _export(self, req: Request, body: dict):
        ext, aliases = body.get("external_ids") or [], body.get("user_aliases") or []
        if not isinstance(ext, list) or not isinstance(aliases, list):
            raise _Refused(400, "'external_ids' and 'user_aliases' must be arrays")
        req.notes["n_items"] = len(ext) + len(aliases)
        if len(ext) + len(aliases) > EXPORT_MAX:
            raise _Refused(400, "The max number of external_ids and aliases per request was exceeded")
        wanted = body.get("fields_to_export")
        users, invalid, seen = [], [], set()
        with self._lock:
            found = []
            for e in ext:
                if e in self._by_external:
                    found.append(self._by_external[e])
                else:
                    invalid.append(e)
            for a in aliases:
                key = self._alias(a)
                if key is None:
                    raise _Refused(400, "'user_aliases' must hold objects with 'alias_name' and 'alias_label'")
                if key in self._by_alias:
                    found.append(self._by_alias[key])
                else:
                    invalid.append(key[0])
            for bid in found:
                if bid in seen:
                    continue
                seen.add(bid)
                v = self._view(bid)
                user = {"external_id": v["external_id"], "user_aliases": v["user_aliases"], "braze_id": bid,
                        "custom_attributes": v["attributes"]}
                user = {k: val for k, val in user.items() if val and (not wanted or k in wanted)}
                users.append(user)
        out = {"message": "success", "users": users}
        if invalid:
            out["invalid_user_ids"] = invalid
        return 201, out

    # -- cohorts -----------------------------------------------------------------
    @staticmethod
    def _cohort_id(body: dict) -> str:
        cid = body.get("cohort_id")
        if not isinstance(cid, str) or not cid:
            raise _Refused(400, "cohort_id must be a valid string")
        return cid

    def _name_cohort(self, body: dict):
        cid = self._cohort_id(body)
        name, created = body.get("name"), body.get("created_at")
        if not isinstance(name, str) or not name:
            raise _Refused(400, "name must be a non-empty string")
        try:
            datetime.fromisoformat(str(created).replace("Z", "+00:00"))
        except ValueError:
            raise _Refused(400, "created_at must be a valid time as an ISO-8601 string") from None
        with self._lock:
            cohort = self._cohorts.setdefault(cid, {"cohort_id": cid, "created_at": created})
            cohort["name"] = name  # naming an id again renames it
            self._members.setdefault(cid, set())
        return 201, {"message": "success"}

    def _cohort_users(self, req: Request, body: dict):
        cid = self._cohort_id(body)
        changes = body.get("cohort_changes")
        shape = ("cohort_changes must be an array of objects each with key user_ids and/or device_ids mapping "
                 "to an array of strings, or an aliases object")
        if not isinstance(changes, list):
            raise _Refused(400, shape)
        total = 0
        for change in changes:
            if not isinstance(change, dict) or not ({"user_ids", "device_ids", "aliases"} & set(change)):
                raise _Refused(400, shape)
            for k in ("user_ids", "device_ids"):
                ids = change.get(k, [])
                if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                    raise _Refused(400, shape)
                total += len(ids)
            aliases = change.get("aliases", [])
            if not isinstance(aliases, list) or any(self._alias(a) is None for a in aliases):
                raise _Refused(400, shape)
            total += len(aliases)
            if not isinstance(change.get("should_remove", False), bool):
                raise _Refused(400, "should_remove must be a boolean")
        req.notes["n_items"] = total
        if total > COHORT_MAX:
            raise _Refused(400, "Only 1,000 user_ids, device_ids, and aliases are allowed per request")
        with self._lock:
            members = self._members.setdefault(cid, set())
            for change in changes:
                bids = [self._by_external.get(i) for i in change.get("user_ids", [])]
                bids += [self._by_alias.get(self._alias(a)) for a in change.get("aliases", [])]
                apply = members.discard if change.get("should_remove") else members.add
                for bid in filter(None, bids):  # only existing users; unknown ids are ignored
                    apply(bid)
        return 201, {"message": "success"}
