"""The `hubspot` client.

A member is a contact in a MANUAL (static) contact list. Lists take record ids only, so an add
first resolves each email to a contact: `batch/upsert` by email when profiles may be created
(mapped fields become contact properties), else `batch/read` by email, where members with no
contact are skipped. The ids then go to `PUT /crm/v3/lists/{id}/memberships/add`. The engine
keeps the ids in the snapshot, so a removal is one `memberships/remove` with no search.
Contacts are never deleted.

HubSpot throttles with 429 and a `policyName` in the body, without a reliable Retry-After: the
rolling ten-second window is waited out, the secondly one for a second, and the daily one ends
the run (waiting hours inside a run helps nobody).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from urllib.parse import quote, urlsplit

import httpx
import pyarrow as pa

from audience_pipelines.contract import (
    KEY, RECORD_ID, AudienceStats, BatchContext, BatchDestination, BatchResult, CredentialsError, DestinationError,
    RowsRefused, TerminalError, sent_columns,
)
from audience_pipelines.contract.fields import BOOLEAN, DATE, DATETIME, NUMBER, STRING, check_field_kinds
from audience_pipelines.destinations.http import HttpClient, json_object
from audience_pipelines.destinations.hubspot import HubSpotLists, HubSpotSettings

CONTACTS = "0-1"  # HubSpot's objectTypeId for contacts
EDITABLE = ("MANUAL", "SNAPSHOT")  # the processing types whose memberships the API may change
UPSERT = "/crm/v3/objects/contacts/batch/upsert"
READ = "/crm/v3/objects/contacts/batch/read"
UPDATE = "/crm/v3/objects/contacts/batch/update"
PROPERTIES = "/crm/v3/properties/contacts"
# HubSpot property types -> the kinds of column they take (an enumeration's options are not checked).
PROPERTY_KINDS = {"string": STRING, "phone_number": STRING, "number": NUMBER, "date": DATE, "datetime": DATETIME,
                  "bool": BOOLEAN, "enumeration": None}
LISTS = "/crm/v3/lists"
EMAIL = "email"
# check_access looks this name up: a 404 answer proves the token works without changing anything.
ACCESS_PROBE = "audience_pipelines access check"
NO_CONTACT = "no HubSpot contact with this email (create_profiles is false)"


def throttle_delay(response: httpx.Response) -> float | None:
    """Seconds to wait before retrying a HubSpot throttle or lock; None leaves it to the HTTP policy."""
    if response.status_code == 423:
        return 2.0  # HubSpot: the record is locked by another request; wait at least 2 s
    if response.status_code != 429:
        return None
    policy = str(json_object(response).get("policyName") or "").upper()
    if policy == "DAILY":
        # Raised from here because the shared policy retries every 429; a daily quota resets
        # hours later, so the run stops and commits what was accepted.
        raise TerminalError("hubspot: HubSpot's daily API limit is reached (policy DAILY); the next run after "
                            "the daily reset sends the rest", status=429)
    if policy == "SECONDLY":
        return 1.0
    try:  # a rolling window: after one whole interval the requests that filled it have left it
        interval = float(response.headers.get("X-HubSpot-RateLimit-Interval-Milliseconds", "")) / 1000
    except ValueError:
        interval = 0.0
    return interval if interval > 0 else 10.0


def _text(value) -> str:
    """A property value as HubSpot stores it: text, dates in ISO 8601, null clears the property."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
            return value.isoformat(timespec="milliseconds") + "Z"
        return value.isoformat()
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    return str(value)


def _inner_messages(message: str) -> str:
    """HubSpot wraps per-property findings as JSON inside its message; keep only their text."""
    head, sep, tail = message.partition(": [")
    if not sep:
        return message
    try:
        items = json.loads("[" + tail)
        texts = [str(i.get("message")) for i in items if isinstance(i, dict) and i.get("message")]
    except (ValueError, AttributeError):
        return message
    return "; ".join(texts) or message


class HubSpotDestination(BatchDestination[HubSpotSettings]):
    destination_type = HubSpotLists

    def __init__(self, settings: HubSpotSettings, sleep=time.sleep, clock=time.monotonic):
        super().__init__(settings)
        self._token = settings.access_token.value()
        self.http = HttpClient(settings.base_url.rstrip("/") + "/", timeout_s=settings.timeout_s,
                               headers={"Authorization": f"Bearer {self._token}"}, throttle_delay=throttle_delay,
                               describe_error=self._describe, name="hubspot", sleep=sleep, clock=clock)

    def account(self) -> str:
        # List ids are per HubSpot portal, and only the token says which portal: the registry of
        # created lists is kept per API host and token fingerprint (a hash prefix, revealing
        # nothing of the token), so two portals never share it. A new token starts a new
        # registry; its lists are still found by name.
        host = urlsplit(self.settings.base_url).netloc or self.settings.base_url
        return f"{host}/token-{hashlib.sha256(self._token.encode()).hexdigest()[:12]}"

    # -- requests and errors ------------------------------------------------
    def _describe(self, response: httpx.Response) -> str | None:
        body = json_object(response)
        if not body.get("message"):
            return None
        kind = "/".join(str(body[k]) for k in ("category", "subCategory") if body.get(k))
        text = f"{kind}: {body['message']}" if kind else str(body["message"])
        return text[:400].replace(self._token, "[redacted]")

    def _request(self, method: str, path: str, body=None) -> httpx.Response:
        """Send (with retries); credential and permission refusals stop the run here."""
        response = self.http.request(method, path, json=body)
        status = response.status_code
        if status == 401:
            raise CredentialsError(f"hubspot: the setting 'access_token' was refused (HTTP 401 on {method} "
                                   f"{path}: {self._describe(response) or 'not authenticated'})", status=401)
        if status == 403:
            scopes = sorted({s for e in json_object(response).get("errors") or [] if isinstance(e, dict)
                             for s in (e.get("context") or {}).get("requiredGranularScopes") or []})
            lacking = f"lacks the scope(s) {', '.join(scopes)}" if scopes else "is not allowed to do this"
            raise CredentialsError(f"hubspot: the private app of the setting 'access_token' {lacking} "
                                   f"(HTTP 403 on {method} {path}); grant them to the app in HubSpot", status=403)
        return response

    def _failure(self, response: httpx.Response, method: str, path: str) -> str:
        said = self._describe(response) or response.text[:200].replace(self._token, "[redacted]")
        return f"HTTP {response.status_code} on {method} {path}: {said}"

    def _ok(self, response: httpx.Response, method: str, path: str) -> dict:
        if response.status_code >= 400:
            raise DestinationError(self._failure(response, method, path), status=response.status_code)
        return json_object(response)

    # -- the list -------------------------------------------------------------
    def _usable(self, lst: dict) -> str:
        """The id of a list whose members this client may change, else a TerminalError."""
        lid, name = str(lst.get("listId")), lst.get("name")
        ptype, otype = lst.get("processingType"), lst.get("objectTypeId")
        if otype not in (None, CONTACTS):
            raise TerminalError(f"HubSpot list '{name}' (id {lid}) holds objects of type {otype}, not contacts")
        if ptype not in EDITABLE:
            raise TerminalError(f"HubSpot list '{name}' (id {lid}) is a {ptype} list: its members follow its "
                                "filters and cannot be added or removed; give a MANUAL (static) list")
        return lid

    def check_access(self) -> None:
        path = f"{LISTS}/object-type-id/{CONTACTS}/name/{quote(ACCESS_PROBE, safe='')}"
        response = self._request("GET", path)
        if response.status_code != 404:
            self._ok(response, "GET", path)

    def find_audience(self, name: str) -> str | None:
        path = f"{LISTS}/object-type-id/{CONTACTS}/name/{quote(name, safe='')}"
        response = self._request("GET", path)
        if response.status_code == 404:
            return None
        return self._usable(self._ok(response, "GET", path).get("list") or {})

    def create_audience(self, name: str) -> str:
        with self.http.once():  # a lost answer is looked up by name next run, never sent twice
            response = self._request("POST", LISTS, {"name": name, "objectTypeId": CONTACTS,
                                                     "processingType": self.settings.list_processing_type})
        body = json_object(response)
        if response.status_code == 400 and body.get("subCategory") == "ILS.DUPLICATE_LIST_NAMES":
            found = self.find_audience(name)  # another run created it since our lookup
            if found is not None:
                return found
        return str(self._ok(response, "POST", LISTS)["list"]["listId"])

    def _get_list(self, list_id: str) -> dict:
        path = f"{LISTS}/{quote(str(list_id), safe='')}"
        response = self._request("GET", path)
        if response.status_code == 404:
            raise TerminalError(f"HubSpot list {list_id} does not exist", status=404)
        return self._ok(response, "GET", path).get("list") or {}

    def check_audience(self, audience_id: str) -> None:
        self._usable(self._get_list(audience_id))

    def audience_stats(self, audience_id: str) -> AudienceStats:
        lst = self._get_list(audience_id)
        size = lst.get("size")
        if size is None:
            size = (lst.get("additionalProperties") or {}).get("hs_list_size")
        return AudienceStats(size=int(size) if size not in (None, "") else None)

    def _memberships(self, list_id: str, op: str, ids: list[str]) -> set[str]:
        """Add or remove record ids; returns the ids HubSpot reports missing (no such contact)."""
        if not ids:
            return set()
        path = f"{LISTS}/{quote(str(list_id), safe='')}/memberships/{op}"
        response = self._request("PUT", path, ids)
        if response.status_code == 404:
            raise TerminalError(f"HubSpot list {list_id} does not exist", status=404)
        if response.status_code == 400:  # not an editable list: every batch would fail alike
            raise TerminalError(self._failure(response, "PUT", path), status=400)
        return {str(i) for i in self._ok(response, "PUT", path).get("recordIdsMissing") or []}

    # -- contacts -------------------------------------------------------------
    @staticmethod
    def _emails(rows: pa.Table) -> list[str | None]:
        if EMAIL not in rows.column_names:
            raise TerminalError("hubspot finds and creates contacts by email: map the identifier 'email'")
        return [e.strip().lower() if e else None for e in rows[EMAIL].to_pylist()]

    def _upsert(self, rows: pa.Table, emails: list[str | None], result: BatchResult) -> dict[str, str]:
        """Create or update a contact per email; returns email -> contact id, rejects refused rows."""
        fields = [c for c in sent_columns(rows) if c != EMAIL]
        values = {c: rows[c].to_pylist() for c in fields}
        inputs: dict[str, dict] = {}
        for i, email in enumerate(emails):
            if email:  # members sharing an email share one contact (HubSpot refuses duplicate ids)
                props = {EMAIL: email, **{c: _text(values[c][i]) for c in fields}}
                inputs[email] = {"idProperty": EMAIL, "id": email, "properties": props}
        if not inputs:
            return {}
        response = self._request("POST", UPSERT, {"inputs": list(inputs.values())})
        body = json_object(response)
        if response.status_code == 400:
            unknown = (body.get("context") or {}).get("properties") or []
            if body.get("subCategory") == "PROPERTY_DOESNT_EXIST" or "PROPERTY_DOESNT_EXIST" in str(body):
                named = ", ".join(f"'{p}'" for p in unknown) or "a mapped field"
                raise TerminalError(
                    f"HubSpot has no contact property {named}: fix the sync's 'fields' (their names are HubSpot "
                    f"property internal names) or create the property in HubSpot ({self._describe(response)})",
                    status=400)
            # A validation error fails the whole request for some rows it does not name.
            raise RowsRefused(self._failure(response, "POST", UPSERT), status=400)
        body = self._ok(response, "POST", UPSERT)
        found: dict[str, str] = {}
        for contact in body.get("results") or []:
            email = str((contact.get("properties") or {}).get(EMAIL) or "").strip().lower()
            if email:
                found[email] = str(contact["id"])
        result.stats["contacts_created"] = sum(1 for c in body.get("results") or [] if c.get("new"))
        refused = self._per_input_errors(body)
        for i, email in enumerate(emails):
            if email in refused:
                result.rejected[i] = f"HubSpot refused the contact: {refused[email]}"
        return found

    def _update(self, rows: pa.Table, emails: list[str | None], found: dict[str, str], result: BatchResult) -> None:
        """Write the mapped fields of contacts that exist, by id; a contact gone since the read fails its rows."""
        fields = [c for c in sent_columns(rows) if c != EMAIL]
        if not fields:
            return
        values = {c: rows[c].to_pylist() for c in fields}
        inputs: dict[str, dict] = {}
        for i, email in enumerate(emails):
            if email in found and i not in result.rejected:
                inputs[found[email]] = {"id": found[email], "properties": {c: _text(values[c][i]) for c in fields}}
        if not inputs:
            return
        response = self._request("POST", UPDATE, {"inputs": list(inputs.values())})
        body = self._ok(response, "POST", UPDATE)
        gone = {i for err in body.get("errors") or [] for i in (err.get("context") or {}).get("ids") or []}
        for i, email in enumerate(emails):
            if email in found and found[email] in gone:
                result.rejected[i] = f"HubSpot contact {found[email]} no longer exists"
                found.pop(email)

    def check_fields(self, columns: dict[str, pa.DataType]) -> None:
        response = self._request("GET", PROPERTIES)
        kinds = {p["name"]: PROPERTY_KINDS.get(p.get("type"))
                 for p in self._ok(response, "GET", PROPERTIES).get("results") or [] if p.get("name")}
        check_field_kinds("hubspot", columns, kinds)

    @staticmethod
    def _per_input_errors(body: dict) -> dict[str, str]:
        """A 207 answer's errors, by the (lower-cased) ids they name."""
        out = {}
        for err in body.get("errors") or []:
            message = _inner_messages(str(err.get("message") or err.get("category") or "error"))
            for i in (err.get("context") or {}).get("ids") or []:
                out[str(i).strip().lower()] = message[:300]
        return out

    def _read(self, emails: list[str]) -> tuple[dict[str, str], dict[str, str]]:
        """Existing contacts by email: (email -> id, email -> why it could not be read)."""
        unique = list(dict.fromkeys(e for e in emails if e))
        if not unique:
            return {}, {}
        response = self._request("POST", READ, {"idProperty": EMAIL, "properties": [EMAIL],
                                                "inputs": [{"id": e} for e in unique]})
        body = self._ok(response, "POST", READ)
        found = {}
        for contact in body.get("results") or []:
            email = str((contact.get("properties") or {}).get(EMAIL) or "").strip().lower()
            if email:
                found[email] = str(contact["id"])
        failed = {}
        for err in body.get("errors") or []:
            if err.get("category") != "OBJECT_NOT_FOUND":  # not found is an answer, not a failure
                for i in (err.get("context") or {}).get("ids") or []:
                    failed[str(i).strip().lower()] = str(err.get("message") or err.get("category"))[:300]
        return found, failed

    def _contact_ids(self, rows: pa.Table, result: BatchResult, create: bool) -> dict[int, str]:
        """Row position -> contact id for the rows to put in the list; the rest rejected or skipped."""
        emails = self._emails(rows)
        if create:
            found = self._upsert(rows, emails, result)
        else:
            found, failed = self._read(emails)
            for i, email in enumerate(emails):
                if email in failed:
                    result.rejected[i] = f"HubSpot could not read the contact: {failed[email]}"
                elif email and email not in found:
                    result.skipped[i] = NO_CONTACT
            # Mapped fields go to the contacts found, by id: an upsert by email would create a
            # contact deleted since the read.
            self._update(rows, emails, found, result)
        ids = {}
        for i, email in enumerate(emails):
            if i in result.rejected or i in result.skipped:
                continue
            if not email:
                result.rejected[i] = "no email to find the HubSpot contact by"
            elif email not in found:
                result.rejected[i] = "HubSpot's answer named no contact for this email"
            else:
                ids[i] = found[email]
        return ids

    # -- batches --------------------------------------------------------------
    def add(self, audience_id: str, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        result = BatchResult()
        # Contacts are always resolved afresh: a snapshot's id may belong to a since-deleted contact.
        create = self.settings.create_profiles if ctx.create_profiles is None else ctx.create_profiles
        ids = self._contact_ids(rows, result, create)
        missing = self._memberships(audience_id, "add", list(dict.fromkeys(ids.values())))
        for i, cid in ids.items():
            if cid in missing:  # deleted between the upsert and the membership call
                result.rejected[i] = f"contact {cid} no longer exists in HubSpot"
            else:
                result.record_ids[i] = cid
        return result

    def update(self, audience_id: str, rows: pa.Table, previous: pa.Table | None, ctx: BatchContext) -> BatchResult:
        result = self.add(audience_id, rows, ctx)  # properties upserted; adding a member twice is harmless
        if previous is None or previous.num_rows == 0:
            return result
        # `previous` holds members whose email changed (unchanged ones are withheld by the engine):
        # their old contact leaves the list once the new one is in.
        position = {k: i for i, k in enumerate(rows[KEY].to_pylist())}
        old_ids = previous[RECORD_ID].to_pylist() if RECORD_ID in previous.column_names else [None] * previous.num_rows
        take = [j for j, k in enumerate(previous[KEY].to_pylist())
                if position.get(k) in result.record_ids and old_ids[j] != result.record_ids[position[k]]]
        if not take:
            return result
        failed = self._withdraw(audience_id, previous.take(pa.array(take, pa.int64())))
        keys = previous[KEY].to_pylist()
        for j, reason in failed.items():
            i = position[keys[take[j]]]
            result.record_ids.pop(i, None)
            result.rejected[i] = f"the old contact was not taken out of the list: {reason}"
        return result

    def remove(self, audience_id: str, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        return BatchResult(rejected=self._withdraw(audience_id, rows))

    def _withdraw(self, audience_id: str, rows: pa.Table) -> dict[int, str]:
        """Take rows' contacts out of the list by record id; returns rejected positions."""
        ids = rows[RECORD_ID].to_pylist() if RECORD_ID in rows.column_names else [None] * rows.num_rows
        rejected: dict[int, str] = {}
        unknown = [i for i, cid in enumerate(ids) if not cid]
        if unknown:  # a snapshot from before record ids were kept: look them up by email
            emails = self._emails(rows)
            found, failed = self._read([emails[i] for i in unknown])
            for i in unknown:
                if emails[i] in failed:
                    rejected[i] = f"HubSpot could not read the contact: {failed[emails[i]]}"
                ids[i] = found.get(emails[i])  # no contact: nothing to take out
        missing = self._memberships(audience_id, "remove", list(dict.fromkeys(c for c in ids if c)))
        # A missing id is a deleted contact, in no list. But a newer contact may hold the email
        # now (a full resend created it; its id may not have reached the snapshot): take that out.
        again = [i for i, cid in enumerate(ids) if cid in missing and i not in rejected]
        if again:
            emails = self._emails(rows)
            found, failed = self._read([emails[i] for i in again])
            for i in again:
                if emails[i] in failed:
                    rejected[i] = f"HubSpot could not read the contact: {failed[emails[i]]}"
            self._memberships(audience_id, "remove", list(dict.fromkeys(
                found[emails[i]] for i in again if emails[i] in found)))
        return rejected

    def close(self) -> None:
        self.http.close()
