"""Schedule choices in YAML -> Dagster schedules."""

from __future__ import annotations

import dagster as dg
from pydantic import BaseModel, ConfigDict

from audience_pipelines.engine import ConfigError

PRESETS = {
    "every_15_minutes": "*/15 * * * *",
    "hourly": "0 * * * *",
    "daily": "0 6 * * *",
    "weekly": "0 6 * * 1",
}
MANUAL = "manual"


class CronSchedule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cron: str
    timezone: str = "UTC"


ScheduleChoice = str | CronSchedule


def cron_of(choice: ScheduleChoice, owner: str) -> tuple[str, str] | None:
    """(cron, timezone) for a choice, None for manual."""
    if isinstance(choice, CronSchedule):
        return choice.cron, choice.timezone
    if choice == MANUAL:
        return None
    if choice in PRESETS:
        return PRESETS[choice], "UTC"
    raise ConfigError(f"{owner}: schedule '{choice}' is not one of {[MANUAL, *PRESETS]} or {{cron, timezone}}")


def build_schedule(name: str, choice: ScheduleChoice, key: dg.AssetKey, owner: str,
                   running: bool = False) -> list[dg.ScheduleDefinition]:
    cron = cron_of(choice, owner)
    if cron is None:
        return []
    return [dg.ScheduleDefinition(
        name=name, cron_schedule=cron[0], execution_timezone=cron[1], target=dg.AssetSelection.assets(key),
        default_status=dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED,
    )]
