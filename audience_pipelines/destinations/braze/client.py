"""The `braze` client.

A member is a Braze user in a partner cohort. Profiles come first: `POST /users/track` creates or
updates each member's user (by `external_id`, else by the user alias {alias_name: <email>,
alias_label: `email_alias_label`}), with the sync's mapped fields as attributes. Then the cohort:
`POST /partners/{partner}/cohorts/users` adds the same users, by external id or alias. The engine
keeps that identifier per member (the record id, `external_id:<id>` or `alias:<label>:<email>`),
so a removal is one cohort change with `should_remove`, never a lookup; users are never deleted.

Braze cannot list or read cohorts. A cohort's id is ours to choose (`POST /partners/{partner}/cohorts`
names it), so it is derived from the audience name: creating it again after a lost answer names the
same cohort, never a second one, and the engine's registry of created audiences resolves names.
A target id can therefore not be checked on Braze; only ids of the form this client creates are
taken. No size is read back (the reference documents no cohort read).

With `create_profiles` false, `POST /users/export/ids` tells which members have a profile: the
others are skipped (`_update_existing_only` alone would have Braze skip them without saying which).
That endpoint is not in the project's reference; its shape follows Braze's own page (at most 50
external ids and aliases a request; `users[]` with `external_id` and `user_aliases`).

Rate limits are per endpoint (`/users/track` 3,000 requests per 3 s, `/users/export/ids` 2,500 a
minute; the cohort endpoints only cap 1,000 ids a request). Braze answers 429 with
`X-RateLimit-Reset` (epoch seconds): the wait runs until then. A response saying an endpoint's
window is spent (`X-RateLimit-Remaining: 0`) holds that endpoint's next request until the reset.

Assumed where the sources are silent: the cohort endpoints answer 2xx on success (no body is
documented); an empty `cohort_changes` is accepted (Segment's credential test sends one); Braze's
cohort filter sees a user tracked a moment before (the cohort change ignores unknown users, and
no source says whether `/users/track` is applied before it answers).
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import re
import time
from collections.abc import Iterable
from urllib.parse import quote, urlsplit

import httpx
import pyarrow as pa
import pyarrow.compute as pc

from audience_pipelines.contract import (
    KEY, RECORD_ID, BatchContext, BatchDestination, BatchResult, CredentialsError, DestinationError, RowsRefused,
    TerminalError, sent_columns,
)
from audience_pipelines.contract.fields import BOOLEAN, DATE, DATETIME, STRING, check_field_kinds
from audience_pipelines.destinations.braze import KINDS, Braze, BrazeSettings
from audience_pipelines.destinations.http import HttpClient, json_object
from audience_pipelines.destinations.oauth import Redactor

TRACK = "/users/track"
EXPORT = "/users/export/ids"
EXPORT_MAX = 50  # external ids + aliases per /users/export/ids request (Braze's page)
COHORT_MAX = 1_000  # ids per cohort change request
COHORT_ID = re.compile(r"audience_pipelines-[0-9a-f]{16}")
# check_access names no real cohort: an empty change to it proves the partner key and data import key.
ACCESS_PROBE = "audience_pipelines-access-check"
NO_DATA = "valid data must be provided"  # Braze's 400 to a /users/track body with nothing in it
NO_PROFILE = "no Braze user with this {} (create_profiles is false)"
MAX_PACE_S = 60.0

# Braze's standard profile attributes with fixed types. Any other name is a custom attribute, which
# takes whatever type it is sent first: those are not checked (kind None).
STANDARD = {
    **dict.fromkeys(("first_name", "last_name", "email", "phone", "home_city", "country", "language",
                     "time_zone", "gender", "email_subscribe", "push_subscribe"), STRING),
    "dob": DATE,
    **dict.fromkeys(("date_of_first_session", "date_of_last_session", "marked_email_as_spam_at"), DATETIME),
    **dict.fromkeys(("email_open_tracking_disabled", "email_click_tracking_disabled"), BOOLEAN),
}
# Keys of an attributes object that identify the user or hold objects a column cannot fill.
RESERVED = frozenset({"external_id", "user_alias", "braze_id", "_update_existing_only", "push_token_import",
                      "current_location", "facebook", "twitter", "push_tokens", "subscription_groups"})


def cohort_id_for(name: str) -> str:
    """The cohort id this client gives the audience `name` (the same name, the same cohort)."""
    return f"audience_pipelines-{hashlib.sha256(name.encode()).hexdigest()[:16]}"


def _value(v):
    """An attribute value as Braze takes it: dates as YYYY-MM-DD, times in ISO 8601, null clears it."""
    if isinstance(v, dt.datetime):
        if v.tzinfo is not None:
            return v.astimezone(dt.timezone.utc).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"
        return v.isoformat()
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    return v


def _parse(record: str) -> tuple[str, str | None, str]:
    """A record id -> ("external_id", None, id) or ("alias", label, name)."""
    kind, _, rest = record.partition(":")
    if kind == "alias":
        label, _, name = rest.partition(":")
        return kind, label, name
    return kind, None, rest


class BrazeDestination(BatchDestination[BrazeSettings]):
    destination_type = Braze

    def __init__(self, settings: BrazeSettings, sleep=time.sleep, clock=time.monotonic, wall_clock=time.time):
        super().__init__(settings)
        self._api_key = settings.api_key.value()
        self._partner_key = settings.partner_api_key.value()
        self._client_secret = settings.client_secret.value()
        self._redact = Redactor(self._api_key, self._partner_key, self._client_secret)
        self._sleep, self._wall = sleep, wall_clock
        self._resets: dict[str, float] = {}  # endpoint -> when its spent window resets (epoch s)
        self._access_checked = False
        self._cohorts = f"/partners/{quote(settings.partner_name, safe='')}/cohorts"
        self.http = HttpClient(settings.rest_endpoint + "/", timeout_s=settings.timeout_s,
                               throttle_delay=self._throttle_delay, describe_error=self._describe, name="braze",
                               sleep=sleep, clock=clock)

    def account(self) -> str:
        # Cohorts belong to a workspace, which only the data import key names: the registry is kept
        # per endpoint, partner and a fingerprint of that key (a hash prefix revealing nothing).
        fp = hashlib.sha256(self._client_secret.encode()).hexdigest()[:12]
        return f"{urlsplit(self.settings.rest_endpoint).netloc}/{self.settings.partner_name}/key-{fp}"

    # -- requests and errors ------------------------------------------------
    def _throttle_delay(self, response: httpx.Response) -> float | None:
        """Seconds until the window resets, on a 429 that says when; else None (Retry-After or backoff)."""
        if response.status_code != 429:
            return None
        try:
            wait = float(response.headers["X-RateLimit-Reset"]) - self._wall()
        except (KeyError, ValueError):
            return None
        return wait if wait > 0 else None

    def _describe(self, response: httpx.Response) -> str | None:
        body = json_object(response)
        if not body.get("message") and not body.get("errors"):
            return None
        text = str(body.get("message") or "error")
        errors = body.get("errors")
        if isinstance(errors, list) and errors:
            text += " (" + "; ".join(str(e.get("type") if isinstance(e, dict) else e) for e in errors[:3]) + ")"
        return self._redact(text)[:400]

    def _said(self, response: httpx.Response, path: str) -> str:
        said = self._describe(response) or self._redact(response.text[:200])
        return f"HTTP {response.status_code} on POST {path}: {said}"

    def _failure(self, response: httpx.Response, path: str) -> str:
        return f"braze: {self._said(response, path)}"

    def _post(self, path: str, body: dict, headers: dict | None = None) -> httpx.Response:
        """POST with retries, holding the request while its endpoint's window is spent."""
        reset = self._resets.pop(path, None)
        if reset is not None and (wait := reset - self._wall()) > 0:
            self._sleep(min(wait, MAX_PACE_S))
        response = self.http.request("POST", path, json=body, headers=headers)
        if response.headers.get("X-RateLimit-Remaining", "").strip() == "0":
            try:
                self._resets[path] = float(response.headers["X-RateLimit-Reset"])
            except (KeyError, ValueError):
                pass
        return response

    def _users(self, path: str, body: dict) -> httpx.Response:
        """A REST API call (the key goes only to these, as a Bearer token)."""
        response = self._post(path, body, {"Authorization": f"Bearer {self._api_key}"})
        if response.status_code in (401, 403, 404):
            # Braze: 401 unknown or missing key, 404 unknown key, 403 plan or permissions.
            raise CredentialsError(f"braze: the setting 'api_key' was refused ({self._said(response, path)}); "
                                   "it must be a REST API key of this workspace with the users.track and "
                                   "users.export.ids permissions", status=response.status_code)
        return response

    def _partner(self, path: str, body: dict) -> httpx.Response:
        """A Cohort Import call: both keys travel in the body."""
        response = self._post(path, {"partner_api_key": self._partner_key, "client_secret": self._client_secret,
                                     **body})
        if response.status_code in (401, 403, 404):
            said = (self._describe(response) or "").lower()
            if "partner api key" in said:
                setting = "'partner_api_key'"
            elif "client secret" in said or "not enabled" in said:
                setting = "'client_secret' (the workspace's data import key for this partner)"
            elif response.status_code == 404:
                setting = "'partner_name' (or 'rest_endpoint')"
            else:
                setting = "'partner_api_key' or 'client_secret'"
            raise CredentialsError(f"braze: the setting {setting} was refused "
                                   f"({self._said(response, path)})", status=response.status_code)
        return response

    def _ok(self, response: httpx.Response, path: str) -> dict:
        if response.status_code >= 400:
            raise DestinationError(self._failure(response, path), status=response.status_code)
        return json_object(response)

    # -- cohorts ---------------------------------------------------------------
    def check_access(self) -> None:
        if self._access_checked:  # the engine may ask twice in a run (before fields are checked, and on opening)
            return
        response = self._users(TRACK, {"attributes": []})
        if response.status_code >= 300 and not (response.status_code == 400 and NO_DATA in
                                                str(json_object(response).get("message", "")).lower()):
            self._ok(response, TRACK)
        response = self._partner(f"{self._cohorts}/users", {"cohort_id": ACCESS_PROBE, "cohort_changes": []})
        if response.status_code >= 500:
            self._ok(response, f"{self._cohorts}/users")
        self._access_checked = True

    def find_audience(self, name: str) -> str | None:
        return None  # Braze cannot list cohorts: names resolve through the registry

    def create_audience(self, name: str) -> str:
        cohort_id = cohort_id_for(name)
        created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        # The id follows from the name, so a repeat after a lost answer only names the same cohort again.
        with self.http.once():
            response = self._partner(self._cohorts, {"cohort_id": cohort_id, "name": name, "created_at": created})
        self._ok(response, self._cohorts)
        return cohort_id

    def check_audience(self, audience_id: str) -> None:
        if not COHORT_ID.fullmatch(audience_id):
            raise TerminalError(f"braze: '{audience_id}' is not a cohort id this project creates "
                                "(audience_pipelines-<16 hex>); Braze cannot list or read cohorts, so a target id "
                                "cannot be checked: give the target by name")

    def _change(self, cohort_id: str, records: Iterable[str], remove: bool) -> None:
        """Add or remove users (record ids) in the cohort; Braze ignores ids of no user."""
        records = list(dict.fromkeys(records))
        path = f"{self._cohorts}/users"
        for lo in range(0, len(records), COHORT_MAX):
            user_ids, aliases = [], []
            for record in records[lo:lo + COHORT_MAX]:
                kind, label, value = _parse(record)
                if kind == "alias":
                    aliases.append({"alias_name": value, "alias_label": label})
                else:
                    user_ids.append(value)
            change: dict = {"user_ids": user_ids} if user_ids else {}
            if aliases:
                change["aliases"] = aliases
            if remove:
                change["should_remove"] = True
            response = self._partner(path, {"cohort_id": cohort_id, "cohort_changes": [change]})
            if response.status_code == 400:  # a shape Braze refused, made from some of the rows
                raise RowsRefused(self._failure(response, path), status=400)
            self._ok(response, path)

    # -- profiles --------------------------------------------------------------
    def check_fields(self, columns: dict[str, pa.DataType]) -> None:
        reserved = sorted(set(columns) & RESERVED)
        if reserved:
            raise TerminalError(f"braze: mapped field(s) {reserved} are attributes-object keys that identify the "
                                "user or hold objects; give them other names")
        # Custom attributes are free-form (any kind); standard ones have fixed types.
        check_field_kinds("braze", columns, {f: STANDARD.get(f) for f in columns})

    def transform_identifier(self, kind: str, canonical: pa.Array) -> pa.Array:
        if kind == "email":  # a pre-hashed email cannot name a Braze user
            return pc.if_else(pc.match_substring(canonical, "@"), canonical, pa.scalar(None, pa.string()))
        return canonical

    def _records(self, rows: pa.Table) -> list[str | None]:
        """The Braze user of each row: its external id, else its email alias."""
        ext = rows["external_id"].to_pylist() if "external_id" in rows.column_names else [None] * rows.num_rows
        email = rows["email"].to_pylist() if "email" in rows.column_names else [None] * rows.num_rows
        label = self.settings.email_alias_label
        return [f"external_id:{x}" if x else f"alias:{label}:{e}" if e else None for x, e in zip(ext, email)]

    def _object(self, record: str, email: str | None, values: dict, i: int, update_only: bool) -> dict:
        kind, label, value = _parse(record)
        obj: dict = {"external_id": value} if kind == "external_id" else \
            {"user_alias": {"alias_name": value, "alias_label": label}}
        obj["_update_existing_only"] = update_only
        if email:
            obj["email"] = email
        for f, column in values.items():
            obj[f] = _value(column[i])
        return obj

    def _track(self, objects: list[dict], positions: list[int], result: BatchResult) -> None:
        """Send attributes objects (one per row position); refused ones go to `result.rejected`."""
        if not objects:
            return
        response = self._users(TRACK, {"attributes": objects})
        body = json_object(response)
        if response.status_code == 400:  # fatal: nothing applied
            named = self._row_errors(body, positions)
            if len(named) < len(positions):  # some rows are to blame, not all of them named
                raise RowsRefused(self._failure(response, TRACK), status=400)
            result.rejected.update(named)
            return
        self._ok(response, TRACK)
        named = self._row_errors(body, positions)
        result.rejected.update(named)
        unnamed = sum(1 for e in body.get("errors") or [] if isinstance(e, dict) and e.get("index") is None
                      and e.get("input_array", "attributes") == "attributes")
        if unnamed:  # errors naming no object: the engine finds the rows by sending parts again
            result.unapplied += min(unnamed, len(positions) - len(named))
            result.unapplied_reason = f"Braze refused attributes objects it did not name: {self._describe(response)}"
        result.stats["profiles_tracked"] = result.stats.get("profiles_tracked", 0) + len(positions) - len(named)

    def _row_errors(self, body: dict, positions: list[int]) -> dict[int, str]:
        out = {}
        for e in body.get("errors") or []:
            if not isinstance(e, dict) or e.get("input_array", "attributes") != "attributes":
                continue
            j = e.get("index")
            if isinstance(j, int) and 0 <= j < len(positions):
                out[positions[j]] = self._redact(f"Braze refused the user's attributes: {e.get('type') or e}")[:300]
        return out

    def _existing(self, records: list[str]) -> set[str]:
        """Which of these users Braze has (/users/export/ids, 50 ids a request)."""
        unique = list(dict.fromkeys(records))
        found: set[str] = set()
        for lo in range(0, len(unique), EXPORT_MAX):
            body: dict = {"fields_to_export": ["external_id", "user_aliases"]}
            for record in unique[lo:lo + EXPORT_MAX]:
                kind, label, value = _parse(record)
                if kind == "alias":
                    body.setdefault("user_aliases", []).append({"alias_name": value, "alias_label": label})
                else:
                    body.setdefault("external_ids", []).append(value)
            answer = self._ok(self._users(EXPORT, body), EXPORT)
            for user in answer.get("users") or []:
                if user.get("external_id"):
                    found.add(f"external_id:{user['external_id']}")
                for alias in user.get("user_aliases") or []:
                    found.add(f"alias:{alias.get('alias_label')}:{alias.get('alias_name')}")
        return found & set(unique)

    # -- batches ---------------------------------------------------------------
    def add(self, audience_id: str, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        result = BatchResult()
        create = self.settings.create_profiles if ctx.create_profiles is None else ctx.create_profiles
        records = self._records(rows)
        emails = rows["email"].to_pylist() if "email" in rows.column_names else [None] * rows.num_rows
        values = {c: rows[c].to_pylist() for c in sent_columns(rows) if c not in KINDS}
        existing = None if create else self._existing([r for r in records if r])
        objects, positions = [], []
        for i, record in enumerate(records):
            if record is None:
                result.rejected[i] = "no external_id or email to name the Braze user by"
            elif existing is not None and record not in existing:
                result.skipped[i] = NO_PROFILE.format("external id" if record.startswith("external_id:") else
                                                      f"alias ({self.settings.email_alias_label})")
            elif create or values or emails[i]:  # an existing user with nothing to write is left alone
                objects.append(self._object(record, emails[i], values, i, update_only=not create))
                positions.append(i)
        self._track(objects, positions, result)
        members = {i: r for i, r in enumerate(records)
                   if r is not None and i not in result.rejected and i not in result.skipped}
        self._change(audience_id, members.values(), remove=False)
        result.record_ids.update(members)
        return result

    def update(self, audience_id: str, rows: pa.Table, previous: pa.Table | None, ctx: BatchContext) -> BatchResult:
        result = self.add(audience_id, rows, ctx)  # attributes tracked again; adding a member twice is harmless
        if previous is None or previous.num_rows == 0:
            return result
        # `previous`: members whose identifiers changed. Their old user leaves the cohort once the new one is in.
        position = {k: i for i, k in enumerate(rows[KEY].to_pylist())}
        keys = previous[KEY].to_pylist()
        old = {j: r for j, r in self._withdrawable(previous, result).items()
               if position.get(keys[j]) in result.record_ids and r != result.record_ids[position[keys[j]]]}
        if not old:
            return result
        try:
            self._change(audience_id, old.values(), remove=True)
        except DestinationError as exc:
            if exc.fatal:
                raise
            for j in old:
                result.record_ids.pop(position[keys[j]], None)
                result.rejected[position[keys[j]]] = f"the old Braze user was not taken out of the cohort: {exc}"
        return result

    def remove(self, audience_id: str, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        result = BatchResult()
        self._change(audience_id, self._withdrawable(rows, result).values(), remove=True)
        return result

    def _withdrawable(self, rows: pa.Table, result: BatchResult) -> dict[int, str]:
        """Row position -> the user to take out of the cohort: the kept record id (else the row's own).

        The engine blanks identifier values a current member still sends; a record whose value was
        blanked is a user some current member still is, so it stays in the cohort.
        """
        kept = rows[RECORD_ID].to_pylist() if RECORD_ID in rows.column_names else [None] * rows.num_rows
        derived = self._records(rows)
        columns = {k: rows[k].to_pylist() for k in KINDS if k in rows.column_names}
        out = {}
        for i, record in enumerate(kept):
            record = record or derived[i]
            if record is None:
                continue
            kind = "external_id" if record.startswith("external_id:") else "email"
            if kind in columns and columns[kind][i] is None:
                result.stats["shared_users_kept"] = result.stats.get("shared_users_kept", 0) + 1
                continue
            out[i] = record
        return out

    def close(self) -> None:
        self.http.close()
