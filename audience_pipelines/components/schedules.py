"""Schedule choices in YAML -> Dagster schedules, and how often each choice fires."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import dagster as dg
from dagster._time import get_timezone
from pydantic import BaseModel, ConfigDict, field_validator

from audience_pipelines.components.load_errors import did_you_mean
from audience_pipelines.engine import ConfigError

# Dagster's own cron parsing, so what we accept is exactly what its scheduler runs.
from dagster._utils.schedules import cron_string_iterator, is_valid_cron_string  # noqa: E402

PRESETS = {
    "every_15_minutes": "*/15 * * * *",
    "hourly": "0 * * * *",
    "daily": "0 6 * * *",
    "weekly": "0 6 * * 1",
}
MANUAL = "manual"
ON_AUDIENCE_UPDATE = "on_audience_update"  # syncs only: declarative automation
_WINDOW_START = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)  # a Monday
_WINDOW = dt.timedelta(days=28)


class CronSchedule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cron: str
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        # Dagster checks the timezone only when it builds the schedule; fail at load, naming the key.
        try:
            get_timezone(value)
        except Exception:  # noqa: BLE001 - unknown (ZoneInfoNotFoundError) or malformed names
            hint = did_you_mean(value, sorted(zoneinfo.available_timezones())) or \
                " (an IANA name such as 'Europe/London', or 'UTC')"
            raise ValueError(f"unknown timezone '{value}'{hint}") from None
        return value


ScheduleChoice = str | CronSchedule


def cron_of(choice: ScheduleChoice, owner: str, allow_automation: bool = False) -> tuple[str, str] | None:
    """(cron, timezone) for a choice; None for manual and on_audience_update."""
    if isinstance(choice, CronSchedule):
        if not is_valid_cron_string(choice.cron):
            raise ConfigError(f"{owner}: '{choice.cron}' is not a valid cron string")
        return choice.cron, choice.timezone
    if choice == MANUAL or (allow_automation and choice == ON_AUDIENCE_UPDATE):
        return None
    if choice in PRESETS:
        return PRESETS[choice], "UTC"
    allowed = [MANUAL, *PRESETS] + ([ON_AUDIENCE_UPDATE] if allow_automation else [])
    raise ConfigError(f"{owner}: schedule '{choice}' is not one of {allowed} or {{cron, timezone}}")


def describe(choice: ScheduleChoice) -> str:
    if isinstance(choice, CronSchedule):
        return f"cron '{choice.cron}' ({choice.timezone})"
    return choice


def runs_per_four_weeks(choice: ScheduleChoice) -> int | None:
    """How many times a schedule fires in four weeks; None when it is not time-based."""
    cron = cron_of(choice, "schedule", allow_automation=True)
    if cron is None:
        return None
    # Counting real ticks handles every cron shape (and DST) the same way Dagster does.
    end = (_WINDOW_START + _WINDOW).timestamp()
    count = 0
    for tick in cron_string_iterator(_WINDOW_START.timestamp(), cron[0], cron[1]):
        if tick.timestamp() >= end:
            break
        count += 1
    return count


def next_tick(cron: str, timezone: str, after: dt.datetime) -> dt.datetime:
    """The first tick of a cron schedule after `after`, as Dagster's scheduler counts them."""
    for tick in cron_string_iterator(after.timestamp(), cron, timezone):
        if tick.timestamp() > after.timestamp():
            return tick
    raise ValueError(f"cron '{cron}' has no tick after {after}")  # not reached: the iterator is endless


def build_schedule(name: str, choice: ScheduleChoice, key: dg.AssetKey, owner: str,
                   running: bool = False) -> list[dg.ScheduleDefinition]:
    cron = cron_of(choice, owner, allow_automation=True)
    if cron is None:
        return []
    return [dg.ScheduleDefinition(
        name=name, cron_schedule=cron[0], execution_timezone=cron[1], target=dg.AssetSelection.assets(key),
        default_status=dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED,
        description=f"{owner}: {describe(choice)}",
    )]


_HUMAN = {
    MANUAL: "manual (runs only when launched)",
    ON_AUDIENCE_UPDATE: "whenever its audience is materialized (on_audience_update)",
    "every_15_minutes": "every 15 minutes",
    "hourly": "hourly, on the hour (UTC)",
    "daily": "daily at 06:00 UTC",
    "weekly": "weekly, Mondays at 06:00 UTC",
}


def human(choice: ScheduleChoice) -> str:
    """A schedule as a person would say it."""
    if isinstance(choice, CronSchedule):
        return f"cron `{choice.cron}` ({choice.timezone})"
    return _HUMAN.get(choice, choice)
