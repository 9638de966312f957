"""The `klaviyo` client.

A member is a Klaviyo profile in a list. An add is a bulk profile import job
(`POST /profile-bulk-import-jobs`) holding the batch's profiles (email, phone_number in E.164,
external_id, mapped fields as attributes or custom properties) with a `lists` relationship to the
list: the job creates or updates the profiles and puts them in the list. Its id is journalled at
once, then it is polled until `complete`; per-profile failures (`/import-errors`) are mapped back to
rows by their JSON pointer. The profile ids are then looked up by identifier (`GET /profiles?filter=
any(email,[...])`, 100 a page) and kept by the engine, so a removal is one
`DELETE /lists/{id}/relationships/profiles` by id (1,000 a call) with no search. Removing takes a
profile out of the list only: it is never suppressed or deleted.

A batch waits for its own job: record ids reach the engine only in a batch's answer, so a batch
whose job is still running after `poll_timeout_s` is answered "pending" and the session's finish
waits for it again (without ids; a later removal then looks the profile up). A run killed mid-job
leaves the job id journalled; `recover` polls it. Resending a job's rows is harmless: the import is
an upsert and listing a profile twice changes nothing.

With `create_profiles` false, profiles are looked up first; members with none are skipped, and the
job carries the others' profile ids so it cannot create one.

Throttles are 429 with `Retry-After` (seconds), honoured by the HTTP layer; one that asks for more
than five minutes (the 150-a-day list creation limit) ends the run. The SDK's retry of 524 is kept.

Assumptions beyond the reference: the import-errors' `source.pointer` names the profile's index
(`/data/attributes/profiles/data/<i>/...`), else its `original_payload` names its identifiers; a job
profile may carry `id`; an `any(...)` filter takes 100 values.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pyarrow as pa

from audience_pipelines.contract import (
    APPLIED, KEY, RECORD_ID, AudienceStats, BatchContext, BatchResult, CredentialsError, Destination,
    DestinationError, Finish, Recovery, Session, SessionContext, TerminalError, sent_columns,
)
from audience_pipelines.contract.fields import NUMBER, STRING, check_field_kinds
from audience_pipelines.destinations.http import HttpClient, json_object, retry_after_seconds
from audience_pipelines.destinations.klaviyo import MAX_PROFILES, KlaviyoLists, KlaviyoSettings

JSON_API = "application/vnd.api+json"
MAX_JOB_BYTES = 5 * 1024 * 1024
MAX_PROFILE_BYTES = 100 * 1024
MAX_RELATIONSHIP_IDS = 1000  # profiles per list relationship call
PAGE = 100  # profiles per page and values per `any` filter
DONE = ("complete", "failed", "cancelled")
NOT_FOUND = "not_found"
LONG_WAIT_S = 300.0  # a throttle asking for longer ends the run instead
# Identifier kind -> Klaviyo's profile attribute (the sent column's name).
IDENTIFIERS = {"email": "email", "phone": "phone_number", "external_id": "external_id"}
IDENTITY_ORDER = ("email", "phone_number", "external_id")  # which identifier a profile is found by
# Klaviyo's standard profile attributes have fixed types; every other field is a free-form custom
# property (any JSON value, so any kind).
ATTRIBUTES = {"first_name": STRING, "last_name": STRING, "organization": STRING, "title": STRING,
              "locale": STRING, "image": STRING}
LOCATION = {"address1": STRING, "address2": STRING, "city": STRING, "country": STRING, "region": STRING,
            "zip": STRING, "timezone": STRING, "ip": STRING, "latitude": NUMBER, "longitude": NUMBER}
RESERVED = (*IDENTITY_ORDER, "id", "location", "properties")
NO_PROFILE = "no Klaviyo profile with this identifier (create_profiles is false)"
_POINTER = re.compile(r"/profiles/data/(\d+)(?:/|$)")
_AVAILABLE_IN = re.compile(r"available in (\d+(?:\.\d+)?) second")


def _errors(response: httpx.Response) -> list[dict]:
    """The JSON:API `errors` of an answer."""
    return [e for e in json_object(response).get("errors") or [] if isinstance(e, dict)]


def throttle_delay(response: httpx.Response) -> float | None:
    """Seconds to wait before retrying (-1: back off with jitter), None when it is no throttle."""
    if response.status_code == 524:  # the SDK retries Cloudflare's timeout in front of Klaviyo
        return -1.0
    if response.status_code != 429:
        return None
    wait = retry_after_seconds(response)
    if wait is None:  # the body says it too: "... Expected available in N seconds."
        found = [_AVAILABLE_IN.search(str(e.get("detail") or "")) for e in _errors(response)]
        wait = next((float(m.group(1)) for m in found if m), -1.0)
    if wait > LONG_WAIT_S:
        # The shared policy would retry for minutes in vain: the run stops and commits what was accepted.
        raise TerminalError(f"klaviyo: Klaviyo's rate limit allows this call again only in {wait:.0f} s "
                            "(a daily limit, such as 150 list creations a day); the next run sends the rest",
                            status=429)
    return wait


def _dump(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def _value(value):
    """A field value as JSON: dates and times in ISO 8601, decimals as numbers, NaN as null."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
        return value.isoformat()
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (list, dict, str, int, float, bool)) or value is None:
        return value
    return str(value)


def _identity(attributes: dict) -> tuple[str, str] | None:
    """(attribute, value) a profile is found by: its email, else its phone number, else its external id."""
    for name in IDENTITY_ORDER:
        value = attributes.get(name)
        if value:
            return name, value.lower() if name == "email" else value
    return None


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


@dataclass
class _Job:
    """A submitted import job: who its profiles are (row positions in the batch) and the batch's keys."""

    id: str
    owners: list[list[int]]  # profile index in the job -> row positions
    identities: list[tuple[str, str]]
    keys: list[str]


class KlaviyoDestination(Destination[KlaviyoSettings]):
    destination_type = KlaviyoLists

    def __init__(self, settings: KlaviyoSettings, sleep=time.sleep, clock=time.monotonic):
        super().__init__(settings)
        self._key = settings.api_key.value()
        self.sleep, self.clock = sleep, clock
        headers = {"Authorization": f"Klaviyo-API-Key {self._key}", "revision": settings.revision,
                   "Accept": JSON_API, "Content-Type": JSON_API}
        self.http = HttpClient(settings.base_url.rstrip("/") + "/", timeout_s=settings.timeout_s, headers=headers,
                               throttle_delay=throttle_delay, describe_error=self._describe, name="klaviyo",
                               sleep=sleep, clock=clock)

    def account(self) -> str:
        # List ids are per Klaviyo account, which only the key tells: the registry of created lists is
        # kept per API host and key fingerprint (a hash prefix, revealing nothing of the key).
        host = urlsplit(self.settings.base_url).netloc or self.settings.base_url
        return f"{host}/key-{hashlib.sha256(self._key.encode()).hexdigest()[:12]}"

    def identifier_column(self, kind: str) -> str:
        return IDENTIFIERS[kind]

    # -- requests and errors ------------------------------------------------------------
    def _describe(self, response: httpx.Response) -> str | None:
        """JSON:API errors as `code: detail (where)`."""
        parts = []
        for e in _errors(response)[:3]:
            where = (e.get("source") or {}) if isinstance(e.get("source"), dict) else {}
            at = where.get("pointer") or where.get("parameter") or where.get("header")
            text = f"{e.get('code') or e.get('status')}: {e.get('detail') or e.get('title') or ''}".strip()
            parts.append(f"{text} (at {at})" if at else text)
        if not parts:
            return None
        return "; ".join(parts)[:500].replace(self._key, "[redacted]")

    def _request(self, method: str, path: str, body=None, params: dict | None = None) -> httpx.Response:
        """Send (with retries); credential and permission refusals stop the run here."""
        content = None if body is None else (body if isinstance(body, bytes) else _dump(body))
        response = self.http.request(method, path, content=content, params=params)
        if response.status_code == 401:
            raise CredentialsError(f"klaviyo: the setting 'api_key' was refused (HTTP 401 on {method} {path}: "
                                   f"{self._describe(response) or 'not authenticated'})", status=401)
        if response.status_code == 403:
            raise CredentialsError(
                f"klaviyo: the private key of the setting 'api_key' may not do this (HTTP 403 on {method} {path}: "
                f"{self._describe(response) or 'permission denied'}); it needs the scopes lists:read, lists:write, "
                "profiles:read and profiles:write", status=403)
        return response

    def _failure(self, response: httpx.Response, method: str, path: str) -> str:
        said = self._describe(response) or response.text[:200].replace(self._key, "[redacted]")
        return f"klaviyo: HTTP {response.status_code} on {method} {path}: {said}"

    def _ok(self, response: httpx.Response, method: str, path: str) -> dict:
        if response.status_code >= 400:
            raise DestinationError(self._failure(response, method, path), status=response.status_code)
        return json_object(response)

    def _pages(self, path: str, params: dict):
        """Every item of a listing, following `links.next` by its page cursor."""
        while True:
            body = self._ok(self._request("GET", path, params=params), "GET", path)
            yield from body.get("data") or []
            following = (body.get("links") or {}).get("next")
            cursor = parse_qs(urlsplit(following).query).get("page[cursor]") if following else None
            if not cursor:
                return
            params = {**params, "page[cursor]": cursor[0]}

    # -- lists ------------------------------------------------------------------------
    def check_access(self) -> None:
        self._ok(self._request("GET", "/lists", params={"fields[list]": "name"}), "GET", "/lists")

    def find_audience(self, name: str) -> str | None:
        params = {"filter": f"equals(name,{json.dumps(name, ensure_ascii=False)})", "fields[list]": "name,created"}
        named = [item for item in self._pages("/lists", params) if (item.get("attributes") or {}).get("name") == name]
        if not named:
            return None
        # Klaviyo allows two lists of one name: the oldest is the one this project made first.
        named.sort(key=lambda item: str((item.get("attributes") or {}).get("created") or ""))
        return str(named[0]["id"])

    def create_audience(self, name: str) -> str:
        with self.http.once():  # a lost answer is looked up by name next run, never sent twice
            response = self._request("POST", "/lists", {"data": {"type": "list", "attributes": {"name": name}}})
        return str(self._ok(response, "POST", "/lists")["data"]["id"])

    def _get_list(self, list_id: str, params: dict | None = None) -> dict:
        path = f"/lists/{quote(str(list_id), safe='')}"
        response = self._request("GET", path, params=params)
        if response.status_code in (400, 404):
            raise TerminalError(f"klaviyo: list {list_id} does not exist ({self._failure(response, 'GET', path)})",
                                status=response.status_code)
        return self._ok(response, "GET", path).get("data") or {}

    def check_audience(self, audience_id: str) -> None:
        self._get_list(audience_id)

    def audience_stats(self, audience_id: str) -> AudienceStats:
        attributes = self._get_list(audience_id, {"additional-fields[list]": "profile_count"}).get("attributes") or {}
        count = attributes.get("profile_count")
        return AudienceStats(size=int(count) if count is not None else None)

    def check_fields(self, columns: dict[str, pa.DataType]) -> None:
        # Klaviyo has no property schema to read: its standard attributes have fixed types (checked);
        # every other name is a free-form custom property, which takes any JSON value (kind None).
        clash = [f for f in columns if f in RESERVED]
        if clash:
            raise TerminalError(f"klaviyo: the field(s) {', '.join(map(repr, clash))} name a Klaviyo identifier or "
                                "container, not a property: map identifiers under the sync's 'identifiers'")
        check_field_kinds("klaviyo", columns, {f: ATTRIBUTES.get(f, LOCATION.get(f)) for f in columns})

    # -- profiles -------------------------------------------------------------------------
    def _lookup(self, identities) -> dict[tuple[str, str], str]:
        """Profile ids of existing profiles, by (attribute, value) as `_identity` gives them."""
        wanted: dict[str, list[str]] = {}
        for name, value in dict.fromkeys(identities):
            wanted.setdefault(name, []).append(value)
        found: dict[tuple[str, str], str] = {}
        for name, values in wanted.items():
            for chunk in _chunks(values, PAGE):
                params = {"filter": f"any({name},{_dump(chunk).decode()})", "page[size]": str(PAGE),
                          "fields[profile]": ",".join(IDENTITY_ORDER)}
                for profile in self._pages("/profiles", params):
                    value = (profile.get("attributes") or {}).get(name)
                    if value:
                        found[(name, value.lower() if name == "email" else value)] = str(profile["id"])
        return found

    def _profile_ids(self, rows: pa.Table) -> list[str | None]:
        """Each row's profile id: the record id kept, else looked up by its identifiers (None: no profile)."""
        ids = rows[RECORD_ID].to_pylist() if RECORD_ID in rows.column_names else [None] * rows.num_rows
        missing = [i for i, pid in enumerate(ids) if not pid]
        if missing:  # a snapshot row with no id (an unsettled job, an older snapshot)
            cols = {c: rows[c].to_pylist() for c in IDENTITY_ORDER if c in rows.column_names}
            who = {i: _identity({c: v[i] for c, v in cols.items()}) for i in missing}
            found = self._lookup(w for w in who.values() if w)
            for i, w in who.items():
                ids[i] = found.get(w) if w else None
        return ids

    def _remove_ids(self, list_id: str, ids: list[str]) -> None:
        """Take profiles out of the list (the profiles themselves stay as they are)."""
        path = f"/lists/{quote(str(list_id), safe='')}/relationships/profiles"
        for chunk in _chunks(list(dict.fromkeys(ids)), MAX_RELATIONSHIP_IDS):
            response = self._request("DELETE", path, {"data": [{"type": "profile", "id": pid} for pid in chunk]})
            if response.status_code == 404:
                raise TerminalError(f"klaviyo: list {list_id} does not exist", status=404)
            self._ok(response, "DELETE", path)

    def _profiles(self, rows: pa.Table, result: BatchResult):
        """One profile per identity (rows sharing one share it): (profiles, row positions, identities)."""
        cols = {c: rows[c].to_pylist() for c in sent_columns(rows)}
        fields = [c for c in cols if c not in IDENTITY_ORDER]
        index: dict[tuple[str, str], int] = {}
        profiles, owners, identities = [], [], []
        for i in range(rows.num_rows):
            attributes = {c: cols[c][i] for c in IDENTITY_ORDER if c in cols and cols[c][i]}
            identity = _identity(attributes)
            if identity is None:
                result.rejected[i] = "no email, phone_number or external_id to find or create the profile by"
                continue
            for f in fields:
                value = _value(cols[f][i])
                if f in ATTRIBUTES:
                    attributes[f] = value
                elif f in LOCATION:
                    attributes.setdefault("location", {})[f] = value
                else:
                    attributes.setdefault("properties", {})[f] = value
            j = index.setdefault(identity, len(profiles))
            if j == len(profiles):
                profiles.append({"type": "profile", "attributes": attributes})
                owners.append([])
                identities.append(identity)
            else:
                profiles[j]["attributes"] = attributes  # the last row's values win
            owners[j].append(i)
        return profiles, owners, identities

    # -- jobs -------------------------------------------------------------------------------
    def _submit(self, list_id: str, encoded: list[bytes]) -> str:
        """POST one import job of already encoded profiles; returns its id."""
        head = b'{"data":{"type":"profile-bulk-import-job","attributes":{"profiles":{"data":['
        tail = b']}},"relationships":{"lists":{"data":[' + _dump({"type": "list", "id": str(list_id)}) + b"]}}}}"
        path = "/profile-bulk-import-jobs"
        response = self._request("POST", path, head + b",".join(encoded) + tail)
        if response.status_code == 404:
            raise TerminalError(self._failure(response, "POST", path), status=404)
        return str(self._ok(response, "POST", path)["data"]["id"])

    def _job(self, job_id: str) -> dict:
        path = f"/profile-bulk-import-jobs/{quote(job_id, safe='')}"
        response = self._request("GET", path)
        if response.status_code == 404:
            return {"status": NOT_FOUND}
        return self._ok(response, "GET", path).get("data", {}).get("attributes") or {}

    def _wait(self, job_ids: list[str]) -> dict[str, dict]:
        """Poll jobs every poll_interval_s until all have ended or poll_timeout_s has passed."""
        started, states, left = self.clock(), {}, list(job_ids)
        while True:
            for job_id in left:
                states[job_id] = self._job(job_id)
            left = [j for j in left if states[j].get("status") not in (*DONE, NOT_FOUND)]
            remaining = self.settings.poll_timeout_s - (self.clock() - started)
            if not left or remaining <= 0:
                return states
            self.sleep(min(self.settings.poll_interval_s, remaining))

    def _failures(self, job: _Job, state: dict) -> tuple[dict[int, str], int]:
        """An ended job's refused rows (position -> reason) and how many failures named no profile."""
        status = state.get("status")
        if status != "complete":
            reason = f"Klaviyo import job {job.id} ended {status}; none of its profiles is taken as imported"
            return {i: reason for rows in job.owners for i in rows}, 0
        failed = int(state.get("failed_count") or 0)
        if not failed:
            return {}, 0
        where = {identity: n for n, identity in enumerate(job.identities)}
        refused: dict[int, str] = {}
        named: set[int] = set()
        path = f"/profile-bulk-import-jobs/{quote(job.id, safe='')}/import-errors"
        for error in self._pages(path, {"page[size]": str(PAGE)}):
            attributes = error.get("attributes") or {}
            n = _profile_index(attributes, where, len(job.owners))
            if n is None:
                continue
            named.add(n)
            reason = f"Klaviyo refused the profile: {attributes.get('code')}: {attributes.get('detail') or ''}"
            for i in job.owners[n]:
                refused.setdefault(i, reason.strip()[:300])
        return refused, max(0, failed - len(named))

    def recover(self, audience_id: str, state: dict) -> Recovery:
        jobs = [str(j) for j in state.get("jobs") or []]
        if not jobs:
            return Recovery("no import job was left open")
        try:
            states = self._wait(jobs)
        except DestinationError as exc:
            return Recovery(f"import job(s) {', '.join(jobs)} may still be running (their status could not be "
                            f"read: {exc}); their rows are sent again", settled=False)
        running = [j for j in jobs if states[j].get("status") not in (*DONE, NOT_FOUND)]
        if running:
            return Recovery(f"import job(s) {', '.join(running)} still running after "
                            f"{self.settings.poll_timeout_s:g} s; their rows are sent again", settled=False)
        ended = ", ".join(f"{j} {states[j].get('status')}" for j in jobs)
        return Recovery(f"import job(s) ended ({ended}); their rows are sent again")

    def open_session(self, ctx: SessionContext) -> Session:
        return _ImportSession(self, ctx)

    def close(self) -> None:
        self.http.close()


def _profile_index(error: dict, where: dict[tuple[str, str], int], n: int) -> int | None:
    """Which profile of the job an import error names: by its JSON pointer, else by its payload's identifiers."""
    pointer = str((error.get("source") or {}).get("pointer") or "") if isinstance(error.get("source"), dict) else ""
    m = _POINTER.search(pointer)
    if m and int(m.group(1)) < n:
        return int(m.group(1))
    payload = error.get("original_payload")
    if isinstance(payload, dict):
        identity = _identity(payload.get("attributes") if isinstance(payload.get("attributes"), dict) else payload)
        return where.get(identity) if identity else None
    return None


class _ImportSession(Session):
    """A run's import jobs on one list: each batch waits for its own; unsettled ones are journalled."""

    def __init__(self, client: KlaviyoDestination, ctx: SessionContext):
        self.client, self.ctx = client, ctx
        self.open_jobs: dict[str, _Job] = {}  # submitted, not yet settled

    def _journal(self) -> None:
        self.ctx.save_state({"jobs": list(self.open_jobs)})

    def send(self, operation: str, rows: pa.Table, previous: pa.Table | None, ctx: BatchContext) -> BatchResult:
        if operation == "remove":
            ids = self.client._profile_ids(rows)  # no profile: nothing to take out
            self.client._remove_ids(self.ctx.audience_id, [pid for pid in ids if pid])
            return BatchResult()
        create = self.client.settings.create_profiles if ctx.create_profiles is None else ctx.create_profiles
        result = self._import(rows, create)
        if operation == "update" and previous is not None and previous.num_rows:
            self._withdraw_previous(rows, previous, result)
        return result

    def _import(self, rows: pa.Table, create: bool) -> BatchResult:
        client, result = self.client, BatchResult()
        profiles, owners, identities = client._profiles(rows, result)
        if not create:
            found = client._lookup(identities)
            kept = []
            for n, identity in enumerate(identities):
                if identity in found:
                    profiles[n]["id"] = found[identity]  # an update by id: the job cannot create a profile
                    kept.append(n)
                else:
                    result.skipped.update(dict.fromkeys(owners[n], NO_PROFILE))
            profiles, owners, identities = ([x[n] for n in kept] for x in (profiles, owners, identities))
        jobs = self._submit_jobs(profiles, owners, identities, rows, result)
        if not jobs:
            return result
        states = client._wait([job.id for job in jobs])
        unapplied, imported = 0, []  # imported: (identity, row positions) of profiles the jobs took
        for job in jobs:
            state = states[job.id]
            if state.get("status") not in DONE:
                result.pending = True  # finish() waits for it again
                continue
            refused, unnamed = client._failures(job, state)
            for i, reason in refused.items():
                result.rejected.setdefault(i, reason)
            unapplied += unnamed
            imported += [(identity, own) for identity, own in zip(job.identities, job.owners)
                         if not any(i in refused for i in own)]
            del self.open_jobs[job.id]
        self._journal()
        if unapplied and result.pending:
            # Parts cannot be sent again while other rows wait for their job: every unnamed one is retried.
            for _, own in imported:
                result.rejected.update(dict.fromkeys(own, f"Klaviyo counted {unapplied} failed profile(s) in "
                                                          "the import job without naming them"))
            imported = []
        elif unapplied:
            result.unapplied = unapplied
            result.unapplied_reason = "Klaviyo counted failed profiles in the import job without naming them"
        self._record_ids(profiles, identities, imported, result)
        result.stats["import_jobs"] = len(jobs)
        return result

    def _record_ids(self, profiles, identities, imported, result: BatchResult) -> None:
        """The profile id of each imported row: known already (looked up first), else looked up now."""
        known = {identity: p["id"] for identity, p in zip(identities, profiles) if "id" in p}
        wanted = [identity for identity, _ in imported if identity not in known]
        if wanted:
            known.update(self.client._lookup(wanted))
        missed = 0
        for identity, own in imported:
            if identity in known:
                result.record_ids.update(dict.fromkeys(own, known[identity]))
            else:  # listed, by the job's word; a later removal looks it up
                missed += 1
        if missed:
            result.stats["record_ids_not_found"] = missed

    def _withdraw_previous(self, rows: pa.Table, previous: pa.Table, result: BatchResult) -> None:
        """Members whose identifiers changed: their old profile leaves the list once the new one is in."""
        position = {k: i for i, k in enumerate(rows[KEY].to_pylist())}
        old_ids = self.client._profile_ids(previous)
        take = []
        for key, old in zip(previous[KEY].to_pylist(), old_ids):
            i = position.get(key)
            if i is None or old is None or i in result.rejected or i in result.skipped:
                continue
            new = result.record_ids.get(i)
            if new is None:  # cannot tell the old profile from the new one: not withdrawn, retried
                result.rejected[i] = ("the old profile was not taken out of the list: the new one's id is not "
                                      "known yet (its import job is still running)")
            elif new != old:
                take.append(old)
        self.client._remove_ids(self.ctx.audience_id, take)

    def finish(self, complete: bool) -> Finish:
        # A submitted job runs whether or not the run went on: its outcome is read either way.
        if not self.open_jobs:
            return APPLIED
        jobs = list(self.open_jobs.values())
        try:
            states = self.client._wait([job.id for job in jobs])
            running = [job.id for job in jobs if states[job.id].get("status") not in DONE]
            if running:
                return Finish("unknown", reason=f"import job(s) {', '.join(running)} still running after "
                                                f"{self.client.settings.poll_timeout_s:g} s")
            rejected: dict[str, str] = {}
            for job in jobs:
                refused, unnamed = self.client._failures(job, states[job.id])
                if unnamed:
                    refused = {i: f"Klaviyo counted {unnamed} failed profile(s) in import job {job.id} without "
                                  "naming them" for own in job.owners for i in own}
                rejected.update({job.keys[i]: reason for i, reason in refused.items()})
        except DestinationError as exc:
            return Finish("unknown", reason=f"the import jobs' outcome could not be read: {exc}")
        return Finish("applied", rejected=rejected)

    def _submit_jobs(self, profiles, owners, identities, rows: pa.Table, result: BatchResult) -> list[_Job]:
        """Submit the profiles in jobs within Klaviyo's limits (10,000 profiles, 5 MB); each journalled at once."""
        keys = rows[KEY].to_pylist()
        encoded = [_dump(p) for p in profiles]
        jobs, chunk, size = [], [], 0
        budget = MAX_JOB_BYTES - 1024  # the job's own envelope

        def flush():
            if chunk:
                job_id = self.client._submit(self.ctx.audience_id, [encoded[n] for n in chunk])
                job = _Job(job_id, [owners[n] for n in chunk], [identities[n] for n in chunk], keys)
                self.open_jobs[job_id] = job
                self._journal()
                jobs.append(job)

        for n, data in enumerate(encoded):
            if len(data) > MAX_PROFILE_BYTES:
                reason = f"the profile is {len(data):,} bytes; Klaviyo takes at most {MAX_PROFILE_BYTES:,} per profile"
                result.rejected.update(dict.fromkeys(owners[n], reason))
                continue
            if chunk and (len(chunk) >= MAX_PROFILES or size + len(data) + 1 > budget):
                flush()
                chunk, size = [], 0
            chunk.append(n)
            size += len(data) + 1
        flush()
        return jobs
