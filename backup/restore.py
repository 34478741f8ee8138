"""Restore and verify: target -> age -> zstd -> tar -> staging -> destination.

Invariants:

- The destination is untouched until everything is authenticated. Every archive of the
  chain is decrypted (age authenticates each 64 KiB chunk and the end of the stream) and
  extracted into a staging directory inside the destination's filesystem; only when the last
  chunk of the last archive has authenticated does the staging directory move into place.
  A wrong key, a corrupted or truncated archive, or a full disk removes the staging
  directory and leaves the destination as it was.
- Restore plans from manifests, never from archive contents: manifests stay readable even
  when archives sit in cold storage.
- Restore and verify are the only operations that need a secret key.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import functools
import hashlib
import os
import queue
import re
import secrets
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import zstandard

from .archive import Extractor, decode_manifest
from .archive import tarformat as tf
from .archive.extract import normalize_member_name, restore_threads
from .archive.manifest import path_from_json
from .crypto.age import AgeReader, Identity, decrypt_bytes, load_identities
from .errors import (
    ArchiveCorrupt,
    ArchiveError,
    ArchiveNotFound,
    IdentityError,
    NoArchiveAt,
    RestoreDestinationNotEmpty,
    RestoreError,
)
from .gcpause import gc_paused
from .inventory import Archive, Inventory
from .progress import Progress
from .targets import Target, open_target

__all__ = [
    "RestoreResult",
    "VerifyResult",
    "identities_from",
    "make_include",
    "read_manifest",
    "restore",
    "restore_file",
    "verify",
]

_READ = 1 << 20


def identities_from(path: Path | str | None) -> list[Identity]:
    """Load the identity file for restore or verify.

    Raises:
        IdentityError: no file given, or it cannot be read or parsed (the message names the
            file, never its content).
    """
    if path is None:
        raise IdentityError(
            "restore and verify need a secret key: pass --identity FILE or set BACKUP_IDENTITY"
        )
    try:
        return load_identities(path)
    except FileNotFoundError:
        raise IdentityError(f"identity file {str(path)!r} does not exist") from None
    except OSError as e:
        raise IdentityError(f"cannot read identity file {str(path)!r}: {e.strerror}") from None


def make_include(globs: Sequence[str]) -> Callable[[bytes], bool] | None:
    """Build the ``--include`` test: a path matches when it or one of its parent
    directories matches a glob, so including a directory includes what it holds."""
    if not globs:
        return None
    rx = re.compile(b"|".join(os.fsencode(fnmatch.translate(g.strip("/"))) for g in globs))

    def include(rel: bytes) -> bool:
        p = rel
        while True:
            if rx.match(p):
                return True
            if b"/" not in p:
                return False
            p = p.rsplit(b"/", 1)[0]

    return include


class _HashingReader:
    """Hashes the stored bytes as they are read, to compare with the inventory's record."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.h = hashlib.sha256()
        self.n = 0

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.h.update(b)
        self.n += len(b)
        return b


def read_manifest(
    target: Target, archive: Archive, identities: Sequence[Identity]
) -> dict[str, Any]:
    """Fetch and decrypt an archive's manifest."""
    with target.open_read(archive.manifest_location) as f:
        blob = f.read()
    return decode_manifest(
        decrypt_bytes(blob, identities, name=f"manifest of {archive.id}"), archive.id, slim=True
    )


class _Prefetch:
    """Decrypts and decompresses on a thread of its own, a few MiB ahead of the tar reader.

    The thread that parses tar and hands out file work is a restore's bottleneck; zstd
    releases the GIL while it decompresses, so moving decryption and decompression here lets
    them overlap with it. The thread reads the stream to its very end (so the final age
    chunk is authenticated) before it reports the end; an error it meets is raised in the
    reader at the point of the stream where it happened.
    """

    def __init__(self, plain: Any, age: AgeReader, depth: int = 8) -> None:
        self._q: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self._cur = b""
        self._pos = 0
        self._end: BaseException | None = None  # raised again by every read after an error
        self._eof = False
        self._stop = False
        self._t = threading.Thread(
            target=self._run, args=(plain, age), name="restore-decrypt", daemon=True
        )
        self._t.start()

    def _run(self, plain: Any, age: AgeReader) -> None:
        try:
            while not self._stop and (data := plain.read(_READ)):
                self._q.put(data)
            # tar's end may precede the end of the stream: authenticate every chunk
            while not self._stop and age.read(_READ):
                pass
            self._q.put(b"")
        except BaseException as e:
            self._q.put(e)

    def read(self, n: int = -1, /) -> bytes:
        while self._pos >= len(self._cur):
            if self._end is not None:
                raise self._end
            if self._eof:
                return b""
            item = self._q.get()
            if isinstance(item, BaseException):
                self._end = item
                raise item
            if not item:
                self._eof = True
                return b""
            self._cur, self._pos = item, 0
        cur, pos = self._cur, self._pos
        end = len(cur) if n < 0 else min(len(cur), pos + n)
        self._pos = end
        return cur if pos == 0 and end == len(cur) else cur[pos:end]

    def finish(self) -> None:
        """Read to the end of the stream: returns once every chunk has authenticated."""
        while self.read(_READ):
            pass

    def close(self) -> None:
        """Stop the thread (after an error, or after :meth:`finish`)."""
        self._stop = True
        while self._t.is_alive():
            with contextlib.suppress(queue.Empty):
                self._q.get(timeout=0.05)  # unblock a put on a full queue
        self._t.join()


def _stream(
    f: IO[bytes], identities: Sequence[Identity], name: str, body: Callable[[tf.TarReader], None]
) -> _HashingReader:
    """Decrypt, decompress and parse one archive stream, calling ``body`` with its tar
    reader, then read to the very end so the final age chunk is authenticated."""
    hr = _HashingReader(f)
    try:
        age = AgeReader(hr, identities, name=name)
        zr = zstandard.ZstdDecompressor().stream_reader(
            age,  # type: ignore[arg-type]  # any object with read() will do
            read_size=_READ,
            read_across_frames=True,
        )
        pre = _Prefetch(zr, age)
        try:
            body(tf.TarReader(pre, name=name))
            pre.finish()
        finally:
            pre.close()
    except zstandard.ZstdError as e:
        raise ArchiveCorrupt(name, f"zstd: {e}") from None
    return hr


@dataclass(slots=True)
class RestoreResult:
    """What a restore did."""

    destination: Path
    archives: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0


def _check_destination(to: Path, force: bool) -> None:
    if to.exists():
        if not to.is_dir():
            raise RestoreError(f"destination {to} exists and is not a directory")
        if any(to.iterdir()) and not force:
            raise RestoreDestinationNotEmpty(str(to))


class _Staging:
    """A staging directory in the destination's filesystem, moved into place at the end."""

    def __init__(self, to: Path) -> None:
        self.to = to
        tag = secrets.token_hex(4)
        if to.exists():
            self.path = to / f".backup-restore-{tag}"
            self.inside = True
        else:
            to.parent.mkdir(parents=True, exist_ok=True)
            self.path = to.parent / f".{to.name}.backup-restore-{tag}"
            self.inside = False
        self.path.mkdir(mode=0o700)

    def commit(self, root_restored: bool = False) -> None:
        if not self.inside:
            if not root_restored:
                # staging was private while filling; the new directory gets the usual mode
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(self.path, 0o777 & ~umask)
            os.rename(self.path, self.to)
            return
        for child in sorted(os.listdir(self.path)):
            dst = self.to / child
            if dst.is_dir() and not dst.is_symlink():
                shutil.rmtree(dst)
            elif dst.exists() or dst.is_symlink():
                dst.unlink()
            os.rename(self.path / child, dst)
        os.rmdir(self.path)

    def remove(self) -> None:
        if self.path.exists():
            # restored read-only directories must become writable to be removed
            for dirpath, dirnames, _ in os.walk(self.path):
                for d in dirnames:
                    p = os.path.join(dirpath, d)
                    if not os.path.islink(p):
                        os.chmod(p, 0o700)
            shutil.rmtree(self.path, ignore_errors=True)


def _run_staged(
    to: Path,
    force: bool,
    work: Callable[[Extractor], None],
    include: Sequence[str],
    allow_external_symlinks: bool,
) -> None:
    _check_destination(to, force)
    threads = restore_threads()  # a bad setting fails before anything is made
    staging = _Staging(to)
    ex = Extractor(
        os.fsencode(staging.path),
        allow_external_symlinks=allow_external_symlinks,
        include=make_include(include),
        threads=threads,
    )
    try:
        try:
            with gc_paused():
                work(ex)
            ex.finish()
        finally:
            ex.close()  # no worker may still write into staging when it moves or goes
        staging.commit(root_restored=b"" in ex.dirs)
    except OSError as e:
        staging.remove()
        if e.errno == errno.ENOSPC:
            raise RestoreError(
                f"no space left on the device of {to}; the destination is untouched"
            ) from None
        raise RestoreError(
            f"writing into {to}: {e.strerror or e}; the destination is untouched"
        ) from None
    except BaseException:
        staging.remove()
        raise


def resolve_archive(
    inventory: Inventory, policy: str, *, at: datetime | None = None, archive_id: str | None = None
) -> Archive:
    """The archive a restore request means: an id, or the newest at or before a time."""
    if archive_id:
        a = inventory.get(archive_id)
        if a.policy != policy:
            raise ArchiveNotFound(archive_id, f" in policy {policy!r} (it belongs to {a.policy!r})")
        return a
    when = at or datetime.now(UTC)
    found = inventory.at(policy, when)
    if found is None:
        raise NoArchiveAt(policy, when.isoformat())
    return found


def restore(
    policy: str,
    inventory: Inventory,
    to: Path,
    identities: Sequence[Identity],
    *,
    at: datetime | None = None,
    archive_id: str | None = None,
    include: Sequence[str] = (),
    force: bool = False,
    allow_external_symlinks: bool = False,
    progress: Progress | None = None,
) -> RestoreResult:
    """Rebuild a policy's tree as it was at an archive.

    Args:
        policy: policy name.
        inventory: where the chain is recorded.
        to: destination directory (absent, empty, or anything with ``force``).
        identities: secret keys.
        at: restore the newest archive at or before this time.
        archive_id: restore this archive (id or unique prefix).
        include: restore only paths matching these globs.
        force: restore into a non-empty destination, replacing what the archive holds.
        allow_external_symlinks: restore symlinks that point outside the destination.
        progress: told of bytes read.

    Returns:
        What was restored.
    """
    progress = progress or Progress()
    t0 = datetime.now(UTC)
    _check_destination(to, force)
    archive = resolve_archive(inventory, policy, at=at, archive_id=archive_id)
    chain = inventory.chain(archive.id)
    for a in chain:
        if a.state != "complete":
            raise ArchiveError(a.id, f"is {a.state}; the chain of {archive.id} cannot be restored")
    targets: dict[str, Target] = {}

    def target_of(a: Archive) -> Target:
        if a.target not in targets:
            targets[a.target] = open_target(a.target)
        return targets[a.target]

    # plan from manifests: fails early on a wrong key, before the destination is touched
    manifests = [read_manifest(target_of(a), a, identities) for a in chain]
    later: set[bytes] = set()
    skips: list[set[bytes]] = []
    for m in reversed(manifests):
        paths = {path_from_json(e["path"]) for e in m["entries"]}
        link_targets = {path_from_json(e["link"]) for e in m["entries"] if e["type"] == "hardlink"}
        skips.append((paths & later) - link_targets)
        later |= paths | {path_from_json(p) for p in m["deleted"]}
    skips.reverse()
    result = RestoreResult(to)
    total = sum(m["size_in"] for m in manifests)

    def work(ex: Extractor) -> None:
        progress.start(f"restore {archive.id}", total)
        for a, m, skip in zip(chain, manifests, skips, strict=True):
            for p in m["deleted"]:
                ex.delete(normalize_member_name(path_from_json(p), a.id))
            hashes = {
                path_from_json(e["path"]): e["sha256"] for e in m["entries"] if e.get("sha256")
            }
            links: dict[bytes, list[bytes]] = {}
            for e in m["entries"]:
                if e["type"] == "hardlink":
                    links.setdefault(path_from_json(e["link"]), []).append(
                        path_from_json(e["path"])
                    )
            with target_of(a).open_read(a.location) as f:
                hr = _stream(
                    f,
                    identities,
                    a.id,
                    functools.partial(
                        ex.extract,
                        archive=a.id,
                        skip=skip,
                        hashes=hashes,
                        links=links,
                        progress=progress,
                    ),
                )
            if a.sha256 and hr.h.hexdigest() != a.sha256:
                raise ArchiveCorrupt(
                    a.id, "stored object's SHA-256 differs from the inventory's record"
                )
            result.archives.append(a.id)
        progress.finish()
        result.files, result.bytes = ex.files, ex.bytes

    _run_staged(to, force, work, include, allow_external_symlinks)
    result.seconds = (datetime.now(UTC) - t0).total_seconds()
    inventory.log(
        "restore",
        f"restored {archive.id} to {to}: {result.files} files, {result.bytes} bytes",
        policy=policy,
        archive_id=archive.id,
    )
    return result


def restore_file(
    path: Path,
    to: Path,
    identities: Sequence[Identity],
    *,
    include: Sequence[str] = (),
    force: bool = False,
    allow_external_symlinks: bool = False,
    progress: Progress | None = None,
) -> RestoreResult:
    """Restore one ``.tar.zst.age`` file that is not in the inventory, such as one made by
    ``tar -c | zstd | age -r``."""
    progress = progress or Progress()
    t0 = datetime.now(UTC)
    name = str(path)
    result = RestoreResult(to, [name])
    try:
        f = open(path, "rb")  # noqa: SIM115
    except OSError as e:
        raise ArchiveError(name, f"cannot open: {e.strerror}") from None

    def work(ex: Extractor) -> None:
        progress.start(f"restore {path.name}", os.fstat(f.fileno()).st_size)
        _stream(f, identities, name, lambda r: ex.extract(r, name, progress=progress))
        progress.finish()
        result.files, result.bytes = ex.files, ex.bytes

    with f:
        _run_staged(to, force, work, include, allow_external_symlinks)
    result.seconds = (datetime.now(UTC) - t0).total_seconds()
    return result


@dataclass(slots=True)
class VerifyResult:
    """What verify found (it raises on the first failure)."""

    archive_id: str
    entries: int = 0
    files_checked: int = 0
    bytes: int = 0


def verify(
    archive_id: str,
    inventory: Inventory,
    identities: Sequence[Identity],
    *,
    progress: Progress | None = None,
) -> VerifyResult:
    """Read and authenticate a whole archive and check every file against its manifest
    hash, writing nothing.

    Raises:
        ArchiveCorrupt: naming the archive and what does not match.
    """
    progress = progress or Progress()
    a = inventory.get(archive_id)
    if a.state != "complete":
        raise ArchiveError(a.id, f"is {a.state}, not complete")
    target = open_target(a.target)
    m = read_manifest(target, a, identities)
    expected = {path_from_json(e["path"]): e for e in m["entries"]}
    res = VerifyResult(a.id)
    seen: set[bytes] = set()

    def body(r: tf.TarReader) -> None:
        buf = memoryview(bytearray(_READ))
        for mem in r:
            rel = normalize_member_name(mem.name, a.id)
            e = expected.get(rel)
            if e is None:
                raise ArchiveCorrupt(a.id, f"entry {os.fsdecode(rel)!r} is not in the manifest")
            seen.add(rel)
            res.entries += 1
            if mem.type == tf.REGTYPE:
                h = hashlib.sha256()
                while n := r.readinto_data(buf):
                    h.update(buf[:n])
                    progress.advance(n)
                if h.hexdigest() != e.get("sha256"):
                    raise ArchiveCorrupt(
                        a.id, f"content of {os.fsdecode(rel)!r} does not match its manifest hash"
                    )
                res.files_checked += 1
                res.bytes += mem.size

    progress.start(f"verify {a.id}", m["size_in"])
    with target.open_read(a.location) as f:
        hr = _stream(f, identities, a.id, body)
    progress.finish()
    missing = set(expected) - seen
    if missing:
        raise ArchiveCorrupt(
            a.id,
            f"{len(missing)} manifest entries missing from the archive, e.g. {os.fsdecode(min(missing))!r}",
        )
    if a.sha256 and hr.h.hexdigest() != a.sha256:
        raise ArchiveCorrupt(a.id, "stored object's SHA-256 differs from the inventory's record")
    inventory.log(
        "verify", f"verified {a.id}: {res.files_checked} files", policy=a.policy, archive_id=a.id
    )
    return res
