"""The `google_ads` client: Customer Match through offline user data jobs.

A run is one job per user list: created at the first batch (and journalled at once), filled
with `addOperations` (create / remove UserData, partial failure on, so one bad row does not sink
its request), then `:run` and polled with GAQL until SUCCESS or FAILED. Staged rows are pending
until then: a job that never runs applies nothing, so a run cut short abandons it and the next
run sends its rows again.

Auth is OAuth2: the refresh token is exchanged for an access token at first use and again when
it expires (or Google answers OAUTH_TOKEN_EXPIRED). Google throttles with HTTP 429
RESOURCE_EXHAUSTED and a `retryDelay`; CONCURRENT_MODIFICATION comes as 400 or 409 and is
retried like a throttle.
"""

from __future__ import annotations

import re
import time

import httpx
import pyarrow as pa

from audience_pipelines.contract import (
    APPLIED, KEY, AudienceStats, BatchContext, BatchResult, CredentialsError, Destination, DestinationError, Finish,
    Recovery, Session, SessionContext, TerminalError, sent_columns,
)
from audience_pipelines.destinations.google_ads import MAX_IDENTIFIERS_PER_REQUEST, GoogleAds, GoogleAdsSettings
from audience_pipelines.destinations.http import HttpClient
from audience_pipelines.destinations.oauth import Redactor, RefreshingToken
from audience_pipelines.identifiers.google import ADDRESS_KINDS, GOOGLE_FIELDS, to_google

DESCRIPTION = "Managed by audience_pipelines"
DEVELOPER_TOKEN_CODES = frozenset({"DEVELOPER_TOKEN_INVALID", "DEVELOPER_TOKEN_PARAMETER_MISSING",
                                   "DEVELOPER_TOKEN_NOT_APPROVED", "DEVELOPER_TOKEN_PROHIBITED",
                                   "DEVELOPER_TOKEN_NOT_ON_ALLOWLIST"})
ACCESS_TOKEN_CODES = frozenset({"OAUTH_TOKEN_EXPIRED", "OAUTH_TOKEN_INVALID"})
CUSTOMER_CODES = frozenset({"USER_PERMISSION_DENIED", "CUSTOMER_NOT_ENABLED", "INVALID_CUSTOMER_ID",
                            "INVALID_LOGIN_CUSTOMER_ID_SERVING_CUSTOMER_ID_COMBINATION"})
# Errors no later request of this run would escape.
TERMINAL_CODES = frozenset({"INVALID_USER_LIST_ID", "RESOURCE_NOT_FOUND", "INCOMPATIBLE_UPLOAD_KEY_TYPE",
                            "ACTION_NOT_PERMITTED", "NOT_ADS_USER", "CUSTOMER_NOT_FOUND"})
DONE = ("SUCCESS", "FAILED")
ADDRESS_FIELDS = tuple(GOOGLE_FIELDS[k] for k in ADDRESS_KINDS)
SINGLE_FIELDS = ("hashedEmail", "hashedPhoneNumber", "mobileId", "thirdPartyUserId")
_RESOURCE = re.compile(r"^customers/(\d+)/userLists/(\d+)$")


def _error_body(response: httpx.Response) -> tuple[dict, list[dict]]:
    """Google's `error` object and the GoogleAdsErrors in its GoogleAdsFailure detail."""
    try:
        body = response.json()
    except ValueError:
        return {}, []
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return {}, []
    return err, _failure_errors(err)


def _failure_errors(status: dict) -> list[dict]:
    out = []
    for detail in status.get("details") or []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("GoogleAdsFailure"):
            out += [e for e in detail.get("errors") or [] if isinstance(e, dict)]
    return out


def _code(error: dict) -> tuple[str, str]:
    """("authenticationError", "OAUTH_TOKEN_EXPIRED") from a GoogleAdsError's oneof errorCode."""
    code = error.get("errorCode")
    if isinstance(code, dict) and code:
        kind, value = next(iter(code.items()))
        return str(kind), str(value)
    return "", ""


def _codes(errors: list[dict]) -> set[str]:
    return {_code(e)[1] for e in errors}


def _seconds(duration) -> float | None:
    """A proto Duration as JSON ("30s", "1.5s") in seconds."""
    try:
        return max(0.0, float(str(duration).strip().removesuffix("s")))
    except ValueError:
        return None


def throttle_delay(response: httpx.Response) -> float | None:
    """Seconds to wait when Google throttles or asks for a retry (-1: back off with jitter), else None."""
    status = response.status_code
    if status < 400:
        return None
    err, errors = _error_body(response)
    quota = status == 429 or any(_code(e)[0] == "quotaError" for e in errors)
    if quota:
        for e in errors:
            details = e.get("details") if isinstance(e.get("details"), dict) else {}
            delay = _seconds((details.get("quotaErrorDetails") or {}).get("retryDelay"))
            if delay is not None:
                return delay
        return -1.0
    # Two writers touched the same list at once: Google asks for a retry (400 or 409 ABORTED).
    if "CONCURRENT_MODIFICATION" in _codes(errors) or status == 409 or status >= 500:
        return -1.0
    return None


def _gaql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class GoogleAdsDestination(Destination[GoogleAdsSettings]):
    destination_type = GoogleAds

    def __init__(self, settings: GoogleAdsSettings, sleep=time.sleep, clock=time.monotonic):
        super().__init__(settings)
        self._developer_token = settings.developer_token.value()
        self.sleep, self.clock = sleep, clock
        self.oauth = RefreshingToken(
            name="google_ads", token_url=settings.token_url, refresh_token=settings.refresh_token.value(),
            client_id=settings.client_id, client_secret=settings.client_secret.value(),
            endpoint="Google's token endpoint", timeout_s=settings.timeout_s, sleep=sleep, clock=clock)
        self._redact = Redactor(self._developer_token, self.oauth.redact)
        base = f"{settings.base_url.rstrip('/')}/{settings.api_version.strip('/')}/"
        self.http = HttpClient(base, timeout_s=settings.timeout_s, throttle_delay=throttle_delay,
                               describe_error=self._describe, name="google_ads", sleep=sleep, clock=clock)

    # -- secrets and error text ---------------------------------------------------------
    def _describe(self, response: httpx.Response) -> str | None:
        """Google's error codes and messages: the HTTP status alone (400 for most) does not say why."""
        err, errors = _error_body(response)
        if not err:
            return None
        if errors:
            parts = []
            for e in errors[:3]:
                kind, code = _code(e)
                parts.append(f"{kind} {code}: {e.get('message', '')}".strip())
            text = "; ".join(parts) + (f" (and {len(errors) - 3} more)" if len(errors) > 3 else "")
        else:
            text = f"{err.get('status', '')}: {err.get('message', '')}"
        return self._redact(f"Google Ads {text}")

    def _headers(self) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.oauth.get()}", "developer-token": self._developer_token}
        if self.settings.login_customer_id:
            headers["login-customer-id"] = self.settings.login_customer_id
        return headers

    # -- calls -------------------------------------------------------------------------------
    def _call(self, path: str, body: dict) -> dict:
        """POST to the API; errors by kind. An expired access token is renewed once."""
        for attempt in (1, 2):
            response = self.http.request("POST", path, json=body, headers=self._headers())
            if response.status_code < 400:
                return response.json() if response.content else {}
            _, errors = _error_body(response)
            if attempt == 1 and response.status_code == 401 and _codes(errors) & ACCESS_TOKEN_CODES:
                self.oauth.invalidate()
                continue
            raise self._error(response, path, errors)
        raise AssertionError("unreachable")

    def _error(self, response: httpx.Response, path: str, errors: list[dict]) -> DestinationError:
        status = response.status_code
        described = self._describe(response) or self._redact(response.text[:200])
        message = f"HTTP {status} on POST {path}: {described}"
        codes = _codes(errors)
        if codes & DEVELOPER_TOKEN_CODES:
            return CredentialsError(f"google_ads: the setting 'developer_token' was refused: {message}", status=status)
        if codes & CUSTOMER_CODES:
            return CredentialsError(
                f"google_ads: the credentials may not act on customer {self.settings.customer_id}: check the settings "
                f"'customer_id' and 'login_customer_id' (the manager account, where the list lives in a client "
                f"account): {message}", status=status)
        if codes & ACCESS_TOKEN_CODES or any(_code(e)[0] == "authenticationError" for e in errors) or status == 401:
            return CredentialsError(f"google_ads: the access token from the setting 'refresh_token' was refused: "
                                    f"{message}", status=status)
        if codes & TERMINAL_CODES or status in (403, 404):
            return TerminalError(message, status=status)
        return DestinationError(message, status=status)

    def _customer(self) -> str:
        return f"customers/{self.settings.customer_id}"

    def _search(self, query: str):
        """Every row of a GAQL query, page by page."""
        body = {"query": query}
        while True:
            page = self._call(f"{self._customer()}/googleAds:search", body)
            yield from page.get("results") or []
            token = page.get("nextPageToken")
            if not token:
                return
            body = {"query": query, "pageToken": token}

    # -- identifiers -------------------------------------------------------------------------
    def identifier_column(self, kind: str) -> str:
        return GOOGLE_FIELDS[kind]

    def transform_identifier(self, kind: str, canonical: pa.Array) -> pa.Array:
        return to_google(kind, canonical)

    # -- audiences ---------------------------------------------------------------------------
    def check_access(self) -> None:
        # The exchange and a cheap search: bad credentials fail before anything is created or sent.
        self.oauth.get()
        for _ in self._search("SELECT user_list.id FROM user_list LIMIT 1"):
            break

    def _resource(self, audience_id: str) -> str:
        text = str(audience_id).strip()
        if text.isdigit():
            return f"{self._customer()}/userLists/{text}"
        m = _RESOURCE.match(text)
        if m and m.group(1) == self.settings.customer_id:
            return text
        raise TerminalError(f"google_ads: '{audience_id}' is not a user list id of customer "
                            f"{self.settings.customer_id} (digits, or customers/<id>/userLists/<id>)")

    _LIST_FIELDS = ("user_list.id, user_list.name, user_list.resource_name, user_list.type, user_list.read_only, "
                    "user_list.crm_based_user_list.upload_key_type")

    def _usable(self, user_list: dict) -> None:
        """Refuse a list this destination cannot fill: another kind, or another upload key type."""
        lid, name = user_list.get("id"), user_list.get("name")
        if user_list.get("type", "CRM_BASED") != "CRM_BASED":
            raise TerminalError(f"google_ads: user list {lid} ('{name}') is a {user_list.get('type')} list, "
                                "not a Customer Match (CRM_BASED) list")
        if user_list.get("readOnly"):
            raise TerminalError(f"google_ads: user list {lid} ('{name}') is read-only for customer "
                                f"{self.settings.customer_id}")
        key = (user_list.get("crmBasedUserList") or {}).get("uploadKeyType")
        if key and key != self.settings.upload_key_type:
            raise TerminalError(f"google_ads: user list {lid} ('{name}') takes {key} identifiers but the "
                                f"destination's upload_key_type is {self.settings.upload_key_type}")

    def check_audience(self, audience_id: str) -> None:
        resource = self._resource(audience_id)
        rows = list(self._search(f"SELECT {self._LIST_FIELDS} FROM user_list "
                                 f"WHERE user_list.resource_name = {_gaql_string(resource)}"))
        if not rows:
            raise TerminalError(f"google_ads: user list {audience_id} does not exist in customer "
                                f"{self.settings.customer_id}")
        self._usable(rows[0].get("userList") or {})

    def find_audience(self, name: str) -> str | None:
        query = f"SELECT {self._LIST_FIELDS} FROM user_list WHERE user_list.type = 'CRM_BASED'"
        if name.isprintable():  # a GAQL string cannot hold a line break: list them all then
            query += f" AND user_list.name = {_gaql_string(name)}"
        for row in self._search(query):
            user_list = row.get("userList") or {}
            if user_list.get("name") == name:
                self._usable(user_list)
                return str(user_list["id"])
        return None

    def create_audience(self, name: str) -> str:
        settings = self.settings
        crm = {"uploadKeyType": settings.upload_key_type}
        if settings.upload_key_type == "MOBILE_ADVERTISING_ID":
            if not settings.app_id:
                raise TerminalError("google_ads: creating a MOBILE_ADVERTISING_ID list needs the setting 'app_id'")
            crm["appId"] = settings.app_id
        body = {"operations": [{"create": {
            "name": name, "description": DESCRIPTION, "membershipLifeSpan": settings.membership_life_span_days,
            "crmBasedUserList": crm}}]}
        try:
            with self.http.once():  # a lost answer is looked up by name next run, never sent twice
                created = self._call(f"{self._customer()}/userLists:mutate", body)
        except DestinationError as exc:
            if "NAME_ALREADY_USED" not in str(exc):
                raise
            # Created elsewhere since the lookup: use it when it is a list we can fill.
            found = self.find_audience(name)
            if found is None:
                raise TerminalError(f"google_ads: a user list named '{name}' exists but is not a Customer Match "
                                    "list; choose another name") from exc
            return found
        return created["results"][0]["resourceName"].rsplit("/", 1)[1]

    def audience_stats(self, audience_id: str) -> AudienceStats | None:
        resource = self._resource(audience_id)
        rows = list(self._search("SELECT user_list.size_for_search, user_list.match_rate_percentage FROM user_list "
                                 f"WHERE user_list.resource_name = {_gaql_string(resource)}"))
        if not rows:
            return None
        user_list = rows[0].get("userList") or {}
        size = user_list.get("sizeForSearch")  # int64: a JSON string
        rate = user_list.get("matchRatePercentage")  # a percentage, 0-100
        return AudienceStats(size=int(size) if size is not None else None,
                             match_rate=float(rate) / 100 if rate is not None else None)

    # -- jobs ------------------------------------------------------------------------------
    def open_session(self, ctx: SessionContext) -> Session:
        return _JobSession(self, ctx)

    def _create_job(self, audience_id: str) -> str:
        consent = {"adUserData": self.settings.ad_user_data, "adPersonalization": self.settings.ad_personalization}
        body = {"job": {"type": "CUSTOMER_MATCH_USER_LIST", "customerMatchUserListMetadata": {
            "userList": self._resource(audience_id), "consent": consent}}}
        return str(self._call(f"{self._customer()}/offlineUserDataJobs:create", body)["resourceName"])

    def _job_status(self, job: str) -> tuple[str, str]:
        """(status, failure_reason) of a job; status NOT_FOUND when Google does not know it."""
        rows = list(self._search(
            "SELECT offline_user_data_job.resource_name, offline_user_data_job.status, "
            "offline_user_data_job.failure_reason FROM offline_user_data_job "
            f"WHERE offline_user_data_job.resource_name = {_gaql_string(job)}"))
        if not rows:
            return "NOT_FOUND", ""
        view = rows[0].get("offlineUserDataJob") or {}
        return str(view.get("status", "UNSPECIFIED")), str(view.get("failureReason", "") or "")

    def _wait(self, job: str) -> tuple[str, str]:
        """Poll a job every poll_interval_s until it ends or poll_timeout_s has passed."""
        started = self.clock()
        while True:
            status, reason = self._job_status(job)
            left = self.settings.poll_timeout_s - (self.clock() - started)
            if status in DONE or status == "NOT_FOUND" or left <= 0:
                return status, reason
            self.sleep(min(self.settings.poll_interval_s, left))

    def recover(self, audience_id: str, state: dict) -> Recovery:
        job = state.get("job")
        if not job:
            return Recovery("no job was created; nothing to settle")
        if state.get("stage") != "running":
            return Recovery(f"job {job} never ran; abandoned, nothing was applied")
        try:
            status, reason = self._wait(job)
        except DestinationError as exc:
            return Recovery(f"job {job} may still be running (its status could not be read: {exc}); "
                            "its rows are sent again", settled=False)
        if status == "PENDING":  # :run never reached Google
            return Recovery(f"job {job} never ran; abandoned, nothing was applied")
        if status == "NOT_FOUND":
            return Recovery(f"job {job} is unknown to Google; nothing to settle")
        if status in DONE:
            return Recovery(f"job {job} ended {status}" + (f" ({reason})" if reason else ""))
        return Recovery(f"job {job} still {status} after {self.settings.poll_timeout_s:g} s; its rows are sent "
                        "again", settled=False)

    def close(self) -> None:
        self.http.close()
        self.oauth.close()


def _user_data(rows: pa.Table) -> list[dict | None]:
    """One UserData per row (None where nothing is left to send), one UserIdentifier per identifier."""
    cols = {c: rows[c].to_pylist() for c in sent_columns(rows)}
    out: list[dict | None] = []
    for i in range(rows.num_rows):
        ids = [{f: cols[f][i]} for f in SINGLE_FIELDS if f in cols and cols[f][i]]
        # Google matches name + address only with all four parts; a part alone is not sent.
        if all(f in cols and cols[f][i] for f in ADDRESS_FIELDS):
            ids.append({"addressInfo": {f: cols[f][i] for f in ADDRESS_FIELDS}})
        out.append({"userIdentifiers": ids} if ids else None)
    return out


class _JobSession(Session):
    """One offline user data job for the run: operations staged per batch, applied when it runs."""

    def __init__(self, client: GoogleAdsDestination, ctx: SessionContext):
        self.client, self.ctx = client, ctx
        self.job: str | None = None

    def _ensure_job(self) -> str:
        if self.job is None:
            self.job = self.client._create_job(self.ctx.audience_id)
            # Journalled at once: a run that dies from here on leaves a job to settle or abandon.
            self.ctx.save_state({"job": self.job, "stage": "created"})
        return self.job

    def send(self, operation: str, rows: pa.Table, previous: pa.Table | None, ctx: BatchContext) -> BatchResult:
        kind = "remove" if operation == "remove" else "create"
        rejected: dict[int, str] = {}
        # (operation, row position, withdraws old values)
        ops: list[tuple[dict, int, bool]] = []
        new = []
        for i, data in enumerate(_user_data(rows)):
            if data is None:
                rejected[i] = ("no identifier left to send (name and address go only together: first_name, "
                               "last_name, country and zip)")
            else:
                new.append(({kind: data}, i, False))
        if operation == "update" and previous is not None and previous.num_rows:
            # The old values go first, in the same request: the job applies operations in order.
            position = {k: i for i, k in enumerate(rows[KEY].to_pylist())}
            for key, data in zip(previous[KEY].to_pylist(), _user_data(previous)):
                if data is not None and key in position and position[key] not in rejected:
                    ops.append(({"remove": data}, position[key], True))
        ops += new
        staged = 0
        if ops:
            job = self._ensure_job()
            for chunk in _chunks(ops):
                body = {"operations": [op for op, _, _ in chunk], "enablePartialFailure": True}
                answer = self.client._call(f"{job}:addOperations", body)
                failed = _failed_operations(answer, len(chunk))
                for index, reason in failed.items():
                    _, pos, withdraws = chunk[index]
                    rejected.setdefault(pos, f"old values not withdrawn: {reason}" if withdraws else reason)
                staged += len(chunk) - len(failed)
        return BatchResult(rejected=rejected, pending=True, stats={"job_operations": staged})

    def finish(self, complete: bool) -> Finish:
        if self.job is None:
            return APPLIED  # nothing was staged
        job = self.job
        if not complete:
            return Finish("failed", reason=f"job {job} abandoned before it ran; nothing was applied")
        # Journalled before :run, so a lost answer is settled by polling, never taken as "never ran".
        self.ctx.save_state({"job": job, "stage": "running"})
        try:
            self.client._call(f"{job}:run", {})
        except DestinationError as exc:
            # The run may have landed and only its answer been lost (a retry then hears
            # JOB_ALREADY_STARTED): the job's status says which.
            status, _ = self.client._job_status(job)
            if status in ("PENDING", "NOT_FOUND"):
                return Finish("failed", reason=f"job {job} could not be run ({exc}); nothing was applied")
        try:
            status, reason = self.client._wait(job)
        except DestinationError as exc:
            return Finish("unknown", reason=f"the status of job {job} could not be read: {exc}")
        if status == "SUCCESS":
            return APPLIED
        if status == "FAILED":
            return Finish("failed", reason=f"job {job} failed: {reason or 'no reason given'}")
        return Finish("unknown", reason=f"job {job} still {status} after {self.client.settings.poll_timeout_s:g} s")


def _chunks(ops: list[tuple[dict, int, bool]]):
    """Operations in requests of at most 100,000 identifiers."""
    chunk, count = [], 0
    for item in ops:
        n = len(next(iter(item[0].values()))["userIdentifiers"])
        if chunk and count + n > MAX_IDENTIFIERS_PER_REQUEST:
            yield chunk
            chunk, count = [], 0
        chunk.append(item)
        count += n
    if chunk:
        yield chunk


def _failed_operations(answer: dict, n: int) -> dict[int, str]:
    """Operation index -> Google's reason, from a partialFailureError."""
    status = answer.get("partialFailureError")
    if not isinstance(status, dict) or not status.get("code"):
        return {}
    failed: dict[int, str] = {}
    for error in _failure_errors(status):
        kind, code = _code(error)
        reason = f"Google Ads {kind} {code}: {error.get('message', '')}".strip()
        elements = (error.get("location") or {}).get("fieldPathElements") or []
        index = next((e.get("index") for e in elements if e.get("fieldName") == "operations"), None)
        if isinstance(index, int) and 0 <= index < n:
            failed.setdefault(index, reason)
    if not failed:
        # Failed operations Google did not point at: none of them can be taken as staged.
        text = f"Google Ads partial failure: {status.get('message', '')}"[:500]
        failed = dict.fromkeys(range(n), text)
    return failed
