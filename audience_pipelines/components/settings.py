from __future__ import annotations

from typing import Literal

import dagster as dg

from audience_pipelines.components.catalog import find_optional

RESEND_JOB = "resend_full_membership"
FULL_RESYNC_TAG = "audience/full_resync"


class Settings(dg.Component, dg.Model, dg.Resolvable):
    """Project-wide choices: whether schedules and automation sensors start running, and how often they tick."""

    schedules: Literal["stopped", "running"] = "stopped"
    automation_interval_seconds: int = 30
    # How often the audience-size sensors ask each platform again (sizes arrive hours after an upload).
    audience_size_interval_seconds: int = 3600

    @property
    def running(self) -> bool:
        return self.schedules == "running"

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        return dg.Definitions(
            jobs=[dg.define_asset_job(
                RESEND_JOB, selection=dg.AssetSelection.groups("syncs"), tags={FULL_RESYNC_TAG: "true"},
                description="Sends every current member of the selected syncs again (mirror syncs still remove "
                            "departed members)",
            )],
        )


def schedules_running(context: dg.ComponentLoadContext) -> bool:
    settings = find_optional(context, Settings)
    return settings.running if settings else False


def automation_interval_seconds(context: dg.ComponentLoadContext) -> int:
    settings = find_optional(context, Settings)
    return settings.automation_interval_seconds if settings else 30


def audience_size_interval_seconds(context: dg.ComponentLoadContext) -> int:
    settings = find_optional(context, Settings)
    return settings.audience_size_interval_seconds if settings else 3600
