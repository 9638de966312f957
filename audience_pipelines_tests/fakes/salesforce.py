"""Stateful fake of the Salesforce REST API for campaigns (destination-apis.md §6), real HTTP on 127.0.0.1.

Serves the OAuth refresh-token exchange (`/services/oauth2/token`), and under
`/services/data/{api_version}`: SOQL `query` (a small SOQL: SELECT fields or COUNT() FROM one object,
WHERE comparisons joined by AND / OR, IN lists, ORDER BY, LIMIT, paged by nextRecordsUrl), sObject
describe, get and create, sObject Collections (POST / PATCH / DELETE `composite/sobjects`, 200 records,
allOrNone) and Bulk API 2.0 ingest jobs (insert, update, delete; CSV). Objects: Campaign, Lead, Contact,
CampaignMember, with Salesforce's required fields, duplicate-member rule and error bodies (a JSON array
of {message, errorCode, fields}). Every API answer carries `Sforce-Limit-Info: api-usage=N/M`; past
`api_limit` requests it answers 403 REQUEST_LIMIT_EXCEEDED (TotalRequests). Bulk results come in
reverse upload order (Salesforce promises no order). [unverified] A second close of a job is refused
with 400 INVALIDJOBSTATE; a job given two uploads fails at close.

Faults: `inject_request_limit` (403 REQUEST_LIMIT_EXCEEDED, concurrent or daily), `inject_server_error`,
`inject_delay`, `inject_reset`, `inject_lost_answer` (base class), per-row refusals (`reject_emails` for
people, `refuse_member_deletes`), `expire_sessions` (401 INVALID_SESSION_ID), `revoke_refresh_token`.
Scopes: token, query, describe, campaign, people (collections of Leads/Contacts), members (collections
of CampaignMembers), bulk, other.
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import re
import secrets
import time
from collections import namedtuple
from datetime import datetime, timezone
from urllib.parse import unquote

from ._server import FakeServer, Request, Response, json_response

COLLECTION_MAX = 200
TYPE_CHUNKS_MAX = 10
URI_MAX = 16_384
SCOPES = ("all", "token", "query", "describe", "campaign", "people", "members", "bulk", "other")
PREFIXES = {"Campaign": "701", "Lead": "00Q", "Contact": "003", "CampaignMember": "00v"}
JOB_PREFIX = "750"
TEXT = ("string", "email", "phone", "picklist", "textarea", "url")

# object -> field -> (describe type, updateable/createable). Field names are case-insensitive in the API.
_COMMON_PERSON = {
    "Id": ("id", False), "Email": ("email", True), "FirstName": ("string", True), "LastName": ("string", True),
    "Phone": ("phone", True), "Title": ("string", True), "Description": ("textarea", True),
    "HasOptedOutOfEmail": ("boolean", True), "Plan__c": ("string", True), "Score__c": ("double", True),
    "Signup_Date__c": ("date", True), "Last_Seen__c": ("datetime", True), "CreatedDate": ("datetime", False),
}
SCHEMAS = {
    "Campaign": {"Id": ("id", False), "Name": ("string", True), "IsActive": ("boolean", True),
                 "Type": ("picklist", True), "NumberOfLeads": ("int", False), "NumberOfContacts": ("int", False),
                 "CreatedDate": ("datetime", False)},
    "Lead": {**_COMMON_PERSON, "Company": ("string", True), "Status": ("picklist", True),
             "LeadSource": ("picklist", True), "Website": ("url", True), "AnnualRevenue": ("currency", True),
             "NumberOfEmployees": ("int", True), "IsConverted": ("boolean", False)},
    "Contact": {**_COMMON_PERSON, "AccountId": ("reference", True), "Birthdate": ("date", True)},
    "CampaignMember": {"Id": ("id", False), "CampaignId": ("reference", True), "LeadId": ("reference", True),
                       "ContactId": ("reference", True), "Status": ("picklist", True),
                       "CreatedDate": ("datetime", False)},
}
REQUIRED = {"Campaign": ("Name",), "Lead": ("LastName", "Company"), "Contact": ("LastName",),
            "CampaignMember": ("CampaignId",)}
DEFAULTS = {"Campaign": {"IsActive": False}, "Lead": {"Status": "Open - Not Contacted", "IsConverted": False},
            "Contact": {}, "CampaignMember": {"Status": "Sent"}}
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

SalesforceRequest = namedtuple("SalesforceRequest", "method path scope n_items status soql")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"


class SfError(Exception):
    """A request-level error: Salesforce's JSON array body."""

    def __init__(self, status: int, code: str, message: str, fields=None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.fields, self.headers = status, code, message, fields, headers or {}

    def body(self) -> list:
        item = {"message": self.message, "errorCode": self.code}
        if self.fields is not None:
            item["fields"] = self.fields
        return [item]


def _row_error(code: str, message: str, fields=()) -> dict:
    return {"statusCode": code, "message": message, "fields": list(fields)}


# -- a small SOQL ---------------------------------------------------------------------------------
_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:\\.|[^'\\])*')|(?P<num>-?\d+(?:\.\d+)?(?![\w]))|"
                    r"(?P<word>[A-Za-z_][\w.]*)|(?P<sym>!=|<=|>=|[(),=<>]))")
_UNESCAPE = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise SfError(400, "MALFORMED_QUERY", f"unexpected token: '{text[pos:pos + 20].strip()}'")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _unquote_soql(literal: str) -> str:
    body, out, i = literal[1:-1], [], 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append(_UNESCAPE.get(nxt, nxt))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


class _Soql:
    """SELECT <fields | COUNT()> FROM <object> [WHERE ...] [ORDER BY ...] [LIMIT n]."""

    def __init__(self, text: str):
        self.toks, self.i = _tokens(text), 0
        self.keyword("SELECT")
        self.count = False
        self.fields: list[str] = []
        if self.peek_word("COUNT"):
            self.next()
            self.expect_sym("(")
            self.expect_sym(")")
            self.count = True
        else:
            self.fields.append(self.word())
            while self.peek_sym(","):
                self.next()
                self.fields.append(self.word())
        self.keyword("FROM")
        self.sobject = self.word()
        self.where = None
        self.order: list[tuple[str, bool]] = []
        self.limit = None
        if self.peek_word("WHERE"):
            self.next()
            self.where = self.disjunction()
        if self.peek_word("ORDER"):
            self.next()
            self.keyword("BY")
            while True:
                name, desc = self.word(), False
                if self.peek_word("ASC") or self.peek_word("DESC"):
                    desc = self.next()[1].upper() == "DESC"
                self.order.append((name, desc))
                if not self.peek_sym(","):
                    break
                self.next()
        if self.peek_word("LIMIT"):
            self.next()
            kind, value = self.next()
            if kind != "num":
                raise SfError(400, "MALFORMED_QUERY", "LIMIT takes a number")
            self.limit = int(value)
        if self.i != len(self.toks):
            raise SfError(400, "MALFORMED_QUERY", f"unexpected token: '{self.toks[self.i][1]}'")

    # tokens
    def next(self):
        if self.i >= len(self.toks):
            raise SfError(400, "MALFORMED_QUERY", "unexpected end of query")
        self.i += 1
        return self.toks[self.i - 1]

    def peek_word(self, word: str) -> bool:
        return self.i < len(self.toks) and self.toks[self.i][0] == "word" and self.toks[self.i][1].upper() == word

    def peek_sym(self, sym: str) -> bool:
        return self.i < len(self.toks) and self.toks[self.i] == ("sym", sym)

    def keyword(self, word: str) -> None:
        if not self.peek_word(word):
            raise SfError(400, "MALFORMED_QUERY", f"expected {word}")
        self.i += 1

    def word(self) -> str:
        kind, value = self.next()
        if kind != "word":
            raise SfError(400, "MALFORMED_QUERY", f"unexpected token: '{value}'")
        return value

    def expect_sym(self, sym: str) -> None:
        if self.next() != ("sym", sym):
            raise SfError(400, "MALFORMED_QUERY", f"expected '{sym}'")

    def value(self):
        kind, value = self.next()
        if kind == "str":
            return _unquote_soql(value)
        if kind == "num":
            return float(value)
        if kind == "word" and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if kind == "word" and value.lower() == "null":
            return None
        raise SfError(400, "MALFORMED_QUERY", f"unexpected token: '{value}'")

    # conditions: ("or"|"and", [..]) | ("cmp", field, op, value) | ("in", field, negate, [values])
    def disjunction(self):
        parts = [self.conjunction()]
        while self.peek_word("OR"):
            self.next()
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else ("or", parts)

    def conjunction(self):
        parts = [self.term()]
        while self.peek_word("AND"):
            self.next()
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else ("and", parts)

    def term(self):
        if self.peek_sym("("):
            self.next()
            inner = self.disjunction()
            self.expect_sym(")")
            return inner
        name = self.word()
        negate = False
        if self.peek_word("NOT"):
            self.next()
            negate = True
        if self.peek_word("IN"):
            self.next()
            self.expect_sym("(")
            values = [self.value()]
            while self.peek_sym(","):
                self.next()
                values.append(self.value())
            self.expect_sym(")")
            return ("in", name, negate, values)
        if negate:
            raise SfError(400, "MALFORMED_QUERY", "NOT must be followed by IN")
        kind, op = self.next()
        if kind != "sym" or op not in ("=", "!=", "<", ">", "<=", ">="):
            raise SfError(400, "MALFORMED_QUERY", f"unexpected token: '{op}'")
        return ("cmp", name, op, self.value())


def _fold(value, ftype: str):
    """Text compares case-insensitively in SOQL; ids exactly."""
    if isinstance(value, str) and ftype not in ("id", "reference"):
        return value.lower()
    return value


class FakeSalesforce(FakeServer):
    injection_scopes = SCOPES

    def __init__(self, client_id="3MVG9fake.consumer.key", client_secret="fake-consumer-secret",
                 refresh_token="5Aep861fake.refresh.token", api_version="v61.0", *, api_limit=15_000,
                 page_size=2000, running_polls=1):
        """`api_limit`: the org's daily API allocation (requests past it get 403 TotalRequests).
        `page_size`: query records per page. `running_polls`: job reads that still show InProgress."""
        super().__init__()
        self.client_id, self.client_secret, self.refresh_token = client_id, client_secret, refresh_token
        self.api_version, self.api_limit, self.api_used = api_version, api_limit, 0
        self.page_size, self.running_polls = page_size, running_polls
        self._tokens: set[str] = set()
        self._records: dict[str, dict] = {}  # id -> fields (canonical names), "Id" included
        self._types: dict[str, str] = {}  # id -> object
        self._deleted: dict[str, str] = {}  # id -> object, deleted records
        self._index_all()
        self._deleted_by_api: list[str] = []  # ids deleted through the API (not cascades, not seeding)
        self._cursors: dict[str, list[dict]] = {}  # query locator -> remaining records
        self._jobs: dict[str, dict] = {}
        self._rejected: dict[str, str | None] = {}  # email -> message: people refused per record
        self._refused_deletes: set[str] = set()  # emails whose CampaignMembers may not be deleted
        self._seq = itertools.count(1)

    # -- inspection / seeding -------------------------------------------------------------
    @property
    def instance_url(self) -> str:
        return self.origin

    @property
    def token_url(self) -> str:
        return f"{self.origin}/services/oauth2/token"

    def _of(self, sobject: str) -> dict[str, dict]:
        with self._lock:
            return {rid: dict(self._records[rid]) for rid in sorted(self._ids[sobject])}

    @property
    def campaigns(self) -> dict[str, dict]:
        return self._of("Campaign")

    @property
    def leads(self) -> dict[str, dict]:
        return self._of("Lead")

    @property
    def contacts(self) -> dict[str, dict]:
        return self._of("Contact")

    @property
    def campaign_members(self) -> dict[str, dict]:
        return self._of("CampaignMember")

    @property
    def jobs(self) -> dict[str, dict]:
        with self._lock:
            return {jid: {k: v for k, v in j.items() if k != "data"} for jid, j in self._jobs.items()}

    @property
    def deleted_by_api(self) -> list[str]:
        with self._lock:
            return list(self._deleted_by_api)

    def campaign_id_by_name(self, name: str) -> str | None:
        ids = [rid for rid, c in self.campaigns.items() if c["Name"] == name]
        if len(ids) > 1:
            raise LookupError(f"{len(ids)} campaigns are named {name!r}: {ids}")
        return ids[0] if ids else None

    def members(self, campaign_id: str) -> dict[str, str]:
        """person id -> CampaignMember id, for the campaign's members."""
        with self._lock:
            return {person: cm for (campaign, person), cm in self._member_of.items() if campaign == campaign_id}

    def person(self, person_id: str) -> dict | None:
        with self._lock:
            record = self._records.get(person_id)
            return dict(record) if record else None

    def person_by_email(self, email: str, sobject: str = "Lead") -> dict | None:
        """The oldest live person of `sobject` with this email (case-insensitive)."""
        with self._lock:
            ids = sorted(self._by_email.get((sobject, email.strip().lower()), ()))
            return dict(self._records[ids[0]]) if ids else None

    def member_emails(self, campaign_id: str) -> set[str]:
        return {str(self.person(pid).get("Email")) for pid in self.members(campaign_id)}

    def create(self, sobject: str, **fields) -> str:
        """Seed a record directly (no HTTP), with Salesforce's record rules; returns its id."""
        with self._lock:
            rid, err = self._create(sobject, fields, check_rules=False)
            if err:
                raise ValueError(err)
            return rid

    def delete(self, record_id: str) -> None:
        """Delete a record as if done in Salesforce (a person or campaign takes its members with it)."""
        with self._lock:
            self._remove(record_id)

    # -- injections -----------------------------------------------------------------------
    def inject_request_limit(self, times=1, kind="concurrent", scope="all") -> None:
        """403 REQUEST_LIMIT_EXCEEDED: "concurrent" (ConcurrentPerOrgLongTxn) or "daily" (TotalRequests)."""
        if kind not in ("concurrent", "daily"):
            raise ValueError("kind is 'concurrent' or 'daily'")
        self._push("fault", times, scope, fault="limit", limit=kind)

    def inject_server_error(self, times=1, status=500, scope="all") -> None:
        if status not in (500, 502, 503):
            raise ValueError("status must be 500, 502 or 503")
        self._push("fault", times, scope, fault="server", status=status)

    def inject_delay(self, seconds: float, times=1, scope="all") -> None:
        self._push("delay", times, scope, seconds=seconds)

    def reject_emails(self, emails, message: str | None = None) -> None:
        """Persistent: creating or updating a Lead/Contact with these emails fails per record (a validation rule)."""
        with self._lock:
            for e in emails:
                self._rejected[e.strip().lower()] = message

    def refuse_member_deletes(self, emails) -> None:
        """Persistent: deleting the CampaignMember of a person with these emails fails per record."""
        with self._lock:
            self._refused_deletes |= {e.strip().lower() for e in emails}

    def clear_rejected_emails(self) -> None:
        with self._lock:
            self._rejected.clear()
            self._refused_deletes.clear()

    def expire_sessions(self) -> None:
        """Every access token issued so far gets 401 INVALID_SESSION_ID."""
        with self._lock:
            self._tokens.clear()

    def revoke_refresh_token(self) -> None:
        with self._lock:
            self.refresh_token = None

    # -- HTTP plumbing --------------------------------------------------------------------------
    def _api_path(self, req: Request) -> str | None:
        prefix = f"/services/data/{self.api_version}"
        path = unquote(req.path)
        if path == prefix or path.startswith(prefix + "/"):
            return path[len(prefix):] or "/"
        return None

    def _scope(self, req: Request) -> str:
        if req.path == "/services/oauth2/token":
            return "token"
        path = self._api_path(req) or ""
        if path.startswith("/query"):
            return "query"
        if path.startswith("/jobs/ingest"):
            return "bulk"
        if path.endswith("/describe"):
            return "describe"
        if path.startswith("/sobjects/Campaign"):
            return "campaign"
        if path.rstrip("/") == "/composite/sobjects":
            if req.method == "DELETE":
                ids = req.query.get("ids", "")
                return "members" if ids.startswith(PREFIXES["CampaignMember"]) else "people"
            try:
                records = req.json().get("records") or [{}]
                kind = (records[0].get("attributes") or {}).get("type")
            except (ValueError, AttributeError, IndexError, TypeError):
                return "other"
            return "members" if kind == "CampaignMember" else "people"
        return "other"

    def _log_entry(self, req: Request, resp: Response):
        return SalesforceRequest(req.method, self._api_path(req) or req.path, self._scope(req),
                                 req.notes.get("n_items"), resp.status, req.notes.get("soql"))

    def _handle(self, req: Request) -> Response:
        if req.path == "/services/oauth2/token":
            return self._token(req)
        path = self._api_path(req)
        if path is None:
            return json_response(404, [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}])
        with self._lock:
            limit_header = None
            try:
                self._authenticate(req)
                self.api_used += 1
                limit_header = {"Sforce-Limit-Info": f"api-usage={self.api_used}/{self.api_limit}"}
                if self.api_used > self.api_limit:
                    raise SfError(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
                if inj := self._pop("fault", self._scope(req)):
                    raise self._fault(inj)
                status, body = self._route(req, path)
            except SfError as e:
                return json_response(e.status, e.body(), {**e.headers, **(limit_header or {})})
        if isinstance(body, (bytes, str)):
            data = body.encode() if isinstance(body, str) else body
            return Response(status, data, {"Content-Type": "text/csv", **limit_header})
        if body is None:
            return Response(status, b"", limit_header)
        return json_response(status, body, limit_header)

    def _authenticate(self, req: Request) -> None:
        auth = req.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:].strip() not in self._tokens:
            raise SfError(401, "INVALID_SESSION_ID", "Session expired or invalid")

    def _fault(self, inj: dict) -> SfError:
        if inj["fault"] == "limit":
            message = "TotalRequests Limit exceeded." if inj["limit"] == "daily" else \
                "ConcurrentPerOrgLongTxn Limit exceeded."
            return SfError(403, "REQUEST_LIMIT_EXCEEDED", message)
        if inj["status"] == 503:
            return SfError(503, "SERVER_UNAVAILABLE", "Server temporarily unavailable, please retry")
        return SfError(inj["status"], "UNKNOWN_EXCEPTION", "An unexpected error occurred. Please include this "
                       "ErrorId if you contact support: 1234567890-12345 (-1234567890)")

    _ROUTES = [
        ("GET", r"/query/?", "_query"),
        ("GET", r"/query/(?P<locator>[^/]+)", "_query_more"),
        ("GET", r"/sobjects/(?P<sobject>\w+)/describe/?", "_describe"),
        ("POST", r"/sobjects/(?P<sobject>\w+)/?", "_create_one"),
        ("GET", r"/sobjects/(?P<sobject>\w+)/(?P<rid>[^/]+)", "_get_one"),
        ("POST", r"/composite/sobjects/?", "_collection_create"),
        ("PATCH", r"/composite/sobjects/?", "_collection_update"),
        ("DELETE", r"/composite/sobjects/?", "_collection_delete"),
        ("POST", r"/jobs/ingest/?", "_job_create"),
        ("PUT", r"/jobs/ingest/(?P<jid>\w+)/batches/?", "_job_upload"),
        ("PATCH", r"/jobs/ingest/(?P<jid>\w+)/?", "_job_state"),
        ("GET", r"/jobs/ingest/(?P<jid>\w+)/?", "_job_info"),
        ("GET", r"/jobs/ingest/(?P<jid>\w+)/(?P<which>successfulResults|failedResults|unprocessedrecords)/?",
         "_job_results"),
    ]

    def _route(self, req: Request, path: str):
        matched_path = False
        for method, pattern, handler in self._ROUTES:
            m = re.fullmatch(pattern, path)
            if m:
                matched_path = True
                if method == req.method:
                    return getattr(self, handler)(req, **m.groupdict())
        if matched_path:
            raise SfError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{req.method}' not allowed. Allowed are GET,POST")
        raise SfError(404, "NOT_FOUND", "The requested resource does not exist")

    def _json(self, req: Request):
        try:
            return req.json()
        except ValueError as e:
            raise SfError(400, "JSON_PARSER_ERROR", f"Unexpected character: {e}") from None

    # -- OAuth ---------------------------------------------------------------------------------
    def _token(self, req: Request) -> Response:
        params = req.form()
        if params.get("grant_type") != "refresh_token":
            return json_response(400, {"error": "unsupported_grant_type",
                                       "error_description": "grant type not supported"})
        if params.get("client_id") != self.client_id:
            return json_response(400, {"error": "invalid_client_id", "error_description": "client identifier invalid"})
        if params.get("client_secret") != self.client_secret:
            return json_response(400, {"error": "invalid_client", "error_description": "invalid client credentials"})
        with self._lock:
            if self.refresh_token is None or params.get("refresh_token") != self.refresh_token:
                return json_response(400, {"error": "invalid_grant",
                                           "error_description": "expired access/refresh token"})
            token = "00D5g000004fake!" + secrets.token_urlsafe(24)
            self._tokens.add(token)
        # No expires_in: Salesforce sessions end after the org's inactivity timeout.
        return json_response(200, {"access_token": token, "signature": secrets.token_urlsafe(16),
                                   "scope": "api refresh_token", "instance_url": self.origin,
                                   "id": f"{self.origin}/id/00D5g000004fakeEAA/0055g00000fakeAAA",
                                   "token_type": "Bearer", "issued_at": str(int(time.time() * 1000))})

    # -- records ---------------------------------------------------------------------------------
    def _field(self, sobject: str, name: str) -> str | None:
        for canonical in SCHEMAS[sobject]:
            if canonical.lower() == str(name).lower():
                return canonical
        return None

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}5g{next(self._seq):010d}AAA"

    def _normalize(self, sobject: str, fields: dict) -> dict:
        """Known field names in canonical case, JSON types checked like Salesforce's deserializer."""
        out = {}
        for name, value in fields.items():
            if name == "attributes" or name.lower() == "id":
                continue
            canonical = self._field(sobject, name)
            if canonical is None:
                raise SfError(400, "INVALID_FIELD", f"No such column '{name}' on sobject of type {sobject}")
            ftype = SCHEMAS[sobject][canonical][0]
            if value is not None:
                bad = ((ftype in ("double", "currency", "percent") and (isinstance(value, bool) or not isinstance(
                    value, (int, float)))) or (ftype == "int" and (isinstance(value, bool) or not isinstance(
                        value, int))) or (ftype == "boolean" and not isinstance(value, bool))
                    or (ftype in (*TEXT, "date", "datetime", "reference", "id") and not isinstance(value, str)))
                if bad:
                    raise SfError(400, "JSON_PARSER_ERROR", f"Cannot deserialize instance of {ftype} from "
                                  f"{type(value).__name__} value {value!r} or request may be missing a required "
                                  f"field at [line:1, column:1]")
                if ftype in ("date", "datetime"):
                    pattern = r"\d{4}-\d{2}-\d{2}" if ftype == "date" else \
                        r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})"
                    if not re.fullmatch(pattern, value):
                        raise SfError(400, "JSON_PARSER_ERROR", f"Cannot deserialize instance of {ftype} from "
                                      f"VALUE_STRING value {value}")
            out[canonical] = value
        return out

    def _rules(self, sobject: str, record: dict) -> dict | None:
        """Per-record validation: required fields, email format, injected refusals."""
        missing = [f for f in REQUIRED[sobject] if record.get(f) in (None, "")]
        if missing:
            return _row_error("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]", missing)
        if sobject in ("Lead", "Contact") and record.get("Email"):
            email = str(record["Email"])
            if not _EMAIL.match(email):
                return _row_error("INVALID_EMAIL_ADDRESS", f"Email: invalid email address: {email}", ["Email"])
            if email.lower() in self._rejected:
                message = self._rejected[email.lower()] or "This email address is blocked by a validation rule"
                return _row_error("FIELD_CUSTOM_VALIDATION_EXCEPTION", message, [])
        if sobject == "Campaign" and len(str(record.get("Name") or "")) > 80:
            return _row_error("STRING_TOO_LONG", f"Name: data value too large: {record['Name'][:20]}... "
                              "(max length=80)", ["Name"])
        return None

    # Indexes, so a large audience stays fast: ids per object, people per email, members per campaign/person.
    def _index_all(self) -> None:
        self._ids = {sobject: set() for sobject in SCHEMAS}
        self._by_email: dict[tuple[str, str], set[str]] = {}
        self._by_link: dict[str, set[str]] = {}  # campaign or person id -> its CampaignMember ids
        self._member_of: dict[tuple[str, str], str] = {}  # (campaign id, person id) -> CampaignMember id
        for rid, sobject in self._types.items():
            self._index(rid, sobject, self._records[rid])

    def _index(self, rid: str, sobject: str, record: dict) -> None:
        self._ids[sobject].add(rid)
        if record.get("Email"):
            self._by_email.setdefault((sobject, str(record["Email"]).lower()), set()).add(rid)
        if sobject == "CampaignMember":
            person = record.get("ContactId") or record.get("LeadId")
            for link in (record["CampaignId"], person):
                self._by_link.setdefault(link, set()).add(rid)
            self._member_of[(record["CampaignId"], person)] = rid

    def _unindex(self, rid: str, sobject: str, record: dict) -> None:
        self._ids[sobject].discard(rid)
        if record.get("Email"):
            self._by_email.get((sobject, str(record["Email"]).lower()), set()).discard(rid)
        if sobject == "CampaignMember":
            person = record.get("ContactId") or record.get("LeadId")
            for link in (record["CampaignId"], person):
                self._by_link.get(link, set()).discard(rid)
            self._member_of.pop((record["CampaignId"], person), None)

    def _store(self, rid: str, sobject: str, record: dict) -> None:
        if rid in self._records:
            self._unindex(rid, sobject, self._records[rid])
        self._records[rid], self._types[rid] = record, sobject
        self._index(rid, sobject, record)

    def _live(self, rid, sobject: str | None = None) -> bool:
        return rid in self._records and (sobject is None or self._types[rid] == sobject)

    def _create(self, sobject: str, fields: dict, check_rules: bool = True) -> tuple[str | None, dict | None]:
        locked = [f for f in fields if not SCHEMAS[sobject][f][1]]
        if locked:
            return None, _row_error("INVALID_FIELD_FOR_INSERT_UPDATE", f"Unable to create/update fields: "
                                    f"{', '.join(locked)}. Please check the security settings of this field and "
                                    "verify that it is read/write for your profile or permission set.", locked)
        record = {**DEFAULTS[sobject], **{k: v for k, v in fields.items() if v is not None}}
        err = self._rules(sobject, record) if check_rules else None
        if err:
            return None, err
        if sobject == "CampaignMember":
            err = self._member_rules(record)
            if err:
                return None, err
        rid = self._new_id(PREFIXES[sobject])
        record.update(Id=rid, CreatedDate=_now())
        self._store(rid, sobject, record)
        return rid, None

    def _member_rules(self, record: dict) -> dict | None:
        if not self._live(record.get("CampaignId"), "Campaign"):
            return _row_error("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", ["CampaignId"])
        if record.get("ContactId"):
            record.pop("LeadId", None)  # both given: Salesforce keeps the ContactId
        link = "ContactId" if record.get("ContactId") else "LeadId"
        person = record.get(link)
        if not person:
            return _row_error("REQUIRED_FIELD_MISSING", "Required fields are missing: [LeadId or ContactId]",
                              ["LeadId", "ContactId"])
        if not self._live(person, "Contact" if link == "ContactId" else "Lead"):
            code = "ENTITY_IS_DELETED" if person in self._deleted else "INVALID_CROSS_REFERENCE_KEY"
            return _row_error(code, "entity is deleted" if code == "ENTITY_IS_DELETED" else
                              "invalid cross reference id", [link])
        if (record["CampaignId"], person) in self._member_of:
            return _row_error("DUPLICATE_VALUE", "Already a campaign member.", [])
        return None

    def _missing(self, rid: str) -> dict:
        if rid in self._deleted:
            return _row_error("ENTITY_IS_DELETED", "entity is deleted", [])
        return _row_error("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [])

    def _update(self, sobject: str, rid: str, fields: dict) -> dict | None:
        if not self._live(rid, sobject):
            return self._missing(rid)
        locked = [f for f in fields if not SCHEMAS[sobject][f][1]]
        if locked:
            return _row_error("INVALID_FIELD_FOR_INSERT_UPDATE", f"Unable to create/update fields: "
                              f"{', '.join(locked)}.", locked)
        record = {**self._records[rid], **fields}
        err = self._rules(sobject, record)
        if err:
            return err
        self._store(rid, sobject, {k: v for k, v in record.items() if v is not None})
        return None

    def _delete_by_api(self, rid: str) -> dict | None:
        if rid not in self._records:
            return self._missing(rid)
        record = self._records[rid]
        if self._types[rid] == "CampaignMember":
            person = self._records.get(record.get("ContactId") or record.get("LeadId") or "", {})
            if str(person.get("Email") or "").lower() in self._refused_deletes:
                return _row_error("INSUFFICIENT_ACCESS_OR_READONLY", "insufficient access rights on object id", [])
        self._remove(rid)
        self._deleted_by_api.append(rid)
        return None

    def _remove(self, rid: str) -> None:
        sobject = self._types.pop(rid)
        self._unindex(rid, sobject, self._records.pop(rid))
        self._deleted[rid] = sobject
        for cm in list(self._by_link.pop(rid, ())):  # a person's or campaign's members go with it
            self._remove(cm)

    def _view(self, rid: str, fields: list[str] | None = None) -> dict:
        sobject, record = self._types[rid], self._records[rid]
        if sobject == "Campaign":
            links = [self._records[cm] for cm in self._by_link.get(rid, ())]
            record = {**record, "NumberOfLeads": sum(1 for m in links if m.get("LeadId") and not m.get("ContactId")),
                      "NumberOfContacts": sum(1 for m in links if m.get("ContactId"))}
        names = fields if fields is not None else list(SCHEMAS[sobject])
        out = {"attributes": {"type": sobject, "url": f"/services/data/{self.api_version}/sobjects/{sobject}/{rid}"}}
        for name in names:
            out[name] = record.get(name)
        return out

    # -- sObject resources -----------------------------------------------------------------------
    def _sobject(self, name: str) -> str:
        for sobject in SCHEMAS:
            if sobject.lower() == name.lower():
                return sobject
        raise SfError(404, "NOT_FOUND", "The requested resource does not exist")

    def _describe(self, req: Request, sobject: str):
        sobject = self._sobject(sobject)
        fields = [{"name": name, "type": ftype, "label": name.replace("__c", "").replace("_", " "),
                   "updateable": writable, "createable": writable,
                   "nillable": name not in REQUIRED[sobject] and ftype != "boolean"}
                  for name, (ftype, writable) in SCHEMAS[sobject].items()]
        return 200, {"name": sobject, "label": sobject, "createable": True, "updateable": True, "fields": fields}

    def _get_one(self, req: Request, sobject: str, rid: str):
        sobject = self._sobject(sobject)
        if not self._live(rid, sobject):
            if rid in self._deleted:
                raise SfError(404, "ENTITY_IS_DELETED", "entity is deleted")
            raise SfError(404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: {rid}")
        wanted = None
        if req.query.get("fields"):
            wanted = []
            for name in req.query["fields"].split(","):
                canonical = self._field(sobject, name.strip())
                if canonical is None:
                    raise SfError(400, "INVALID_FIELD", f"No such column '{name}' on entity '{sobject}'.")
                wanted.append(canonical)
        return 200, self._view(rid, wanted)

    def _create_one(self, req: Request, sobject: str):
        sobject = self._sobject(sobject)
        body = self._json(req)
        if not isinstance(body, dict):
            raise SfError(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of object from START_ARRAY")
        rid, err = self._create(sobject, self._normalize(sobject, body))
        if err:
            raise SfError(400, err["statusCode"], err["message"], err["fields"])
        return 201, {"id": rid, "success": True, "errors": []}

    # -- sObject Collections ------------------------------------------------------------------------
    def _collection_body(self, req: Request) -> tuple[bool, list]:
        body = self._json(req)
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            raise SfError(400, "JSON_PARSER_ERROR", "The request body must be an object with a 'records' array")
        records = body["records"]
        req.notes["n_items"] = len(records)
        if len(records) > COLLECTION_MAX:
            raise SfError(400, "EXCEEDED_ID_LIMIT", "record limit reached. cannot submit more than 200 records into "
                          "this call")
        kinds = [(r.get("attributes") or {}).get("type") if isinstance(r, dict) else None for r in records]
        chunks = sum(1 for i, kind in enumerate(kinds) if i == 0 or kind != kinds[i - 1])
        if chunks > TYPE_CHUNKS_MAX:
            raise SfError(400, "INVALID_BATCH_REQUEST", "Too many type chunks: at most 10 are allowed")
        return bool(body.get("allOrNone", False)), records

    def _each(self, all_or_none: bool, items: list, apply) -> list[dict]:
        """Apply to every item; with allOrNone, a refusal rolls back every change of the request."""
        if all_or_none:
            saved = (copy.deepcopy(self._records), dict(self._types), dict(self._deleted), list(self._deleted_by_api))
        results = [apply(item) for item in items]
        if all_or_none and any(not r["success"] for r in results):
            self._records, self._types, self._deleted, self._deleted_by_api = saved
            self._index_all()
            rolled = _row_error("ALL_OR_NONE_OPERATION_ROLLED_BACK", "Record rolled back because not all records "
                                "were valid and the request was using AllOrNone header")
            results = [{"id": None, "success": False, "errors": r["errors"] if not r["success"] else [rolled]}
                       for r in results]
        return results

    def _typed(self, record) -> tuple[str, dict]:
        if not isinstance(record, dict) or not isinstance(record.get("attributes"), dict) \
                or not record["attributes"].get("type"):
            raise SfError(400, "JSON_PARSER_ERROR", "Each record needs attributes.type")
        sobject = record["attributes"]["type"]
        if sobject not in SCHEMAS:
            raise SfError(400, "INVALID_TYPE", f"sObject type '{sobject}' is not supported.")
        return sobject, self._normalize(sobject, record)

    def _collection_create(self, req: Request):
        all_or_none, records = self._collection_body(req)
        typed = [self._typed(r) for r in records]  # request-level checks first: nothing applied on a 400

        def one(item):
            (sobject, fields), raw = item
            if "id" in raw or "Id" in raw:
                return {"success": False, "errors": [_row_error("INVALID_FIELD", "cannot specify Id in an insert "
                                                                                 "call", ["Id"])]}
            rid, err = self._create(sobject, fields)
            return {"id": rid, "success": True, "errors": []} if rid else {"success": False, "errors": [err]}
        return 200, self._each(all_or_none, list(zip(typed, records)), one)

    def _collection_update(self, req: Request):
        all_or_none, records = self._collection_body(req)
        typed = [self._typed(r) for r in records]

        def one(item):
            (sobject, fields), raw = item
            rid = raw.get("id") or raw.get("Id")
            if not rid:
                return {"success": False, "errors": [_row_error("MISSING_ARGUMENT", "Id not specified in an update "
                                                                                    "call", [])]}
            err = self._update(sobject, rid, fields)
            return {"id": rid, "success": True, "errors": []} if err is None else \
                {"id": rid, "success": False, "errors": [err]}
        return 200, self._each(all_or_none, list(zip(typed, records)), one)

    def _collection_delete(self, req: Request):
        ids = [i for i in req.query.get("ids", "").split(",") if i]
        req.notes["n_items"] = len(ids)
        if not ids:
            raise SfError(400, "MISSING_ARGUMENT", "ids parameter is required")
        if len(ids) > COLLECTION_MAX:
            raise SfError(400, "EXCEEDED_ID_LIMIT", "record limit reached. cannot submit more than 200 records into "
                          "this call")
        all_or_none = req.query.get("allOrNone", "false").lower() == "true"

        def one(rid):
            err = self._delete_by_api(rid)
            return {"id": rid, "success": True, "errors": []} if err is None else \
                {"id": rid, "success": False, "errors": [err]}
        return 200, self._each(all_or_none, ids, one)

    # -- SOQL --------------------------------------------------------------------------------------
    def _query(self, req: Request):
        text = req.query.get("q")
        if not text:
            raise SfError(400, "MALFORMED_QUERY", "A query string is required (q)")
        req.notes["soql"] = text
        if len(req.path) + len(text) * 1.2 > URI_MAX:  # near enough the encoded length
            raise SfError(414, "URI_TOO_LONG", "The request URI is too long")
        q = _Soql(text)
        sobject = next((s for s in SCHEMAS if s.lower() == q.sobject.lower()), None)
        if sobject is None:
            raise SfError(400, "INVALID_TYPE", f"sObject type '{q.sobject}' is not supported.")
        schema = SCHEMAS[sobject]

        def canonical(name):
            found = self._field(sobject, name)
            if found is None:
                raise SfError(400, "INVALID_FIELD", f"No such column '{name}' on entity '{sobject}'.")
            return found

        def test(cond, record) -> bool:
            if cond[0] in ("and", "or"):
                results = (test(c, record) for c in cond[1])
                return all(results) if cond[0] == "and" else any(results)
            name = canonical(cond[1])
            ftype = schema[name][0]
            have = _fold(record.get(name), ftype)
            if cond[0] == "in":
                hit = have in {_fold(v, ftype) for v in cond[3]}
                return hit != cond[2]
            want, op = _fold(cond[3], ftype), cond[2]
            if op in ("=", "!="):
                return (have == want) == (op == "=")
            if have is None or want is None:
                return False
            return {"<": have < want, ">": have > want, "<=": have <= want, ">=": have >= want}[op]

        def candidates(cond) -> set[str] | None:
            """Ids an index narrows the condition to (None: every record of the object)."""
            if cond[0] == "and":
                sets = [c for c in map(candidates, cond[1]) if c is not None]
                return set.intersection(*sets) if sets else None
            values = cond[3] if cond[0] == "in" and not cond[2] else [cond[3]] if cond[0] == "cmp" and \
                cond[2] == "=" else None
            name = self._field(sobject, cond[1]) if cond[0] != "or" else None
            if values is None or name is None:
                return None
            if name == "Email":
                return set().union(*(self._by_email.get((sobject, str(v).lower()), set()) for v in values))
            if sobject == "CampaignMember" and name in ("CampaignId", "LeadId", "ContactId"):
                return set().union(*(self._by_link.get(str(v), set()) for v in values))
            return None

        fields = [canonical(f) for f in q.fields]
        narrowed = candidates(q.where) if q.where is not None else None
        ids = sorted(self._ids[sobject] if narrowed is None else narrowed & self._ids[sobject])
        views = {rid: self._view(rid) if sobject == "Campaign" else self._records[rid] for rid in ids}
        hits = [rid for rid in ids if q.where is None or test(q.where, views[rid])]
        for name, desc in reversed(q.order):
            key = canonical(name)
            hits.sort(key=lambda rid: (views[rid].get(key) is None, views[rid].get(key) or ""), reverse=desc)
        if q.limit is not None:
            hits = hits[:q.limit]
        if q.count:
            return 200, {"totalSize": len(hits), "done": True, "records": []}
        records = [self._view(rid, fields) for rid in hits]
        return 200, self._page(records, len(records))

    def _page(self, records: list[dict], total: int, offset: int = 0):
        page, rest = records[:self.page_size], records[self.page_size:]
        out = {"totalSize": total, "done": not rest, "records": page}
        if rest:
            locator = f"01g5g{next(self._seq):010d}AAA-{offset + len(page)}"
            self._cursors[locator] = rest
            out["nextRecordsUrl"] = f"/services/data/{self.api_version}/query/{locator}"
        return out

    def _query_more(self, req: Request, locator: str):
        rest = self._cursors.pop(locator, None)
        if rest is None:
            raise SfError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        offset = int(locator.rsplit("-", 1)[1])
        return 200, self._page(rest, offset + len(rest), offset)

    # -- Bulk API 2.0 ------------------------------------------------------------------------------
    def _job(self, jid: str) -> dict:
        if jid not in self._jobs:
            raise SfError(404, "NOT_FOUND", "The requested resource does not exist")
        return self._jobs[jid]

    def _job_view(self, job: dict) -> dict:
        keys = ("id", "operation", "object", "createdDate", "state", "concurrencyMode", "contentType", "apiVersion",
                "lineEnding", "columnDelimiter", "numberRecordsProcessed", "numberRecordsFailed", "errorMessage")
        return {k: job[k] for k in keys if k in job and job[k] is not None}

    def _job_create(self, req: Request):
        body = self._json(req)
        if not isinstance(body, dict):
            raise SfError(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
        sobject, operation = body.get("object"), body.get("operation")
        if sobject not in SCHEMAS:
            raise SfError(400, "INVALIDENTITY", f"Entity '{sobject}' is not supported by the Bulk API.")
        if operation not in ("insert", "update", "delete"):
            raise SfError(400, "INVALIDJOB", f"Invalid operation: {operation}")
        if body.get("contentType", "CSV") != "CSV" or body.get("lineEnding", "LF") not in ("LF", "CRLF") \
                or body.get("columnDelimiter", "COMMA") != "COMMA":
            raise SfError(400, "INVALIDJOB", "This fake takes CSV with COMMA delimiters")
        jid = f"{JOB_PREFIX}5g{next(self._seq):010d}AAA"
        self._jobs[jid] = {"id": jid, "operation": operation, "object": sobject, "createdDate": _now(),
                           "state": "Open", "concurrencyMode": "Parallel", "contentType": "CSV",
                           "apiVersion": float(self.api_version[1:]), "lineEnding": body.get("lineEnding", "LF"),
                           "columnDelimiter": "COMMA", "contentUrl": f"services/data/{self.api_version}/jobs/ingest/"
                           f"{jid}/batches", "numberRecordsProcessed": 0, "numberRecordsFailed": 0,
                           "errorMessage": None, "uploads": 0, "data": None, "polls_left": 0,
                           "results": {"successfulResults": [], "failedResults": [], "unprocessedrecords": []},
                           "header": []}
        return 200, {**self._job_view(self._jobs[jid]), "contentUrl": self._jobs[jid]["contentUrl"]}

    def _job_upload(self, req: Request, jid: str):
        job = self._job(jid)
        if "text/csv" not in req.headers.get("content-type", ""):
            raise SfError(400, "INVALIDJOB", "Content-Type must be text/csv")
        if job["state"] != "Open":
            raise SfError(409, "INVALIDJOBSTATE", f"Job {jid} is not Open (state {job['state']})")
        job["uploads"] += 1
        job["data"] = req.body.decode("utf-8")
        req.notes["n_items"] = max(0, job["data"].count("\n") - 1)
        return 201, None

    def _job_state(self, req: Request, jid: str):
        job = self._job(jid)
        body = self._json(req)
        state = body.get("state") if isinstance(body, dict) else None
        if state == "Aborted":
            if job["state"] in ("JobComplete", "Failed", "Aborted"):
                raise SfError(400, "INVALIDJOBSTATE", f"Job {jid} is already {job['state']}")
            job["state"] = "Aborted"
            return 200, self._job_view(job)
        if state != "UploadComplete":
            raise SfError(400, "INVALIDJOBSTATE", f"Invalid state: {state}")
        if job["state"] != "Open":
            raise SfError(400, "INVALIDJOBSTATE", f"Job {jid} is not Open (state {job['state']})")
        if job["uploads"] != 1:
            job["state"] = "Failed"
            job["errorMessage"] = (f"Found multiple contents for job: <{jid}>, please 'Close' / 'Abort' / 'Delete' "
                                   "the current Job then create a new Job and make sure you only do 'PUT' once on a "
                                   "given Job." if job["uploads"] > 1 else "No data was uploaded for this job")
            return 200, self._job_view(job)
        self._process(job)
        return 200, {**self._job_view(job), "state": "UploadComplete"}

    def _process(self, job: dict) -> None:
        """Apply the job's rows now; its state shows InProgress for `running_polls` reads."""
        rows = list(csv.reader(io.StringIO(job["data"])))
        header, rows = (rows[0], rows[1:]) if rows else ([], [])
        job["header"] = header
        sobject, operation = job["object"], job["operation"]
        names = [self._field(sobject, h) for h in header]
        unknown = [h for h, n in zip(header, names) if n is None]
        if unknown or (operation == "delete" and [n for n in names] != ["Id"]):
            job["state"] = "Failed"
            job["errorMessage"] = f"InvalidBatch : Field name not found : {(unknown or header or [''])[0]}"
            job["results"]["unprocessedrecords"] = rows
            return
        for row in rows:
            values = dict(zip(names, row))
            if operation == "delete":
                err = self._delete_by_api(values["Id"])
                rid = values["Id"]
            else:
                fields = {k: self._from_csv(sobject, k, v) for k, v in values.items() if v != "" and k != "Id"}
                if operation == "insert":
                    rid, err = self._create(sobject, fields)
                else:
                    rid = values.get("Id", "")
                    err = self._update(sobject, rid, fields)
            if err is None:
                job["results"]["successfulResults"].append([rid, "true" if operation == "insert" else "false", *row])
            else:
                text = f"{err['statusCode']}:{err['message']}:{','.join(err['fields'])} --"
                job["results"]["failedResults"].append(["", text, *row])
        job["numberRecordsProcessed"] = len(rows)
        job["numberRecordsFailed"] = len(job["results"]["failedResults"])
        job["state"] = "InProgress" if self.running_polls else "JobComplete"
        job["polls_left"] = self.running_polls

    @staticmethod
    def _from_csv(sobject: str, field: str, text: str):
        ftype = SCHEMAS[sobject][field][0]
        if ftype == "boolean":
            return text.lower() == "true"
        if ftype in ("double", "currency", "percent"):
            return float(text)
        if ftype == "int":
            return int(text)
        return text

    def _job_info(self, req: Request, jid: str):
        job = self._job(jid)
        if job["state"] == "InProgress":
            job["polls_left"] -= 1
            if job["polls_left"] < 0:
                job["state"] = "JobComplete"
        return 200, self._job_view(job)

    def _job_results(self, req: Request, jid: str, which: str):
        job = self._job(jid)
        if job["state"] not in ("JobComplete", "Failed", "Aborted"):
            raise SfError(400, "INVALIDJOBSTATE", f"Job {jid} is not complete (state {job['state']})")
        extra = {"successfulResults": ["sf__Id", "sf__Created"], "failedResults": ["sf__Id", "sf__Error"],
                 "unprocessedrecords": []}[which]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(extra + job["header"])
        writer.writerows(reversed(job["results"][which]))  # no order promised: reversed, so clients map by key
        return 200, out.getvalue()
