"""The sync documents of a defs folder's YAML files, edited one document at a time.

A file is cut at its `---` lines; a document is replaced or removed as a whole and every other
document (comments included) keeps its text byte for byte. A file whose cut does not read back as
the documents YAML itself reads is not edited.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from audience_pipelines.components.quick_sync import SYNC_TYPE
from audience_pipelines.engine import ConfigError

_SEPARATOR = re.compile(r"^---(?=\s|$)", re.MULTILINE)
DEFAULT_FILE = Path("syncs") / "defs.yaml"  # where a new sync goes, under the defs folder


def version_of(attributes: dict) -> str:
    """A sync's version: a hash of its attributes, the ETag a writer must present to change it."""
    text = json.dumps(attributes, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def render(attributes: dict) -> str:
    return "---\n" + yaml.safe_dump({"type": SYNC_TYPE, "attributes": attributes}, sort_keys=False,
                                    allow_unicode=True)


@dataclass(frozen=True)
class SyncDocument:
    """One component (a sync, unless asked for another type) as written: its file (relative to the defs
    folder), position and attributes."""

    file: Path
    document: int  # 1-based among the file's documents, as load errors count them
    attributes: dict

    @property
    def name(self) -> str:
        return str(self.attributes.get("name"))

    @property
    def version(self) -> str:
        return version_of(self.attributes)


def _chunks(text: str) -> list[str]:
    """The file cut before each `---` line; the first chunk may hold a header or the first document."""
    starts = [m.start() for m in _SEPARATOR.finditer(text)]
    bounds = [0, *[s for s in starts if s > 0], len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def _documents_of(chunks: list[str]) -> list[object]:
    return [yaml.safe_load(c) for c in chunks]


class SyncFiles:
    """Reads and edits the sync documents under one defs folder."""

    def __init__(self, defs: Path):
        self.defs = defs

    def _read(self, rel: Path) -> tuple[str, list[str], list[object]]:
        path = self.defs / rel
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        chunks = _chunks(text)
        try:
            docs = _documents_of(chunks)
            whole = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            raise ConfigError(f"{rel.as_posix()}: not valid YAML, so it is not edited: {exc}") from None
        if [d for d in docs if d is not None] != whole:
            raise ConfigError(f"{rel.as_posix()}: its documents could not be told apart by their '---' lines, so "
                              "it is not edited; edit it by hand")
        return text, chunks, docs

    def all(self, component_type: str = SYNC_TYPE) -> list[SyncDocument]:
        """Every document of `component_type` (syncs by default), file by file, in order."""
        found = []
        for path in sorted(self.defs.rglob("*.yaml")):
            rel = path.relative_to(self.defs)
            try:
                docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
            except yaml.YAMLError:
                continue  # loading reports it, naming the line
            for i, doc in enumerate(docs):
                if isinstance(doc, dict) and doc.get("type") == component_type \
                        and isinstance(doc.get("attributes"), dict):
                    found.append(SyncDocument(rel, i + 1, doc["attributes"]))
        return found

    def find(self, name: str) -> SyncDocument | None:
        return next((d for d in self.all() if d.name == name), None)

    def _locate(self, doc: SyncDocument) -> tuple[str, list[str], int]:
        text, chunks, docs = self._read(doc.file)
        for i, parsed in enumerate(docs):
            if isinstance(parsed, dict) and parsed.get("type") == SYNC_TYPE \
                    and (parsed.get("attributes") or {}).get("name") == doc.attributes.get("name"):
                return text, chunks, i
        raise ConfigError(f"{doc.file.as_posix()}: sync '{doc.name}' is no longer there")

    # Each edit returns {file: new text} for the caller to validate before anything is written.

    def appended(self, attributes: dict, rel: Path = DEFAULT_FILE) -> dict[Path, str]:
        text, _, _ = self._read(rel)
        separator = "" if not text or text.endswith("\n") else "\n"
        return {rel: text + separator + render(attributes)}

    def replaced(self, doc: SyncDocument, attributes: dict) -> dict[Path, str]:
        _, chunks, i = self._locate(doc)
        chunks[i] = render(attributes) if i or chunks[i].startswith("---") else render(attributes)[4:]
        return {doc.file: "".join(chunks)}

    def removed(self, doc: SyncDocument) -> dict[Path, str]:
        _, chunks, i = self._locate(doc)
        del chunks[i]
        return {doc.file: "".join(chunks)}

    def write(self, files: dict[Path, str]) -> None:
        """Each file replaced at once (a reader sees the old text or the new, never half)."""
        for rel, text in files.items():
            path = self.defs / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                if path.exists():
                    os.chmod(tmp, path.stat().st_mode & 0o777)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
