"""Preview and test sync in the engine, against the Meta and HubSpot fakes: a preview sends nothing and
touches no file of the sync; a test sync sends only the chosen members and commits them only when asked."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pytest

from audience_pipelines.contract import Target
from audience_pipelines.engine import ConfigError, RunOptions, SnapshotStore, SyncSpec, run_sync
from audience_pipelines.engine.preview import choose_test_members, preview_sync, run_test_sync
from audience_pipelines_tests.cases.braze import BrazeCase
from audience_pipelines_tests.cases.hubspot import HubSpotCase
from audience_pipelines_tests.cases.meta_custom_audiences import MetaCase
from audience_pipelines_tests.faults import M1, M2


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def members(rows: dict) -> pa.Table:
    keys = sorted(rows)
    return pa.table({"key": keys, "email": [rows[k][0] for k in keys], "plan": [rows[k][1] for k in keys]})


def spec(case, **kw) -> SyncSpec:
    return SyncSpec(name="s", audience="vip", destination=case.name, target=Target(name="vip"),
                    identifiers=case.identifiers, fields=case.fields, **kw)


def files(store: SnapshotStore) -> dict[str, bytes]:
    return {str(p.relative_to(store.dir)): p.read_bytes() for p in sorted(store.dir.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture
def meta(tmp_path):
    with MetaCase.open(tmp_path) as case:
        yield case


@pytest.fixture
def hubspot(tmp_path):
    with HubSpotCase.open(tmp_path) as case:
        yield case


def first_run(case, store, rows=M1):
    dest = case.destination()
    try:
        return run_sync(spec(case), members(rows), dest, store, RunOptions(run_id="r1"))
    finally:
        dest.close()


def test_a_preview_counts_the_run_shows_rows_hashed_as_sent_and_sends_nothing(meta, tmp_path):
    store = SnapshotStore(tmp_path / "syncs", "s")
    first_run(meta, store)
    before, requests = files(store), len(meta.fake.requests)
    preview = preview_sync(spec(meta), members(M2), meta.destination(), store, RunOptions(run_id="p"))
    assert preview.run_kind == "diff" and preview.destination_audience_id == meta.audience_id("vip")
    # M2: k0-k2 left, k3 changed email (k4's plan is not sent to Meta: unchanged), k20-k22 joined.
    assert preview.counts == {"remove": 3, "update": 1, "add": 3, "unchanged": 6, "set_aside": 0}
    # Meta's column names and hashes, as the rows leave (the key is kept to tell members apart).
    assert preview.samples["add"] == [{"key": f"k{i}", "EMAIL": sha(f"user{i}@example.com"), "EXTERN_ID": f"k{i}"}
                                      for i in (20, 21, 22)]
    assert preview.samples["remove"][0] == {"key": "k0", "EMAIL": sha("user0@example.com"), "EXTERN_ID": "k0"}
    assert preview.guard.startswith("passes: 3 of 10 removed (30%")
    assert files(store) == before and len(meta.fake.requests) == requests
    assert meta.state() == meta.expected(M1)
    assert "remove 3" in preview.text() and "mass-removal guard: passes" in preview.text()


def test_a_preview_says_when_the_guard_would_block_the_run(meta, tmp_path):
    store = SnapshotStore(tmp_path / "syncs", "s")
    first_run(meta, store)
    few = {k: v for k, v in M1.items() if k in ("k0", "k1")}
    preview = preview_sync(spec(meta), members(few), meta.destination(), store, RunOptions(run_id="p"))
    assert preview.blocked and preview.counts["remove"] == 8
    assert "would block the run" in preview.guard and "8 of the 10" in preview.guard
    allowed = preview_sync(spec(meta), members(few), meta.destination(), store,
                           RunOptions(run_id="p", allow_mass_removal=True))
    assert not allowed.blocked and allowed.guard == "allowed for this run (8 of 10 removed)"


def test_a_preview_before_the_first_run_is_the_whole_membership(meta, tmp_path):
    store = SnapshotStore(tmp_path / "syncs", "s")
    preview = preview_sync(spec(meta), members(M1), meta.destination(), store, RunOptions(run_id="p"), sample_rows=2)
    assert preview.run_kind == "first_run" and preview.destination_audience_id is None
    assert preview.counts["add"] == 10 and len(preview.samples["add"]) == 2
    assert not store.dir.exists() and meta.fake.requests == []


def test_a_test_sync_sends_only_the_chosen_members_and_leaves_the_snapshot(hubspot, tmp_path):
    store = SnapshotStore(tmp_path / "syncs", "s")
    first_run(hubspot, store)
    before = files(store)
    hubspot.fake.reject_emails(["user21@example.com"])
    dest = hubspot.destination()
    result = run_test_sync(spec(hubspot), members(M2), dest, store, RunOptions(run_id="t"),
                           keys=["k20", "k21", "k4", "k5"])
    dest.close()
    assert result.outcomes["k20"] == "added" and result.outcomes["k4"] == "updated"
    assert result.outcomes["k5"] == "resent (unchanged)" and result.outcomes["k21"].startswith("rejected: ")
    assert files(store) == before  # nothing committed: the next run sends them again
    state = hubspot.state()
    assert sorted(e for e, _ in state.values()) == sorted([f"user{i}@example.com" for i in range(10)]
                                                         + ["user20@example.com"])
    assert ("user4@example.com", "gold") in state.values()
    # Nobody was removed: the leavers k0-k2 are still in the list.
    assert {"user0@example.com", "user1@example.com"} <= {e for e, _ in state.values()}


def test_a_committed_test_sync_records_what_was_accepted(hubspot, tmp_path):
    store = SnapshotStore(tmp_path / "syncs", "s")
    first_run(hubspot, store)
    fingerprint = store.manifest().config_fingerprint
    dest = hubspot.destination()
    run_test_sync(spec(hubspot), members(M2), dest, store, RunOptions(run_id="t"), keys=["k20"], commit=True)
    dest.close()
    assert "k20" in store.read()["key"].to_pylist() and store.manifest().rows == 11
    assert store.manifest().config_fingerprint == fingerprint
    dest = hubspot.destination()
    rerun = run_sync(spec(hubspot), members(M2), dest, store, RunOptions(run_id="r2"))
    dest.close()
    assert rerun.added == 2 and rerun.removed == 3  # k20 is held already
    assert hubspot.state() == hubspot.expected(M2)


def test_test_sync_members_are_chosen_by_key_or_from_the_preview(hubspot, tmp_path):
    store = SnapshotStore(tmp_path / "syncs", "s")
    first_run(hubspot, store)
    dest = hubspot.destination()
    chosen = choose_test_members(spec(hubspot), members(M2), dest, store, RunOptions(run_id="t"), first=4)
    assert chosen == ["k20", "k21", "k22", "k3"]  # the preview's adds, then its updates
    with pytest.raises(ConfigError, match=r"1 key\(s\) are not members of audience 'vip' \(10 members\): \['nobody'\]"):
        choose_test_members(spec(hubspot), members(M2), dest, store, RunOptions(run_id="t"), keys=["k20", "nobody"])
    dest.close()


def test_test_sync_is_not_available_where_audiences_cannot_be_listed(tmp_path):
    with BrazeCase.open(tmp_path) as braze:
        store = SnapshotStore(tmp_path / "syncs", "s")
        with pytest.raises(ConfigError, match="test sync is not available for destination type 'braze'"):
            run_test_sync(spec(braze), members(M1), braze.destination(), store, RunOptions(run_id="t"), keys=["k1"])
        assert braze.fake.requests == [] and not Path(store.dir / "manifest.json").exists()


def test_a_test_sync_reports_a_member_skipped_for_want_of_a_profile(hubspot, tmp_path):
    store = SnapshotStore(tmp_path / "syncs", "s")
    first_run(hubspot, store)
    dest = hubspot.destination()
    result = run_test_sync(spec(hubspot, create_profiles=False), members(M2), dest, store, RunOptions(run_id="t"),
                           keys=["k20", "k5"])
    dest.close()
    assert result.outcomes["k5"] == "resent (unchanged)"
    assert result.outcomes["k20"].startswith("skipped: ") and "user20@example.com" not in {
        e for e, _ in hubspot.state().values()}
    assert hubspot.fake.contact_by_email("user20@example.com") is None  # no profile was created
