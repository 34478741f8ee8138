"""The local directory target, ``file:///path``.

Objects are files under the root; a write goes to ``.partial/`` in the same filesystem,
is fsynced, and renamed into place on commit, so a crash leaves only a ``.partial`` file
that listings ignore and :meth:`FileTarget.sweep_partial` removes. Always ready to read.

Of :class:`~backup.targets.base.WriteOptions` a directory can do nothing: tags and ``hot``
are ignored (every file is hot), and so are lock settings (a directory has no Object Lock;
:attr:`FileTarget.supports_object_lock` is False, so policies with ``object_lock`` refuse
this target, and legal holds raise).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from ..errors import ObjectNotFound, TargetError
from .base import PARTIAL, ObjectInfo, ObjectWriter, Target, WriteOptions, check_key

__all__ = ["FileTarget", "FileWriter"]

_WRITE_BEHIND = 32 << 20


def _key_tag(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:24]


class FileWriter(ObjectWriter):
    """Writes one object to a temporary file, renamed into place on commit."""

    def __init__(self, target: FileTarget, key: str) -> None:
        self._target = target
        self._key = key
        self._final = target.root / key
        partial_dir = target.root / PARTIAL
        partial_dir.mkdir(parents=True, exist_ok=True)
        # named after the key so a dead writer's leftovers can be found (abandon_partial)
        self._tmp = partial_dir / f"{_key_tag(key)}.{uuid.uuid4().hex}.partial"
        self._f: BinaryIO | None = open(self._tmp, "xb", buffering=0)  # noqa: SIM115
        self._done = False
        self._written = 0
        # write-behind windows: [_dropping, _behind) was handed to writeback last time and is
        # dropped from the cache this time; [_behind, _written) starts its writeback
        self._dropping = 0
        self._behind = 0

    def _write_behind(self) -> None:
        # Start writing back the window just written, and drop the one before from the page
        # cache (its writeback started last time): the commit's fsync then waits for the last
        # window only, instead of the whole archive, and a backup does not push the machine's
        # hot data out of the cache. Two windows per call, so the cost stays per window
        # however large the archive grows.
        assert self._f is not None
        start = self._dropping
        with contextlib.suppress(OSError):  # advice only: commit's fsync is the guarantee
            os.posix_fadvise(self._f.fileno(), start, self._written - start, os.POSIX_FADV_DONTNEED)
        self._dropping, self._behind = self._behind, self._written

    def write(self, data: bytes | bytearray | memoryview) -> int:
        assert self._f is not None, "write after commit or abort"
        view = memoryview(data)
        total = 0
        try:
            while total < len(view):
                n = self._f.write(view[total:])
                total += n or 0
            self._written += total
            if self._written - self._behind >= _WRITE_BEHIND:
                self._write_behind()
        except OSError as e:
            self.abort()
            raise TargetError(self._target.url, f"cannot store {self._key!r}: {e.strerror}") from e
        return total

    def commit(self) -> str:
        assert self._f is not None and not self._done, "commit after commit or abort"
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None
            self._final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._tmp, self._final)
            # the rename is durable only once the directory entry is
            dfd = os.open(self._final.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            self.abort()
            raise TargetError(self._target.url, f"cannot store {self._key!r}: {e.strerror}") from e
        self._done = True
        return self._key

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        if self._f is not None:
            self._f.close()
            self._f = None
        self._tmp.unlink(missing_ok=True)


class FileTarget(Target):
    """A directory on a local or mounted filesystem."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise TargetError(url, "a file target is written file:///absolute/path")
        path = unquote(parsed.path)
        if not path.startswith("/"):
            raise TargetError(url, "a file target needs an absolute path")
        self.url = url
        self.root = Path(path)

    def _path(self, ref: str) -> Path:
        check_key(self.url, ref)
        return self.root / ref

    def open_write(self, key: str, options: WriteOptions | None = None) -> FileWriter:
        check_key(self.url, key)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            return FileWriter(self, key)
        except OSError as e:
            raise TargetError(self.url, f"cannot write: {e.strerror}") from e

    def open_read(self, ref: str) -> BinaryIO:
        try:
            return open(self._path(ref), "rb")
        except FileNotFoundError:
            raise ObjectNotFound(self.url, ref) from None
        except OSError as e:
            raise TargetError(self.url, f"cannot read {ref!r}: {e.strerror}") from e

    def delete(self, ref: str) -> None:
        self._path(ref).unlink(missing_ok=True)

    def exists(self, ref: str) -> bool:
        return self._path(ref).is_file()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if not self.root.is_dir():
            return
        found: list[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel_dir = os.path.relpath(dirpath, self.root)
            if rel_dir == ".":
                dirnames[:] = [d for d in dirnames if d != PARTIAL]
            for fn in filenames:
                key = fn if rel_dir == "." else f"{rel_dir}/{fn}"
                if key.startswith(prefix):
                    st = os.stat(os.path.join(dirpath, fn))
                    found.append(
                        ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))
                    )
        yield from sorted(found, key=lambda o: o.key)

    def partial_uploads(self, prefix: str = "") -> tuple[str, ...]:
        """Files in ``.partial/`` (named by a hash of their key, so ``prefix`` cannot
        narrow them)."""
        d = self.root / PARTIAL
        if not d.is_dir():
            return ()
        return tuple(sorted(f"{PARTIAL}/{p.name}" for p in d.iterdir()))

    def abandon_partial(self, key: str) -> int:
        """Remove what interrupted writes of ``key`` left in ``.partial/``.

        Args:
            key: the object key the dead writer was writing.

        Returns:
            How many partial files were removed.
        """
        d = self.root / PARTIAL
        if not d.is_dir():
            return 0
        n = 0
        for p in d.glob(f"{_key_tag(key)}.*.partial"):
            p.unlink(missing_ok=True)
            n += 1
        return n

    def sweep_partial(self, older_than: timedelta = timedelta(hours=1)) -> int:
        """Remove writes abandoned by crashed backups.

        Args:
            older_than: leave younger partial files alone; a backup may be writing them.

        Returns:
            How many were removed.
        """
        d = self.root / PARTIAL
        if not d.is_dir():
            return 0
        cutoff = datetime.now(UTC).timestamp() - older_than.total_seconds()
        n = 0
        for p in d.iterdir():
            if p.stat().st_mtime < cutoff:
                p.unlink(missing_ok=True)
                n += 1
        return n
