"""The contract suite: every fault x every mode, per destination, each ending with the destination's exact
state (see faults.py). Each destination and its fake is a `Case` in `cases/<type>.py`, found by listing.

The table of what was tried and held is printed at the end of the pytest run. `test_contract.py` holds
the rest of the suite (names created once under racing runs, credentials checked before sending, full
resends).
"""

from __future__ import annotations

import contextlib

import pytest

from audience_pipelines_tests.cases import all_cases
from audience_pipelines_tests import faults
from audience_pipelines_tests.faults import ENGINE_FAULTS, MODES, scenario

CASES = all_cases()
# Cases with a platform to fail (faults in its own form) and those with only the engine's faults.
HTTP_CASES = [name for name, c in CASES.items() if c.faults]


@contextlib.contextmanager
def make_case(name: str, tmp_path):
    """A fresh fake per scenario: its audiences, members and idempotency keys start empty."""
    with CASES[name].open(tmp_path) as case:
        yield case


@pytest.fixture
def case(request, tmp_path):
    with make_case(request.param, tmp_path) as c:
        yield c


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize(("case", "fault"), [(name, fault) for name, c in CASES.items()
                                             for fault in [*c.faults, *ENGINE_FAULTS]], indirect=["case"])
def test_fault_matrix(case, fault, mode, tmp_path, monkeypatch):
    scenario(case, fault, mode, tmp_path, monkeypatch)


# The same faults on runs over key-hash partitions of 2 members (the matrix's 10 to 13 members make up
# to 8 partitions, one destination session each): a fault or a kill may fall between two partitions.
@pytest.mark.parametrize(("case", "fault"), [(name, fault) for name, c in CASES.items()
                                             for fault in [*c.faults, *ENGINE_FAULTS]], indirect=["case"])
def test_fault_matrix_over_partitions(case, fault, tmp_path, monkeypatch):
    monkeypatch.setattr(faults, "PARTITION_ROWS", 2)
    scenario(case, fault, "mirror", tmp_path, monkeypatch, label=", 8 partitions")
