import datetime as dt
import warnings
from typing import Literal

import dagster as dg
import pyarrow as pa
from pydantic import PrivateAttr

from audience_pipelines.components.audience import Audience, audience_key
from audience_pipelines.components.catalog import find, where
from audience_pipelines.components.destination import Destination
from audience_pipelines.components.entity import Entity
from audience_pipelines.components.schedules import (
    MANUAL, ON_AUDIENCE_UPDATE, ScheduleChoice, build_schedule, cron_of, describe, human, runs_per_four_weeks,
)
from audience_pipelines.components.settings import (
    FULL_RESYNC_TAG, audience_size_interval_seconds, automation_interval_seconds, schedules_running,
)
from audience_pipelines.components.sources import MembershipSource
from audience_pipelines.components.warehouse import Warehouse
from audience_pipelines.components.yaml_text import Text
from audience_pipelines.contract import Target
from audience_pipelines.engine import (
    AudiencePipelinesError, ConfigError, MassRemovalBlocked, RunOptions, SyncResult, SyncSpec, run_sync,
)
from audience_pipelines.engine.history import RunRecord
from audience_pipelines.engine.preview import Preview, choose_test_members, preview_sync, run_test_sync
from audience_pipelines.engine.related import split as split_related
from audience_pipelines.engine.related import wanted
from audience_pipelines.engine.segments import SEGMENTS_COLUMN
from audience_pipelines.engine.spec import MODES, REMOVALS, RUN_KIND_TEXT, planned_run_kind
from audience_pipelines.engine.sync import audience_report
from audience_pipelines.engine.targets import run_by_column
from audience_pipelines.resources import AudienceStorage

FAILURE_RATE_CHECK = "failure_rate_below_threshold"
MASS_REMOVAL_CHECK = "mass_removal_guard"
MATCH_RATE_CHECK = "match_rate_steady"
BACKFILL_TAG = "dagster/backfill"


class ScheduleWarning(UserWarning):
    """A sync scheduled more often than its audience is evaluated."""


class TargetConfig(dg.Model, dg.Resolvable):
    id: Text | None = None  # `id: 0123` loads as "0123"
    name: Text | None = None
    name_column: Text | None = None  # one destination audience per value of this column


class SyncRunConfig(dg.Config):
    full_resync: bool = False
    allow_mass_removal: bool = False


class PreviewConfig(dg.Config):
    """A sync's preview job: what its next run would send. `test_keys` or `test_first` make it a test sync."""

    sample_rows: int = 5
    full_resync: bool = False
    allow_mass_removal: bool = False
    test_keys: list[str] = []  # send these members to the real destination audience
    test_first: int = 0  # or the first N members the preview adds or updates
    commit: bool = False  # record the test members the platform accepted in the snapshot


def preview_job_name(sync: str) -> str:
    return f"preview_{sync}"


def preview_op_name(sync: str) -> str:
    """The preview job's one step: its run config goes under `ops: {<this>: {config: ...}}`."""
    return f"{sync}_preview"


def preview_metadata(preview: Preview) -> dict:
    return {"run_kind": preview.run_kind, "would_block": preview.blocked, "mass_removal_guard": preview.guard,
            **{f"would_{name}": n for name, n in preview.counts.items()},
            "samples": dg.MetadataValue.json(preview.samples),
            "set_aside_sample": dg.MetadataValue.json(preview.set_aside_sample),
            "preview": dg.MetadataValue.md(f"```\n{preview.text()}\n```")}


def schedule_name(sync: str) -> str:
    return f"sync_{sync}_schedule"


def automation_sensor_name(sync: str) -> str:
    """The sensor that runs an on_audience_update sync; stopping it pauses the sync."""
    return f"sync_{sync}_automation"


def allow_mass_removal_hint(sync: str) -> str:
    config = f'{{"ops": {{"syncs__{sync}": {{"config": {{"allow_mass_removal": true}}}}}}}}'
    return (f"launch it again with the run config {config} (Launchpad: shift-click Materialize on "
            f"syncs/{sync}), or from a shell: dagster asset materialize -m audience_pipelines.definitions "
            f"--select syncs/{sync} --config-json '{config}'")


def sync_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["syncs", name])


def is_full_resync(config: SyncRunConfig, tags: dict[str, str]) -> bool:
    return config.full_resync or BACKFILL_TAG in tags or tags.get(FULL_RESYNC_TAG) == "true"


def invalid_identifiers_not_sent(r: SyncResult) -> dict:
    """Per identifier kind: members whose value failed normalisation, and what became of them."""
    return {kind: {"members": n, "set_aside": r.invalid_identifiers_set_aside.get(kind, 0),
                   "sent_without_it": n - r.invalid_identifiers_set_aside.get(kind, 0)}
            for kind, n in r.invalid_identifiers.items()}


def result_metadata(r: SyncResult, error: str | None = None) -> dict:
    return {
        "dagster/row_count": r.snapshot_rows,
        "rows_added": r.added, "rows_removed": r.removed, "rows_updated": r.updated,
        "rows_resent": r.resent, "rows_failed": r.failed, "rows_set_aside": r.set_aside,
        "rows_skipped": r.skipped, "rows_unchanged": r.unchanged, "membership_rows": r.membership_rows,
        "rows_shared_not_withdrawn": r.shared_not_withdrawn,
        "failure_rate": r.failure_rate, "duration_s": round(r.duration_s, 3),
        "run_kind": r.run_kind, "sync_mode": r.sync_mode, "status": "error" if error else r.status,
        "destination_audience_id": r.destination_audience_id,
        "audience_size": dg.MetadataValue.int(r.audience_size) if r.audience_size is not None
        else dg.MetadataValue.null(),
        "match_rate": dg.MetadataValue.float(r.match_rate) if r.match_rate is not None else dg.MetadataValue.null(),
        "match_rate_basis": r.match_rate_basis or dg.MetadataValue.null(),
        "rows_skipped_no_profile": r.skipped_no_profile,
        "skipped_no_profile_sample": dg.MetadataValue.json(r.skipped_sample),
        "replaced_audience": r.replaced,
        **({"destination_audiences": dg.MetadataValue.json(r.per_audience)} if r.per_audience else {}),
        "invalid_identifiers_not_sent": dg.MetadataValue.json(invalid_identifiers_not_sent(r)),
        "destination_stats": dg.MetadataValue.json(r.destination_stats),
        "errors_sample": dg.MetadataValue.json(r.errors_sample),
        "set_aside_sample": dg.MetadataValue.json(r.set_aside_sample),
        "rejected_rows_file": dg.MetadataValue.path(r.rejected_path) if r.rejected_path
        else dg.MetadataValue.null(),
        "notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in r.notes)) if r.notes else dg.MetadataValue.null(),
        **({"error": dg.MetadataValue.md(error)} if error else {}),
    }


def audience_size_sensor_name(sync: str) -> str:
    return f"sync_{sync}_audience_size"


def audience_size_sensor(sync: str, key: dg.AssetKey, dest_key: str, running: bool,
                         interval_s: int) -> dg.SensorDefinition:
    """Reads back what the platform reports for the sync's audience between runs, as an observation on
    the sync: platforms fill sizes in hours after an upload, long after the run that sent it."""

    @dg.sensor(name=audience_size_sensor_name(sync), minimum_interval_seconds=interval_s,
               required_resource_keys={"audience_storage", dest_key},
               default_status=dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED,
               description=f"Records the size and match rate the platform now reports for sync '{sync}''s "
                           "audience (they arrive hours after an upload)")
    def _audience_size(context: dg.SensorEvaluationContext):
        storage: AudienceStorage = context.resources.audience_storage
        manifest = storage.snapshot_store(sync).manifest()
        if manifest is None or not manifest.destination_audience_id:
            return dg.SkipReason(f"sync '{sync}' has not run yet")
        destination = getattr(context.resources, dest_key).open(storage.root)
        try:
            report = audience_report(destination, manifest.destination_audience_id, manifest.rows)
        finally:
            destination.close()
        if report is None or report[0] is None:
            return dg.SkipReason(f"the platform reports no size for audience {manifest.destination_audience_id} yet")
        size, rate, basis = report
        return dg.SensorResult(asset_events=[dg.AssetObservation(asset_key=key, metadata={
            "audience_size": dg.MetadataValue.int(size),
            "match_rate": dg.MetadataValue.float(rate) if rate is not None else dg.MetadataValue.null(),
            "match_rate_basis": basis or dg.MetadataValue.null(),
            "destination_audience_id": manifest.destination_audience_id,
            "members_held": manifest.rows,
        })])

    return _audience_size


def last_match_rate(context: dg.AssetExecutionContext, key: dg.AssetKey) -> float | None:
    """The match rate the sync's last materialization recorded, if any."""
    event = context.instance.get_latest_materialization_event(key)
    value = event.asset_materialization.metadata.get("match_rate") if event and event.asset_materialization else None
    return value.value if isinstance(value, dg.FloatMetadataValue) else None


def match_rate_check(now: float | None, before: float | None, max_drop: float) -> dg.AssetCheckResult:
    """A warning when the match rate fell by more than `max_drop` of the last run's."""
    drop = (before - now) / before if now is not None and before else None
    return dg.AssetCheckResult(
        check_name=MATCH_RATE_CHECK, passed=drop is None or drop <= max_drop, severity=dg.AssetCheckSeverity.WARN,
        description=None if drop is None or drop <= max_drop else
        f"match rate fell from {before:.1%} to {now:.1%} ({drop:.0%} of the last run's; threshold {max_drop:.0%})",
        metadata={"match_rate": dg.MetadataValue.float(now) if now is not None else dg.MetadataValue.null(),
                  "previous_match_rate": dg.MetadataValue.float(before) if before is not None
                  else dg.MetadataValue.null(),
                  "drop": dg.MetadataValue.float(drop) if drop is not None else dg.MetadataValue.null(),
                  "threshold": max_drop})


class AudienceSync(dg.Component, dg.Model, dg.Resolvable):
    """Keeps one destination audience in step with one audience, or with every record of an entity."""

    name: Text
    audience: Text | None = None  # its members; or:
    entity: Text | None = None  # every record of the entity (an entity sync, e.g. to keep a CRM field current)
    destination: Text
    target: TargetConfig | None = None  # default: a destination audience named like the audience
    mode: Literal[MODES] = "mirror"  # Literal: a misspelt value loads as an error with a did-you-mean
    removal: Literal[REMOVALS] = "remove"
    identifiers: dict[str, Text] | None = None  # identifier kind -> audience column; default: all usable
    fields: dict[str, Text] = {}  # destination field -> audience column
    schedule: ScheduleChoice = MANUAL
    max_failure_rate: float = 0.05
    max_removal_share: float = 0.5
    # Warn when the match rate falls by more than this share of the last run's.
    max_match_rate_drop: float = 0.2
    default_region: Text | None = None  # for phone numbers written without a country code
    phone_region_column: Text | None = None  # or: a column holding each member's country
    batch_size: int | None = None
    parallel_batches: int | None = None  # batches in flight at once; default: the destination's
    # Members with no profile on a CRM: create one (true) or skip and count them (false); default: the destination's.
    create_profiles: bool | None = None
    _one_click: bool = PrivateAttr(default=False)

    def target_config(self) -> TargetConfig:
        """The destination audience: as declared, or one named like the audience."""
        return self.target or TargetConfig(name=self.audience or self.entity)

    def spec(self, context: dg.ComponentLoadContext) -> tuple[SyncSpec, Audience | None, Destination, Entity]:
        owner = f"sync '{self.name}'"
        at = where(context)
        if bool(self.audience) == bool(self.entity):
            raise ConfigError(f"{at}: {owner}: give exactly one of 'audience' (its members) or 'entity' (every "
                              "record of it: an entity sync)")
        if self.audience:
            audience = find(context, Audience, self.audience, owner=owner, key="audience")
            entity = audience.resolve(context)
            source = f"audience '{audience.name}'"
        else:
            audience, entity = None, find(context, Entity, self.entity, owner=owner, key="entity")
            entity.validate_in(context)
            source = f"entity '{entity.name}'"
        destination = find(context, Destination, self.destination, owner=owner, key="destination")
        caps = destination.configured(context).capabilities
        for key, value, allowed in (("mode", self.mode, MODES), ("removal", self.removal, REMOVALS)):
            if value not in allowed:
                raise ConfigError(f"{at}: {owner}, key '{key}': '{value}' is not one of {list(allowed)}")
        cron_of(self.schedule, f"{at}: {owner}, key 'schedule'", allow_automation=True)
        if self.identifiers is None:
            identifiers = {k: c for k, c in entity.identifiers.items() if k in caps.identifier_kinds}
        else:
            identifiers = dict(self.identifiers)
        unsupported = sorted(set(identifiers) - caps.identifier_kinds)
        if unsupported:
            raise ConfigError(f"{at}: {owner}, key 'identifiers': destination type '{destination.type}' does not "
                              f"take {unsupported}; it takes {sorted(caps.identifier_kinds)}")
        columns = set(entity.columns) | {SEGMENTS_COLUMN}  # the derived list of audiences each record is in
        region = {"region": self.phone_region_column} if self.phone_region_column else {}
        for column in self.fields.values():
            relation = split_related(column) if column not in columns else None
            if relation and relation[0] not in entity.related:
                raise ConfigError(f"{at}: {owner}, key 'fields': '{column}' names relation '{relation[0]}', which "
                                  f"entity '{entity.name}' does not declare (its relations: "
                                  f"{sorted(entity.related) or 'none'}; see the entity's 'related')")
            if relation:
                columns.add(column)  # joined from the related table when the sync runs
        for key, mapping in (("identifiers", identifiers), ("fields", self.fields), ("phone_region_column", region)):
            missing = sorted(c for c in mapping.values() if c not in columns)
            if missing:
                raise ConfigError(f"{at}: {owner}, key '{key}': column(s) {missing} are not columns of {source} "
                                  f"(entity '{entity.name}' has {entity.columns}, and {SEGMENTS_COLUMN})")
        if self.fields and not caps.accepts_fields:
            raise ConfigError(f"{at}: {owner}, key 'fields': destination type '{destination.type}' takes no fields")
        if caps.requires_identifier and not identifiers:
            raise ConfigError(f"{at}: {owner}, key 'identifiers': destination type '{destination.type}' needs at "
                              f"least one of {sorted(caps.identifier_kinds)}")
        if self.parallel_batches is not None and not 1 <= self.parallel_batches <= caps.max_parallel_batches:
            raise ConfigError(f"{at}: {owner}, key 'parallel_batches': {self.parallel_batches} is not between 1 and "
                              f"{caps.max_parallel_batches}, the most destination type '{destination.type}' takes "
                              "at once")
        if self.create_profiles is not None and not caps.needs_profile:
            raise ConfigError(f"{at}: {owner}, key 'create_profiles': destination type '{destination.type}' needs no "
                              "profile before membership; remove the key")
        target = self.target_config()
        if sum(bool(v) for v in (target.id, target.name, target.name_column)) != 1:
            raise ConfigError(f"{at}: {owner}, key 'target': give exactly one of 'id', 'name' or 'name_column'")
        if target.name_column and target.name_column not in columns:
            raise ConfigError(f"{at}: {owner}, key 'target': name_column '{target.name_column}' is not a column of "
                              f"{source} (entity '{entity.name}' has {entity.columns})")
        # A sync withdraws what it no longer sends; another sync's members in the same
        # destination audience would be withdrawn with them.
        for other in context.component_tree.get_all_components(of_type=AudienceSync):
            if other.name != self.name and other.destination == self.destination \
                    and other.target_config() == target:
                shown = f"id {target.id}" if target.id else f"name '{target.name}'"
                raise ConfigError(
                    f"{at}: {owner}, key 'target': sync '{other.name}' also writes destination "
                    f"'{self.destination}' audience {shown}; each would withdraw the other's members. "
                    "Give each sync a target of its own.")
        if not self._one_click and target.name:
            for other in context.component_tree.get_all_components(of_type=Audience):
                if other.name == target.name != self.audience and self.destination in other.activate:
                    raise ConfigError(
                        f"{at}: {owner}, key 'target': audience '{other.name}' is activated on destination "
                        f"'{self.destination}', which writes the audience named '{target.name}' there too; each "
                        "would withdraw the other's members. Give this sync a target of its own.")
        try:
            spec = SyncSpec(
                name=self.name, audience=audience.name if audience else entity.name, destination=destination.name,
                target=Target(id=target.id, name=target.name), target_column=target.name_column,
                identifiers=identifiers, fields=dict(self.fields),
                mode=self.mode, removal=self.removal, max_removal_share=self.max_removal_share,
                batch_size=self.batch_size, default_region=self.default_region,
                region_column=self.phone_region_column, create_profiles=self.create_profiles,
                keep_target=self._one_click,
            )
        except ConfigError as exc:
            raise ConfigError(f"{at}: {exc}") from None
        return spec, audience, destination, entity

    def describe(self, spec: SyncSpec, destination: Destination, warning: str | None) -> str:
        """The sync's configuration as a person would write it; settings its mode ignores are left out."""
        source = f"every record of entity `{self.entity}`" if self.entity else f"audience `{spec.audience}`"
        lines = [
            f"Syncs {source} to destination `{destination.name}` ({destination.type}).",
            "",
        ]
        if self._one_click:
            lines += [f"One-click activation (`activate:` on audience `{spec.audience}`) with the default settings; "
                      "a sync of the same audience and destination in YAML replaces it.", ""]
        if warning:
            lines += [f"**Warning:** {warning}", ""]
        lines.append(f"- target: one destination audience per value of column `{spec.target_column}`, named by "
                     "the value" if spec.target_column else f"- target: destination audience {spec.target.describe()}")
        if spec.mode == "mirror":
            lines.append("- mode: mirror (adds, updates and removes)" if spec.sends_removes else
                         "- mode: mirror with removal: do_nothing (adds and updates; departed members stay)")
        elif spec.mode == "additive":
            lines.append("- mode: additive (adds and updates; never removes)")
        else:
            lines.append("- mode: subtractive (only removes departed members)" if spec.sends_removes else
                         "- mode: subtractive with removal: do_nothing (sends nothing)")
        if spec.sends_removes:
            lines.append(f"- mass-removal guard: a run may remove at most {spec.max_removal_share:.0%} "
                         "of the members held")
        lines.append(f"- identifiers: {_mapping(spec.identifiers) or 'none (the key identifies members)'}")
        if "phone" in spec.identifiers and (spec.region_column or spec.default_region):
            region = f"column `{spec.region_column}`" if spec.region_column else spec.default_region
            lines.append(f"- phone numbers without a country code: region from {region}")
        if spec.sends_adds:
            lines.append(f"- fields: {_mapping(spec.fields) or 'none'}")
        if spec.create_profiles is not None:
            lines.append("- members with no profile: " + ("a profile is created" if spec.create_profiles
                                                         else "skipped and counted (no profile is created)"))
        lines += [f"- schedule: {human(self.schedule)}",
                  f"- failure-rate threshold: {self.max_failure_rate:.0%}"]
        return "\n".join(lines)

    def schedule_warning(self, context: dg.ComponentLoadContext, audience: Audience | None) -> str | None:
        """Why this schedule wastes runs, if it does: the sync runs more often than its audience changes."""
        sync_runs = runs_per_four_weeks(self.schedule)
        if sync_runs is None or audience is None:
            return None
        audience_runs = runs_per_four_weeks(audience.schedule)
        if audience_runs is not None and sync_runs <= audience_runs:
            return None
        evaluated = "never on a schedule (manual)" if audience_runs is None else describe(audience.schedule)
        return (f"sync '{self.name}' runs {describe(self.schedule)} but its audience '{audience.name}' is "
                f"evaluated {evaluated}; most sync runs will find nothing new. "
                f"Consider schedule: {ON_AUDIENCE_UPDATE}.")

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        spec, audience, destination, entity = self.spec(context)
        of_entity = sorted(a.name for a in context.component_tree.get_all_components(of_type=Audience)
                           if a.entity == entity.name)
        warehouse = find(context, Warehouse, entity.warehouse, owner=f"entity '{entity.name}'", key="warehouse")
        source = MembershipSource(
            sync=spec.name, audience=audience.name if audience else None, entity=entity.name,
            query=None if audience else f"SELECT {', '.join(entity.columns)} FROM {entity.table}",
            key_column=entity.key, columns=entity.columns,
            relations=[(entity.relation(name), cols) for name, cols in wanted(
                [c for c in spec.fields.values() if c not in entity.columns]).items()],
            segment_audiences=of_entity if SEGMENTS_COLUMN in spec.fields.values() else [],
            warehouse_key=warehouse.resource_key)
        # An entity sync, or one mapping the audiences each record is in, follows every audience of the entity.
        follows_all = audience is None or bool(source.segment_audiences)
        upstream = sorted({*(of_entity if follows_all else []), *([audience.name] if audience else [])})
        configured = destination.configured(context)
        warning = self.schedule_warning(context, audience)
        if warning:
            warnings.warn(ScheduleWarning(f"{where(context)}: {warning}"), stacklevel=2)
        key = sync_key(self.name)
        # One pool per sync (or per destination, to share its rate limit): with the pools'
        # default limit of 1 in dagster.yaml, two runs of a sync never overlap; the second waits.
        pool = destination.pool or f"sync_{self.name}"
        dest_key = destination.resource_key
        max_failure_rate = self.max_failure_rate
        max_drop = self.max_match_rate_drop
        caps = configured.capabilities
        reports_match = caps.reports_match_rate or (caps.reports_size and caps.hashes_identifiers)

        def _run(context: dg.AssetExecutionContext, storage: AudienceStorage, config: SyncRunConfig,
                 full: bool) -> SyncResult:
            members = (None if spec.target_column else source.file(context, storage)) or source.read(context, storage)
            store = storage.snapshot_store(spec.name)
            n = members.num_rows if isinstance(members, pa.Table) else members.rows
            context.log.info(f"sync '{spec.name}': {n:,} members, "
                             f"{RUN_KIND_TEXT[planned_run_kind(store, full)]}")
            target = getattr(context.resources, dest_key).open(storage.root)
            options = RunOptions(
                run_id=context.run.run_id, full_resync=full, allow_mass_removal=config.allow_mass_removal,
                progress=context.log.info, allow_mass_removal_hint=allow_mass_removal_hint(spec.name),
                registry=storage.audience_registry(), parallel_batches=self.parallel_batches)
            try:
                if spec.target_column:
                    return run_by_column(spec, members, target, store, options)[0]
                return run_sync(spec, members, target, store, options)
            finally:
                target.close()

        @dg.asset(
            key=key, deps=[audience_key(a) for a in upstream], group_name="syncs",
            kinds={configured.type.kind_tag},
            description=self.describe(spec, destination, warning),
            required_resource_keys={"audience_storage", dest_key, *source.resource_keys},
            check_specs=[
                dg.AssetCheckSpec(FAILURE_RATE_CHECK, asset=key,
                                  description=f"Rows failed / rows sent at most {max_failure_rate:.0%}"),
                dg.AssetCheckSpec(MASS_REMOVAL_CHECK, asset=key,
                                  description=f"A run removes at most {spec.max_removal_share:.0%} of the members "
                                              "the destination holds, unless allowed"),
                *([dg.AssetCheckSpec(MATCH_RATE_CHECK, asset=key,
                                     description=f"The match rate falls by at most {max_drop:.0%} of the last "
                                                 "run's (a warning)")] if reports_match else []),
            ],
            tags={"audience/destination": destination.name},
            pool=pool,
            automation_condition=dg.AutomationCondition.eager() if self.schedule == ON_AUDIENCE_UPDATE else None,
            metadata={**({"audience": audience.name} if audience else {"entity": entity.name}),
                      "destination": destination.name,
                      "destination_type": destination.type, "sync_mode": spec.mode,
                      **({"schedule_warning": warning} if warning else {})},
        )
        def _sync(context: dg.AssetExecutionContext, config: SyncRunConfig) -> dg.MaterializeResult:
            storage: AudienceStorage = context.resources.audience_storage
            started = dt.datetime.now(dt.timezone.utc)
            full = is_full_resync(config, dict(context.run.tags))
            try:
                result = _run(context, storage, config, full)
            except Exception as exc:
                message = str(exc) or type(exc).__name__
                partial: SyncResult | None = getattr(exc, "result", None)
                finished = dt.datetime.now(dt.timezone.utc)
                if partial is None:  # stopped before it planned anything
                    record = RunRecord(
                        run_id=context.run.run_id, sync=spec.name, started_at=started, finished_at=finished,
                        status="error", run_kind=planned_run_kind(storage.snapshot_store(spec.name), full),
                        sync_mode=spec.mode, duration_s=(finished - started).total_seconds(), error=message[:4000])
                    partial = SyncResult(sync=spec.name, run_id=context.run.run_id, run_kind=record.run_kind,
                                         sync_mode=spec.mode, destination_audience_id="",
                                         duration_s=record.duration_s)
                else:
                    partial.duration_s = partial.duration_s or (finished - started).total_seconds()
                    record = RunRecord.from_result(partial, started, finished, status="error", error=message[:4000])
                storage.record_run(record)
                # The failure on the asset itself, beside the last success: what failed and what got through.
                failed_metadata = result_metadata(partial, error=message[:2000])
                context.log_event(dg.AssetObservation(asset_key=key, metadata=failed_metadata,
                                                      description=f"Failed: {message.splitlines()[0][:300]}"))
                if isinstance(exc, MassRemovalBlocked):
                    # Shown as a failed check on the asset, beside the failed run.
                    context.log_event(dg.AssetCheckEvaluation(
                        asset_key=key, check_name=MASS_REMOVAL_CHECK, passed=False,
                        severity=dg.AssetCheckSeverity.ERROR,
                        metadata={"would_remove": exc.removes, "held": exc.held, "limit": exc.limit}))
                if isinstance(exc, AudiencePipelinesError):
                    raise dg.Failure(description=message, metadata=failed_metadata) from exc
                raise
            storage.record_run(RunRecord.from_result(result, started, dt.datetime.now(dt.timezone.utc)))
            match_check = [match_rate_check(result.match_rate, last_match_rate(context, key), max_drop)] \
                if reports_match else []
            return dg.MaterializeResult(
                metadata=result_metadata(result),
                check_results=[
                    dg.AssetCheckResult(
                        check_name=FAILURE_RATE_CHECK, passed=result.failure_rate <= max_failure_rate,
                        severity=dg.AssetCheckSeverity.ERROR,
                        metadata={"failure_rate": result.failure_rate, "threshold": max_failure_rate,
                                  "rows_failed": result.failed, "rows_attempted": result.attempted}),
                    dg.AssetCheckResult(
                        check_name=MASS_REMOVAL_CHECK, passed=True,
                        metadata={"removed": result.removed, "held": result.held_before,
                                  "limit": spec.max_removal_share, "allowed_this_run": config.allow_mass_removal}),
                    *match_check,
                ],
            )

        @dg.op(name=preview_op_name(self.name), pool=pool,
               required_resource_keys={"audience_storage", dest_key, *source.resource_keys},
               description=f"Preview sync '{self.name}': what its next run would send, nothing sent (or, with "
                           "test_keys / test_first, a test sync of a few members)")
        def _preview(context: dg.OpExecutionContext, config: PreviewConfig) -> str:
            storage: AudienceStorage = context.resources.audience_storage
            members = source.read(context, storage)
            store = storage.snapshot_store(spec.name)
            target = getattr(context.resources, dest_key).open(storage.root)
            options = RunOptions(run_id=context.run.run_id, full_resync=config.full_resync,
                                 allow_mass_removal=config.allow_mass_removal, progress=context.log.info,
                                 registry=storage.audience_registry(), parallel_batches=self.parallel_batches)
            try:
                if spec.target_column:
                    raise dg.Failure(f"sync '{spec.name}': preview is not available for a target named by a column")
                if config.test_keys or config.test_first:
                    keys = choose_test_members(spec, members, target, store, options, keys=config.test_keys,
                                               first=config.test_first)
                    tested = run_test_sync(spec, members, target, store, options, keys, commit=config.commit)
                    text = tested.text()
                    event = dg.AssetObservation(asset_key=key, description="Test sync", metadata={
                        "test_sync": dg.MetadataValue.json(tested.outcomes), "committed": tested.committed,
                        "destination_audience_id": tested.destination_audience_id})
                else:
                    preview = preview_sync(spec, members, target, store, options, sample_rows=config.sample_rows)
                    text = preview.text()
                    event = dg.AssetObservation(asset_key=key, description="Preview (nothing sent)",
                                                metadata=preview_metadata(preview))
            except AudiencePipelinesError as exc:
                raise dg.Failure(description=str(exc)) from exc
            finally:
                target.close()
            context.log.info(text)
            context.log_event(event)
            return text

        preview_job = dg.JobDefinition(
            graph_def=dg.GraphDefinition(name=preview_job_name(self.name), node_defs=[_preview]),
            description=f"What sync '{self.name}' would send now, nothing sent; test_keys or test_first in the "
                        "run config send those members to the real destination audience (a test sync)",
            tags={"audience/destination": destination.name})

        running = schedules_running(context)
        schedules = build_schedule(schedule_name(self.name), self.schedule, key, f"sync '{self.name}'",
                                   running=running)
        # One sensor per sync, so each on_audience_update sync can be paused on its own.
        sensors = [dg.AutomationConditionSensorDefinition(
            automation_sensor_name(self.name), target=dg.AssetSelection.assets(key),
            default_status=dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED,
            minimum_interval_seconds=automation_interval_seconds(context),
            description=f"Runs sync '{self.name}' whenever audience '{audience.name}' is materialized; "
                        "stop it to pause the sync",
        )] if self.schedule == ON_AUDIENCE_UPDATE else []
        if reports_match and not spec.target_column:
            sensors.append(audience_size_sensor(spec.name, key, dest_key, running,
                                                audience_size_interval_seconds(context)))
        return dg.Definitions(assets=[_sync], schedules=schedules, sensors=sensors, jobs=[preview_job])


ONE_CLICK_SCHEDULE = "daily"


def activation_sync_name(audience_id: str, destination: str) -> str:
    return f"{audience_id}_to_{destination}"


def activated_syncs(context: dg.ComponentLoadContext, audience: Audience, entity: Entity) -> list[AudienceSync]:
    """The syncs an audience's `activate:` list switches on, each with the default settings.

    A sync declared in YAML for the same audience and destination takes the place of the default one.
    Dropping a destination from the list removes its sync, and nothing from the platform.
    """
    if not audience.activate:
        return []
    at, owner = where(context), f"audience '{audience.name}'"
    if entity.kind != "person":
        declared = f"is declared `kind: {entity.kind}`" if entity.kind else "declares no kind"
        raise ConfigError(f"{at}: {owner}, key 'activate': entity '{entity.name}' {declared}; one-click activation "
                          "sends people to ad platforms, so the entity must be declared `kind: person`")
    declared = context.component_tree.get_all_components(of_type=AudienceSync)
    explicit = {(s.audience, s.destination) for s in declared}
    names = {s.name for s in declared}
    syncs = []
    for name in dict.fromkeys(audience.activate):
        destination = find(context, Destination, name, owner=owner, key="activate")
        if not destination.configured(context).capabilities.hashes_identifiers:
            raise ConfigError(f"{at}: {owner}, key 'activate': destination '{name}' ({destination.type}) is not an "
                              "ad platform; one-click activation is for ad platforms. Declare a sync for it instead.")
        if (audience.name, name) in explicit:
            continue
        sync_name = activation_sync_name(audience.stable_id, name)
        if sync_name in names:
            raise ConfigError(f"{at}: {owner}, key 'activate': a sync named '{sync_name}' is declared for another "
                              "audience or destination; rename that sync or give this audience an `id`")
        sync = AudienceSync(name=sync_name, audience=audience.name,
                            destination=name, mode="mirror", schedule=ONE_CLICK_SCHEDULE)
        sync._one_click = True
        syncs.append(sync)
    return syncs


def _mapping(mapping: dict[str, str]) -> str:
    """`email`, `plan` <- `plan_name`: a name alone when the column has the same name."""
    return ", ".join(f"`{k}`" if k == c else f"`{k}` ← column `{c}`" for k, c in mapping.items())
