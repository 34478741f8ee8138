"""A service's streamed response body as a raw binary reader, for the targets that read
over HTTP (S3, Glacier). Each target says only how one read is done (:meth:`BodyReader._read`:
S3 resumes a broken stream) and what each piece read is checked against
(:meth:`BodyReader._seen`: Glacier tree-hashes job output).

Invariant: closing the reader closes the body (the HTTP connection goes back to the pool or
is dropped), once, whoever closes first.
"""

from __future__ import annotations

import io
from typing import Any

__all__ = ["BodyReader"]


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
