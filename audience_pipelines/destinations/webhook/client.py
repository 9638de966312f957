"""The `webhook` client.

Body: {"audience": {"id", "name"}, "batch": {"run_id", "seq", "last"},
"added": [...], "updated": [...], "removed": [...], "sent_at"}. A receiver may
answer {"results": [{"index", "status", "error"}]} to reject single rows;
`index` counts across added + updated + removed in that order.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import math
import time

import pyarrow as pa

from audience_pipelines.contract import (
    KEY, BatchContext, BatchDestination, BatchResult, CredentialsError, DestinationError, sent_columns,
)
from audience_pipelines.destinations.http import HttpClient
from audience_pipelines.destinations.webhook import Webhook, WebhookSettings


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    return v


def _records(rows: pa.Table) -> list[dict]:
    out = []
    for r in rows.select([KEY, *sent_columns(rows)]).to_pylist():
        rec = {"id": r.pop(KEY)}
        rec.update({k: _json_value(v) for k, v in r.items()})
        out.append(rec)
    return out


class WebhookDestination(BatchDestination[WebhookSettings]):
    destination_type = Webhook

    def __init__(self, settings: WebhookSettings, sleep=time.sleep):
        super().__init__(settings)
        self.url = settings.url.value()
        self.secret = settings.secret.value() if settings.secret else None
        # No base URL: httpx would append "/" to it, and receivers match the path exactly.
        self.http = HttpClient("", timeout_s=settings.timeout_s, name="webhook", sleep=sleep)

    def _send(self, audience_id: str, ctx: BatchContext, **groups: list[dict]) -> BatchResult:
        body = {
            "audience": {"id": audience_id, "name": audience_id},
            "batch": {"run_id": ctx.run_id, "seq": ctx.seq, "last": ctx.last, **({"part": ctx.part} if ctx.part else {})},
            **{k: v for k, v in groups.items() if v},
            "sent_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        # The key covers sync, run and batch, so a retried or replayed batch is recognised.
        key = hashlib.sha256(ctx.request_id.encode()).hexdigest()
        raw = json.dumps(body, separators=(",", ":"), default=str).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": key, "X-Timestamp": str(int(time.time()))}
        if self.secret:
            sig = hmac.new(self.secret.encode(), raw, hashlib.sha256).hexdigest()
            headers["X-Signature"] = f"sha256={sig}"
        response = self.http.request("POST", self.url, content=raw, headers=headers)
        if response.status_code in (401, 403):
            raise CredentialsError(f"webhook refused the request (HTTP {response.status_code}): check the setting "
                                   "'secret'", status=response.status_code)
        if response.status_code >= 400:
            raise DestinationError(f"webhook answered HTTP {response.status_code}: {response.text[:200]}",
                                   status=response.status_code)
        try:
            results = response.json().get("results") or [] if response.content else []
        except (ValueError, AttributeError):
            results = []
        result = BatchResult()
        ids = {str(rec["id"]): i for i, rec in enumerate(r for g in groups.values() for r in g)}
        for r in results:
            if not isinstance(r, dict) or r.get("status") in (None, "ok", "accepted"):
                continue
            reason = str(r.get("error") or r.get("status"))
            index = r.get("index")
            if not (isinstance(index, int) and 0 <= index < len(ids)):
                index = ids.get(str(r.get("id")))
            if index is not None:
                result.rejected[index] = reason
            else:  # a failure that names no row: the engine finds it
                result.unapplied += 1
                result.unapplied_reason = f"webhook did not apply the row: {reason}"
        return result

    def add(self, audience_id: str, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        return self._send(audience_id, ctx, added=_records(rows))

    def update(self, audience_id: str, rows: pa.Table, previous: pa.Table, ctx: BatchContext) -> BatchResult:
        return self._send(audience_id, ctx, updated=_records(rows))

    def remove(self, audience_id: str, rows: pa.Table, ctx: BatchContext) -> BatchResult:
        return self._send(audience_id, ctx, removed=_records(rows))

    def close(self) -> None:
        self.http.close()
