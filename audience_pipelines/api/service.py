"""What the API does, apart from HTTP: syncs read from and written to the project's YAML, their state
from the Dagster instance and run history, runs and pauses through the Dagster webserver.

Every refusal is an ApiError carrying its HTTP status, a code and a message a person can act on.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow.parquet as pq

from audience_pipelines.api.documents import SyncDocument, version_of
from audience_pipelines.api.project import Loaded, LoadFailed, Project
from audience_pipelines.config import ConfiguredDestination
from audience_pipelines.contract.settings import secret_fields
from audience_pipelines.engine.history import COUNTS, RunHistory, RunRecord
from audience_pipelines.instance_state import InstanceState
from audience_pipelines.resources import AudienceStorage, open_history
from audience_pipelines.webserver import LOCATION, Webserver, WebserverError

DESTINATION_TYPE = "audience_pipelines.components.Destination"
_LOAD_ERROR = re.compile(r"^(?P<file>[^\s:]+\.ya?ml)(?: \(document (?P<document>\d+)\))?: (?P<rest>.*)$", re.DOTALL)
_KEY = re.compile(r"key '(?P<key>[^']+)'")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **details: Any):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details

    def body(self) -> dict:
        return {"error": self.code, "message": self.message, **self.details}


def invalid(exc: LoadFailed) -> ApiError:
    """A 422 carrying loading's own message, and the file, document and key it names."""
    message = str(exc)
    found = _LOAD_ERROR.match(message)
    details: dict[str, Any] = {}
    if found:
        details["file"] = found["file"]
        details["document"] = int(found["document"]) if found["document"] else None
        key = _KEY.search(found["rest"])
        details["key"] = key["key"] if key else None
    return ApiError(422, "invalid_sync", message, **details)


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite hands back naive UTC
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).isoformat()


def run_view(r: RunRecord) -> dict:
    return {"run_id": r.run_id, "attempt": r.attempt, "status": r.status, "run_kind": r.run_kind,
            "sync_mode": r.sync_mode, **{c: getattr(r, c) for c in COUNTS},
            "started_at": _iso(r.started_at), "finished_at": _iso(r.finished_at), "duration_s": r.duration_s,
            "destination_audience_id": r.destination_audience_id or None, "error": r.error,
            "errors": r.errors_sample or [], "rejected_rows_file": r.rejected_path}


class SyncService:
    def __init__(self, defs: Path, state_root: Path, webserver: Webserver,
                 instance: Callable[[], dg.DagsterInstance]):
        self.project = Project(defs)
        self.state_root = state_root
        self.webserver = webserver
        self._instance_factory = instance
        self._instance: dg.DagsterInstance | None = None
        self._history: RunHistory | None = None
        self._write = threading.Lock()  # one definitions change at a time

    # --- what is there -------------------------------------------------------------------------------

    def loaded(self) -> Loaded:
        try:
            return self.project.current()
        except LoadFailed as exc:
            raise ApiError(503, "definitions_do_not_load", f"the project's definitions do not load, so nothing can "
                                                           f"be read or changed until they are fixed: {exc}") from None

    def instance(self) -> dg.DagsterInstance:
        if self._instance is None:
            self._instance = self._instance_factory()
        return self._instance

    def history(self) -> RunHistory:
        if self._history is None:
            self.state_root.mkdir(parents=True, exist_ok=True)
            self._history = open_history(self.state_root)
        return self._history

    def close(self) -> None:
        if self._history is not None:
            self._history.close()
        if self._instance is not None:
            self._instance.dispose()

    def _state(self, loaded: Loaded) -> InstanceState:
        return InstanceState(self.instance(), loaded.definitions)

    def _require(self, loaded: Loaded, name: str) -> dg.AssetSpec:
        spec = loaded.group("syncs").get(name)
        if spec is None:
            raise ApiError(404, "not_found", f"no sync named '{name}' (known: {', '.join(sorted(loaded.group('syncs')))})")
        return spec

    def _view(self, loaded: Loaded, state: InstanceState, in_flight: dict[str, list[str]], name: str) -> dict:
        spec = loaded.group("syncs")[name]
        meta = spec.metadata
        doc = loaded.documents.get(name)
        if doc is not None:
            config, declared = dict(doc.attributes), {"file": f"defs/{doc.file.as_posix()}", "document": doc.document}
        else:  # switched on by an audience's `activate:` list
            origin = meta.get("dagster/component_origin")
            audience = getattr(getattr(origin, "instance", None), "name", meta.get("audience"))
            config = {"name": name, "audience": meta.get("audience"), "destination": meta.get("destination"),
                      "mode": meta.get("sync_mode"), "schedule": "daily"}
            declared = {"activated_by_audience": audience, "key": "activate"}
        trigger = state.trigger(name)
        last = self.history().latest(name)
        synced = self.history().latest(name, statuses=("success", "partial_failure"))
        return {
            "id": name, "name": name, "config": config,
            "audience": meta.get("audience"), "entity": meta.get("entity") or self._entity_of(loaded, meta),
            "destination": meta.get("destination"), "destination_type": meta.get("destination_type"),
            "mode": meta.get("sync_mode"), "defined_in": declared, "editable": doc is not None,
            "version": version_of(config),
            "status": "paused" if trigger is not None and not trigger.running else "active",
            "trigger": {"kind": trigger.kind, "name": trigger.name, "running": trigger.running} if trigger else None,
            "runs_in_flight": in_flight.get(name, []),
            "last_run": run_view(last) if last else None,
            "last_synced_at": _iso(synced.finished_at) if synced else None,
            "next_scheduled_run": _iso(state.next_run(name)),
            "dagster_url": f"{self.webserver.url}/assets/syncs/{name}",
        }

    @staticmethod
    def _entity_of(loaded: Loaded, sync_metadata: dict) -> str | None:
        audience = loaded.group("audiences").get(sync_metadata.get("audience"))
        return audience.metadata.get("entity") if audience is not None else None

    def list_syncs(self, audience: str | None, destination: str | None, status: str | None,
                   limit: int, offset: int) -> dict:
        loaded = self.loaded()
        state = self._state(loaded)
        in_flight = state.runs_in_flight()
        names = sorted(loaded.group("syncs"))
        meta = {n: loaded.group("syncs")[n].metadata for n in names}
        names = [n for n in names if (audience is None or meta[n].get("audience") == audience)
                 and (destination is None or meta[n].get("destination") == destination)
                 and (status is None or (state.paused(n) == (status == "paused")))]
        page = names[offset:offset + limit]
        return {"items": [self._view(loaded, state, in_flight, n) for n in page], "total": len(names),
                "limit": limit, "offset": offset,
                "next_offset": offset + limit if offset + limit < len(names) else None}

    def get_sync(self, name: str) -> dict:
        loaded = self.loaded()
        self._require(loaded, name)
        state = self._state(loaded)
        return self._view(loaded, state, state.runs_in_flight(name), name)

    def runs(self, name: str, limit: int, offset: int) -> dict:
        loaded = self.loaded()
        known = name in loaded.group("syncs")
        total = self.history().count(name)
        if not known and not total:
            self._require(loaded, name)  # 404; a deleted sync's history stays readable
        records = self.history().list(name, limit=limit, offset=offset)
        return {"items": [run_view(r) for r in records], "total": total, "limit": limit, "offset": offset,
                "next_offset": offset + limit if offset + limit < total else None}

    def audiences(self) -> dict:
        loaded = self.loaded()
        storage = AudienceStorage(home=str(self.state_root))
        syncs = loaded.group("syncs")
        items = []
        for name, spec in sorted(loaded.group("audiences").items()):
            path = storage.membership_path(name)
            count = evaluated = None
            if path.exists():
                count = pq.ParquetFile(path).metadata.num_rows
                evaluated = _iso(dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc))
            items.append({"name": name, "entity": spec.metadata.get("entity"), "member_count": count,
                          "last_evaluated_at": evaluated,
                          "syncs": sorted(s for s, sp in syncs.items() if sp.metadata.get("audience") == name)})
        return {"items": items, "total": len(items)}

    def destinations(self) -> dict:
        from audience_pipelines.destinations import destination_types

        loaded = self.loaded()
        written = {d.name: d.attributes for d in self.project.files.all(DESTINATION_TYPE)}
        configured = []
        for key, resource in sorted(loaded.definitions.resources.items()):
            if not isinstance(resource, ConfiguredDestination):
                continue
            secret = secret_fields(resource.type.settings_model)
            attributes = written.get(resource.name, {})
            settings = attributes.get("settings") if isinstance(attributes.get("settings"), dict) else {}
            configured.append({
                "name": resource.name, "type": resource.type.name,
                # Secrets are read from the environment at run time; only the variables' names are shown.
                "settings": {k: v for k, v in settings.items() if k not in secret},
                "from_env": dict(attributes.get("from_env") or {}),
                "syncs": sorted(s for s, sp in loaded.group("syncs").items()
                                if sp.metadata.get("destination") == resource.name),
            })
        types = []
        for name, dtype in destination_types().items():
            caps = dtype.capabilities()
            types.append({"type": name, "identifier_kinds": sorted(caps.identifier_kinds),
                          "max_batch_rows": caps.max_batch_rows, "finds_audiences_by_name": caps.can_list_audiences,
                          "creates_audiences": caps.can_create_audiences, "creates_profiles": caps.creates_profiles,
                          "secret_settings": sorted(secret_fields(dtype.settings_model))})
        return {"configured": configured, "types": types}

    # --- changes ---------------------------------------------------------------------------------------

    def _editable(self, loaded: Loaded, name: str, if_match: str | None) -> SyncDocument:
        doc = loaded.documents.get(name)
        if doc is None:
            self._require(loaded, name)
            audience = loaded.group("syncs")[name].metadata.get("audience")
            raise ApiError(409, "declared_by_activate",
                           f"sync '{name}' is switched on by audience '{audience}''s `activate:` list, not declared "
                           "on its own; change that list, or create a sync for the same audience and destination, "
                           "which takes its place")
        if if_match is None:
            raise ApiError(428, "if_match_required",
                           f"send If-Match with sync '{name}''s version (its ETag, or `version` from GET) so a change "
                           "made meanwhile by someone else is not overwritten", version=doc.version)
        wanted = {v.strip().removeprefix("W/").strip('"') for v in if_match.split(",")}
        if "*" not in wanted and doc.version not in wanted:
            raise ApiError(412, "version_mismatch",
                           f"sync '{name}' changed since version {', '.join(sorted(wanted))}: it is now version "
                           f"{doc.version}; read it again and apply your change to that", version=doc.version)
        return doc

    def _not_running(self, loaded: Loaded, name: str, doing: str) -> None:
        running = self._state(loaded).runs_in_flight(name).get(name)
        if running:
            raise ApiError(409, "run_in_flight",
                           f"sync '{name}' has a run in flight ({', '.join(running)}); {doing} once it has finished",
                           runs=running)

    def _apply(self, changes: dict[Path, str]) -> dict:
        """Write validated changes and reload the code location; the reload's outcome is reported."""
        self.project.files.write(changes)
        try:
            self.webserver.reload_location()
            return {"reloaded": True}
        except WebserverError as exc:
            return {"reloaded": False, "error": str(exc),
                    "hint": f"the change is on disk; reload code location '{LOCATION}' in the Dagster UI"}

    def _check(self, changes: dict[Path, str]) -> list[str]:
        notes: list[str] = []
        try:
            self.project.check(changes, notes)
        except LoadFailed as exc:
            raise invalid(exc) from None
        return notes

    def create(self, body: dict) -> dict:
        name = _name_of(body)
        with self._write:
            loaded = self.loaded()
            if name in loaded.group("syncs"):
                doc = loaded.documents.get(name)
                where = f" ({doc.file.as_posix()}, document {doc.document})" if doc else " (by an audience's activate:)"
                raise ApiError(409, "already_exists", f"a sync named '{name}' already exists{where}; choose another "
                                                      "name, or PUT to change it")
            changes = self.project.files.appended(body)
            notes = self._check(changes)
            location = self._apply(changes)
        return {"sync": self.get_sync(name), "code_location": location, "warnings": notes}

    def update(self, name: str, body: dict, if_match: str | None) -> dict:
        with self._write:
            loaded = self.loaded()
            doc = self._editable(loaded, name, if_match)
            if body.get("name", name) != name:
                raise ApiError(422, "invalid_sync", f"sync '{name}': 'name' cannot change (its snapshot of what the "
                                                    "destination holds is kept under its name); create a sync under "
                                                    "the new name and delete this one", key="name")
            body = {"name": name, **{k: v for k, v in body.items() if k != "name"}}
            self._not_running(loaded, name, "change it")
            changes = self.project.files.replaced(doc, body)
            notes = self._check(changes)
            location = self._apply(changes)
        return {"sync": self.get_sync(name), "code_location": location, "warnings": notes}

    def delete(self, name: str, if_match: str | None) -> dict:
        with self._write:
            loaded = self.loaded()
            doc = self._editable(loaded, name, if_match)
            self._not_running(loaded, name, "delete it")
            changes = self.project.files.removed(doc)
            self._check(changes)
            location = self._apply(changes)
        snapshot = AudienceStorage(home=str(self.state_root)).snapshot_store(name).dir
        return {"deleted": name, "code_location": location,
                "message": f"sync '{name}' is no longer defined: no run of it starts again, and nothing was removed "
                           f"from destination '{doc.attributes.get('destination')}'. Its snapshot stays at {snapshot} "
                           f"(`audience-pipelines forget {name}` deletes it) and its run history stays readable."}

    # --- Dagster ---------------------------------------------------------------------------------------

    def trigger(self, name: str, full_resync: bool) -> dict:
        self._require(self.loaded(), name)
        try:
            run_id = self.webserver.launch_sync(name, full_resync, tags={"audience/trigger": "api"})
        except WebserverError as exc:
            raise ApiError(502, "launch_failed", str(exc)) from None
        return {"sync": name, "run_id": run_id, "full_resync": full_resync, "url": self.webserver.run_page(run_id)}

    def set_paused(self, name: str, pause: bool) -> dict:
        self._require(self.loaded(), name)
        try:
            done = self.webserver.set_paused(name, pause)
        except WebserverError as exc:
            raise ApiError(502, "webserver_failed", str(exc)) from None
        if done.kind is None:
            raise ApiError(409, "manual_sync", f"sync '{name}' has schedule: manual: it runs only when triggered, so "
                                               f"there is nothing to {'pause' if pause else 'resume'}")
        return {"sync": self.get_sync(name), "changed": done.changed, "trigger": done.trigger}


def _name_of(body: dict) -> str:
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ApiError(422, "invalid_sync", "a sync needs a 'name' (text): it names the sync's asset, its snapshot "
                                            "and its URL", key="name")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ApiError(422, "invalid_sync", f"sync name '{name}' must be letters, digits and underscores, not "
                                            "starting with a digit (it names a Dagster asset)", key="name")
    return name
