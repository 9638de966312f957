"""What a sync is (SyncSpec), how one run is asked for (RunOptions) and what it did (SyncResult)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from audience_pipelines.contract import Target
from audience_pipelines.engine.audiences import AudienceRegistry
from audience_pipelines.engine.errors import ConfigError
from audience_pipelines.engine.snapshot import SnapshotStore

MODES = ("mirror", "additive", "subtractive")
REMOVALS = ("remove", "do_nothing")
# What one run sends: everything (no snapshot yet, or a full resend asked for) or only the changes.
FIRST_RUN, FULL_RESEND, DIFF = "first_run", "full_resend", "diff"
# Sync names are Dagster asset key parts (letters, digits, underscores): no sync folder starts with a dot.
REGISTRY_DIR = ".audience_registry"
RUN_KIND_TEXT = {FIRST_RUN: "first run (full)", FULL_RESEND: "full resend", DIFF: "diff run"}


@dataclass(frozen=True)
class SyncSpec:
    name: str
    audience: str
    destination: str
    target: Target
    identifiers: dict[str, str] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)
    mode: str = "mirror"
    removal: str = "remove"
    max_removal_share: float = 0.5
    batch_size: int | None = None
    default_region: str | None = None
    region_column: str | None = None  # per-row country for phones written without one
    create_profiles: bool | None = None  # members with no profile: create it, or skip them (None: destination's)
    # Keep writing to the audience opened at the first run even when the target's name changes
    # (one-click syncs: the destination audience keeps its name when the audience is renamed).
    keep_target: bool = False
    # The destination audience is named by this membership column, one per value (engine.targets).
    target_column: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"sync '{self.name}': mode '{self.mode}' is not one of {MODES}")
        if self.removal not in REMOVALS:
            raise ConfigError(f"sync '{self.name}': removal '{self.removal}' is not one of {REMOVALS}")
        if not 0 <= self.max_removal_share <= 1:
            raise ConfigError(f"sync '{self.name}': max_removal_share must be between 0 and 1")

    @property
    def sends_adds(self) -> bool:
        return self.mode != "subtractive"

    @property
    def sends_removes(self) -> bool:
        return self.mode != "additive" and self.removal == "remove"

    def fingerprint(self) -> str:
        raw = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


@dataclass
class RunOptions:
    run_id: str
    full_resync: bool = False
    allow_mass_removal: bool = False
    progress: Callable[[str], None] | None = None
    progress_interval_s: float = 5.0
    # How a person allows a mass removal where this run was launched (the orchestrator knows).
    allow_mass_removal_hint: str = "run it again with allow_mass_removal set"
    # Created audiences, per destination account; default: `.audience_registry/` among the syncs' folders.
    registry: AudienceRegistry | None = None
    # Batches in flight at once; default: the destination's `parallel_batches`, at most its maximum.
    parallel_batches: int | None = None
    # Members per key-hash partition: a run holds about one partition's payload and snapshot at a time
    # (default: engine.partitions.PARTITION_ROWS).
    partition_rows: int | None = None


@dataclass
class SyncResult:
    sync: str
    run_id: str
    run_kind: str  # first_run | full_resend | diff
    sync_mode: str  # mirror | additive | subtractive
    destination_audience_id: str
    added: int = 0
    removed: int = 0
    updated: int = 0
    resent: int = 0
    failed: int = 0
    set_aside: int = 0
    skipped: int = 0
    # Members with no profile on a platform that needs one, where the sync does not create profiles.
    skipped_no_profile: int = 0
    skipped_sample: list[dict] = field(default_factory=list)
    # Leavers not withdrawn: every identifier the platform matches on is still sent by a current member.
    shared_not_withdrawn: int = 0
    unchanged: int = 0
    membership_rows: int = 0
    snapshot_rows: int = 0
    held_before: int = 0  # members the destination held (as far as we knew) when the run started
    invalid_identifiers: dict[str, int] = field(default_factory=dict)
    invalid_identifiers_set_aside: dict[str, int] = field(default_factory=dict)
    destination_stats: dict[str, int] = field(default_factory=dict)
    errors_sample: list[dict] = field(default_factory=list)
    set_aside_sample: list[dict] = field(default_factory=list)
    rejected_path: str | None = None
    audience_size: int | None = None
    match_rate: float | None = None
    match_rate_basis: str | None = None
    per_audience: dict[str, dict] = field(default_factory=dict)  # a column-named target: each audience's counts
    replaced: bool = False  # sent as one replace session (departed members dropped when it closed)
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def attempted(self) -> int:
        return self.added + self.removed + self.updated + self.resent + self.failed

    @property
    def failure_rate(self) -> float:
        return self.failed / self.attempted if self.attempted else 0.0

    @property
    def status(self) -> str:
        return "partial_failure" if self.failed else "success"


def planned_run_kind(store: SnapshotStore, full_resync: bool) -> str:
    """The kind of run about to start, known before anything is read or sent."""
    manifest = store.manifest()
    if manifest is None or not manifest.snapshot_file:
        return FIRST_RUN
    return FULL_RESEND if full_resync else DIFF
