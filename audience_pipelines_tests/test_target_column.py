"""A target named by a column: one destination audience per value, created once, members moved between them."""

from __future__ import annotations

import pyarrow as pa
import pytest

from audience_pipelines.contract import Target
from audience_pipelines.engine import MassRemovalBlocked, RunOptions, SnapshotStore, SyncSpec
from audience_pipelines.engine.audiences import AudienceRegistry
from audience_pipelines.engine.targets import run_by_column, value_store
from audience_pipelines_tests.memory_destination import MemoryJobDestination

SPEC = SyncSpec(name="by_region", audience="vip", destination="mem", target=Target(),
                target_column="region", identifiers={"email": "email"})


def members(rows: dict[str, str | None]) -> pa.Table:
    keys = sorted(rows)
    return pa.table({"key": keys, "email": [f"{k}@example.com" for k in keys],
                     "region": [rows[k] for k in keys]})


def held(dest: MemoryJobDestination) -> dict[str, set[str]]:
    """Members per destination audience name (audiences keyed by id, names from the registry of creations)."""
    names = dict(zip(dest.audiences, dest.created))
    return {names[aid]: set(m) for aid, m in dest.audiences.items() if m or names[aid]}


def run(dest, store, rows, run_id, tmp_path, **options):
    return run_by_column(SPEC, members(rows), dest, store, RunOptions(
        run_id=run_id, registry=AudienceRegistry(tmp_path / "registry"), **options))


def test_one_audience_per_value_created_once_and_movers_withdrawn(tmp_path):
    dest, store = MemoryJobDestination(batch_rows=10), SnapshotStore(tmp_path / "syncs", "by_region")
    combined, per = run(dest, store, {"a": "EU", "b": "EU", "c": "US", "d": "US", "e": "APAC"}, "r1", tmp_path)
    assert sorted(dest.created) == ["APAC", "EU", "US"]
    assert held(dest) == {"EU": {"a", "b"}, "US": {"c", "d"}, "APAC": {"e"}}
    assert (combined.added, combined.removed) == (5, 0) and set(per) == {"APAC", "EU", "US"}

    # b moves to US; a new member f joins EU.
    combined, per = run(dest, store, {"a": "EU", "b": "US", "c": "US", "d": "US", "e": "APAC", "f": "EU"},
                        "r2", tmp_path)
    assert sorted(dest.created) == ["APAC", "EU", "US"]  # nothing created twice across reruns
    assert held(dest) == {"EU": {"a", "f"}, "US": {"b", "c", "d"}, "APAC": {"e"}}
    assert (per["EU"].added, per["EU"].removed, per["US"].added, per["US"].removed) == (1, 1, 1, 0)
    assert (combined.added, combined.removed) == (2, 1)
    assert combined.per_audience["US"]["members"] == 3

    # Unchanged: nothing sent anywhere.
    combined, _ = run(dest, store, {"a": "EU", "b": "US", "c": "US", "d": "US", "e": "APAC", "f": "EU"},
                      "r3", tmp_path)
    assert (combined.added, combined.removed, combined.updated) == (0, 0, 0)


def test_a_value_nobody_holds_any_more_is_emptied_only_past_its_guard(tmp_path):
    dest, store = MemoryJobDestination(batch_rows=10), SnapshotStore(tmp_path / "syncs", "by_region")
    run(dest, store, {"a": "EU", "b": "EU", "c": "US"}, "r1", tmp_path)
    # Everyone in EU leaves: its audience would lose all its members, which its own guard stops;
    # the US audience is synced all the same.
    with pytest.raises(MassRemovalBlocked) as blocked:
        run(dest, store, {"c": "US", "d": "US"}, "r2", tmp_path)
    assert "audience 'EU'" in str(blocked.value) and "the others (US) were synced" in str(blocked.value)
    assert held(dest) == {"EU": {"a", "b"}, "US": {"c", "d"}}
    combined, per = run(dest, store, {"c": "US", "d": "US"}, "r3", tmp_path, allow_mass_removal=True)
    assert held(dest)["EU"] == set() and per["EU"].removed == 2
    # Emptied: later runs leave it alone.
    _, per = run(dest, store, {"c": "US", "d": "US"}, "r4", tmp_path)
    assert set(per) == {"US"}


def test_members_with_no_value_are_set_aside_and_counted(tmp_path):
    dest, store = MemoryJobDestination(batch_rows=10), SnapshotStore(tmp_path / "syncs", "by_region")
    combined, _ = run(dest, store, {"a": "EU", "b": None, "c": "  "}, "r1", tmp_path)
    assert held(dest) == {"EU": {"a"}}
    assert combined.set_aside == 2 and combined.membership_rows == 3
    assert {s["key"] for s in combined.set_aside_sample} == {"b", "c"}
    assert all("column 'region' is empty" in s["reason"] for s in combined.set_aside_sample)


def test_a_sync_to_meta_by_country_through_dagster(home, monkeypatch):
    import dagster as dg
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from audience_pipelines_tests.dagster_helpers import materialize, metadata, project_defs
    from audience_pipelines_tests.fakes import FakeMeta

    yaml = """type: audience_pipelines.components.Destination
attributes:
  name: meta_ads
  type: meta_custom_audiences
  from_env: {access_token: META_ACCESS_TOKEN, base_url: META_BASE_URL}
  settings: {ad_account_id: "777"}
---
type: audience_pipelines.components.AudienceSync
attributes:
  name: high_value_by_country
  audience: high_value_customers
  destination: meta_ads
  target: {name_column: country}
  identifiers: {email: email}
"""
    with FakeMeta(access_token="EAAB-by-country", ad_account_id="777") as meta:
        monkeypatch.setenv("META_ACCESS_TOKEN", "EAAB-by-country")
        monkeypatch.setenv("META_BASE_URL", meta.url)
        with project_defs(extra={"by_country/defs.yaml": yaml}) as defs:
            instance = dg.DagsterInstance.ephemeral()
            first = materialize(defs, "audiences/high_value_customers", "syncs/high_value_by_country",
                                instance=instance)
            again = materialize(defs, "syncs/high_value_by_country", instance=instance)
        m, m2 = metadata(first, "syncs/high_value_by_country"), metadata(again, "syncs/high_value_by_country")
        members = pq.read_table(home / "audiences" / "high_value_customers" / "membership.parquet")
        countries = members["country"].drop_null().unique().to_pylist()
        names = sorted(a["name"] for a in meta.audiences.values())
        assert names == sorted({c.strip() for c in countries if c.strip()})  # one audience per value, once
        store = SnapshotStore(home / "syncs", "high_value_by_country")
        for country in names:
            rows = pc.sum(pc.equal(pc.utf8_trim_whitespace(members["country"]), country)).as_py()
            held_rows = value_store(store, country).read()
            assert held_rows.num_rows == m["destination_audiences"][country]["members"] <= rows
            # Customers sharing an email are one person to Meta.
            people = set(held_rows["EMAIL"].drop_null().to_pylist())
            assert meta.member_values(meta.audience_id_by_name(country), "EMAIL") == people
        assert set(m["destination_audiences"]) == set(names)
        assert (m2["rows_added"], m2["rows_removed"], m2["rows_updated"]) == (0, 0, 0)
