"""Change files in the contract suite (engine-level faults only: there is no platform to fail)."""

from __future__ import annotations

import contextlib

import pyarrow.csv as pacsv

from audience_pipelines.destinations.file import FileSettings
from audience_pipelines.destinations.file.client import FileDestination
from audience_pipelines_tests.faults import Case


class FileCase(Case):
    """Change files: the state is every run's adds, updates and removes replayed in the order written."""

    name = "file"
    faults = {}  # no platform to fail; the engine-level faults apply

    def __init__(self, root):
        self.root = root

    def destination(self):
        return FileDestination(FileSettings(path=str(self.root), format="csv"))

    def spec(self):
        return "file", {"path": str(self.root), "format": "csv"}

    def state(self):
        held: dict = {}
        for path in sorted(self.root.glob("vip/*/*.csv"), key=lambda p: p.stat().st_mtime_ns):
            for r in pacsv.read_csv(path).to_pylist():
                if path.name.startswith("remove-"):
                    held.pop(r["key"], None)
                else:
                    held[r["key"]] = {"email": r["email"], "plan": r["plan"]}
        return held

    def expected(self, members):
        return {k: {"email": e, "plan": p} for k, (e, p) in members.items()}

    @classmethod
    @contextlib.contextmanager
    def open(cls, tmp_path):
        yield cls(tmp_path / "exports")


CASES = [FileCase]
