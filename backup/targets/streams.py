"""Streaming objects over HTTP, for the targets that do (S3, Glacier).

- :class:`BodyReader`: a service's response body as a raw binary reader. Each target says
  only how one read is done (S3 resumes a broken stream) and what each piece read is checked
  against (Glacier tree-hashes job output).
- :class:`PartWriter`: the state of a write whose parts are uploaded on a thread pool.

Invariants: closing a reader closes the body once, whoever closes first. A part writer's
first failure (in whichever thread) is kept, and fails the next write, commit or abort in the
caller's thread; after commit or abort nothing more can be written.
"""

from __future__ import annotations

import io
import logging
import threading
from typing import Any

from ..errors import TargetError
from .awserrors import error_line
from .base import ObjectWriter

__all__ = ["BodyReader", "PartWriter"]

log = logging.getLogger("backup.targets")


class BodyReader(io.RawIOBase):
    """Reads ``body`` (anything with ``read(n)`` and ``close()``), piece by piece."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def _read(self, n: int) -> bytes:
        """Returns: up to ``n`` bytes of the body, ``b""`` at its end."""
        return bytes(self._body.read(n))

    def _seen(self, data: bytes) -> None:
        """Called with every piece read, and with ``b""`` at the end."""

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        data = self._read(len(view))
        n = len(data)
        view[:n] = data
        self._seen(data)
        return n

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class PartWriter(ObjectWriter):
    """Shared state of a multipart upload: the first error, whether it is over, and the
    condition the part threads and the writer wait on.

    Args:
        url: the target's URL (for messages).
        key: the object's key.
    """

    def __init__(self, url: str, key: str) -> None:
        self._url = url
        self._key = key
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._finished = False

    @staticmethod
    def _why(e: BaseException) -> str:
        """Returns: one line telling what the service answered."""
        return error_line(e)

    def _fail(self, e: BaseException) -> TargetError:
        return TargetError(self._url, f"cannot store {self._key!r}: {self._why(e)}")

    def _keep(self, e: BaseException) -> None:
        """Keep ``e`` if it is the first error (a part thread's, or the abort's)."""
        with self._cond:
            if self._error is None:
                self._error = e
            self._cond.notify_all()

    def _check(self) -> None:
        """Raise if the write is over, or (after aborting it) if a part failed."""
        if self._finished:
            raise TargetError(self._url, f"write to {self._key!r} after commit or abort")
        if self._error is not None:
            err = self._error
            self.abort()
            raise self._fail(err) from err

    def _end(self) -> bool:
        """The start of an abort: mark the write over, stop the part threads.

        Returns:
            False when it was already over (an abort is idempotent).
        """
        if self._finished:
            return False
        self._finished = True
        self._keep(TargetError(self._url, f"upload of {self._key!r} aborted"))
        return True

    def _abort_failed(self, e: BaseException) -> None:
        # the sweep removes it later: say so rather than fail the caller's abort
        log.warning(
            "%s: could not abort the upload of %r (%s); sweep_partial will",
            self._url,
            self._key,
            self._why(e),
        )
