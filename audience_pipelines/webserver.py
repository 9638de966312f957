"""A small client for a running Dagster webserver's GraphQL API (backfills, schedules)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import httpx

from audience_pipelines.engine import AudiencePipelinesError

URL_ENV = "DAGSTER_WEBSERVER_URL"
DEFAULT_URL = "http://127.0.0.1:3000"
LOCATION = "audience_pipelines"
REPOSITORY = "__repository__"

LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on UnauthorizedError { message }
  }
}"""
BACKFILL = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { id status runs(limit: 100) { runId status tags { key value } } }
    ... on PythonError { message }
  }
}"""
LOCATION_STATE = """
query($selector: RepositorySelector!) {
  repositoryOrError(repositorySelector: $selector) {
    __typename
    ... on Repository {
      schedules { name scheduleState { id status } }
      sensors { name sensorState { id status } }
      assetNodes { assetKey { path } }
    }
    ... on PythonError { message }
    ... on RepositoryNotFoundError { message }
  }
  workspaceOrError {
    __typename
    ... on Workspace { locationEntries { name locationOrLoadError {
      __typename ... on PythonError { message errorChain { error { message } } } } } }
  }
}"""
START_SENSOR = """
mutation($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status } }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}"""
STOP_SENSOR = """
mutation($id: String!) {
  stopSensor(id: $id) {
    __typename
    ... on StopSensorMutationResult { instigationState { status } }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}"""
SCHEDULE = """
query($selector: ScheduleSelector!) {
  scheduleOrError(scheduleSelector: $selector) {
    __typename
    ... on Schedule { name scheduleState { id selectorId status } }
    ... on ScheduleNotFoundError { message }
    ... on PythonError { message }
  }
}"""
START_SCHEDULE = """
mutation($selector: ScheduleSelector!) {
  startSchedule(scheduleSelector: $selector) {
    __typename
    ... on ScheduleStateResult { scheduleState { status } }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}"""
STOP_SCHEDULE = """
mutation($id: String!) {
  stopRunningSchedule(id: $id) {
    __typename
    ... on ScheduleStateResult { scheduleState { status } }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}"""


RELOAD_LOCATION = """
mutation($name: String!) {
  reloadRepositoryLocation(repositoryLocationName: $name) {
    __typename
    ... on WorkspaceLocationEntry { loadStatus locationOrLoadError {
      __typename ... on PythonError { message errorChain { error { message } } } } }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
    ... on ReloadNotSupported { message }
    ... on RepositoryLocationNotFound { message }
  }
}"""
LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}"""


class WebserverError(AudiencePipelinesError):
    pass


@dataclass
class LocationState:
    """What the running code location defines: sync names and the state of each schedule and sensor."""

    syncs: list[str]
    schedules: dict[str, dict]  # name -> {id, status}
    sensors: dict[str, dict]

    def require_syncs(self, names: list[str]) -> None:
        unknown = [n for n in names if n not in self.syncs]
        if unknown:
            raise WebserverError(f"no sync named {', '.join(repr(n) for n in unknown)} in code location "
                                 f"'{LOCATION}' (known: {', '.join(self.syncs) or 'none'})")


@dataclass(frozen=True)
class Paused:
    """What pausing or resuming a sync did: its trigger (None for a manual sync) and that trigger's status."""

    sync: str
    kind: str | None  # schedule | sensor
    trigger: str | None
    status: str | None  # RUNNING | STOPPED
    changed: bool


def first_line(message: str) -> str:
    """The line of a Python error a person reads first: the exception, not the traceback."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[0] if lines else message


class Webserver:
    def __init__(self, url: str | None = None, timeout_s: float = 30.0):
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        self._http = httpx.Client(timeout=timeout_s)

    def query(self, text: str, variables: dict) -> dict:
        try:
            response = self._http.post(f"{self.url}/graphql", json={"query": text, "variables": variables})
        except httpx.TransportError as exc:
            raise WebserverError(f"no Dagster webserver answered at {self.url} ({type(exc).__name__}); "
                                 f"start one (dagster dev -w workspace.yaml) or pass --url / set {URL_ENV}") from exc
        body = response.json() if response.content else {}
        if response.status_code >= 400 or body.get("errors"):
            raise WebserverError(f"{self.url}/graphql answered {response.status_code}: {body.get('errors') or response.text[:300]}")
        return body["data"]

    def location(self) -> LocationState:
        """The loaded code location, or an error saying it failed to load and why."""
        data = self.query(LOCATION_STATE, {"selector": {"repositoryLocationName": LOCATION,
                                                        "repositoryName": REPOSITORY}})
        repo = data["repositoryOrError"]
        if repo["__typename"] != "Repository":
            workspace = data["workspaceOrError"]
            entries = workspace.get("locationEntries") or []
            entry = next((e for e in entries if e["name"] == LOCATION), None)
            error = (entry or {}).get("locationOrLoadError") or {}
            if error.get("__typename") == "PythonError":
                # Dagster wraps the project's own error: the last in the chain is the one to act on.
                root = ([e["error"]["message"] for e in error.get("errorChain") or []] or [error["message"]])[-1]
                raise WebserverError(f"code location '{LOCATION}' failed to load: {first_line(root)} "
                                     f"(fix it, then reload the location in the UI or restart the webserver)")
            if entry is None:
                raise WebserverError(f"the webserver at {self.url} has no code location '{LOCATION}' "
                                     f"(it has: {', '.join(e['name'] for e in entries) or 'none'})")
            raise WebserverError(f"code location '{LOCATION}': {first_line(repo.get('message') or repo['__typename'])}")
        syncs = sorted(n["assetKey"]["path"][1] for n in repo["assetNodes"]
                       if len(n["assetKey"]["path"]) == 2 and n["assetKey"]["path"][0] == "syncs")
        return LocationState(syncs=syncs,
                             schedules={s["name"]: s["scheduleState"] for s in repo["schedules"]},
                             sensors={s["name"]: s["sensorState"] for s in repo["sensors"]})

    def launch_resend(self, syncs: list[str]) -> str:
        """A Dagster asset backfill of the given syncs; every run of it resends full membership."""
        self.location().require_syncs(syncs)
        params = {
            "assetSelection": [{"path": ["syncs", s]} for s in syncs],
            "allPartitions": True,  # required for unpartitioned assets
            "tags": [{"key": "audience/reason", "value": "resend"}],
            "title": "Resend full membership: " + ", ".join(syncs),
        }
        result = self.query(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise WebserverError(f"the backfill was not launched: {result.get('message') or result}")
        return result["backfillId"]

    def reload_location(self) -> None:
        """Reload the code location from disk, as the UI's Reload button does; raises with its load error."""
        result = self.query(RELOAD_LOCATION, {"name": LOCATION})["reloadRepositoryLocation"]
        if result["__typename"] != "WorkspaceLocationEntry":
            raise WebserverError(f"code location '{LOCATION}' was not reloaded: {result.get('message') or result}")
        error = result.get("locationOrLoadError") or {}
        if error.get("__typename") == "PythonError":
            root = ([e["error"]["message"] for e in error.get("errorChain") or []] or [error["message"]])[-1]
            raise WebserverError(f"code location '{LOCATION}' failed to load: {first_line(root)}")

    def launch_sync(self, sync: str, full_resync: bool = False, tags: dict[str, str] | None = None) -> str:
        """A run of one sync, queued like a launch from the UI; its run id."""
        from audience_pipelines.components.sync import sync_key

        key = sync_key(sync)
        run_config = {"ops": {key.to_python_identifier(): {"config": {"full_resync": True}}}} if full_resync else {}
        params = {
            "selector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY,
                         "jobName": "__ASSET_JOB", "assetSelection": [{"path": list(key.path)}]},
            "runConfigData": run_config,
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]},
        }
        result = self.query(LAUNCH_RUN, {"params": params})["launchRun"]
        if result["__typename"] != "LaunchRunSuccess":
            errors = "; ".join(e["message"] for e in result.get("errors") or [])
            raise WebserverError(f"sync '{sync}': the run was not launched: "
                                 f"{errors or result.get('message') or result['__typename']}")
        return result["run"]["runId"]

    def run_page(self, run_id: str) -> str:
        return f"{self.url}/runs/{run_id}"

    def set_paused(self, sync: str, pause: bool, state: LocationState | None = None) -> Paused:
        """Stop (pause) or start a sync's schedule or automation sensor, the UI's toggle."""
        from audience_pipelines.components.sync import automation_sensor_name, schedule_name

        state = state or self.location()
        state.require_syncs([sync])
        if schedule_name(sync) in state.schedules:
            kind, name = "schedule", schedule_name(sync)
        elif automation_sensor_name(sync) in state.sensors:
            kind, name = "sensor", automation_sensor_name(sync)
        else:
            return Paused(sync, None, None, None, changed=False)
        current = (state.schedules if kind == "schedule" else state.sensors)[name]
        wanted = "STOPPED" if pause else "RUNNING"
        if current["status"] == wanted:
            return Paused(sync, kind, name, wanted, changed=False)
        if kind == "schedule":
            status = self.stop_schedule(name) if pause else self.start_schedule(name)
        else:
            status = self.stop_sensor(current["id"], name) if pause else self.start_sensor(name)
        return Paused(sync, kind, name, status, changed=True)

    def backfill_page(self, backfill_id: str) -> str:
        return f"{self.url}/runs/b/{backfill_id}"

    def backfill(self, backfill_id: str) -> dict:
        result = self.query(BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
        if result["__typename"] != "PartitionBackfill":
            raise WebserverError(f"backfill {backfill_id}: {result.get('message') or result['__typename']}")
        return result

    def wait_for_backfill(self, backfill_id: str, timeout_s: float = 600, poll_s: float = 2) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.backfill(backfill_id)
            if state["status"] not in ("REQUESTED", "CANCELING"):
                return state
            if time.monotonic() > deadline:
                raise WebserverError(f"backfill {backfill_id} still {state['status']} after {timeout_s:.0f}s")
            time.sleep(poll_s)

    def _selector(self, schedule: str) -> dict:
        return {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "scheduleName": schedule}

    def schedule_status(self, schedule: str) -> dict:
        result = self.query(SCHEDULE, {"selector": self._selector(schedule)})["scheduleOrError"]
        if result["__typename"] != "Schedule":
            raise WebserverError(f"schedule '{schedule}': {result.get('message') or result['__typename']}")
        return result["scheduleState"]

    def start_schedule(self, schedule: str) -> str:
        result = self.query(START_SCHEDULE, {"selector": self._selector(schedule)})["startSchedule"]
        if result["__typename"] != "ScheduleStateResult":
            raise WebserverError(f"schedule '{schedule}' was not started: {result.get('message') or result}")
        return result["scheduleState"]["status"]

    def stop_schedule(self, schedule: str) -> str:
        state = self.schedule_status(schedule)
        result = self.query(STOP_SCHEDULE, {"id": state["id"]})["stopRunningSchedule"]
        if result["__typename"] != "ScheduleStateResult":
            raise WebserverError(f"schedule '{schedule}' was not stopped: {result.get('message') or result}")
        return result["scheduleState"]["status"]

    def start_sensor(self, sensor: str) -> str:
        selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": sensor}
        result = self.query(START_SENSOR, {"selector": selector})["startSensor"]
        if result["__typename"] != "Sensor":
            raise WebserverError(f"sensor '{sensor}' was not started: {result.get('message') or result}")
        return result["sensorState"]["status"]

    def stop_sensor(self, state_id: str, sensor: str) -> str:
        result = self.query(STOP_SENSOR, {"id": state_id})["stopSensor"]
        if result["__typename"] != "StopSensorMutationResult":
            raise WebserverError(f"sensor '{sensor}' was not stopped: {result.get('message') or result}")
        return result["instigationState"]["status"]

    def close(self) -> None:
        self._http.close()
