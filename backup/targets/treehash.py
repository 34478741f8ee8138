"""The SHA-256 tree hash of the Glacier vault API.

The data is cut into 1 MiB chunks (the last may be shorter); each chunk is hashed with
SHA-256; then neighbouring hashes are concatenated and hashed in pairs, level by level (an
odd one out is carried up unchanged), until one hash is left. An empty body hashes to
SHA-256 of nothing. A multipart upload sends the tree hash of each part (parts are a
power-of-two number of MiB, so a part's tree is a subtree of the archive's) and the tree
hash of the whole archive when it completes.

Reference: https://docs.aws.amazon.com/amazonglacier/latest/dev/checksum-calculations.html
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = ["CHUNK", "TreeHasher", "chunk_hashes", "tree_hash", "tree_hash_of_hashes"]

#: the leaf size
CHUNK = 1024 * 1024


def tree_hash_of_hashes(hashes: Sequence[bytes]) -> bytes:
    """Combine leaf (1 MiB chunk) hashes into the tree hash.

    Args:
        hashes: SHA-256 digests of the chunks, in order.

    Returns:
        The 32-byte tree hash (SHA-256 of nothing for no chunks).
    """
    level = list(hashes)
    if not level:
        return hashlib.sha256(b"").digest()
    while len(level) > 1:
        nxt = [
            hashlib.sha256(level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def chunk_hashes(data: bytes | bytearray | memoryview) -> list[bytes]:
    """Args:
        data: bytes starting at a 1 MiB boundary of the archive.

    Returns:
        The SHA-256 digest of each 1 MiB chunk.
    """
    view = memoryview(data)
    return [hashlib.sha256(view[i : i + CHUNK]).digest() for i in range(0, len(view), CHUNK)]


def tree_hash(data: bytes | bytearray | memoryview) -> str:
    """Args:
        data: the whole body.

    Returns:
        Its tree hash as lowercase hex (what the API's checksum fields carry).
    """
    return tree_hash_of_hashes(chunk_hashes(data)).hex()


class TreeHasher:
    """A streamed tree hash: feed bytes in any pieces; keeps one 32-byte hash per MiB.

    Attributes:
        size: bytes fed so far.
    """

    def __init__(self) -> None:
        self._hashes: list[bytes] = []
        self._cur = hashlib.sha256()
        self._fill = 0
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the next bytes."""
        view = memoryview(data).cast("B")
        pos = 0
        while pos < len(view):
            take = min(CHUNK - self._fill, len(view) - pos)
            self._cur.update(view[pos : pos + take])
            self._fill += take
            pos += take
            if self._fill == CHUNK:
                self._hashes.append(self._cur.digest())
                self._cur = hashlib.sha256()
                self._fill = 0
        self.size += len(view)

    def digest(self) -> bytes:
        """Returns: the tree hash of everything fed so far."""
        hashes = self._hashes + ([self._cur.digest()] if self._fill else [])
        return tree_hash_of_hashes(hashes)

    def hexdigest(self) -> str:
        """Returns: :meth:`digest` as lowercase hex."""
        return self.digest().hex()
