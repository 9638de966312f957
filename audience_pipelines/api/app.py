"""The HTTP face of the API: routes, bearer auth, body limits, JSON errors and the OpenAPI description."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from fastapi import FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from audience_pipelines.api.auth import Tokens
from audience_pipelines.api.service import ApiError, SyncService
from audience_pipelines.webserver import Webserver

PREFIX = "/api/v1"
PUBLIC = {f"{PREFIX}/openapi.json", f"{PREFIX}/docs", f"{PREFIX}/health"}
MAX_BODY_BYTES = 64 * 1024
log = logging.getLogger("audience_pipelines.api")


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Error(Open):
    error: str
    message: str


class Run(BaseModel):
    run_id: str
    attempt: int
    status: Literal["success", "partial_failure", "error"]
    run_kind: str | None
    sync_mode: str | None
    added: int
    removed: int
    updated: int
    resent: int
    failed: int
    set_aside: int
    skipped: int
    started_at: str
    finished_at: str
    duration_s: float | None
    destination_audience_id: str | None
    error: str | None
    errors: list[Any]
    rejected_rows_file: str | None


class Trigger(BaseModel):
    kind: Literal["schedule", "sensor"]
    name: str
    running: bool


class Sync(BaseModel):
    id: str
    name: str
    config: dict[str, Any]
    audience: str | None
    entity: str | None
    destination: str | None
    destination_type: str | None
    mode: str | None
    defined_in: dict[str, Any]
    editable: bool
    version: str
    status: Literal["active", "paused"]
    trigger: Trigger | None
    runs_in_flight: list[str]
    last_run: Run | None
    last_synced_at: str | None
    next_scheduled_run: str | None
    dagster_url: str


class Page(BaseModel):
    total: int
    limit: int
    offset: int
    next_offset: int | None


class SyncPage(Page):
    items: list[Sync]


class RunPage(Page):
    items: list[Run]


class CodeLocation(Open):
    reloaded: bool


class SyncChanged(BaseModel):
    sync: Sync
    code_location: CodeLocation
    warnings: list[str]


class SyncDeleted(BaseModel):
    deleted: str
    code_location: CodeLocation
    message: str


class Launched(BaseModel):
    sync: str
    run_id: str
    full_resync: bool
    url: str


class Paused(BaseModel):
    sync: Sync
    changed: bool
    trigger: str | None


class Audience(BaseModel):
    name: str
    entity: str | None
    member_count: int | None
    last_evaluated_at: str | None
    syncs: list[str]


class Audiences(BaseModel):
    items: list[Audience]
    total: int


class Destinations(BaseModel):
    configured: list[dict[str, Any]]
    types: list[dict[str, Any]]


ERRORS = {status: {"model": Error, "description": text} for status, text in (
    (401, "No valid bearer token"), (404, "No such sync"), (409, "Conflict: the name exists, a run is in flight, or "
                                                                "the sync is not declared on its own"),
    (412, "If-Match names an old version"), (413, "Body too large"), (422, "Invalid sync, as loading reports it"),
    (428, "If-Match missing"), (502, "The Dagster webserver refused or failed"),
    (503, "The project's definitions do not load"))}


def _sync_schema() -> dict:
    from audience_pipelines.components.sync import AudienceSync

    return AudienceSync.model().model_json_schema(ref_template="#/components/schemas/{model}")


async def _json_body(request: Request) -> dict:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, "body_too_large", f"the body is {int(declared):,} bytes; at most {MAX_BODY_BYTES:,}")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, "body_too_large", f"the body exceeds {MAX_BODY_BYTES:,} bytes")
    try:
        body = json.loads(raw or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_sync", "the body must be a JSON object of sync settings, as a sync's "
                                            "`attributes:` in YAML (name, audience, destination, ...)")
    return body


def _etag(response: Response, sync: dict) -> None:
    response.headers["ETag"] = f'"{sync["version"]}"'


def create_app(defs: Path | None = None, state_root: Path | None = None, webserver: Webserver | None = None,
               tokens: Tokens | None = None, instance: Callable[[], dg.DagsterInstance] | None = None) -> FastAPI:
    """The API over the project's defs folder, state and Dagster instance (each defaults to the project's)."""
    from audience_pipelines.definitions import DEFS
    from audience_pipelines.instance_state import open_instance
    from audience_pipelines.project import state_root as default_state_root

    service = SyncService(defs or DEFS, state_root or default_state_root(), webserver or Webserver(),
                          instance or open_instance)
    tokens = tokens or Tokens.from_environment()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()

    app = FastAPI(title="audience_pipelines API", version="1", lifespan=lifespan,
                  description="Audience syncs over the project's YAML definitions, its run history and Dagster.",
                  openapi_url=f"{PREFIX}/openapi.json", docs_url=f"{PREFIX}/docs", redoc_url=None)
    app.state.service = service

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if tokens.configured and request.url.path not in PUBLIC:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not tokens.accepts(token.strip()):
                return JSONResponse({"error": "unauthorized", "message": "send a valid token as "
                                     "`Authorization: Bearer <token>`"}, status_code=401,
                                    headers={"WWW-Authenticate": 'Bearer realm="audience_pipelines"'})
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": "invalid_request", "message": problems}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        # The message could carry anything a library put there; the log has the traceback.
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"error": "internal", "message": f"{type(exc).__name__}; see the API server's log"},
                            status_code=500)

    syncs = f"{PREFIX}/audience-syncs"
    body_doc = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/AudienceSyncAttributes"}}}}}

    @app.get(f"{PREFIX}/health", include_in_schema=False)
    def health() -> dict:
        return {"ok": True}

    @app.get(syncs, response_model=SyncPage, responses=ERRORS, summary="List syncs")
    def list_syncs(audience: str | None = None, destination: str | None = None,
                   status: Literal["active", "paused"] | None = None,
                   limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0)):
        return service.list_syncs(audience, destination, status, limit, offset)

    @app.post(syncs, status_code=201, response_model=SyncChanged, responses=ERRORS, openapi_extra=body_doc,
              summary="Create a sync (appended to defs/syncs/defs.yaml)")
    async def create_sync(request: Request, response: Response):
        done = service.create(await _json_body(request))
        _etag(response, done["sync"])
        response.headers["Location"] = f"{syncs}/{done['sync']['id']}"
        return done

    @app.get(syncs + "/{sync_id}", response_model=Sync, responses=ERRORS, summary="Get a sync and its state")
    def get_sync(sync_id: str, response: Response):
        sync = service.get_sync(sync_id)
        _etag(response, sync)
        return sync

    @app.put(syncs + "/{sync_id}", response_model=SyncChanged, responses=ERRORS, openapi_extra=body_doc,
             summary="Replace a sync's settings (takes effect on its next run; starts none)")
    async def update_sync(sync_id: str, request: Request, response: Response,
                          if_match: str | None = Header(None, description="the sync's ETag")):
        done = service.update(sync_id, await _json_body(request), if_match)
        _etag(response, done["sync"])
        return done

    @app.delete(syncs + "/{sync_id}", response_model=SyncDeleted, responses=ERRORS,
                summary="Delete a sync (no member is removed from the destination)")
    def delete_sync(sync_id: str, if_match: str | None = Header(None, description="the sync's ETag")):
        return service.delete(sync_id, if_match)

    @app.post(syncs + "/{sync_id}/trigger", status_code=202, response_model=Launched, responses=ERRORS,
              summary="Launch a run now")
    def trigger_sync(sync_id: str, full_resync: bool = Query(False, description="resend every member")):
        return service.trigger(sync_id, full_resync)

    @app.get(syncs + "/{sync_id}/runs", response_model=RunPage, responses=ERRORS, summary="Run history, newest first")
    def sync_runs(sync_id: str, limit: int = Query(20, ge=1, le=500), offset: int = Query(0, ge=0)):
        return service.runs(sync_id, limit, offset)

    @app.post(syncs + "/{sync_id}/pause", response_model=Paused, responses=ERRORS,
              summary="Stop the sync's schedule or automation sensor")
    def pause_sync(sync_id: str):
        return service.set_paused(sync_id, True)

    @app.post(syncs + "/{sync_id}/resume", response_model=Paused, responses=ERRORS, summary="Start it again")
    def resume_sync(sync_id: str):
        return service.set_paused(sync_id, False)

    @app.get(f"{PREFIX}/audiences", response_model=Audiences, responses=ERRORS, summary="Audiences")
    def audiences():
        return service.audiences()

    @app.get(f"{PREFIX}/destinations", response_model=Destinations, responses=ERRORS,
             summary="Destination types and configured destinations (no secret)")
    def destinations():
        return service.destinations()

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            attributes = _sync_schema()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(attributes.pop("$defs", {}))
            components["AudienceSyncAttributes"] = attributes
            schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app
