"""The `mailchimp` client.

A member of the destination audience is a member of the Mailchimp list `list_id` carrying a tag
(a static segment). An add first puts the person on the list, mapped fields as merge fields:

- fewer than `batch_threshold` members: one `PUT /lists/{id}/members/{subscriber_hash}` each, with
  `status_if_new`, which sets the status of a new member only;
- more: batch subscribe, `POST /lists/{id}` (500 a call) with `update_existing: false` and the new
  members' status. Mailchimp applies a batch member's `status` to existing members when
  `update_existing` is true (RudderStack reads each member's status first to avoid it), so existing
  members are not updated there: they come back as `ERROR_CONTACT_EXISTS` and, where fields are
  mapped, get one `PATCH` each (merge fields only). No existing member's status is ever sent.

`POST /batches` was not used: its results come as a tar.gz archive on a separate (pre-signed) host,
a run would wait on a job, and batch subscribe answers every member in its reply.

Then the tag: `POST /lists/{id}/segments/{tag id}` with `members_to_add` (500 a call). A removal
sends `members_to_remove`: the member stays on the list with its status and merge fields. Emails
the answer names in `errors` are read back (`GET .../members/{hash}`) and judged by the member's
tags, so neither the error wording nor whether Mailchimp reports an already-tagged member matters
(the answer's field names are [unverified]; an answer without `errors` has every member read back).

With `create_profiles` false the tag is added first: people not on the list come back in `errors`,
read back as absent (404, or archived), and are skipped; mapped fields of the others are PATCHed,
which never creates a member. The record id kept per member is its subscriber hash (MD5 of the
lowercased email), the id Mailchimp gives it; a removal needs no lookup (a row without its email
is found by that id).

Mailchimp limits concurrency (10 connections), not rates: 429 has no Retry-After and is retried
with backoff; at extreme volume it may answer a bare 403 with no problem body, retried the same way.
A 401, or a 403 with a problem body, is the key's: the run stops naming `api_key`.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlsplit

import httpx
import pyarrow as pa

from audience_pipelines.contract import (
    KEY, RECORD_ID, AudienceStats, BatchContext, BatchDestination, BatchResult, CredentialsError, DestinationError,
    TerminalError, sent_columns,
)
from audience_pipelines.contract.fields import DATE, NUMBER, STRING, check_field_kinds
from audience_pipelines.destinations.http import HttpClient, json_object
from audience_pipelines.destinations.mailchimp import MAX_ROWS, MailchimpSettings, MailchimpTags, api_base_url
from audience_pipelines.destinations.oauth import Redactor
from audience_pipelines.identifiers.mailchimp import subscriber_hash

EMAIL = "email"
PAGE = 1000  # Mailchimp's largest `count`
# Merge field type -> the kind of value it holds. Birthdays take a date (sent as MM/DD); an address
# takes an object or a string, which this product does not check.
MERGE_KINDS = {"text": STRING, "number": NUMBER, "date": DATE, "birthday": DATE, "phone": STRING, "url": STRING,
               "imageurl": STRING, "zip": STRING, "radio": STRING, "dropdown": STRING, "address": None}
NO_MEMBER = "not on the Mailchimp list (create_profiles is false)"
_ABSENT = object()  # a member read back: not on the list (404, or archived)


def throttle_delay(response: httpx.Response) -> float | None:
    """A bare 403 (no problem body) is Mailchimp's answer at extreme volume: back off and retry.

    429 (over the 10 connections) carries no Retry-After: the shared policy's backoff retries it.
    """
    if response.status_code == 403 and not json_object(response).get("title"):
        return -1.0  # the policy's backoff
    return None


def _chunks(items: list, size: int = MAX_ROWS) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _merge_value(kind: str | None, value):
    """A column value as the merge field of `kind` takes it; null clears the field."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if kind in ("date", "birthday") else value.isoformat()
    if isinstance(value, dt.date):
        return f"{value.month:02d}/{value.day:02d}" if kind == "birthday" else value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, decimal.Decimal):
        value = float(value)
    if kind == "number" and isinstance(value, (int, float)):
        return value
    if kind == "address" and isinstance(value, dict):
        return value
    return str(value)


class MailchimpDestination(BatchDestination[MailchimpSettings]):
    destination_type = MailchimpTags

    def __init__(self, settings: MailchimpSettings, sleep=time.sleep, clock=time.monotonic):
        super().__init__(settings)
        key = settings.api_key.value()
        base = api_base_url(key, settings.base_url)  # a ConfigError naming api_key, the key not shown
        auth = base64.b64encode(f"audience_pipelines:{key}".encode()).decode()
        self.redact = Redactor(key, auth)
        self.http = HttpClient(base + "/", timeout_s=settings.timeout_s, headers={"Authorization": f"Basic {auth}"},
                               throttle_delay=throttle_delay, describe_error=self._describe, name="mailchimp",
                               sleep=sleep, clock=clock)
        self._host = urlsplit(base).netloc
        self._list = f"lists/{quote(settings.list_id, safe='')}"
        self._merge_types: dict[str, str] | None = None
        self._pool: ThreadPoolExecutor | None = None

    def account(self) -> str:
        # Tags belong to one list, and the host names the data center.
        return f"{self._host}/lists/{self.settings.list_id}"

    # -- requests and errors ------------------------------------------------------------
    def _describe(self, response: httpx.Response) -> str | None:
        body = json_object(response)
        if not body.get("title") and not body.get("detail"):
            return None
        text = ": ".join(str(body[k]) for k in ("title", "detail") if body.get(k))
        found = [f"{e.get('field')}: {e.get('message')}" for e in body.get("errors") or [] if isinstance(e, dict)]
        if found:
            text += " (" + "; ".join(found) + ")"
        return self.redact(text)[:400]

    def _request(self, method: str, path: str, body=None, params=None) -> httpx.Response:
        """Send (with retries); refused credentials stop the run here, naming the setting."""
        response = self.http.request(method, path, json=body, params=params)
        if response.status_code == 401:
            raise CredentialsError(f"mailchimp: the setting 'api_key' was refused (HTTP 401 on {method} {path}: "
                                   f"{self._describe(response) or 'not authenticated'})", status=401)
        if response.status_code == 403:  # a bare 403 was retried as a throttle; this one has a reason
            raise CredentialsError(f"mailchimp: the key in the setting 'api_key' may not do this (HTTP 403 on "
                                   f"{method} {path}: {self._describe(response) or 'forbidden'})", status=403)
        return response

    def _failure(self, response: httpx.Response, method: str, path: str) -> str:
        said = self._describe(response) or self.redact(response.text)[:200]
        return f"mailchimp: HTTP {response.status_code} on {method} {path}: {said}"

    def _ok(self, response: httpx.Response, method: str, path: str) -> dict:
        if response.status_code == 404:  # callers reading a member handle its 404 themselves
            if "/segments/" in path:
                raise TerminalError(f"mailchimp: there is no tag {path.rpartition('/')[2]} in audience "
                                    f"{self.settings.list_id}", status=404)
            raise TerminalError(f"mailchimp: there is no audience (list) '{self.settings.list_id}' for this API key; "
                                "check the setting 'list_id'", status=404)
        if response.status_code >= 400:
            raise DestinationError(self._failure(response, method, path), status=response.status_code)
        return json_object(response)

    def _each(self, fn: Callable, items: list) -> list:
        """fn over items, `concurrency` at a time (per-member calls)."""
        if len(items) < 2 or self.settings.concurrency == 1:
            return [fn(x) for x in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="mailchimp")
        return list(self._pool.map(fn, items))

    # -- the list, its merge fields and tags ------------------------------------------------
    def check_access(self) -> None:
        self._ok(self._request("GET", self._list, params={"fields": "id,name"}), "GET", self._list)

    def _paged(self, path: str, key: str, params: dict | None = None) -> Iterable[dict]:
        offset = 0
        while True:
            body = self._ok(self._request("GET", path, params={**(params or {}), "count": PAGE, "offset": offset}),
                            "GET", path)
            page = body.get(key) or []
            yield from page
            offset += len(page)
            if not page or offset >= int(body.get("total_items") or 0):
                return

    def _merge_kinds(self) -> dict[str, str]:
        """Merge tag -> Mailchimp type, read once."""
        if self._merge_types is None:
            self._merge_types = {str(f["tag"]): str(f.get("type")) for f in
                                 self._paged(f"{self._list}/merge-fields", "merge_fields")}
        return self._merge_types

    def check_fields(self, columns: dict[str, pa.DataType]) -> None:
        # A mapped field's name is the merge tag (FNAME, PLAN); unknown types are not checked.
        check_field_kinds("mailchimp", columns,
                          {tag: MERGE_KINDS.get(kind) for tag, kind in self._merge_kinds().items()})

    def find_audience(self, name: str) -> str | None:
        found = [s for s in self._paged(f"{self._list}/segments", "segments", {"type": "static"})
                 if s.get("name") == name]
        if len(found) > 1:
            raise TerminalError(f"mailchimp: {len(found)} tags are named '{name}' in audience "
                                f"{self.settings.list_id} (ids {', '.join(str(s['id']) for s in found)}); give the "
                                "target's id")
        return str(found[0]["id"]) if found else None

    def create_audience(self, name: str) -> str:
        path = f"{self._list}/segments"
        with self.http.once():  # a lost answer is looked up by name next run, never sent twice
            response = self._request("POST", path, {"name": name, "static_segment": []})
        if response.status_code == 400:  # the name is taken: another run created it since our lookup
            found = self.find_audience(name)
            if found is not None:
                return found
        return str(self._ok(response, "POST", path)["id"])

    def _segment(self, segment_id: str) -> dict:
        path = f"{self._list}/segments/{quote(str(segment_id), safe='')}"
        return self._ok(self._request("GET", path), "GET", path)

    def check_audience(self, audience_id: str) -> None:
        segment = self._segment(audience_id)
        if segment.get("type") != "static":
            raise TerminalError(f"mailchimp: '{segment.get('name')}' ({audience_id}) is a {segment.get('type')} "
                                "segment: its members follow its conditions and cannot be added or removed; give a "
                                "tag")

    def audience_stats(self, audience_id: str) -> AudienceStats:
        count = self._segment(audience_id).get("member_count")
        return AudienceStats(size=int(count) if count is not None else None)

    # -- members ------------------------------------------------------------------------------
    def _member_path(self, email: str) -> str:
        return f"{self._list}/members/{subscriber_hash(email)}"

    def _read_member(self, email: str):
        """The member's tag ids, or _ABSENT when it is not on the list."""
        path = self._member_path(email)
        response = self._request("GET", path, params={"fields": "id,status,tags"})
        if response.status_code == 404:
            return _ABSENT
        member = self._ok(response, "GET", path)
        if member.get("status") == "archived":
            return _ABSENT
        return {str(t.get("id")) for t in member.get("tags") or [] if isinstance(t, dict)}

    def _put(self, item: tuple[str, dict]) -> str | None:
        """Upsert one member; its status is set only if it is new. Returns why it was refused, or None."""
        email, fields = item
        path = self._member_path(email)
        body = {"email_address": email, "status_if_new": self.settings.status_if_new}
        if fields:
            body["merge_fields"] = fields
        response = self._request("PUT", path, body)
        if response.status_code == 400:
            return self._describe(response) or "refused"
        self._ok(response, "PUT", path)
        return None

    def _patch(self, item: tuple[str, dict]):
        """Write an existing member's merge fields (never creates it): None, why it was refused, or _ABSENT."""
        email, fields = item
        path = self._member_path(email)
        response = self._request("PATCH", path, {"merge_fields": fields})
        if response.status_code == 404:
            return _ABSENT
        if response.status_code == 400:
            return self._describe(response) or "refused"
        self._ok(response, "PATCH", path)
        return None

    def _batch_subscribe(self, members: dict[str, dict]) -> dict[str, str]:
        """Put new members on the list 500 at a time; existing ones get their fields PATCHed. Returns refusals."""
        refused: dict[str, str] = {}
        existing: list[str] = []
        for chunk in _chunks(list(members)):
            body = {"members": [{"email_address": e, "status": self.settings.status_if_new,
                                 **({"merge_fields": members[e]} if members[e] else {})} for e in chunk],
                    "update_existing": False}
            answer = self._ok(self._request("POST", self._list, body), "POST", self._list)
            done = {str(m.get("email_address") or "").strip().lower()
                    for m in (answer.get("new_members") or []) + (answer.get("updated_members") or [])}
            for err in answer.get("errors") or []:
                email = str(err.get("email_address") or "").strip().lower()
                if err.get("error_code") == "ERROR_CONTACT_EXISTS":
                    existing.append(email)
                    continue
                text = str(err.get("error") or err.get("error_code") or "refused")
                if err.get("field") and err.get("field_message") and err["field_message"] not in text:
                    text += f" ({err['field']}: {err['field_message']})"
                refused[email] = self.redact(text)[:300]
            for email in chunk:
                if email not in done and email not in refused and email not in existing:
                    refused[email] = "Mailchimp's answer did not mention this member"
        to_patch = [(e, members[e]) for e in existing if e in members and members[e]]
        for (email, _), outcome in zip(to_patch, self._each(self._patch, to_patch)):
            if outcome is _ABSENT:
                refused[email] = "left the list while it was being updated"
            elif outcome:
                refused[email] = outcome
        return refused

    def _upsert(self, members: dict[str, dict]) -> dict[str, str]:
        """Put every member on the list with its merge fields; returns email -> why Mailchimp refused it."""
        if len(members) >= self.settings.batch_threshold:
            return self._batch_subscribe(members)
        items = list(members.items())
        return {e: why for (e, _), why in zip(items, self._each(self._put, items)) if why}

    def _change_tag(self, segment_id: str, op: str, emails: list[str]) -> dict:
        """Add (op "members_to_add") or remove the tag; returns email -> why it is not so, or _ABSENT."""
        path = f"{self._list}/segments/{quote(str(segment_id), safe='')}"
        named: dict[str, str] = {}
        for chunk in _chunks(list(dict.fromkeys(emails))):
            response = self._request("POST", path, {op: chunk})
            if response.status_code == 400:  # a saved segment, or a shape refused: every batch would fail
                raise TerminalError(self._failure(response, "POST", path), status=400)
            answer = self._ok(response, "POST", path)
            if "errors" not in answer and "error_count" not in answer:
                named.update((e, "Mailchimp's answer did not say") for e in chunk)  # unknown shape: read all back
            for err in answer.get("errors") or []:
                for email in err.get("email_addresses") or []:
                    named[str(email).strip().lower()] = self.redact(str(err.get("error") or "refused"))[:300]
        # Read named members back: what counts is whether they carry the tag now.
        items = list(named)
        out = {}
        for email, tags in zip(items, self._each(self._read_member, items)):
            tagged = tags is not _ABSENT and str(segment_id) in tags
            if op == "members_to_add" and not tagged:
                out[email] = _ABSENT if tags is _ABSENT else named[email]
            elif op == "members_to_remove" and tagged:
                out[email] = named[email]
        return out

    # -- batches --------------------------------------------------------------------------------
    @staticmethod
    def _emails(rows: pa.Table) -> list[str | None]:
        if EMAIL not in rows.column_names:
            raise TerminalError("mailchimp keys members by email: map the identifier 'email'")
        return [e.strip().lower() if e and e.strip() else None for e in rows[EMAIL].to_pylist()]

    def _fields(self, rows: pa.Table) -> list[dict]:
        """Each row's merge fields, by merge tag."""
        names = [c for c in sent_columns(rows) if c != EMAIL]
        if not names:
            return [{}] * rows.num_rows
        kinds = self._merge_kinds()
        values = {c: rows[c].to_pylist() for c in names}
        return [{c: _merge_value(kinds.get(c), values[c][i]) for c in names} for i in range(rows.num_rows)]

    def add(self, audience_id: str, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        result = BatchResult()
        create = self.settings.create_profiles if ctx.create_profiles is None else ctx.create_profiles
        emails, fields = self._emails(rows), self._fields(rows)
        members: dict[str, dict] = {}
        for i, email in enumerate(emails):
            if email:  # rows sharing an email share one member: the last one's fields win
                members[email] = fields[i]
            else:
                result.rejected[i] = "no email to put on the Mailchimp list"
        refused: dict[str, str] = {}
        if create:
            refused = self._upsert(members)
            untagged = self._change_tag(audience_id, "members_to_add", [e for e in members if e not in refused])
        else:
            untagged = self._change_tag(audience_id, "members_to_add", list(members))
            to_patch = [(e, f) for e, f in members.items() if f and e not in untagged]
            for (email, _), outcome in zip(to_patch, self._each(self._patch, to_patch)):
                if outcome is _ABSENT:
                    untagged[email] = _ABSENT  # deleted since it was tagged
                elif outcome:
                    refused[email] = outcome
        for i, email in enumerate(emails):
            if i in result.rejected:
                continue
            if email in refused:
                result.rejected[i] = f"Mailchimp refused the member: {refused[email]}"
            elif untagged.get(email) is _ABSENT:
                if create:
                    result.rejected[i] = "Mailchimp did not tag the member: it is not on the list"
                else:
                    result.skipped[i] = NO_MEMBER
            elif email in untagged:
                result.rejected[i] = f"Mailchimp did not tag the member: {untagged[email]}"
            else:
                result.record_ids[i] = subscriber_hash(email)
        return result

    def update(self, audience_id: str, rows: pa.Table, previous: pa.Table | None, ctx: BatchContext) -> BatchResult:
        result = self.add(audience_id, rows, ctx)  # fields written; tagging twice is harmless
        if previous is None or previous.num_rows == 0:
            return result
        # `previous` holds members whose email changed: the old member loses the tag once the new one has it.
        position = {k: i for i, k in enumerate(rows[KEY].to_pylist())}
        old = self._emails(previous)
        keys = previous[KEY].to_pylist()
        take = [j for j, k in enumerate(keys) if old[j] and position.get(k) in result.record_ids
                and subscriber_hash(old[j]) != result.record_ids[position[k]]]
        if not take:
            return result
        failed = self._change_tag(audience_id, "members_to_remove", [old[j] for j in take])
        for j in take:
            if old[j] in failed:
                i = position[keys[j]]
                result.record_ids.pop(i, None)
                result.rejected[i] = f"the old member did not lose the tag: {failed[old[j]]}"
        return result

    def remove(self, audience_id: str, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        emails = self._emails(rows)
        ids = rows[RECORD_ID].to_pylist() if RECORD_ID in rows.column_names else [None] * rows.num_rows
        for i, email in enumerate(emails):
            if not email and ids[i]:  # found by its kept id, a direct read (no search)
                path = f"{self._list}/members/{quote(str(ids[i]), safe='')}"
                response = self._request("GET", path, params={"fields": "email_address"})
                if response.status_code != 404:
                    emails[i] = str(self._ok(response, "GET", path).get("email_address") or "").lower() or None
        failed = self._change_tag(audience_id, "members_to_remove", [e for e in emails if e])
        return BatchResult(rejected={i: f"Mailchimp did not take the tag off: {failed[e]}"
                                     for i, e in enumerate(emails) if e in failed})

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.http.close()
