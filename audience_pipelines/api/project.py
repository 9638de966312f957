"""The project as the API sees it: the definitions a defs folder loads to, and what a change would load to.

Both load the way the code location does (`definitions.build`, the same components and error text),
from a scratch copy of the folder, so a change is validated before a byte of it reaches the folder
the code location reads.
"""

from __future__ import annotations

import importlib
import shutil
import sys
import tempfile
import threading
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from audience_pipelines.api.documents import SyncDocument, SyncFiles
from audience_pipelines.components.sync import ScheduleWarning
from audience_pipelines.definitions import build
from audience_pipelines.engine import ConfigError
from audience_pipelines.webserver import first_line

_IMPORT_LOCK = threading.Lock()  # loading edits sys.path and sys.modules


class LoadFailed(ConfigError):
    """The definitions do not load; `message` is the loading error's first line, paths as in the folder."""


def load_folder(defs: Path, changes: dict[Path, str] | None = None, notes: list[str] | None = None
                ) -> dg.Definitions:
    """The definitions of `defs` (with `changes`: files, relative to it, holding new text), loaded from a copy.

    The project's own warnings (a schedule that outruns its audience's) are added to `notes`.
    """
    package = f"audience_pipelines_scratch_{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory(prefix="audience_pipelines_") as tmp, _IMPORT_LOCK:
        root = Path(tmp)
        copy = root / package / "defs"
        shutil.copytree(defs, copy, ignore=shutil.ignore_patterns("__pycache__", ".*.tmp"))
        (root / package / "__init__.py").write_text("")
        (copy / "__init__.py").touch()
        for rel, text in (changes or {}).items():
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            (copy / rel).write_text(text, encoding="utf-8")
        sys.path.insert(0, str(root))
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                tree = dg.ComponentTree(defs_module=importlib.import_module(f"{package}.defs"), project_root=root)
                definitions = build(tree.build_defs)
            if notes is not None:
                notes.extend(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, ScheduleWarning)))
            return definitions
        except Exception as exc:  # noqa: BLE001 - any load failure is the change's verdict
            message = first_line(str(exc)).replace(str(copy), str(defs)).replace(package, "audience_pipelines")
            raise LoadFailed(message) from None
        finally:
            sys.path.remove(str(root))
            for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
                del sys.modules[name]


def _fingerprint(defs: Path) -> tuple:
    return tuple(sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size)
                        for p in defs.rglob("*") if p.is_file() and "__pycache__" not in p.parts))


@dataclass
class Loaded:
    """One load of the folder: its definitions and the sync documents it was loaded from."""

    definitions: dg.Definitions
    documents: dict[str, SyncDocument]  # sync name -> its YAML document
    specs: dict[dg.AssetKey, dg.AssetSpec] = field(default_factory=dict)

    groups: dict[str, dict[str, dg.AssetSpec]] = field(default_factory=dict)

    def __post_init__(self):
        self.specs = {s.key: s for s in self.definitions.resolve_all_asset_specs()}
        for key, spec in self.specs.items():
            if len(key.path) == 2:
                self.groups.setdefault(key.path[0], {})[key.path[1]] = spec

    def group(self, name: str) -> dict[str, dg.AssetSpec]:
        """Assets `<name>/<x>` by x (syncs, audiences), grouped once per load."""
        return self.groups.get(name, {})


class Project:
    """A defs folder, loaded again only when one of its files changed."""

    def __init__(self, defs: Path):
        self.defs = defs
        self.files = SyncFiles(defs)
        self._cache: tuple[tuple, Loaded | LoadFailed] | None = None
        self._lock = threading.Lock()

    def current(self) -> Loaded:
        """The folder's definitions now; raises LoadFailed when they do not load."""
        with self._lock:
            fingerprint = _fingerprint(self.defs)
            if self._cache is None or self._cache[0] != fingerprint:
                documents = {d.name: d for d in self.files.all()}
                try:
                    loaded: Loaded | LoadFailed = Loaded(load_folder(self.defs), documents)
                except LoadFailed as exc:
                    loaded = exc
                self._cache = (fingerprint, loaded)
            result = self._cache[1]
        if isinstance(result, LoadFailed):
            raise result
        return result

    def check(self, changes: dict[Path, str], notes: list[str] | None = None) -> dg.Definitions:
        """What the folder would load to with `changes`; raises LoadFailed with loading's own error."""
        return load_folder(self.defs, changes, notes)
