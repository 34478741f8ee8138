"""A bucket as a backup source: its objects as of a snapshot enter the core pipeline as scan
entries, and restores write them back into a bucket.

The seam into the pipeline is one optional field of :class:`~backup.archive.scan.Entry`,
``opener``: a callable that opens the entry's content as a stream. The packer reads such an
entry from the stream instead of opening ``abspath``; everything else (tar headers, SHA-256,
zstd, age, the manifest, the file index) is unchanged, so an archive of a bucket is a
standard ``tar | zstd | age`` stream that ``age -d | zstd -d | tar -x`` restores.

Object key ``PREFIX/a/b.txt`` becomes archive path ``a/b.txt`` (the source prefix is the
archive root, as a single local source's contents are); its parent ``a`` becomes a directory
entry. A key that cannot be a safe relative path (empty, ``.`` or ``..`` components) is
reported as unreadable, never silently dropped; a zero-byte ``…/`` folder marker becomes a
directory.

Archiving a bucket (take a snapshot, scan it, hand it to the engine, record the snapshot) is
the jobs layer's (:func:`backup.jobs.backups.back_up`); restoring into a bucket (and checking its destination) is
:mod:`backup.bucket_restore`'s. This module only lists.

An entry's signature is what the engine compares for incrementals: size, the object's
LastModified as mtime, and as "inode" a stable 63-bit hash of its version id (or, where the
listing has none, of its ETag and time). A new version is therefore a change, a key absent
from the snapshot is a deletion, and an incremental packs exactly the slice between the
parent archive's snapshot and this one, compared against what the chain really holds.

On a Tigris source, small objects are fetched many per request with the bundle API (POST
``?bundle``), checked against the snapshot's ETags, with a GET at the snapshot version for
anything that does not match.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

from botocore.exceptions import ClientError

from ..archive.scan import DIR, FILE, Entry, ScanResult, Unreadable, compile_excludes
from ..errors import SnapshotError
from .base import SnapshotInfo, SnapshotProvider, to_ns
from .tigris import TigrisProvider

__all__ = ["SOURCE_TIME_META", "bucket_scan"]

#: object metadata naming the source's own time of a restored object (ISO 8601 UTC)
SOURCE_TIME_META = "backup-source-time"
_FILE_MODE = stat.S_IFREG | 0o644
_DIR_MODE = stat.S_IFDIR | 0o755


def _ino(*parts: str) -> int:
    return int.from_bytes(hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest()) >> 1


def _opener(p: SnapshotProvider, key: str, at: SnapshotInfo) -> Callable[[], BinaryIO]:
    def open_() -> BinaryIO:
        try:
            return p.read(key, at)
        except SnapshotError as e:
            raise OSError(e.get_message()) from None
        except ClientError as e:
            raise OSError(f"reading s3://{p.bucket}/{key}: {e}") from None

    return open_


class _Bundles:
    """Small objects of a Tigris source, fetched many per request with the bundle API.

    Objects are grouped in key order into batches (at most ``max_keys`` objects and
    ``max_bytes`` bytes); opening the first object of a batch fetches the whole batch in one
    POST ``?bundle``. The bundle reads the live bucket, so each object is kept only if its
    size and MD5 match what the snapshot listed (ETag); anything else, an object changed
    since the snapshot, a multipart ETag, or one the bundle skipped, is read with an
    ordinary GET at the snapshot version. Memory holds one batch.
    """

    def __init__(self, p: Any, at: SnapshotInfo, max_keys: int, max_bytes: int) -> None:
        self.p = p
        self.at = at
        self.max_keys = max_keys
        self.max_bytes = max_bytes
        self.batches: list[list[tuple[str, int, str]]] = [[]]
        self.batch_of: dict[str, int] = {}
        self.size = 0
        self.data: dict[str, bytes] = {}
        self.fetched = -1
        self.requests = 0

    def add(self, key: str, size: int, etag: str) -> None:
        cur = self.batches[-1]
        if cur and (len(cur) >= self.max_keys or self.size + size > self.max_bytes):
            self.batches.append(cur := [])
            self.size = 0
        cur.append((key, size, etag))
        self.size += size
        self.batch_of[key] = len(self.batches) - 1

    def opener(self, key: str) -> Callable[[], BinaryIO]:
        fallback = _opener(self.p, key, self.at)

        def open_() -> BinaryIO:
            i = self.batch_of[key]
            if i != self.fetched:
                self._fetch(i)
            data = self.data.pop(key, None)
            return io.BytesIO(data) if data is not None else fallback()

        return open_

    def _fetch(self, i: int) -> None:
        import urllib3  # here, not at the top: 40 ms of every `backup` command otherwise

        self.data.clear()
        self.fetched = i
        want = {k: (size, etag) for k, size, etag in self.batches[i]}
        try:
            stream = self.p.bundle(list(want))
            self.requests += 1
            for k, d in stream:
                size, etag = want.get(k, (-1, ""))
                if len(d) == size and hashlib.md5(d, usedforsecurity=False).hexdigest() == etag:
                    self.data[k] = d
        except (SnapshotError, tarfile.TarError, OSError, urllib3.exceptions.HTTPError):
            self.data.clear()  # every object of the batch falls back to its own GET


def bucket_scan(
    p: SnapshotProvider,
    at: SnapshotInfo,
    exclude: Sequence[str] = (),
    *,
    bundle_below: int = 1 << 20,
    bundle_keys: int = 1000,
    bundle_bytes: int = 32 << 20,
) -> ScanResult:
    """List a bucket as of a snapshot as scan entries.

    Args:
        p: the bucket (its prefix is the archive's root).
        at: the snapshot.
        exclude: the policy's exclude globs, applied to archive paths.
        bundle_below: on a Tigris source, objects smaller than this are fetched many per
            request with the bundle API (0: never).
        bundle_keys: objects per bundle request (Tigris takes at most 5,000).
        bundle_bytes: bytes per bundle request (the batch is held in memory).

    Returns:
        Entries in key order, parents before children; content is opened on demand.
    """
    excluded = compile_excludes(exclude)
    result = ScanResult()
    dirs: set[str] = set()
    bundles = (
        _Bundles(p, at, bundle_keys, bundle_bytes)
        if isinstance(p, TigrisProvider) and bundle_below > 0
        else None
    )

    def add_dir(rel: str) -> None:
        if rel in dirs:
            return
        dirs.add(rel)
        result.entries.append(
            Entry(os.fsencode(rel), b"", DIR, 0, _DIR_MODE, 0, 0, _ino("dir", rel), 0, 1, 0, 0)
        )

    # the prefix is the archive root: "photos" means the folder photos/, not photos2/
    root = p.prefix if not p.prefix or p.prefix.endswith("/") else p.prefix + "/"
    for o in p.list_objects(at):
        if not o.key.startswith(root):
            continue
        rel = o.key[len(root) :]
        marker = rel.endswith("/")
        parts = rel.rstrip("/").split("/")
        if not rel.rstrip("/") or any(x in ("", ".", "..") for x in parts):
            if rel:
                result.unreadable.append(
                    Unreadable(os.fsencode(o.key), "key cannot be a path in a tar archive")
                )
            continue
        path = os.fsencode("/".join(parts))
        if excluded(path, os.fsencode(parts[-1])) or any(
            excluded(os.fsencode("/".join(parts[:i])), os.fsencode(parts[i - 1]))
            for i in range(1, len(parts))
        ):
            continue
        for i in range(1, len(parts)):
            add_dir("/".join(parts[:i]))
        if marker:
            add_dir("/".join(parts))
            continue
        ns = to_ns(o.modified)
        ident = o.version_id or f"{o.etag}@{ns}"
        if bundles is not None and o.size < bundle_below:
            bundles.add(o.key, o.size, o.etag)
            opener = bundles.opener(o.key)
        else:
            opener = _opener(p, o.key, at)
        result.entries.append(
            Entry(
                path,
                os.fsencode(f"s3://{p.bucket}/{o.key}"),
                FILE,
                o.size,
                _FILE_MODE,
                ns,
                ns,
                _ino(o.key, ident),
                0,
                1,
                0,
                0,
                opener=opener,
            )
        )
    return result
