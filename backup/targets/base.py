"""The target contract: where archives are stored.

Written for cold storage from the start: reading an object back may first need a
retrieval that takes hours, so reading is three steps (request a retrieval, ask whether it
is ready, open it) even where the target is always ready. Every target is checked by one
contract test suite (``tests/targets/test_contract.py``).

Invariant: a write is atomic. Nothing is visible under a key until :meth:`ObjectWriter.commit`
returns, so a crashed backup never leaves a half archive that looks complete.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import BinaryIO

__all__ = ["ObjectInfo", "ObjectWriter", "Readiness", "RetrievalStatus", "Target"]


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
    """

    state: Readiness
    job_id: str | None = None
    ready_by: datetime | None = None


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One stored object as a listing shows it."""

    key: str
    size: int
    modified: datetime


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

    @abstractmethod
    def open_write(self, key: str) -> ObjectWriter:
        """Start an atomic streamed write of object ``key``."""

    @abstractmethod
    def request_retrieval(self, ref: str, *, tier: str | None = None) -> RetrievalStatus:
        """Ask for ``ref`` to be made readable; returns at once with its status."""

    @abstractmethod
    def retrieval_status(self, ref: str) -> RetrievalStatus:
        """Tell whether ``ref`` can be opened now."""

    @abstractmethod
    def open_read(self, ref: str) -> BinaryIO:
        """Open a ready object for streamed reading; raises ObjectNotFound if it is absent."""

    @abstractmethod
    def delete(self, ref: str) -> None:
        """Remove an object; removing an absent object is not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """List committed objects whose key starts with ``prefix``, in key order."""

    @abstractmethod
    def exists(self, ref: str) -> bool:
        """Tell whether a committed object ``ref`` exists."""

    @abstractmethod
    def abandon_partial(self, key: str) -> int:
        """Remove what interrupted writes of ``key`` left behind; returns how many."""
