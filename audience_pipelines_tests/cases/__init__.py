"""One module per destination, each naming its contract-suite cases in `CASES`.

A case (see `faults.Case`) is a destination's client, its fake and its faults in the platform's
own form. Modules are found by listing this folder, so a new destination adds its own file here and
edits nothing else. (`sql_table` runs against the real PostgreSQL server in test_fault_matrix_sql.py.)
"""

from __future__ import annotations

import hashlib
import importlib
import pkgutil

TIMEOUT_S = 0.5  # client timeout; the timeout fault delays an answer past it


def h(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def all_cases() -> dict:
    """Case classes by name, from every module of this package."""
    cases = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        for case in importlib.import_module(f"{__name__}.{info.name}").CASES:
            cases[case.name] = case
    return cases
