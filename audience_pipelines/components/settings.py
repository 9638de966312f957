from __future__ import annotations

from typing import Literal

import dagster as dg

from audience_pipelines.components.catalog import find_optional

AUTOMATION_SENSOR = "audience_sync_automation"
RESEND_JOB = "resend_full_membership"
FULL_RESYNC_TAG = "audience/full_resync"


class Settings(dg.Component, dg.Model, dg.Resolvable):
    """Project-wide choices: whether schedules and the automation sensor start running."""

    schedules: Literal["stopped", "running"] = "stopped"
    automation_interval_seconds: int = 30

    @property
    def running(self) -> bool:
        return self.schedules == "running"

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        status = dg.DefaultSensorStatus.RUNNING if self.running else dg.DefaultSensorStatus.STOPPED
        return dg.Definitions(
            sensors=[dg.AutomationConditionSensorDefinition(
                AUTOMATION_SENSOR, target=dg.AssetSelection.groups("syncs"), default_status=status,
                minimum_interval_seconds=self.automation_interval_seconds,
                description="Runs syncs whose schedule is on_audience_update when their audience updates",
            )],
            jobs=[dg.define_asset_job(
                RESEND_JOB, selection=dg.AssetSelection.groups("syncs"), tags={FULL_RESYNC_TAG: "true"},
                description="Sends every current member of the selected syncs again (mirror syncs still remove "
                            "departed members)",
            )],
        )


def schedules_running(context: dg.ComponentLoadContext) -> bool:
    settings = find_optional(context, Settings)
    return settings.running if settings else False
