"""The snapshot contract: a bucket's history, as snapshots, points in time and slices.

One abstract :class:`SnapshotProvider` with two implementations, chosen from the bucket by
:func:`backup.snapshots.open_provider`: native Tigris snapshots and forks
(:mod:`.tigris`), and a portable one over any S3 bucket with versioning (:mod:`.versioned`).

Times are instants in UTC held as integer nanoseconds since the Unix epoch, the unit of a
Tigris snapshot version (19 digits). A point in time (:data:`At`) is a :class:`SnapshotInfo`
(exact: what the snapshot recorded) or a time (a timezone-aware ``datetime`` or an ``int`` of
nanoseconds: as exact as the store's clock allows; see each implementation).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

from ..errors import SnapshotError

__all__ = [
    "At",
    "ForkResult",
    "Lineage",
    "ObjectState",
    "Slice",
    "SnapshotInfo",
    "SnapshotProvider",
    "from_ns",
    "parse_at",
    "to_ns",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def to_ns(t: datetime) -> int:
    """Args: t: a timezone-aware time. Returns: nanoseconds since the epoch (UTC).

    Raises:
        ValueError: for a naive time (its zone would be a guess).
    """
    if t.tzinfo is None:
        raise ValueError(f"time {t.isoformat()} has no timezone")
    delta = t.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def from_ns(ns: int) -> datetime:
    """Args: ns: nanoseconds since the epoch. Returns: the UTC time (microsecond precision)."""
    return datetime.fromtimestamp(ns // 1000 / 1_000_000, UTC)


def parse_at(text: str) -> int:
    """Parse a time given by a user: ISO 8601 (a time without a zone is UTC) or a 19-digit
    Tigris nanosecond version.

    Args:
        text: the time.

    Returns:
        Nanoseconds since the epoch.

    Raises:
        ValueError: naming the accepted forms.
    """
    s = text.strip()
    if s.isdigit() and len(s) == 19:
        return int(s)
    try:
        t = datetime.fromisoformat(s.replace("z", "Z"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: give ISO 8601 (2026-11-21T02:00:00Z) "
            "or a 19-digit nanosecond version"
        ) from None
    return to_ns(t if t.tzinfo else t.replace(tzinfo=UTC))


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """One snapshot of a bucket.

    Attributes:
        bucket: the bucket it belongs to.
        version: its version, a 19-digit nanosecond Unix timestamp (Tigris' own, or the
            time the portable implementation took it).
        name: the name it was given, if any.
        created: when it was taken.
    """

    bucket: str
    version: str
    name: str | None
    created: datetime

    @property
    def ns(self) -> int:
        """Returns: the version as nanoseconds since the epoch."""
        return int(self.version)


#: a point in time: a snapshot (exact), or a time (aware datetime, or int nanoseconds)
At = SnapshotInfo | datetime | int


@dataclass(frozen=True, slots=True)
class ObjectState:
    """One object as a bucket held it at some point in time.

    Attributes:
        key: the object key (the full key, prefix included).
        size: bytes.
        etag: the ETag, quotes removed.
        modified: its LastModified (whole seconds on most stores).
        version_id: the object version (portable mode; ``None`` where the store lists no
            version ids, as Tigris' snapshot listings).
    """

    key: str
    size: int
    etag: str
    modified: datetime
    version_id: str | None = None


@dataclass(slots=True)
class Slice:
    """What changed in a bucket in (T1, T2].

    Attributes:
        created: keys absent at T1 and present at T2 (their state at T2).
        changed: keys present at both with a different version (their state at T2).
        deleted: keys present at T1 and absent at T2 (their state at T1).
        uncertain: keys whose answer depends on an order or a time the store does not
            record precisely enough (see the implementation); reported, never guessed
            silently.
    """

    created: list[ObjectState] = field(default_factory=list)
    changed: list[ObjectState] = field(default_factory=list)
    deleted: list[ObjectState] = field(default_factory=list)
    uncertain: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Lineage:
    """Where a bucket came from.

    Attributes:
        bucket: the bucket.
        snapshots_enabled: whether it keeps history (Tigris snapshots, or versioning on).
        source_bucket: the bucket it was forked from, if it is a fork.
        source_snapshot: the snapshot version it was forked at, if any.
        complete: False while a portable fork is still being copied.
    """

    bucket: str
    snapshots_enabled: bool
    source_bucket: str | None = None
    source_snapshot: str | None = None
    complete: bool = True


@dataclass(frozen=True, slots=True)
class ForkResult:
    """The outcome of a fork.

    Attributes:
        bucket: the new bucket.
        source_bucket: the bucket forked.
        source_snapshot: the snapshot version forked (None: the source as it was then).
        copied: objects copied (0 for a native copy-on-write fork).
        skipped: objects a resumed fork found already copied.
        bytes_copied: bytes copied server-side.
    """

    bucket: str
    source_bucket: str
    source_snapshot: str | None
    copied: int = 0
    skipped: int = 0
    bytes_copied: int = 0


def check_name(name: str) -> str:
    """Args: name: a snapshot name. Returns: it, if it is 1-128 letters, digits, ``._-``.

    Raises:
        ValueError: naming the accepted form.
    """
    if not _NAME.match(name):
        raise ValueError(
            f"snapshot name {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


class SnapshotProvider(ABC):
    """A bucket whose history can be read, snapshotted and forked.

    Attributes:
        bucket: the bucket.
        prefix: keys outside it are ignored by listings, reads and slices.
        kind: ``"tigris"`` or ``"versioned"``.
        client: the S3 client it talks through.
    """

    kind: str
    client: Any

    def __init__(self, bucket: str, prefix: str = "") -> None:
        self.bucket = bucket
        self.prefix = prefix

    @abstractmethod
    def enable(self) -> None:
        """Make the bucket keep history (create it so, or turn versioning on)."""

    @abstractmethod
    def take(self, name: str | None = None) -> SnapshotInfo:
        """Take a snapshot of the bucket now, optionally named, and return it."""

    @abstractmethod
    def list(self) -> Sequence[SnapshotInfo]:
        """List the bucket's snapshots, oldest first."""

    @abstractmethod
    def list_objects(self, at: At | None = None) -> Iterator[ObjectState]:
        """List the objects under the prefix as they were at ``at`` (None: now), in key order."""

    @abstractmethod
    def read(self, key: str, at: At | None = None) -> BinaryIO:
        """Open object ``key`` as it was at ``at`` for streamed reading; ObjectNotFound if absent."""

    @abstractmethod
    def slice(self, t1: At, t2: At) -> Slice:
        """Say which keys under the prefix were created, changed and deleted in (t1, t2]."""

    @abstractmethod
    def fork(self, new_bucket: str, snapshot: SnapshotInfo | None = None) -> ForkResult:
        """Create ``new_bucket`` holding this bucket as of ``snapshot`` (None: now)."""

    @abstractmethod
    def lineage(self) -> Lineage:
        """Tell whether the bucket keeps history and what it was forked from."""

    @abstractmethod
    def delete(self, snapshot: SnapshotInfo) -> None:
        """Delete a snapshot where the store allows it; the objects' history stays."""

    def find(self, name_or_version: str) -> SnapshotInfo:
        """Find one snapshot by name or version.

        Args:
            name_or_version: a snapshot name, or its 19-digit version.

        Returns:
            The snapshot (the newest one, when several share the name).

        Raises:
            SnapshotError: when none matches, listing the snapshots that exist.
        """
        snaps = self.list()
        hits = [s for s in snaps if s.version == name_or_version or s.name == name_or_version]
        if not hits:
            have = ", ".join(s.name or s.version for s in snaps[-5:]) or "none"
            raise SnapshotError(
                self.bucket, f"no snapshot named or versioned {name_or_version!r} (latest: {have})"
            )
        return hits[-1]

    def latest(self) -> SnapshotInfo | None:
        """Returns: the newest snapshot, or None when the bucket has none."""
        snaps = self.list()
        return snaps[-1] if snaps else None


def at_ns(at: At) -> int:
    """Args: at: a point in time. Returns: it as nanoseconds (a snapshot: its version)."""
    if isinstance(at, SnapshotInfo):
        return at.ns
    if isinstance(at, datetime):
        return to_ns(at)
    return at
