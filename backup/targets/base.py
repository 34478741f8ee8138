"""The target contract: where archives are stored.

Written for cold storage from the start: reading an object back may first need a
retrieval that takes hours, so reading is three steps (request a retrieval, ask whether it
is ready, open it) even where the target is always ready. Every target is checked by one
contract test suite (``tests/targets/test_contract.py``).

Invariant: a write is atomic. Nothing is visible under a key until :meth:`ObjectWriter.commit`
returns, so a crashed backup never leaves a half archive that looks complete.

The contract is the abstract methods (what only the target can do) and, for everything else
a caller may ask, a method with a slow-but-correct default that a target overrides where it
can do better (one HEAD instead of a listing). Callers ask the contract, never the type:
no ``isinstance`` of a target class, no ``getattr`` for a method a target may lack. Where a
target legitimately differs, a class attribute says how, and the contract suite checks it:

- :attr:`Target.reads_need_retrieval`: every read needs a retrieval first (a Glacier vault):
  request it, wait until :meth:`Target.retrieval_status` is READY, then open.
- :attr:`Target.lists_at_once`: False where listing takes an inventory job (a vault):
  :meth:`Target.list` raises TargetError saying so, and :meth:`Target.exists` cannot look.
- :attr:`Target.refs_are_keys`: False where :meth:`ObjectWriter.commit` returns an opaque
  reference (a vault's archive id) rather than the key.
"""

from __future__ import annotations

import enum
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import BinaryIO, Protocol

from ..errors import ObjectNotFound, TargetError

__all__ = [
    "LOCK_MODES",
    "MAX_TAGS",
    "PARTIAL",
    "ObjectInfo",
    "ObjectLock",
    "ObjectWriter",
    "Readiness",
    "RestoreNotice",
    "RetrievalStatus",
    "Target",
    "WriteOptions",
    "check_key",
]

#: Object Lock retention modes (S3's names)
LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")
#: S3 allows at most this many tags on an object
MAX_TAGS = 10
_TAG_CHARS = re.compile(r"^[\w .:/=+\-@]*$")


#: the first path segment no key may have: where targets keep interrupted writes
PARTIAL = ".partial"


def check_key(url: str, key: str) -> None:
    """Refuse a key no target may store: empty, absolute, with an empty, ``.`` or ``..``
    segment, or under :data:`PARTIAL` (keys are portable: one valid anywhere is valid
    everywhere, so an inventory can be copied between targets).

    Raises:
        TargetError: ``invalid object key ...``.
    """
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise TargetError(url, f"invalid object key {key!r}")
    if parts[0] == PARTIAL:
        raise TargetError(url, f"invalid object key {key!r}")


class Readiness(enum.StrEnum):
    """Whether an object can be opened for reading."""

    READY = "ready"
    PENDING = "pending"
    NOT_REQUESTED = "not-requested"


@dataclass(frozen=True, slots=True)
class RetrievalStatus:
    """State of an object's retrieval.

    Attributes:
        state: ready, pending, or not requested.
        job_id: the target's own id of the retrieval, when it has one.
        ready_by: when the target expects it to be ready, if known.
        storage_class: the object's storage class, where the target has them.
        expires: when a restored (temporary) copy of a cold object goes away; a copy that
            expired before it was read reads as NOT_REQUESTED again.
        tier: the retrieval tier requested (``Expedited``, ``Standard``, ``Bulk``), if known.
    """

    state: Readiness
    job_id: str | None = None
    ready_by: datetime | None = None
    storage_class: str | None = None
    expires: datetime | None = None
    tier: str | None = None


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One stored object as a listing shows it."""

    key: str
    size: int
    modified: datetime
    storage_class: str | None = None


@dataclass(frozen=True, slots=True)
class WriteOptions:
    """How a target stores one object. Targets apply what they can and document the rest.

    Attributes:
        tags: object tags (at most :data:`MAX_TAGS`; keys 1-128 and values 0-256 characters
            of letters, digits, spaces and ``_ . : / = + - @``).
        hot: the object is needed to plan a restore (a manifest): a cold target keeps it in
            an immediately readable class whatever the policy's storage class.
        lock_mode: Object Lock mode, ``GOVERNANCE`` or ``COMPLIANCE``; with ``retain_until``.
        retain_until: the object cannot be deleted or overwritten before this (aware) time.

    Raises:
        ValueError: naming the tag or lock setting that is wrong.
    """

    tags: Mapping[str, str] = field(default_factory=dict)
    hot: bool = False
    lock_mode: str | None = None
    retain_until: datetime | None = None

    def __post_init__(self) -> None:
        if len(self.tags) > MAX_TAGS:
            raise ValueError(f"{len(self.tags)} object tags; S3 allows at most {MAX_TAGS}")
        for k, v in self.tags.items():
            if not 1 <= len(k) <= 128 or not _TAG_CHARS.match(k):
                raise ValueError(
                    f"object tag key {k!r}: needs 1-128 letters, digits, spaces or _.:/=+-@"
                )
            if len(v) > 256 or not _TAG_CHARS.match(v):
                raise ValueError(
                    f"object tag {k!r} value {v!r}: needs at most 256 letters, digits, "
                    "spaces or _.:/=+-@"
                )
        if (self.lock_mode is None) != (self.retain_until is None):
            raise ValueError("object lock needs both a mode and a retain-until time")
        if self.lock_mode is not None and self.lock_mode not in LOCK_MODES:
            raise ValueError(f"object lock mode {self.lock_mode!r}: use {' or '.join(LOCK_MODES)}")
        if self.retain_until is not None and self.retain_until.tzinfo is None:
            raise ValueError("object lock retain-until must be an aware datetime")


@dataclass(frozen=True, slots=True)
class ObjectLock:
    """An object's Object Lock state.

    Attributes:
        mode: ``GOVERNANCE``, ``COMPLIANCE`` or None.
        retain_until: end of the retention period, or None.
        legal_hold: whether a legal hold is on.
    """

    mode: str | None = None
    retain_until: datetime | None = None
    legal_hold: bool = False

    def blocks_delete(self, now: datetime) -> bool:
        """Args:
            now: the time of the deletion (aware).

        Returns:
            True while a legal hold is on or the retention period runs.
        """
        return self.legal_hold or (
            self.mode is not None and self.retain_until is not None and self.retain_until > now
        )


class RestoreNotice(Protocol):
    """A service's message that a retrieval finished (an S3 restore, a vault job), as
    :meth:`Target.restored_refs` reads it (``backup.coldplan.RestoreEvent`` is one)."""

    @property
    def bucket(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def archive_id(self) -> str | None: ...
    @property
    def vault(self) -> tuple[str, str, str] | None: ...


class ObjectWriter(ABC):
    """A streamed write of one object. Use as a context manager: leaving the block with an
    exception aborts the write; committing is explicit."""

    @abstractmethod
    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append bytes to the object being written."""

    @abstractmethod
    def commit(self) -> str:
        """Make the object visible under its key and return its reference."""

    @abstractmethod
    def abort(self) -> None:
        """Discard everything written; nothing remains in the target. Idempotent."""

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if et is not None:
            self.abort()


class Target(ABC):
    """A place that stores archives and manifests under string keys."""

    #: the URL the target was opened from
    url: str
    #: whether the target implements Object Lock (retention and legal holds)
    supports_object_lock: bool = False
    #: whether every read needs a retrieval first (request, wait for READY, then open)
    reads_need_retrieval: bool = False
    #: whether :meth:`list` answers at once (else it raises TargetError naming the way)
    lists_at_once: bool = True
    #: whether :meth:`ObjectWriter.commit` returns the key itself as the reference
    refs_are_keys: bool = True

    @abstractmethod
    def open_write(self, key: str, options: WriteOptions | None = None) -> ObjectWriter:
        """Start an atomic streamed write of object ``key``, stored as ``options`` say."""

    def request_retrieval(self, ref: str, *, tier: str | None = None) -> RetrievalStatus:
        """Ask for ``ref`` to be made readable (ObjectNotFound if absent); returns at once
        with its status. Default: an always-readable target has nothing to ask for."""
        return self.retrieval_status(ref)

    def retrieval_status(self, ref: str) -> RetrievalStatus:
        """Tell whether ``ref`` can be opened now (ObjectNotFound if absent). Default: READY
        when it exists."""
        if not self.exists(ref):
            raise ObjectNotFound(self.url, ref)
        return RetrievalStatus(Readiness.READY)

    def restored_refs(self, notices: Iterable[RestoreNotice]) -> set[str]:
        """The references of this target whose retrieval the notices say finished (``ref in``
        the result). Default: none (a target whose retrievals are never announced)."""
        return set()

    @abstractmethod
    def open_read(self, ref: str) -> BinaryIO:
        """Open a ready object for streamed reading; raises ObjectNotFound if it is absent."""

    @abstractmethod
    def delete(self, ref: str) -> None:
        """Remove an object; removing an absent object is not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """List committed objects whose key starts with ``prefix``, in key order."""

    def exists(self, ref: str) -> bool:
        """Tell whether a committed object ``ref`` exists (where :attr:`lists_at_once` is
        False the target cannot look: a well-formed reference is taken to exist). Default:
        :meth:`stat` finds it."""
        try:
            self.stat(ref)
        except ObjectNotFound:
            return False
        return True

    @abstractmethod
    def abandon_partial(self, key: str) -> int:
        """Remove what interrupted writes of ``key`` left behind; returns how many."""

    @abstractmethod
    def sweep_partial(self, older_than: timedelta) -> int:
        """Remove what interrupted writes of any key left behind, started more than
        ``older_than`` ago (a younger one may be a live write); returns how many. For what
        nothing recorded: a dead writer whose key is known is cleaned by
        :meth:`abandon_partial` at once."""

    def partial_uploads(self, prefix: str = "") -> tuple[str, ...]:
        """Name what interrupted writes under ``prefix`` left (for reports; removing it is
        :meth:`sweep_partial`'s), its key where the target keeps it. Default: none."""
        return ()

    def stat(self, ref: str) -> ObjectInfo:
        """Describe one committed object, or raise ObjectNotFound. Default: from :meth:`list`."""
        for info in self.list(ref):
            if info.key == ref:
                return info
        raise ObjectNotFound(self.url, ref)

    def describe(self, ref: str) -> tuple[ObjectInfo, RetrievalStatus]:
        """:meth:`stat` and :meth:`retrieval_status` together (one request where the target
        can answer both, as S3's HEAD does). Default: the two calls."""
        return self.stat(ref), self.retrieval_status(ref)

    def _no_lock(self) -> TargetError:
        return TargetError(self.url, "this target does not support object lock or legal holds")

    def set_legal_hold(self, ref: str, on: bool) -> None:
        """Put a legal hold on an object (no delete until it is off), or take it off.
        Default: TargetError, no Object Lock (:attr:`supports_object_lock`)."""
        raise self._no_lock()

    def object_lock(self, ref: str) -> ObjectLock:
        """Read an object's retention and legal hold. Default: TargetError, no Object Lock."""
        raise self._no_lock()
