"""The rest of the contract suite, over every destination and its fake (the cases of test_fault_matrix.py), each
test as one partition and over key-hash partitions of 2 members:
a name target is created exactly once, also by two runs racing; bad credentials fail before anything is
sent; a target id that does not exist fails clearly and creates nothing; a full resend leaves exactly
the membership; a create whose answer was lost is never sent again, and the next run finds it; a CRM's
removal takes membership only, and every profile keeps its properties.
"""

from __future__ import annotations

import threading

import pyarrow as pa
import pytest

from audience_pipelines.contract import CredentialsError, DestinationError, Target
from audience_pipelines.destinations import destination_type
from audience_pipelines.engine import RunOptions, SnapshotStore, SyncAborted, SyncSpec, run_sync
from audience_pipelines.engine.audiences import AudienceRegistry
from audience_pipelines_tests.faults import M1, M2, promised
from audience_pipelines_tests.memory_destination import MemoryJobDestination
from audience_pipelines_tests.test_fault_matrix import CASES, HTTP_CASES, make_case

# Platforms that keep audiences by id and find them by name; the others take a name as the id.
NAMED_AUDIENCES = [name for name, c in CASES.items() if c.names_audiences and not c.full_resync]
# Platforms keeping a profile per person (CRMs and marketing tools).
PROFILE_CASES = [name for name in CASES if destination_type(name.split(" ")[0]).capabilities().needs_profile]


@pytest.fixture(autouse=True, params=[None, 2], ids=["one partition", "partitions of 2"])
def partition_rows(request, monkeypatch):
    """Every test runs twice: as one partition, and over key-hash partitions of 2 members."""
    from audience_pipelines.engine import partitions
    if request.param:
        monkeypatch.setattr(partitions, "PARTITION_ROWS", request.param)
    return request.param


def members(rows: dict) -> pa.Table:
    keys = sorted(rows)
    return pa.table({"key": keys, "email": [rows[k][0] for k in keys], "plan": [rows[k][1] for k in keys]})


def spec(case, sync: str, target: Target, removal: str = "remove") -> SyncSpec:
    return SyncSpec(name=sync, audience="a", destination=case.name, target=target, identifiers=case.identifiers,
                    fields=case.fields, removal=removal)


def run(case, store, rows, run_id, target=Target(name="vip"), registry=None, dest=None, full=False,
        removal="remove"):
    dest = dest or case.destination()
    try:
        return run_sync(spec(case, store.sync, target, removal), members(rows), dest, store,
                        RunOptions(run_id=run_id, full_resync=full, registry=registry))
    finally:
        dest.close()


@pytest.mark.parametrize("name", [n for n in NAMED_AUDIENCES if CASES[n].create_request])
def test_a_create_whose_answer_was_lost_is_found_by_the_next_run_never_made_twice(name, tmp_path):
    with make_case(name, tmp_path) as case:
        case.fake.inject_lost_answer_on(*case.create_request)
        store = SnapshotStore(tmp_path / "syncs", "s")
        try:
            run(case, store, M1, "r1")  # the client may look the name up again at once (X does)
        except DestinationError as exc:
            assert "not sent again" in str(exc)
        assert case.audience_names() == ["vip"]  # created once, though its answer never came
        run(case, store, M1, "r2")
        assert case.audience_names() == ["vip"]
        assert case.state() == case.expected(M1)


@pytest.mark.parametrize("name", NAMED_AUDIENCES)
def test_two_runs_racing_on_one_name_create_it_once(name, tmp_path):
    """Two syncs of one account start together, each with its own snapshot, one registry."""
    with make_case(name, tmp_path) as case:
        registry = AudienceRegistry(tmp_path / "registry")
        barrier, results, errors = threading.Barrier(2), {}, []

        def one(sync: str) -> None:
            store = SnapshotStore(tmp_path / "syncs", sync)
            barrier.wait()
            try:
                results[sync] = run(case, store, M1, f"run-{sync}", registry=registry)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(s,)) for s in ("left", "right")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
        assert case.audience_names() == ["vip"]
        assert results["left"].destination_audience_id == results["right"].destination_audience_id
        assert case.state() == case.expected(M1)
        # And a later run, with a fresh client, finds the same one again.
        again = run(case, SnapshotStore(tmp_path / "syncs", "left"), M1, "again", registry=registry)
        assert again.destination_audience_id == results["left"].destination_audience_id
        assert case.audience_names() == ["vip"]
        entries = registry.entries(case.destination().type_name)
        assert [(e.name, e.id, e.created) for e in entries] == [("vip", again.destination_audience_id, True)]


def test_a_platform_that_cannot_list_resolves_names_through_the_registry(tmp_path):
    dest, registry = MemoryJobDestination(), AudienceRegistry(tmp_path / "registry")
    spec_ = SyncSpec(name="s", audience="a", destination="memory_job", target=Target(name="vip"),
                     identifiers={"email": "email"}, fields={"plan": "plan"})
    first = run_sync(spec_, members(M1), dest, SnapshotStore(tmp_path / "syncs", "s"),
                     RunOptions(run_id="r1", registry=registry))
    other = SyncSpec(**{**spec_.__dict__, "name": "t"})
    second = run_sync(other, members(M1), dest, SnapshotStore(tmp_path / "syncs", "t"),
                      RunOptions(run_id="r2", registry=registry))
    assert dest.created == ["vip"] and first.destination_audience_id == second.destination_audience_id


@pytest.mark.parametrize("name", [c for c in HTTP_CASES if "replace" not in c])
def test_bad_credentials_fail_before_anything_is_sent(name, tmp_path):
    with make_case(name, tmp_path) as case:
        store = SnapshotStore(tmp_path / "syncs", "s")
        run(case, store, M1, "r1")
        before, snapshot = case.state(), store.read()
        names = case.audience_names() if name in NAMED_AUDIENCES else None
        with pytest.raises((DestinationError, SyncAborted)) as err:
            run(case, store, M2, "r2", dest=case.faults["bad credentials"](case))
        if name == "webhook":
            # A receiver has nothing to ask before the first batch: it refuses that one, and the run stops.
            assert isinstance(err.value.__cause__, CredentialsError)
        else:
            assert isinstance(err.value, CredentialsError) and store.read_pending() is None
        assert case.state() == before and store.read().equals(snapshot)
        if names is not None:
            assert case.audience_names() == names


@pytest.mark.parametrize("name", NAMED_AUDIENCES)
def test_a_target_id_that_does_not_exist_is_a_clear_error_and_creates_nothing(name, tmp_path):
    with make_case(name, tmp_path) as case:
        store = SnapshotStore(tmp_path / "syncs", "s")
        with pytest.raises(DestinationError) as err:
            run(case, store, M1, "r1", target=Target(id="9999999999"))
        assert err.value.fatal and "9999999999" in str(err.value)
        assert case.audience_names() == [] and store.manifest() is None


@pytest.mark.parametrize("name", HTTP_CASES)
def test_a_full_resend_leaves_exactly_the_membership(name, tmp_path):
    with make_case(name, tmp_path) as case:
        store = SnapshotStore(tmp_path / "syncs", "s")
        run(case, store, M1, "r1")
        result = run(case, store, M2, "r2", full=True)
        assert result.failed == 0 and case.state() == case.expected(M2)
        assert result.replaced == name.startswith("meta")  # Meta replaces the audience in one session
        assert store.read_pending() is None and store.read_session() is None
        assert sorted(store.read()["key"].to_pylist()) == sorted(M2)


@pytest.mark.parametrize("removal", ["remove", "do_nothing"])
@pytest.mark.parametrize("name", PROFILE_CASES)
def test_a_crm_removal_takes_membership_only_and_every_profile_keeps_its_properties(name, removal, tmp_path):
    with make_case(name, tmp_path) as case:
        store = SnapshotStore(tmp_path / "syncs", "s")
        run(case, store, M1, "r1")
        result = run(case, store, M2, "r2", removal=removal)
        assert result.failed == 0
        assert result.removed == (3 if removal == "remove" else 0) and result.updated == 2  # k0-k2 left; k3, k4 changed
        mode = "mirror" if removal == "remove" else "removal do_nothing"
        assert case.state() == case.expected(promised(mode))
        # Leavers k0-k2 and k3's old email keep their profile, with the plan they last had.
        assert case.profiles() == {e: p for e, p in M1.values()} | {e: p for e, p in M2.values()}
