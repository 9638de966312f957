import time

import dagster as dg

from audience_pipelines.components.catalog import find, where
from audience_pipelines.components.entity import Entity
from audience_pipelines.components.schedules import MANUAL, ScheduleChoice, build_schedule, cron_of
from audience_pipelines.components.settings import schedules_running
from audience_pipelines.components.yaml_text import Text
from audience_pipelines.engine import AudiencePipelinesError, ConfigError, build_membership
from audience_pipelines.engine.membership import write_membership, write_parquet_atomic
from audience_pipelines.engine.warehouse import query_audience
from audience_pipelines.resources import AudienceStorage

KEY_QUALITY_CHECK = "key_quality"


def audience_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["audiences", name])


class Audience(dg.Component, dg.Model, dg.Resolvable):
    """A set of members of an entity: SQL, or a filter over the entity's table."""

    name: Text
    # A stable identity that outlives renames (default: the name); one-click syncs are named after it.
    id: Text | None = None
    entity: Text
    sql: Text | None = None
    filter: Text | None = None
    description: Text | None = None
    schedule: ScheduleChoice = MANUAL
    max_bad_key_share: float = 0.01  # key_quality check fails above this share of set-aside rows
    # One-click activation: a sync with the default settings to each of these ad-platform destinations.
    activate: list[Text] = []

    @property
    def stable_id(self) -> str:
        return self.id or self.name

    def query(self, entity: Entity) -> str:
        if self.sql:
            return self.sql
        cols = ", ".join(entity.columns)
        return f"SELECT {cols} FROM {entity.table} WHERE {self.filter}"

    def resolve(self, context: dg.ComponentLoadContext) -> Entity:
        owner = f"audience '{self.name}'"
        if bool(self.sql) == bool(self.filter):
            raise ConfigError(f"{where(context)}: {owner}: give exactly one of 'sql' or 'filter'")
        cron_of(self.schedule, f"{where(context)}: {owner}, key 'schedule'")
        entity = find(context, Entity, self.entity, owner=owner, key="entity")
        entity.validate_in(context)
        return entity

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        entity = self.resolve(context)
        from audience_pipelines.components.warehouse import Warehouse

        warehouse = find(context, Warehouse, entity.warehouse, owner=f"entity '{entity.name}'", key="warehouse")
        key = audience_key(self.name)
        name, sql, key_column = self.name, self.query(entity), entity.key
        required = entity.columns
        max_bad = self.max_bad_key_share
        # A `sql: |` block keeps its final newline as written; the shown query does not need it.
        description = ((self.description or f"Members of entity '{entity.name}'")
                       + f"\n\n```sql\n{sql.rstrip()}\n```")

        @dg.asset(
            key=key, group_name="audiences", kinds={warehouse.kind}, description=description,
            required_resource_keys={"audience_storage", warehouse.resource_key},
            check_specs=[dg.AssetCheckSpec(KEY_QUALITY_CHECK, asset=key,
                                           description="Share of rows set aside for null or duplicate keys")],
            metadata={"entity": entity.name, "key_column": key_column},
        )
        def _audience(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
            storage: AudienceStorage = context.resources.audience_storage
            engine = getattr(context.resources, warehouse.resource_key).engine(storage)
            started = time.monotonic()
            try:
                rows = query_audience(engine, sql, name, required)
                context.log.info(f"audience '{name}': query returned {rows.num_rows:,} rows "
                                 f"in {time.monotonic() - started:.1f}s")
                m = build_membership(name, rows, key_column)
            except AudiencePipelinesError as exc:
                raise dg.Failure(description=str(exc)) from exc
            path = write_membership(m.table, storage.membership_path(name), m.key_hash)
            write_parquet_atomic(m.set_aside, storage.set_aside_path(name))
            bad = m.set_aside.num_rows
            share = bad / rows.num_rows if rows.num_rows else 0.0
            return dg.MaterializeResult(
                metadata={
                    "dagster/row_count": m.table.num_rows,
                    "dagster/column_schema": dg.TableSchema(columns=[
                        dg.TableColumn(f.name, str(f.type)) for f in m.table.schema]),
                    "dagster/uri": dg.MetadataValue.path(str(path)),
                    "rows_returned": rows.num_rows,
                    "set_aside": bad,
                    "null_keys": m.null_keys,
                    "duplicate_keys": m.duplicate_keys,
                    "duplicate_key_rows": m.duplicate_rows,
                    "set_aside_sample": dg.MetadataValue.json(m.samples),
                    "duration_s": round(time.monotonic() - started, 3),
                },
                check_results=[dg.AssetCheckResult(
                    check_name=KEY_QUALITY_CHECK, passed=share <= max_bad,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={"set_aside_share": share, "threshold": max_bad, "null_keys": m.null_keys,
                              "duplicate_key_rows": m.duplicate_rows},
                )],
            )

        schedules = build_schedule(f"audience_{self.name}_schedule", self.schedule, key,
                                   f"audience '{self.name}'", running=schedules_running(context))
        from audience_pipelines.components.sync import activated_syncs  # the sync component imports this one

        return dg.Definitions.merge(dg.Definitions(assets=[_audience], schedules=schedules),
                                    *(sync.build_defs(context) for sync in activated_syncs(context, self, entity)))
