"""`meta_custom_audiences`: Meta (Facebook) Custom Audiences through the Marketing API.

Members are added with POST and removed with DELETE on `/{audience_id}/users`,
at most 10,000 rows a request, identifiers normalised and SHA-256 hashed by
Meta's rules (`identifiers.meta`). Meta signals throttles in the body (error
codes 4, 17, 341, 613, 80000-80014) rather than with HTTP 429.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import ClassVar, Literal

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from audience_pipelines.destinations.base import BatchContext, BatchResult, Capabilities, Destination, Target
from audience_pipelines.destinations.http import HttpClient
from audience_pipelines.engine.diff import KEY, KEY_HASH, ROW_HASH
from audience_pipelines.engine.errors import DestinationError
from audience_pipelines.identifiers import META_FIELDS, to_meta

THROTTLE_CODES = frozenset({4, 17, 32, 341, 613, *range(80000, 80015)})
FATAL_CODES = frozenset({190, 200, 294, 1487301, 1487366})
MAX_ROWS = 10_000


class MetaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ad_account_id: str
    access_token: str
    app_secret: str | None = None
    base_url: str = "https://graph.facebook.com/v25.0"
    timeout_s: float = 60.0
    customer_file_source: Literal[
        "USER_PROVIDED_ONLY", "PARTNER_PROVIDED_ONLY", "BOTH_USER_AND_PARTNER_PROVIDED"] = "USER_PROVIDED_ONLY"
    batch_size: int = Field(default=MAX_ROWS, ge=1, le=MAX_ROWS)


def _error(response: httpx.Response) -> dict:
    try:
        err = response.json().get("error")
    except ValueError:
        return {}
    return err if isinstance(err, dict) else {}


def throttle_delay(response: httpx.Response) -> float | None:
    """Seconds to wait when Meta says it is throttling (or a transient error), else None."""
    if response.status_code < 400:
        return None
    err = _error(response)
    code = err.get("code")
    if code in THROTTLE_CODES or err.get("is_transient") or code in (1, 2) or response.status_code >= 500:
        usage = response.headers.get("X-Business-Use-Case-Usage")
        try:
            minutes = max(e.get("estimated_time_to_regain_access", 0)
                          for entries in json.loads(usage).values() for e in entries) if usage else 0
        except (ValueError, AttributeError, TypeError):
            minutes = 0
        return minutes * 60.0 if minutes else -1.0  # -1: back off with jitter
    return None


def _sent_columns(rows: pa.Table) -> list[str]:
    return [c for c in rows.column_names if c not in (KEY, KEY_HASH, ROW_HASH)]


def _rows_named(rows: pa.Table, samples: dict) -> dict[int, str]:
    """Positions of the rows holding a value that Meta's invalid_entry_samples names, with its reason."""
    named: dict[int, str] = {}
    for c in _sent_columns(rows):
        hit = pc.is_in(rows[c], value_set=pa.array([str(v) for v in samples], pa.string()))
        for i in np.flatnonzero(np.asarray(hit.fill_null(False), dtype=bool)):
            value = rows[c][int(i)].as_py()
            named.setdefault(int(i), f"Meta invalid entry ({c}): {samples[value]}")
    return named


class MetaCustomAudiencesDestination(Destination):
    type_name = "meta_custom_audiences"
    capabilities: ClassVar[Capabilities] = Capabilities(
        identifier_kinds=frozenset(META_FIELDS), max_batch_rows=MAX_ROWS, accepts_fields=False,
        can_list_audiences=True, hashes_identifiers=True, requires_identifier=True,
        match_identifiers=frozenset({"email", "phone", "external_id", "device_id"}),
    )
    settings_model = MetaSettings
    secret_settings: ClassVar[tuple[str, ...]] = ("access_token", "app_secret")

    def __init__(self, settings: MetaSettings, sleep=time.sleep, clock=time.monotonic):
        self.settings = settings
        self.capabilities = Capabilities(**{**self.__class__.capabilities.__dict__,
                                            "max_batch_rows": settings.batch_size})
        headers = {"Authorization": f"Bearer {settings.access_token}"}
        self.http = HttpClient(settings.base_url.rstrip("/") + "/", timeout_s=settings.timeout_s, headers=headers,
                               throttle_delay=throttle_delay, describe_error=self._describe,
                               name="meta_custom_audiences", sleep=sleep, clock=clock)

    def _redact(self, text: str) -> str:
        """Meta's text with any of our secrets (token, app secret, proof) taken out."""
        for secret in (self.settings.access_token, self.settings.app_secret, self._params().get("appsecret_proof")):
            if secret:
                text = text.replace(secret, "[redacted]")
        return text

    def _describe(self, response: httpx.Response) -> str | None:
        """Meta's error code, subcode and message: the HTTP status (400 for most) does not say why."""
        err = _error(response)
        if not err:
            return None
        code, sub = err.get("code"), err.get("error_subcode")
        text = f"Meta error code {code}" + (f" (subcode {sub})" if sub is not None else "")
        if err.get("message"):
            text += f": {err['message']}"
        return self._redact(text)

    def _params(self) -> dict[str, str]:
        if not self.settings.app_secret:
            return {}
        proof = hmac.new(self.settings.app_secret.encode(), self.settings.access_token.encode(), hashlib.sha256)
        return {"appsecret_proof": proof.hexdigest()}

    def _call(self, method: str, path: str, **kwargs) -> dict:
        response = self.http.request(method, path, params={**self._params(), **kwargs.pop("params", {})}, **kwargs)
        if response.status_code >= 400:
            err = _error(response)
            code, sub = err.get("code"), err.get("error_subcode")
            described = self._describe(response) or self._redact(response.text[:200])
            message = f"HTTP {response.status_code} on {method} {path.split('?')[0]}: {described}"
            fatal = code in FATAL_CODES or (code == 100 and sub in (33, 1713230))
            raise DestinationError(message, status=response.status_code, fatal=fatal)
        return response.json()

    def identifier_column(self, kind: str) -> str:
        return META_FIELDS[kind]

    def transform_identifier(self, kind: str, canonical: pa.Array) -> pa.Array:
        return to_meta(kind, canonical)

    def resolve_target(self, target: Target) -> str:
        if target.id:
            self._call("GET", target.id, params={"fields": "id,name"})
            return target.id
        act = f"act_{self.settings.ad_account_id}/customaudiences"
        params = {"fields": "id,name", "limit": "200"}
        while True:
            page = self._call("GET", act, params=params)
            for audience in page.get("data", []):
                if audience.get("name") == target.name:
                    return str(audience["id"])
            after = page.get("paging", {}).get("cursors", {}).get("after")
            if not after or not page.get("paging", {}).get("next"):
                break
            params = {**params, "after": after}
        created = self._call("POST", act, json={
            "name": target.name, "subtype": "CUSTOM", "description": "Managed by audience_pipelines",
            "customer_file_source": self.settings.customer_file_source})
        return str(created["id"])

    def _payload(self, method: str, rows: pa.Table, ctx: BatchContext) -> dict:
        cols = _sent_columns(rows)
        data = [["" if v is None else v for v in row] for row in zip(*(rows[c].to_pylist() for c in cols))]
        # One session per operation and method; a part of a batch sent again gets its own.
        scope = ctx.request_id if ctx.part else f"{ctx.sync}:{ctx.run_id}"
        session = {"session_id": int(hashlib.sha256(f"{scope}:{ctx.operation}:{method}".encode()).hexdigest()[:15], 16),
                   "batch_seq": 1 if ctx.part else ctx.seq, "last_batch_flag": bool(ctx.part) or ctx.last}
        return {"payload": {"schema": cols, "data": data}, "session": session}

    def _users(self, method: str, audience_id: str, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        if rows.num_rows == 0:
            return BatchResult()
        body = self._call(method, f"{audience_id}/users", json=self._payload(method, rows, ctx))
        received = int(body.get("num_received") or 0)
        invalid = int(body.get("num_invalid_entries") or 0)
        result = BatchResult(stats={"num_received": received, "num_invalid_entries": invalid})
        # Meta names at most a few invalid entries (value -> reason); the rest are only counted.
        samples = body.get("invalid_entry_samples") or {}
        if invalid and isinstance(samples, dict):
            result.rejected = _rows_named(rows, samples)
        missing = max(0, rows.num_rows - received) if "num_received" in body else 0
        result.unapplied = max(0, invalid - len(result.rejected)) + missing
        if result.unapplied:
            reasons = sorted({str(r) for r in samples.values()}) if isinstance(samples, dict) else []
            result.unapplied_reason = (f"Meta did not apply the row (num_invalid_entries {invalid}, "
                                       f"num_received {received} of {rows.num_rows})"
                                       + (f"; reasons given: {'; '.join(reasons)[:200]}" if reasons else ""))
        return result

    def add(self, audience_id: str, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        return self._users("POST", audience_id, rows, ctx)

    def remove(self, audience_id: str, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        return self._users("DELETE", audience_id, rows, ctx)

    def update(self, audience_id: str, rows: pa.Table, previous: pa.Table, ctx: BatchContext) -> BatchResult:
        # An identifier changed: take the old values out, then add the new ones. A member whose
        # old values were not taken out is not updated: the next run withdraws them again.
        withdrawn = self._users("DELETE", audience_id, previous, ctx)
        added = self._users("POST", audience_id, rows, ctx)
        position = {k: i for i, k in enumerate(rows[KEY].to_pylist())}
        prev_keys = previous[KEY].to_pylist()
        for i, reason in withdrawn.rejected.items():
            added.rejected.setdefault(position[prev_keys[i]], f"old values not withdrawn: {reason}")
        added.unapplied += withdrawn.unapplied
        added.unapplied_reason = added.unapplied_reason or withdrawn.unapplied_reason
        for k, v in withdrawn.stats.items():
            added.stats[k] = added.stats.get(k, 0) + v
        return added

    def audience_size(self, audience_id: str) -> int | None:
        body = self._call("GET", audience_id, params={"fields": "approximate_count_lower_bound"})
        value = body.get("approximate_count_lower_bound")
        return int(value) if value is not None else None

    def close(self) -> None:
        self.http.close()
