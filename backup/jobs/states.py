"""Job states, and the typed parameters and results a job records.

Invariants:

- The states are :class:`StrEnum` members, so the values stored in the inventory and shown
  in JSON are the same strings they always were (``"queued"``, ``"done"``, ...).
- Parameters and results are JSON objects in the inventory. :meth:`to_json` leaves out what
  was never set, so what a job recorded before these types existed reads back the same, and
  what is written is what the CLI's ``--json`` has always shown.

Backup: queued -> packing -> uploading -> recorded -> done | failed | skipped.
Restore: requested -> retrieving -> ready -> extracting -> done | failed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Self

__all__ = [
    "ACTIVE",
    "BACKUP_STATES",
    "RESET_TO",
    "RESTORE_STATES",
    "RUNNING",
    "TERMINAL",
    "WAITING",
    "BackupOutcome",
    "BackupParams",
    "JobState",
    "NotifyState",
    "RestoreOutcome",
    "RestoreParams",
]


class JobState(StrEnum):
    """Where a job is."""

    QUEUED = "queued"
    PACKING = "packing"
    UPLOADING = "uploading"
    RECORDED = "recorded"
    REQUESTED = "requested"
    RETRIEVING = "retrieving"
    READY = "ready"
    EXTRACTING = "extracting"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


class NotifyState(StrEnum):
    """Where a finished job's notification is: none -> pending -> sending -> sent | failed."""

    NONE = "none"
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


S = JobState
BACKUP_STATES = (S.QUEUED, S.PACKING, S.UPLOADING, S.RECORDED, S.DONE, S.FAILED, S.SKIPPED)
RESTORE_STATES = (S.REQUESTED, S.RETRIEVING, S.READY, S.EXTRACTING, S.DONE, S.FAILED)
#: states a worker holds while it works, with a heartbeat
RUNNING = (S.PACKING, S.UPLOADING, S.RECORDED, S.EXTRACTING)
TERMINAL = (S.DONE, S.FAILED, S.SKIPPED)
#: states that are not terminal
ACTIVE = (S.QUEUED, S.REQUESTED, S.RETRIEVING, S.READY, *RUNNING)
#: states that wait for a task to move them on
WAITING = (S.QUEUED, S.REQUESTED, S.READY)
#: where a job whose worker died goes back to
RESET_TO = {S.PACKING: S.QUEUED, S.UPLOADING: S.QUEUED, S.RECORDED: S.QUEUED, S.EXTRACTING: S.READY}


class _Json:
    """to_json/from_json for the dataclasses below: None and unknown keys are left out."""

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: v
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if (v := getattr(self, f.name)) is not None
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str | None) -> Self:
        """Read what a job recorded (an empty or missing record reads as the defaults)."""
        raw: dict[str, Any] = json.loads(text or "{}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in raw.items() if k in names})


@dataclass(slots=True)
class BackupParams(_Json):
    """What a backup run was asked for."""

    full: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"full": self.full}


@dataclass(slots=True)
class RestoreParams(_Json):
    """What a restore request was asked for (never a secret).

    Attributes:
        archive_id: the archive restored (its chain is read).
        to: a directory, or ``s3://bucket[/prefix]`` for a bucket source.
    """

    archive_id: str = ""
    to: str = ""
    include: list[str] = field(default_factory=list)
    force: bool | None = None
    allow_external_symlinks: bool | None = None
    tier: str | None = None
    in_place: bool | None = None

    @property
    def to_bucket(self) -> bool:
        return self.to.startswith("s3://")


@dataclass(slots=True)
class BackupOutcome(_Json):
    """What a backup job recorded as its result; keys in the order they are shown."""

    actions: list[str] | None = None
    snapshot: dict[str, Any] | None = None
    archive_id: str | None = None
    kind: str | None = None
    entries: int | None = None
    bytes_in: int | None = None
    bytes_stored: int | None = None
    target: str | None = None
    unreadable: int | None = None
    drill: dict[str, Any] | None = None
    seconds: float | None = None


@dataclass(slots=True)
class RestoreOutcome(_Json):
    """What a restore job recorded as its result (``unchanged`` and ``deleted``: a restore
    into a bucket)."""

    archive_id: str | None = None
    archives: list[str] | None = None
    files: int | None = None
    unchanged: int | None = None
    deleted: int | None = None
    bytes: int | None = None
    seconds: float | None = None
    destination: str | None = None
