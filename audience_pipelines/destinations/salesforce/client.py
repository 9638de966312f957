"""The `salesforce` client: campaign members as CampaignMember records of Leads or Contacts.

An add resolves each email to a person of the `person_object` (SOQL `... WHERE Email IN (...)`,
the oldest first where several share an email). Missing people are created through sObject
Collections with the mapped fields and `required_defaults` (or skipped and counted when profiles are
not created); people found get their mapped fields written (PATCH). Then one CampaignMember per
person: "Already a campaign member" (DUPLICATE_VALUE) is looked up and accepted. The CampaignMember
id is the member's record id in the snapshot, so a removal deletes it by id, never touching the Lead
or Contact. Batches of `bulk_threshold` member inserts or deletes or more go as one Bulk API 2.0 job
(bulk.py), smaller ones as collections of 200.

Creating a person is not idempotent, so its request is never sent twice (`HttpClient.once`): when
its answer is lost the batch fails and the next run finds whoever was created by email. Member
inserts and deletes are idempotent and retried.

Auth: OAuth refresh-token exchange (the setting `instance_url` is used, not the one in the token's
answer). Limits: every answer's `Sforce-Limit-Info: api-usage=N/M` is kept and reported. Salesforce
has no 429: a 403 REQUEST_LIMIT_EXCEEDED for the daily allocation (TotalRequests) ends the run, the
concurrent long-request variant is retried with backoff. 401 INVALID_SESSION_ID renews the token once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import math
import re
import time
from urllib.parse import quote

import httpx
import pyarrow as pa

from audience_pipelines.contract import (
    KEY, RECORD_ID, AudienceStats, BatchContext, BatchResult, CredentialsError, Destination, DestinationError, Finish,
    RowsRefused, Session, SessionContext, TerminalError, sent_columns,
)
from audience_pipelines.contract.fields import BOOLEAN, DATE, DATETIME, INTEGER, NUMBER, STRING, check_field_kinds
from audience_pipelines.destinations.http import HttpClient
from audience_pipelines.destinations.oauth import Redactor, RefreshingToken
from audience_pipelines.destinations.salesforce import Salesforce, SalesforceSettings
from audience_pipelines.destinations.salesforce.bulk import BulkJobs, Saved, saved_from_json

EMAIL = "email"
COLLECTION_MAX = 200  # records (or ids) per sObject Collections request
# Encoded characters of SOQL in one GET: Salesforce refuses request URIs over 16,384 bytes.
SOQL_BUDGET = 12_000
# A record these codes refuse is not there (deleted, or never was): its removal is done.
GONE = frozenset({"ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY", "NOT_FOUND"})
# Describe types -> contract kinds (None: not checked, e.g. reference, multipicklist).
KINDS = {**dict.fromkeys(("string", "email", "phone", "picklist", "textarea", "url", "combobox"), STRING),
         **dict.fromkeys(("double", "currency", "percent"), NUMBER), "int": INTEGER, "long": INTEGER,
         "boolean": BOOLEAN, "date": DATE, "datetime": DATETIME}
_USAGE = re.compile(r"(?:^|[\s;,])api-usage=(\d+)/(\d+)")
_API_PREFIX = re.compile(r"^.*?/services/data/v[\d.]+/")
_SOQL_ESCAPES = str.maketrans({"\\": "\\\\", "'": "\\'", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t",
                                "\b": "\\b", "\f": "\\f"})


def soql_string(text: str) -> str:
    """A SOQL string literal: quotes and backslashes escaped."""
    return "'" + str(text).translate(_SOQL_ESCAPES) + "'"


def _in_lists(values: list[str]):
    """Comma-joined SOQL literals, in chunks whose URL-encoded length stays within SOQL_BUDGET."""
    chunk, size = [], 0
    for value in values:
        literal = soql_string(value)
        n = len(quote(literal, safe="")) + 3
        if chunk and size + n > SOQL_BUDGET:
            yield ",".join(chunk)
            chunk, size = [], 0
        chunk.append(literal)
        size += n
    if chunk:
        yield ",".join(chunk)


def _chunks(items: list, n: int = COLLECTION_MAX):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _errors(response: httpx.Response) -> list[dict]:
    """Salesforce's top-level error array [{"message", "errorCode", "fields"?}]."""
    try:
        body = response.json()
    except ValueError:
        return []
    body = [body] if isinstance(body, dict) else body
    return [e for e in body if isinstance(e, dict)] if isinstance(body, list) else []


def _codes(response: httpx.Response) -> set[str]:
    return {str(e.get("errorCode")) for e in _errors(response)}


def api_usage(response: httpx.Response) -> tuple[int, int] | None:
    m = _USAGE.search(response.headers.get("Sforce-Limit-Info", ""))
    return (int(m.group(1)), int(m.group(2))) if m else None


def throttle_delay(response: httpx.Response) -> float | None:
    """Salesforce answers its limits with 403 REQUEST_LIMIT_EXCEEDED (no 429, no Retry-After)."""
    if response.status_code != 403:
        return None
    for err in _errors(response):
        if err.get("errorCode") != "REQUEST_LIMIT_EXCEEDED":
            continue
        if "TotalRequests" in str(err.get("message")):
            # Raised here because the shared policy would retry it; the allocation frees up over
            # hours (a rolling 24 h), so the run stops and commits what was accepted.
            usage = api_usage(response)
            seen = f" (api-usage {usage[0]}/{usage[1]})" if usage else ""
            raise TerminalError(f"salesforce: the org's daily API request allocation is exhausted{seen}: "
                                f"{err.get('message')}; the next run after it frees up sends the rest", status=403)
        return -1.0  # concurrent long requests: back off with jitter and retry
    return None


def _value(value):
    """A mapped field's value as Salesforce's JSON takes it (None clears the field)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value.isoformat(timespec="milliseconds") + "Z"  # naive timestamps are taken as UTC
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)  # a multi-select picklist's form
    return value


class SalesforceDestination(Destination[SalesforceSettings]):
    destination_type = Salesforce

    def __init__(self, settings: SalesforceSettings, sleep=time.sleep, clock=time.monotonic):
        super().__init__(settings)
        self.sleep, self.clock = sleep, clock
        self.oauth = RefreshingToken(
            name="salesforce", token_url=settings.token_url, refresh_token=settings.refresh_token.value(),
            client_id=settings.client_id, client_secret=settings.client_secret.value(),
            endpoint="Salesforce's token endpoint", timeout_s=settings.timeout_s, sleep=sleep, clock=clock)
        self.redact = Redactor(self.oauth.redact)
        self.http = HttpClient(f"{settings.instance_url}/services/data/{settings.api_version}/",
                               timeout_s=settings.timeout_s, throttle_delay=throttle_delay,
                               describe_error=self._describe, name="salesforce", sleep=sleep, clock=clock)
        self.bulk = BulkJobs(self.call, self.ok, poll_interval_s=settings.poll_interval_s,
                             poll_timeout_s=settings.poll_timeout_s, sleep=sleep, clock=clock)
        self.person = settings.person_object
        self.link = "LeadId" if self.person == "Lead" else "ContactId"  # the CampaignMember field
        self.requests = 0  # API requests sent (retries included)
        self.usage: tuple[int, int] | None = None  # the last Sforce-Limit-Info: (used, allocation)
        self._person_fields: dict[str, dict] | None = None

    # -- requests and errors ------------------------------------------------------------------
    def _describe(self, response: httpx.Response) -> str | None:
        errors = _errors(response)
        if not errors:
            return None
        text = "; ".join(f"{e.get('errorCode')}: {e.get('message')}" for e in errors[:3])
        return self.redact(text)[:400]

    def call(self, method: str, path: str, *, once: bool = False, **kwargs) -> httpx.Response:
        """One API request (retried by the HTTP policy); the access token is renewed once after a 401, and
        credential or permission refusals stop the run here."""
        extra = kwargs.pop("headers", {})
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {self.oauth.get()}", **extra}
            with self.http.once() if once else contextlib.nullcontext():
                response = self.http.request(method, path, headers=headers, **kwargs)
            self.requests += 1
            self.usage = api_usage(response) or self.usage
            if response.status_code != 401 or attempt == 2:
                break
            self.oauth.invalidate()  # expired or revoked session: one fresh token
        shown = path.split("?", 1)[0]
        said = self._describe(response) or f"HTTP {response.status_code}"
        if response.status_code == 401:
            raise CredentialsError(f"salesforce: the access token obtained with the setting 'refresh_token' was "
                                   f"refused on {method} {shown} ({said}); authorize the connected app again",
                                   status=401)
        if response.status_code == 403:
            raise TerminalError(f"salesforce: the user of the setting 'refresh_token' may not do this: HTTP 403 on "
                                f"{method} {shown} ({said})", status=403)
        if once and response.status_code >= 500:
            raise DestinationError(f"salesforce: HTTP {response.status_code} on {method} {shown} ({said}); not sent "
                                   "again, since Salesforce may have acted on it", status=response.status_code)
        return response

    def ok(self, response: httpx.Response, method: str, path: str):
        """The answer's JSON, or a DestinationError in Salesforce's words."""
        if response.status_code >= 400:
            said = self._describe(response) or self.redact(response.text[:200])
            raise DestinationError(f"salesforce: HTTP {response.status_code} on {method} {path.split('?', 1)[0]}: "
                                   f"{said}", status=response.status_code)
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise DestinationError(f"salesforce: {method} {path} answered without JSON") from None

    def query(self, soql: str):
        """Every record of a SOQL query, following nextRecordsUrl."""
        response = self.call("GET", "query", params={"q": soql})
        while True:
            body = self.ok(response, "GET", "query")
            yield from body.get("records") or []
            following = body.get("nextRecordsUrl")
            if body.get("done", True) or not following:
                return
            response = self.call("GET", _API_PREFIX.sub("", following))

    def _save(self, method: str, records: list[dict], *, once: bool = False) -> list[Saved]:
        """Create (POST) or update (PATCH) through sObject Collections, 200 a request; one outcome per record."""
        out: list[Saved] = []
        for chunk in _chunks(records):
            response = self.call(method, "composite/sobjects", json={"allOrNone": False, "records": chunk},
                                 once=once)
            out += self._saved(response, method, len(chunk))
        return out

    def _saved(self, response: httpx.Response, method: str, n: int) -> list[Saved]:
        if response.status_code == 400:
            said = self._describe(response) or "bad request"
            if _codes(response) & {"INVALID_FIELD", "INVALID_TYPE", "INVALID_FIELD_FOR_INSERT_UPDATE"}:
                # The sync's field names are wrong for every batch alike.
                raise TerminalError(f"salesforce: {self.person} refused the sync's fields: {said}; fix the sync's "
                                    f"'fields' (Salesforce field API names)", status=400)
            raise RowsRefused(f"salesforce: HTTP 400 on {method} composite/sobjects: {said}", status=400)
        body = self.ok(response, method, "composite/sobjects")
        if not isinstance(body, list) or len(body) != n:
            got = len(body) if isinstance(body, list) else "no"
            raise DestinationError(f"salesforce: {method} composite/sobjects answered {got} results for {n} records")
        return [saved_from_json(e if isinstance(e, dict) else {}) for e in body]

    def _delete(self, ids: list[str], bulk: bool = True) -> dict[str, Saved]:
        """Delete CampaignMembers by id (one Bulk job from bulk_threshold ids, else collections), or people
        this batch created twice (`bulk=False`)."""
        if not ids:
            return {}
        if bulk and len(ids) >= self.settings.bulk_threshold:
            return dict(zip(ids, self.bulk.ingest("CampaignMember", "delete", ["Id"], [[i] for i in ids], key="Id")))
        out: dict[str, Saved] = {}
        for chunk in _chunks(ids):
            response = self.call("DELETE", "composite/sobjects", params={"ids": ",".join(chunk), "allOrNone": "false"})
            out.update(zip(chunk, self._saved(response, "DELETE", len(chunk))))
        return out

    # -- campaigns --------------------------------------------------------------------------------
    def check_access(self) -> None:
        described = self._fields()  # the token exchange, and the person object readable by this user
        unknown = sorted(k for k in self.settings.required_defaults if k.lower() not in described)
        if unknown:
            raise TerminalError(f"salesforce: the setting 'required_defaults' names field(s) {', '.join(unknown)} "
                                f"that {self.person} does not have")

    def find_audience(self, name: str) -> str | None:
        found = list(self.query(f"SELECT Id, Name FROM Campaign WHERE Name = {soql_string(name)} "
                                "ORDER BY CreatedDate, Id"))
        exact = [r for r in found if r.get("Name") == name]  # SOQL compares text case-insensitively
        chosen = (exact or found)[:1]
        return str(chosen[0]["Id"]) if chosen else None

    def create_audience(self, name: str) -> str:
        # Never sent twice (Salesforce allows two campaigns of one name): a lost answer is found by name next run.
        response = self.call("POST", "sobjects/Campaign", json={"Name": name, "IsActive": True}, once=True)
        if response.status_code == 400:
            raise TerminalError(f"salesforce: could not create campaign '{name}': {self._describe(response)}",
                                status=400)
        return str(self.ok(response, "POST", "sobjects/Campaign")["id"])

    def _campaign(self, campaign_id: str, fields: str) -> dict:
        path = f"sobjects/Campaign/{quote(str(campaign_id), safe='')}"
        response = self.call("GET", path, params={"fields": fields})
        if response.status_code in (400, 404):
            raise TerminalError(f"salesforce: campaign {campaign_id} does not exist ({self._describe(response)})",
                                status=response.status_code)
        return self.ok(response, "GET", path)

    def check_audience(self, audience_id: str) -> None:
        self._campaign(audience_id, "Id,Name")

    def audience_stats(self, audience_id: str) -> AudienceStats:
        campaign = self._campaign(audience_id, "NumberOfLeads,NumberOfContacts")
        counts = [campaign.get("NumberOfLeads"), campaign.get("NumberOfContacts")]
        return AudienceStats(size=sum(int(c) for c in counts if c is not None) if any(
            c is not None for c in counts) else None)

    # -- fields -----------------------------------------------------------------------------------
    def _fields(self) -> dict[str, dict]:
        """The person object's fields by lower-cased name (its describe, read once)."""
        if self._person_fields is None:
            path = f"sobjects/{self.person}/describe"
            body = self.ok(self.call("GET", path), "GET", path)
            self._person_fields = {str(f.get("name")).lower(): f for f in body.get("fields") or []}
        return self._person_fields

    def check_fields(self, columns: dict[str, pa.DataType]) -> None:
        described = self._fields()
        if any(name.lower() == "email" for name in columns):
            raise TerminalError(f"salesforce: the field 'Email' is how a {self.person} is found (the identifier "
                                "'email'); do not map it under 'fields'")
        locked = [name for name in columns if name.lower() in described
                  and not described[name.lower()].get("updateable")]
        if locked:
            raise TerminalError(f"salesforce: {len(locked)} mapped field(s) of {self.person} cannot be written, so "
                                f"nothing was sent: " + "; ".join(f"field '{n}' is not updateable" for n in locked))
        properties = {name: KINDS.get(str(described[name.lower()].get("type"))) for name in columns
                      if name.lower() in described}
        check_field_kinds("salesforce", columns, properties)

    # -- people -----------------------------------------------------------------------------------
    @staticmethod
    def _emails(rows: pa.Table) -> list[str | None]:
        if EMAIL not in rows.column_names:
            raise TerminalError("salesforce finds Leads and Contacts by email: map the identifier 'email'")
        return [e.strip().lower() if e else None for e in rows[EMAIL].to_pylist()]

    def people_by_email(self, emails: list[str]) -> dict[str, list[str]]:
        """email -> the ids of the people of the person object holding it, oldest first."""
        found: dict[str, list[str]] = {}
        for chunk in _in_lists(list(dict.fromkeys(e for e in emails if e))):
            for record in self.query(f"SELECT Id, Email FROM {self.person} WHERE Email IN ({chunk}) "
                                     "ORDER BY CreatedDate, Id"):
                email = str(record.get("Email") or "").strip().lower()
                if email:
                    found.setdefault(email, []).append(str(record["Id"]))
        return found

    def find_people(self, emails: list[str]) -> dict[str, str]:
        """email -> the oldest person holding it (every run picks the same one)."""
        return {e: ids[0] for e, ids in self.people_by_email(emails).items()}

    def _settle_created(self, created: dict[str, str], found: dict[str, str], result: BatchResult) -> None:
        """Another run may have created the same people meanwhile: every run keeps the oldest, and deletes only
        the duplicates it has just created itself (in no campaign yet)."""
        held = self.people_by_email(list(created))
        doubles = []
        for email, pid in list(created.items()):
            oldest = (held.get(email) or [pid])[0]
            if oldest != pid:
                doubles.append(pid)
                del created[email]
                found[email] = oldest  # its fields are written below, like any person found
        if doubles:
            gone = self._delete(doubles, bulk=False)
            result.stats["duplicates_removed"] = sum(1 for s in gone.values() if s.ok)

    def _person_values(self, fields: list[str], values: dict[str, list], i: int, new: bool) -> dict:
        """Mapped field values of row i; a required field never cleared, and given its default when new."""
        defaults = {k.lower(): (k, v) for k, v in self.settings.required_defaults.items()}
        out = {}
        for name in fields:
            value = _value(values[name][i])
            if value is None and name.lower() in defaults:
                continue
            out[name] = value
        if new:
            mapped = {k.lower() for k in out}
            out.update({k: v for lower, (k, v) in defaults.items() if lower not in mapped})
        return out

    def _people(self, rows: pa.Table, emails: list[str | None], create: bool, result: BatchResult) -> dict[int, str]:
        """Row position -> person id for the rows to make members; the others rejected or skipped."""
        fields = [c for c in sent_columns(rows) if c != EMAIL]
        values = {c: rows[c].to_pylist() for c in fields}
        last_row = {e: i for i, e in enumerate(emails) if e}  # rows sharing an email share a person: last wins
        found = self.find_people(list(last_row))
        failed: dict[str, str] = {}
        created: dict[str, str] = {}
        missing = [e for e in last_row if e not in found]
        if missing and create:
            records = [{"attributes": {"type": self.person}, "Email": e,
                        **self._person_values(fields, values, last_row[e], new=True)} for e in missing]
            for email, saved in zip(missing, self._save("POST", records, once=True)):
                if saved.ok:
                    created[email] = str(saved.id)
                else:
                    failed[email] = f"Salesforce refused to create the {self.person}: {saved.reason}"
            if created:
                self._settle_created(created, found, result)
            result.stats["profiles_created"] = len(created)
        if fields and found:
            known = list(found)
            records = [{"attributes": {"type": self.person}, "id": found[e],
                        **self._person_values(fields, values, last_row[e], new=False)} for e in known]
            for email, saved in zip(known, self._save("PATCH", records)):
                if not saved.ok:
                    failed[email] = f"Salesforce refused the {self.person}'s fields: {saved.reason}"
            result.stats["profiles_updated"] = len(known) - sum(e in failed for e in known)
        people: dict[int, str] = {}
        for i, email in enumerate(emails):
            if not email:
                result.rejected[i] = f"no email to find the {self.person} by"
            elif email in failed:
                result.rejected[i] = failed[email]
            elif email in found or email in created:
                people[i] = found.get(email) or created[email]
            else:
                result.skipped[i] = f"no Salesforce {self.person} with this email (create_profiles is false)"
        return people

    # -- members ----------------------------------------------------------------------------------
    def member_ids(self, campaign: str, people: list[str]) -> dict[str, str]:
        """person id -> the id of its CampaignMember in the campaign."""
        out: dict[str, str] = {}
        for chunk in _in_lists(list(dict.fromkeys(people))):
            for record in self.query(f"SELECT Id, {self.link} FROM CampaignMember WHERE CampaignId = "
                                     f"{soql_string(campaign)} AND {self.link} IN ({chunk})"):
                out[str(record.get(self.link))] = str(record["Id"])
        return out

    def _members_by_email(self, campaign: str, emails: list[str | None]) -> dict[str, str]:
        people = self.find_people([e for e in emails if e])
        ids = self.member_ids(campaign, list(people.values()))
        return {e: ids[p] for e, p in people.items() if p in ids}

    def _join(self, campaign: str, people: list[str], result: BatchResult) -> dict[str, Saved]:
        """Make each person a member of the campaign: person id -> outcome (the CampaignMember id)."""
        status = self.settings.member_status
        if len(people) >= self.settings.bulk_threshold:
            outcomes = self.bulk.ingest("CampaignMember", "insert", ["CampaignId", self.link, "Status"],
                                        [[campaign, p, status] for p in people], key=self.link)
            result.stats["bulk_jobs"] = result.stats.get("bulk_jobs", 0) + 1
        else:
            outcomes = self._save("POST", [{"attributes": {"type": "CampaignMember"}, "CampaignId": campaign,
                                            self.link: p, "Status": status} for p in people])
        out = dict(zip(people, outcomes))
        for saved in outcomes:
            if not saved.ok and "CampaignId" in saved.fields:
                raise TerminalError(f"salesforce: campaign {campaign} can no longer take members: {saved.reason}")
        already = [p for p, s in out.items() if not s.ok and s.code == "DUPLICATE_VALUE"]
        if already:
            ids = self.member_ids(campaign, already)
            for p in already:
                out[p] = Saved(True, ids[p]) if p in ids else Saved(
                    False, None, "DUPLICATE_VALUE", "Salesforce says the person is already a member, but no "
                    "CampaignMember was found for it")
        return out

    def add(self, campaign: str, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        result = BatchResult()
        create = self.settings.create_profiles if ctx.create_profiles is None else ctx.create_profiles
        people = self._people(rows, self._emails(rows), create, result)
        outcomes = self._join(campaign, list(dict.fromkeys(people.values())), result)
        for i, person in people.items():
            saved = outcomes[person]
            if saved.ok and saved.id:
                result.record_ids[i] = saved.id
            else:
                result.rejected[i] = f"Salesforce refused the CampaignMember: {saved.reason}"
        return result

    def remove(self, campaign: str, rows: pa.Table) -> dict[int, str]:
        """Delete rows' CampaignMembers by record id (the Lead or Contact stays); returns rejected positions."""
        ids = rows[RECORD_ID].to_pylist() if RECORD_ID in rows.column_names else [None] * rows.num_rows
        emails = self._emails(rows)
        unknown = [i for i, rid in enumerate(ids) if not rid]
        if unknown:  # a member whose id never reached the snapshot (an interrupted run): looked up by email
            found = self._members_by_email(campaign, [emails[i] for i in unknown])
            for i in unknown:
                ids[i] = found.get(emails[i])  # no member: nothing to take out
        outcomes = self._delete(list(dict.fromkeys(r for r in ids if r)))
        rejected: dict[int, str] = {}
        gone = []
        for i, rid in enumerate(ids):
            saved = outcomes.get(rid) if rid else None
            if saved is None or saved.ok:
                continue
            if saved.code in GONE:
                gone.append(i)
            else:
                rejected[i] = f"Salesforce refused to delete CampaignMember {rid}: {saved.reason}"
        if gone:  # the kept member is gone; a newer one may hold the person now (a full resend made it)
            found = self._members_by_email(campaign, [emails[i] for i in gone])
            again = self._delete(list(dict.fromkeys(found.values())))
            for i in gone:
                saved = again.get(found.get(emails[i], ""))
                if saved is not None and not saved.ok and saved.code not in GONE:
                    rejected[i] = f"Salesforce refused to delete CampaignMember {found[emails[i]]}: {saved.reason}"
        return rejected

    def update(self, campaign: str, rows: pa.Table, previous: pa.Table | None, ctx: BatchContext) -> BatchResult:
        result = self.add(campaign, rows, ctx)  # fields written; a member already in is accepted as it is
        if previous is None or previous.num_rows == 0:
            return result
        # `previous` holds members whose email changed: the old person's CampaignMember goes once the new one is in.
        position = {k: i for i, k in enumerate(rows[KEY].to_pylist())}
        keys = previous[KEY].to_pylist()
        old = previous[RECORD_ID].to_pylist() if RECORD_ID in previous.column_names else [None] * previous.num_rows
        take = [j for j, k in enumerate(keys)
                if position.get(k) in result.record_ids and old[j] != result.record_ids[position[k]]]
        if take:
            refused = self.remove(campaign, previous.take(pa.array(take, pa.int64())))
            for j, reason in refused.items():
                i = position[keys[take[j]]]
                result.record_ids.pop(i, None)
                result.rejected[i] = f"the old member was not taken out of the campaign: {reason}"
        return result

    def open_session(self, ctx: SessionContext) -> Session:
        return _CampaignSession(self, ctx.audience_id)

    def close(self) -> None:
        self.http.close()
        self.oauth.close()


class _CampaignSession(Session):
    """Every batch answered at once; the finish reports the org's API usage as last seen."""

    def __init__(self, client: SalesforceDestination, campaign: str):
        self.client, self.campaign = client, campaign

    def send(self, operation: str, rows: pa.Table, previous: pa.Table | None, ctx: BatchContext) -> BatchResult:
        before = self.client.requests
        if operation == "remove":
            result = BatchResult(rejected=self.client.remove(self.campaign, rows))
        elif operation == "update":
            result = self.client.update(self.campaign, rows, previous, ctx)
        else:
            result = self.client.add(self.campaign, rows, ctx)
        result.stats["api_requests"] = self.client.requests - before
        return result

    def finish(self, complete: bool) -> Finish:
        usage = self.client.usage
        return Finish("applied", stats={"api_usage": usage[0], "api_limit": usage[1]} if usage else {})
