"""What the Dagster instance records of each sync: paused or active, runs in flight, the next scheduled run.

Read from the instance's own storage (runs, schedule and sensor states), the same the UI shows, so
these answers need no webserver.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import dagster as dg

from audience_pipelines.components.schedules import next_tick
from audience_pipelines.components.sync import automation_sensor_name, schedule_name, sync_key

IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def open_instance() -> dg.DagsterInstance:
    """The project's Dagster instance: $DAGSTER_HOME, else the checkout's `.dagster_home`."""
    from audience_pipelines.project import DAGSTER_HOME_ENV, dagster_home

    os.environ.setdefault(DAGSTER_HOME_ENV, str(dagster_home()))
    return dg.DagsterInstance.get()


@dataclass(frozen=True)
class Trigger:
    """What starts a sync's runs by itself: its schedule or automation sensor."""

    kind: str  # schedule | sensor
    name: str
    running: bool
    cron: str | None = None
    timezone: str | None = None


class InstanceState:
    """The state of every sync in `definitions`, as `instance` records it now."""

    def __init__(self, instance: dg.DagsterInstance, definitions: dg.Definitions):
        self.instance = instance
        repo = definitions.get_repository_def()
        self._schedules = {s.name: s for s in repo.schedule_defs}
        self._sensors = {s.name: s for s in repo.sensor_defs}
        stored = {s.instigator_name: s.status.value for s in instance.all_instigator_state()}
        self._stored = stored

    def _running(self, name: str, default: str) -> bool:
        status = self._stored.get(name)  # RUNNING or STOPPED once toggled; else the definition's default applies
        return status == "RUNNING" if status in ("RUNNING", "STOPPED") else default == "RUNNING"

    def trigger(self, sync: str) -> Trigger | None:
        """None for a manual sync: nothing starts it, nothing to pause."""
        schedule = self._schedules.get(schedule_name(sync))
        if schedule is not None:
            return Trigger("schedule", schedule.name, self._running(schedule.name, schedule.default_status.value),
                           schedule.cron_schedule if isinstance(schedule.cron_schedule, str) else None,
                           schedule.execution_timezone or "UTC")
        sensor = self._sensors.get(automation_sensor_name(sync))
        if sensor is not None:
            return Trigger("sensor", sensor.name, self._running(sensor.name, sensor.default_status.value))
        return None

    def paused(self, sync: str) -> bool:
        trigger = self.trigger(sync)
        return trigger is not None and not trigger.running

    def next_run(self, sync: str, now: dt.datetime | None = None) -> dt.datetime | None:
        """When the schedule next starts the sync; None when paused, manual or on audience update."""
        trigger = self.trigger(sync)
        if trigger is None or not trigger.running or trigger.cron is None:
            return None
        return next_tick(trigger.cron, trigger.timezone, now or dt.datetime.now(dt.timezone.utc))

    def runs_in_flight(self, sync: str | None = None) -> dict[str, list[str]]:
        """Run ids queued or running, per sync they materialize (only `sync`'s when given)."""
        found: dict[str, list[str]] = {}
        for run in self.instance.get_runs(filters=dg.RunsFilter(statuses=IN_FLIGHT)):
            for key in run.asset_selection or ():
                if len(key.path) == 2 and key.path[0] == "syncs" and (sync is None or key == sync_key(sync)):
                    found.setdefault(key.path[1], []).append(run.run_id)
        return found
