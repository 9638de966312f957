"""The `x_ads` client: X (Twitter) Ads custom audiences, API v12.

Members are added with an `Update` operation and removed with a `Delete` operation, POSTed as a
JSON array to `accounts/{account}/custom_audiences/{id}/users`. We send one operation a request,
its `params.users` holding the batch's users (at most `batch_size`, 2,500 by default), and split a
request further when its body would pass `max_body_bytes` (4,000,000; X takes 5,000,000). X counts
its 2,500 limit in operation objects, so one operation a request never reaches it, and a request
stays a unit that X applies or refuses whole.

X answers `{"data": {"success_count", "total_count"}}`; both must equal the users sent, else the
batch is refused as a whole and sent again next run. A refused request names its item-level errors
under `operation_errors` [unverified shape]: errors that point at a user (`users[3]` in `parameter`,
or a `user_index`) reject that row and the rest is sent again at once; errors that name no user
refuse the batch (`RowsRefused`) and the engine finds the rows to blame.

Auth is OAuth 1.0a (HMAC-SHA1, `oauth1.py`), each attempt signed afresh. X throttles with HTTP 429
and the `x-rate-limit-reset` / `x-account-rate-limit-reset` headers (epoch seconds): we wait until
the reset. 503 with `retry-after` and other 5xx are retried by the shared HTTP client.
"""

from __future__ import annotations

import json
import re
import time

import httpx
import pyarrow as pa

from audience_pipelines.contract import (
    AudienceStats, BatchContext, BatchResult, CredentialsError, Destination, DestinationError, MatchListSession,
    RowsRefused, Session, SessionContext, TerminalError, sent_columns,
)
from audience_pipelines.destinations.http import HttpClient, json_object
from audience_pipelines.destinations.oauth import Redactor
from audience_pipelines.destinations.x_ads import XAds, XAdsSettings
from audience_pipelines.destinations.x_ads.oauth1 import OAuth1
from audience_pipelines.identifiers.x import X_FIELDS, to_x

DESCRIPTION = "Managed by audience_pipelines"
CREDENTIAL_SETTINGS = "'consumer_key', 'consumer_secret', 'access_token' and 'access_token_secret'"
NOT_FOUND_CODES = frozenset({"NOT_FOUND", "TAILORED_AUDIENCE_NOT_FOUND", "CUSTOM_AUDIENCE_NOT_FOUND"})
RESET_HEADERS = (("x-rate-limit-reset", "x-rate-limit-remaining"),
                 ("x-account-rate-limit-reset", "x-account-rate-limit-remaining"))
_ID = re.compile(r"^[A-Za-z0-9]+$")
_USER_AT = re.compile(r"users\[(\d+)\]")


def _error_objects(node) -> list[dict]:
    """Every error object ({code, message, ...}) in `errors` or `operation_errors`, however nested."""
    if isinstance(node, dict):
        if "code" in node or "message" in node:
            return [node]
        return [e for v in node.values() for e in _error_objects(v)]
    if isinstance(node, list):
        return [e for v in node for e in _error_objects(v)]
    return []


def throttle_delay(response: httpx.Response, now: float | None = None) -> float | None:
    """Seconds until X's rate-limit window resets, on a 429 that says when; else None (back off)."""
    if response.status_code != 429:
        return None
    resets, exhausted = [], []
    for reset_header, remaining_header in RESET_HEADERS:
        try:
            reset = float(response.headers[reset_header])
        except (KeyError, ValueError):
            continue
        resets.append(reset)
        if response.headers.get(remaining_header, "").strip() == "0":
            exhausted.append(reset)  # the window that ran out is the one to wait for
    if not resets:
        return None
    now = time.time() if now is None else now
    return max(0.0, max(exhausted or resets) - now)


class XAdsDestination(Destination[XAdsSettings]):
    destination_type = XAds

    def __init__(self, settings: XAdsSettings, sleep=time.sleep, clock=time.monotonic, wall_clock=time.time):
        super().__init__(settings)
        secrets = (settings.consumer_secret.value(), settings.access_token.value(),
                   settings.access_token_secret.value())
        self._redact = Redactor(*secrets)
        self._auth = OAuth1(settings.consumer_key, *secrets)
        base = f"{settings.base_url.rstrip('/')}/{settings.api_version.strip('/')}/"
        self.http = HttpClient(base, timeout_s=settings.timeout_s,
                               throttle_delay=lambda r: throttle_delay(r, wall_clock()),
                               describe_error=self._describe, name="x_ads", sleep=sleep, clock=clock)

    # -- calls and errors ----------------------------------------------------------------------
    def _describe(self, response: httpx.Response) -> str | None:
        """X's error codes and messages: the status alone (400 for most) does not say why."""
        body = json_object(response)
        errors = _error_objects(body.get("errors")) + _error_objects(body.get("operation_errors"))
        if not errors:
            return None
        parts = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
                 + (f" (parameter {e['parameter']})" if e.get("parameter") else "") for e in errors[:3]]
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        return self._redact("X " + "; ".join(parts) + more)

    def _error(self, response: httpx.Response, method: str, path: str) -> DestinationError:
        status = response.status_code
        codes = {e.get("code") for e in _error_objects(json_object(response).get("errors"))}
        described = self._describe(response) or self._redact(response.text[:200]) or "no error body"
        message = f"HTTP {status} on {method} {path}: {described}"
        if status == 401:
            return CredentialsError(f"x_ads: X refused the OAuth 1.0a credentials; check the settings "
                                    f"{CREDENTIAL_SETTINGS} ({message})", status=status)
        if status == 403:
            return TerminalError(f"x_ads: the access token's user may not do this in account "
                                 f"{self.settings.account_id} (setting 'account_id'): {message}", status=status)
        if status == 404 or codes & NOT_FOUND_CODES:
            return TerminalError(f"x_ads: {message}", status=status)
        return DestinationError(f"x_ads: {message}", status=status)

    def _call(self, method: str, path: str, params: dict | None = None) -> dict:
        response = self.http.request(method, path, params=params, auth=self._auth)
        if response.status_code >= 400:
            raise self._error(response, method, path)
        return json_object(response)

    def _account_path(self) -> str:
        return f"accounts/{self.settings.account_id}"

    def _audience_path(self, audience_id: str) -> str:
        text = str(audience_id).strip()
        if not _ID.match(text):
            raise TerminalError(f"x_ads: '{audience_id}' is not an X custom audience id (letters and digits)")
        return f"{self._account_path()}/custom_audiences/{text}"

    # -- identifiers -------------------------------------------------------------------------
    def identifier_column(self, kind: str) -> str:
        return X_FIELDS[kind]

    def transform_identifier(self, kind: str, canonical: pa.Array) -> pa.Array:
        return to_x(kind, canonical, self.settings.phone_format)

    # -- audiences ---------------------------------------------------------------------------
    def check_access(self) -> None:
        try:
            self._call("GET", self._account_path())
        except TerminalError as exc:
            if exc.status == 404:
                raise TerminalError(f"x_ads: account {self.settings.account_id} (setting 'account_id') was not found "
                                    f"for these credentials: {exc}", status=404) from None
            raise

    def _get_audience(self, audience_id: str) -> dict:
        path = self._audience_path(audience_id)
        try:
            audience = self._call("GET", path, {"with_deleted": "true"}).get("data") or {}
        except TerminalError as exc:
            if exc.status != 404:
                raise
            raise TerminalError(f"x_ads: custom audience {audience_id} does not exist in account "
                                f"{self.settings.account_id} ({exc})", status=404) from None
        if audience.get("deleted"):
            raise TerminalError(f"x_ads: custom audience {audience_id} ('{audience.get('name')}') was deleted")
        return audience

    def check_audience(self, audience_id: str) -> None:
        self._usable(self._get_audience(audience_id))

    def _usable(self, audience: dict) -> None:
        """Refuse an audience users cannot be written to: not a list audience, or shared read-only."""
        label = f"custom audience {audience.get('id')} ('{audience.get('name')}')"
        if audience.get("audience_type", "CRM") != "CRM":
            raise TerminalError(f"x_ads: {label} is a {audience.get('audience_type')} audience; only CRM (list) "
                                "audiences take users")
        if audience.get("permission_level") == "READ_ONLY":
            raise TerminalError(f"x_ads: {label} is shared with account {self.settings.account_id} read-only")

    def find_audience(self, name: str) -> str | None:
        # `q` is a case-insensitive name prefix (at most 255 characters): the exact name is matched here.
        params = {"q": name[:255], "count": "200"}
        while True:
            page = self._call("GET", f"{self._account_path()}/custom_audiences", params)
            for audience in page.get("data") or []:
                if audience.get("name") == name and not audience.get("deleted"):
                    self._usable(audience)
                    return str(audience["id"])
            cursor = page.get("next_cursor")
            if not cursor:
                return None
            params = {**params, "cursor": str(cursor)}

    def create_audience(self, name: str) -> str:
        # `name` and `description` are query parameters; X wants names unique.
        params = {"name": name, "description": DESCRIPTION}
        try:
            with self.http.once():  # a lost answer is looked up by name next run, never sent twice
                created = self._call("POST", f"{self._account_path()}/custom_audiences", params)
        except DestinationError as exc:
            if exc.fatal:
                raise
            found = self.find_audience(name)  # created elsewhere since the lookup
            if found is None:
                raise
            return found
        return str(created["data"]["id"])

    def audience_stats(self, audience_id: str) -> AudienceStats:
        size = self._get_audience(audience_id).get("audience_size")  # null while X processes the audience
        return AudienceStats(size=int(size) if size is not None else None)

    def open_session(self, ctx: SessionContext) -> Session:
        return _Session(self, ctx.audience_id)

    def close(self) -> None:
        self.http.close()

    # -- members -----------------------------------------------------------------------------
    def users(self, audience_id: str, operation_type: str, rows: pa.Table) -> BatchResult:
        """Send `rows` as users of one `Update` or `Delete` operation, in as many requests as the body cap needs."""
        path = f"{self._audience_path(audience_id)}/users"
        users = _user_objects(rows)
        result = BatchResult(rejected={i: "no identifier left to send" for i, u in enumerate(users) if u is None})
        sent = 0
        for chunk in _chunks([i for i, u in enumerate(users) if u is not None], users, operation_type,
                             self.settings.max_body_bytes):
            sent += self._post_users(path, operation_type, chunk, users, result)
        result.stats = {"x_users_applied": sent}
        return result

    def _post_users(self, path: str, operation_type: str, positions: list[int], users: list[str | None],
                    result: BatchResult) -> int:
        """POST one operation; rows X names in `operation_errors` are rejected and the rest sent again."""
        while positions:
            body = _body_of(operation_type, [users[i] for i in positions])
            response = self.http.request("POST", path, content=body, auth=self._auth,
                                         headers={"Content-Type": "application/json"})
            answer = json_object(response)
            item_errors = _error_objects(answer.get("operation_errors"))
            if response.status_code < 400 and not item_errors:
                data = answer.get("data") or {}
                counts = (data.get("success_count"), data.get("total_count"))
                if counts != (len(positions), len(positions)):
                    raise DestinationError(
                        f"x_ads: X counted success_count {counts[0]} and total_count {counts[1]} for the "
                        f"{len(positions)} users sent; the batch is sent again next run")
                return len(positions)
            if not item_errors:
                raise self._error(response, "POST", path)
            named = {}
            for error in item_errors:
                at = error.get("user_index")
                if at is None and (m := _USER_AT.search(str(error.get("parameter") or ""))):
                    at = m.group(1)
                try:
                    at = int(at)
                except (TypeError, ValueError):
                    continue
                if 0 <= at < len(positions):
                    named.setdefault(positions[at], self._redact(
                        f"X {error.get('code', '')}: {error.get('message', '')}".strip()))
            if not named:  # nothing applied, and X did not say which rows are to blame
                raise RowsRefused(f"x_ads: X refused the {operation_type} operation: "
                                  f"{self._describe(response)}", status=response.status_code)
            result.rejected.update(named)
            positions = [p for p in positions if p not in named]
        return 0


def _user_objects(rows: pa.Table) -> list[str | None]:
    """One user object per row as JSON text (None when the row has no value left): each key an array."""
    cols = {c: rows[c].to_pylist() for c in sent_columns(rows)}
    out: list[str | None] = []
    for i in range(rows.num_rows):
        user = {c: [values[i]] for c, values in cols.items() if values[i]}
        out.append(json.dumps(user, separators=(",", ":")) if user else None)
    return out


def _body_of(operation_type: str, users: list[str]) -> bytes:
    head = json.dumps({"operation_type": operation_type}, separators=(",", ":"))[:-1]
    return f'[{head},"params":{{"users":[{",".join(users)}]}}}}]'.encode()


def _chunks(positions: list[int], users: list[str | None], operation_type: str, max_bytes: int):
    """Positions in runs whose request body stays within `max_bytes`."""
    overhead = len(_body_of(operation_type, []))
    chunk, size = [], overhead
    for p in positions:
        n = len(users[p].encode()) + 1  # the comma
        if chunk and size + n > max_bytes:
            yield chunk
            chunk, size = [], overhead
        chunk.append(p)
        size += n
    if chunk:
        yield chunk


class _Session(MatchListSession):
    """Per batch: `Update` for adds, `Delete` for removes."""

    def add(self, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        return self.destination.users(self.audience_id, "Update", rows)

    def remove(self, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        return self.destination.users(self.audience_id, "Delete", rows)
