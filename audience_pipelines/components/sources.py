"""What a sync sends when it runs: an audience's last membership, or every record of an entity, with the
related fields and the derived list of audiences joined on."""

from __future__ import annotations

import time
from dataclasses import dataclass

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from audience_pipelines.contract import KEY
from audience_pipelines.engine.membership import build_membership
from audience_pipelines.engine.partitions import ClusteredFile
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

    def file(self, storage: AudienceStorage) -> ClusteredFile | None:
        """The audience's membership file, when the sync sends it as it is: the run then reads it one
        key-hash partition at a time instead of whole."""
        if self.query or self.relations or self.segment_audiences:
            return None
        path = self._membership_path(storage)
        return ClusteredFile(path)

    def _membership_path(self, storage: AudienceStorage):
        path = storage.membership_path(self.audience)
        if not path.exists():
            raise dg.Failure(f"sync '{self.sync}': audience '{self.audience}' has not been materialized yet "
                             f"(no {path}); materialize audiences/{self.audience} first")
        return path

    def read(self, context, storage: AudienceStorage) -> pa.Table:
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
        if self.relations:
            engine = getattr(context.resources, self.warehouse_key).engine(storage)
            for relation, columns in self.relations:
                related = read_related(engine, relation, columns)
                members = join_related(self.sync, members, relation, related)
                context.log.info(f"sync '{self.sync}': {', '.join(columns)} joined from {relation.table} "
                                 f"({related.num_rows:,} rows) through relation '{relation.name}'")
        if self.segment_audiences:
            started = time.monotonic()
            held, missing = {}, []
            for name in self.segment_audiences:
                path = storage.membership_path(name)
                if path.exists():
                    held[name] = pq.read_table(path, columns=[KEY])[KEY]
                else:
                    missing.append(name)
            members = members.append_column(SEGMENTS_COLUMN, segment_membership(members[KEY], held))
            context.log.info(f"sync '{self.sync}': {SEGMENTS_COLUMN} from {len(held)} audience(s) of entity "
                             f"'{self.entity}' in {time.monotonic() - started:.2f} s"
                             + (f"; not materialized yet, so counted as empty: {', '.join(missing)}"
                                if missing else ""))
        return members
