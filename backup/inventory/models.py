"""Inventory tables (SQLAlchemy 2).

The inventory is a cache of what the vault holds plus the state of work in flight. Every
archive's manifest is stored beside it in the target, encrypted, so the archive rows and the
file index can be rebuilt from the vault alone; retrieval jobs, snapshots and events are the
inventory's own.

Paths are stored as raw bytes: file names on POSIX are bytes, and a name that is not UTF-8
must come back exactly as it was.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "ADDED_INDEXES",
    "Archive",
    "Base",
    "Event",
    "FileIndexChunk",
    "FileRecord",
    "Job",
    "Lease",
    "NotifyDelivery",
    "PackedFileIndex",
    "PolicyLock",
    "RetrievalJob",
    "Snapshot",
    "UTCDateTime",
]


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the inventory")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Archive(Base):
    """One archive in a target, with its manifest beside it."""

    __tablename__ = "archives"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    policy: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(Text)
    location: Mapped[str] = mapped_column(Text)
    manifest_location: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))  # full | incremental
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("archives.id"), index=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    finished: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # writing | complete | failed | deleted
    state: Mapped[str] = mapped_column(String(16), index=True)
    host: Mapped[str] = mapped_column(String(255), default="")
    format_version: Mapped[int] = mapped_column(Integer, default=1)
    size_in: Mapped[int] = mapped_column(BigInteger, default=0)  # file content bytes packed
    size_tar: Mapped[int] = mapped_column(BigInteger, default=0)  # tar stream bytes
    size_stored: Mapped[int] = mapped_column(BigInteger, default=0)  # bytes in the target
    sha256: Mapped[str | None] = mapped_column(String(64))  # of the stored object
    manifest_sha256: Mapped[str | None] = mapped_column(String(64))
    entries: Mapped[int] = mapped_column(Integer, default=0)
    deleted_paths: Mapped[int] = mapped_column(Integer, default=0)
    unreadable: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of {path, error}
    changed: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of paths
    error: Mapped[str | None] = mapped_column(Text)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class FileRecord(Base):
    """An entry an archive holds (or a path it records as deleted, ``type == "deleted"``).

    Replaying a chain's records gives the tree at any archive: what an incremental compares
    against, and where restore finds each path."""

    __tablename__ = "file_index"

    archive_id: Mapped[str] = mapped_column(
        ForeignKey("archives.id", ondelete="CASCADE"), primary_key=True
    )
    path: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    type: Mapped[str] = mapped_column(String(10))
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    mode: Mapped[int] = mapped_column(Integer, default=0)
    mtime_ns: Mapped[int] = mapped_column(BigInteger, default=0)
    ctime_ns: Mapped[int] = mapped_column(BigInteger, default=0)
    ino: Mapped[int] = mapped_column(BigInteger, default=0)
    uid: Mapped[int] = mapped_column(BigInteger, default=0)
    gid: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str | None] = mapped_column(String(64))
    link: Mapped[bytes | None] = mapped_column(LargeBinary)
    offset: Mapped[int] = mapped_column(BigInteger, default=0)


class PackedFileIndex(Base):
    """An archive's file index as its manifest, compressed and not encrypted
    (backup/inventory/packed.py): how a backup records it, in one insert. The first reader
    of the archive's index moves its rows into ``file_index`` and deletes this row, in one
    transaction."""

    __tablename__ = "file_index_packed"

    archive_id: Mapped[str] = mapped_column(
        ForeignKey("archives.id", ondelete="CASCADE"), primary_key=True
    )
    format: Mapped[str] = mapped_column(String(40))
    blob: Mapped[bytes] = mapped_column(LargeBinary)


class FileIndexChunk(Base):
    """A piece of an archive's file index, packed (backup/inventory/packed.py): how a backup
    records it, as its manifest is streamed to the target, a bounded piece at a time. Seq 0
    holds the manifest's fields without its entries (the deleted paths among them); each
    later seq a run of entries. The first reader of the archive's index moves the rows into
    ``file_index`` and deletes these, in one transaction."""

    __tablename__ = "file_index_chunks"

    archive_id: Mapped[str] = mapped_column(
        ForeignKey("archives.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    format: Mapped[str] = mapped_column(String(40))
    blob: Mapped[bytes] = mapped_column(LargeBinary)


class ManifestHeader(Base):
    """The age header of an archive's manifest: public (the file key wrapped to each
    recipient), a few hundred bytes, and enough to prove that an identity decrypts the
    archive's manifest, and so its archive (same recipients), without reading either: what
    a restore from a target whose manifests are cold (a Glacier vault) checks before it pays
    for a retrieval."""

    __tablename__ = "manifest_headers"

    archive_id: Mapped[str] = mapped_column(
        ForeignKey("archives.id", ondelete="CASCADE"), primary_key=True
    )
    header: Mapped[bytes] = mapped_column(LargeBinary)


class TreeCache(Base):
    """The tree at an archive as one compressed blob: what the next incremental compares the
    sources against, read in one row instead of replaying the chain's file index.

    Derived data: written once the archive is complete, for the newest archives of a policy
    only, and where it is missing or unreadable the file index is replayed instead."""

    __tablename__ = "tree_cache"

    archive_id: Mapped[str] = mapped_column(
        ForeignKey("archives.id", ondelete="CASCADE"), primary_key=True
    )
    format: Mapped[str] = mapped_column(String(40))
    blob: Mapped[bytes] = mapped_column(LargeBinary)


class TreeChunk(Base):
    """One chunk of a tree in format ``tree2-chunks`` (its ``tree_cache`` row is the header):
    the tree is stored and read back a bounded chunk at a time, never as one blob."""

    __tablename__ = "tree_chunks"

    archive_id: Mapped[str] = mapped_column(
        ForeignKey("archives.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    blob: Mapped[bytes] = mapped_column(LargeBinary)


class RetrievalJob(Base):
    """A retrieval of an object from a cold target (requested, polled, completed)."""

    __tablename__ = "retrieval_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str | None] = mapped_column(String(40), index=True)  # the restore request
    archive_id: Mapped[str | None] = mapped_column(ForeignKey("archives.id"), index=True)
    target: Mapped[str] = mapped_column(Text)
    ref: Mapped[str] = mapped_column(Text)
    remote_job_id: Mapped[str | None] = mapped_column(Text)
    tier: Mapped[str | None] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True)
    requested: Mapped[datetime] = mapped_column(UTCDateTime)
    next_check: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    storage_class: Mapped[str | None] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    checks: Mapped[int] = mapped_column(Integer, default=0)  # status requests sent
    expires: Mapped[datetime | None] = mapped_column(UTCDateTime)  # of the restored copy
    completed: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)


class Snapshot(Base):
    """A bucket snapshot taken or recorded by the product."""

    __tablename__ = "snapshots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    bucket: Mapped[str] = mapped_column(Text, index=True)
    name: Mapped[str | None] = mapped_column(Text)
    version: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(UTCDateTime)
    policy: Mapped[str | None] = mapped_column(String(64))
    archive_id: Mapped[str | None] = mapped_column(ForeignKey("archives.id"))


class Event(Base):
    """An append-only log of what happened, for ``backup status`` and post-mortems."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    level: Mapped[str] = mapped_column(String(10))
    kind: Mapped[str] = mapped_column(String(32))
    policy: Mapped[str | None] = mapped_column(String(64))
    archive_id: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[str] = mapped_column(Text, default="{}")


class Job(Base):
    """One unit of work a worker carries out: a backup run or a restore request.

    The row is the source of truth for the job's state; the broker only carries its id. Every
    change of ``state`` is a compare-and-set (``backup.jobs``), so a task delivered twice
    finds the job already claimed and does nothing.
    """

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("policy", "scheduled_for", name="uq_jobs_policy_slot"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # backup | restore
    policy: Mapped[str | None] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    origin: Mapped[str] = mapped_column(String(16), default="cli")  # cli | schedule | catch-up
    scheduled_for: Mapped[datetime | None] = mapped_column(UTCDateTime)
    params: Mapped[str] = mapped_column(Text, default="{}")  # JSON; never a secret
    notify: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of Apprise URLs
    notify_state: Mapped[str] = mapped_column(String(10), default="none")
    created: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    updated: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # last handed to the broker
    started: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat: Mapped[datetime | None] = mapped_column(UTCDateTime)
    worker: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    archive_id: Mapped[str | None] = mapped_column(String(64))
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_total: Mapped[int | None] = mapped_column(BigInteger)
    result: Mapped[str] = mapped_column(Text, default="{}")  # JSON summary for status/notify
    error: Mapped[str | None] = mapped_column(Text)


class NotifyDelivery(Base):
    """A notification URL that took a job's message, recorded as it does: a send taken over
    after its worker died (the sweep gives a stale ``sending`` back) tells only the URLs not
    here. The URL itself is never stored (it holds tokens): a digest of job id and URL."""

    __tablename__ = "notify_deliveries"

    job_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    url_digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    delivered: Mapped[datetime] = mapped_column(UTCDateTime)


class PolicyLock(Base):
    """Held by the one running job of a policy, so two runs of a policy never overlap."""

    __tablename__ = "policy_locks"

    policy: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(40))
    acquired: Mapped[datetime] = mapped_column(UTCDateTime)


class Lease(Base):
    """A named lease (the active scheduler), held until ``expires`` unless renewed."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    expires: Mapped[datetime] = mapped_column(UTCDateTime)


Index("ix_archives_policy_created", Archive.policy, Archive.created)
Index("ix_jobs_state_updated", Job.state, Job.updated)

#: Indexes added to tables that existed before them. ``create_all`` makes a missing table with
#: its indexes but never adds an index to a table that is there, so opening an inventory
#: creates each of these that is missing (and one race is retried like the tables').
ADDED_INDEXES = (
    # the newest archives first, for ``backup list``'s page: read from the index in order,
    # and only as many as the page (without it, every archive in the state is sorted)
    Index("ix_archives_created_id", Archive.created, Archive.id),
)
