"""What a sync sends when it runs: an audience's last membership, or every record of an entity, with the
related fields and the derived list of audiences joined on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from audience_pipelines.contract import KEY
from audience_pipelines.engine.membership import build_membership
from audience_pipelines.engine.partitions import ClusteredFile, DerivedSource
from audience_pipelines.engine.related import Relation, join_related, read_related
from audience_pipelines.engine.segments import SEGMENTS_COLUMN, segment_membership
from audience_pipelines.engine.warehouse import query_audience
from audience_pipelines.resources import AudienceStorage


@dataclass(frozen=True)
class MembershipSource:
    """What a sync sends when it runs: an audience's last membership, or every record of the entity read
    from the warehouse now, with related fields and the derived list of audiences joined on."""

    sync: str
    audience: str | None  # None: an entity sync
    entity: str
    query: str | None  # an entity sync's query of all records
    key_column: str
    columns: list[str]
    relations: list[tuple[Relation, list[str]]]
    segment_audiences: list[str]  # when the sync maps SEGMENTS_COLUMN: the entity's audiences
    warehouse_key: str

    @property
    def resource_keys(self) -> list[str]:
        return [self.warehouse_key] if self.query or self.relations else []

    def file(self, context, storage: AudienceStorage) -> ClusteredFile | DerivedSource | None:
        """The audience's membership file, read one key-hash partition at a time instead of whole, with
        related fields and segment membership joined onto each partition; None for an entity sync."""
        if self.query:
            return None
        members = ClusteredFile(self._membership_path(storage))
        if not (self.relations or self.segment_audiences):
            return members
        return DerivedSource(members, self._derive(context, storage, members.rows))

    def _membership_path(self, storage: AudienceStorage):
        path = storage.membership_path(self.audience)
        if not path.exists():
            raise dg.Failure(f"sync '{self.sync}': audience '{self.audience}' has not been materialized yet "
                             f"(no {path}); materialize audiences/{self.audience} first")
        return path

    def read(self, context, storage: AudienceStorage) -> pa.Table:
        """The whole membership, with related fields and segment membership joined on."""
        if self.query:
            engine = getattr(context.resources, self.warehouse_key).engine(storage)
            label = f"entity '{self.entity}'"
            m = build_membership(label, query_audience(engine, self.query, label, self.columns), self.key_column)
            members = m.table
            context.log.info(f"sync '{self.sync}': {members.num_rows:,} records of entity '{self.entity}'"
                             + (f" ({m.set_aside.num_rows:,} set aside for null or duplicate keys)"
                                if m.set_aside.num_rows else ""))
        else:
            members = pq.read_table(self._membership_path(storage))
        if not (self.relations or self.segment_audiences):
            return members
        return self._derive(context, storage)(members, 0, 0)

    def _derive(self, context, storage: AudienceStorage, total: int | None = None
                ) -> Callable[[pa.Table, int, int], pa.Table]:
        """What joins the related fields and segment membership onto members of one key-hash partition
        (0 of level 0: all of them; `total`: members in all). Related tables are read once, here."""
        related = []
        if self.relations:
            engine = getattr(context.resources, self.warehouse_key).engine(storage)
            for relation, columns in self.relations:
                related.append((relation, read_related(engine, relation, columns)))
                context.log.info(f"sync '{self.sync}': {', '.join(columns)} joined from {relation.table} "
                                 f"({related[-1][1].num_rows:,} rows) through relation '{relation.name}'")
        segments, missing = {}, []
        for name in self.segment_audiences:
            path = storage.membership_path(name)
            if path.exists():
                segments[name] = ClusteredFile(path)
            else:
                missing.append(name)
        if self.segment_audiences:
            context.log.info(f"sync '{self.sync}': {SEGMENTS_COLUMN} from {len(segments)} audience(s) of entity "
                             f"'{self.entity}'" + (f"; not materialized yet, so counted as empty: "
                                                   f"{', '.join(missing)}" if missing else ""))

        def derive(members: pa.Table, partition: int, bits: int) -> pa.Table:
            for relation, table in related:
                members = join_related(self.sync, members, relation, table, total if bits else None)
            if self.segment_audiences:
                # Every audience of the entity is clustered by the same key hash: partition p of each
                # holds every key partition p of the members can share with it.
                held = {name: file.read(partition, bits, [KEY])[KEY] if members.num_rows else members[KEY]
                        for name, file in segments.items()}
                members = members.append_column(SEGMENTS_COLUMN, segment_membership(members[KEY], held))
            return members

        return derive
