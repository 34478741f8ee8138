"""Restore and verify: target -> age -> zstd -> tar -> staging -> destination.

Invariants:

- The destination is untouched until everything is authenticated. Every archive of the
  chain is decrypted (age authenticates each 64 KiB chunk and the end of the stream) and
  extracted into a staging directory inside the destination's filesystem; only when the last
  chunk of the last archive has authenticated does the staging directory move into place
  (merged into an existing destination: only what the restore wrote is replaced). A wrong
  key, a corrupted or truncated archive, a full disk, an interrupt or SIGTERM removes the
  staging directory and leaves the destination as it was; one that a killed restore left is
  removed by the next restore into the destination.
- Restore plans from manifests, never from archive contents: manifests stay readable even
  when archives sit in cold storage.
- Restore and verify are the only operations that need a secret key.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import functools
import getpass
import hashlib
import os
import queue
import re
import secrets
import signal
import socket
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import IO, Any

import zstandard

from .archive import Extractor
from .archive import tarformat as tf
from .archive.extract import normalize_member_name, restore_threads
from .archive.manifest import ManifestReader, path_from_json
from .crypto.age import AgeReader, Identity, load_identities
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
from .threads import start_thread

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


def identities_from(path: Path | str | None, *, ask: bool = True) -> list[Identity]:
    """Load the identity file for restore or verify.

    Args:
        path: the identity file.
        ask: the passphrase of an encrypted one may be asked on the terminal (never in a
            worker: it would wait there for a job's whole life); else only
            $BACKUP_IDENTITY_PASSPHRASE gives it.

    Raises:
        IdentityError: no file given, or it cannot be read or parsed (the message names the
            file, never its content).
    """
    if path is None:
        raise IdentityError(
            "restore and verify need a secret key: pass --identity FILE or set BACKUP_IDENTITY"
        )
    try:
        return load_identities(path, lambda: _identity_passphrase(ask))
    except FileNotFoundError:
        raise IdentityError(f"identity file {str(path)!r} does not exist") from None
    except OSError as e:
        raise IdentityError(f"cannot read identity file {str(path)!r}: {e.strerror}") from None


def _identity_passphrase(ask: bool) -> str:
    """The passphrase of an encrypted identity file: $BACKUP_IDENTITY_PASSPHRASE, else asked
    on the terminal."""
    env = os.environ.get("BACKUP_IDENTITY_PASSPHRASE")
    if env:
        return env
    if not ask or not sys.stdin.isatty():
        raise IdentityError(
            "the identity file is encrypted: set BACKUP_IDENTITY_PASSPHRASE (no terminal to ask on)"
        )
    return getpass.getpass("Passphrase for the identity file: ")


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
) -> ManifestReader:
    """Fetch and decrypt an archive's manifest, authenticating all of it, into a spool (its
    compressed text, ~40 bytes a path, on disk past 8 MiB), and check its fields. Restore
    and verify then read its entries as a stream, in archive order.

    Raises:
        NoIdentityMatch, HeaderError, HMACError, PayloadError: as AgeReader.
        ArchiveCorrupt: not a manifest this version reads.
    """
    spool = tempfile.SpooledTemporaryFile(max_size=8 << 20)  # noqa: SIM115  # the reader's
    try:
        with (
            target.open_read(archive.manifest_location) as f,
            AgeReader(f, identities, name=f"manifest of {archive.id}") as age,
        ):
            while data := age.read(_READ):
                spool.write(data)
        m = ManifestReader(spool, archive.id)
        m.fields  # noqa: B018  # fails here, before anything is written, if not a manifest
    except BaseException:
        spool.close()
        raise
    return m


class _Expected:
    """The manifest's SHA-256 of each file, looked up as the tar members arrive: in archive
    order, so the next entries are the ones wanted and only a batch of them is held. A
    lookup of a path not ahead (an archive whose members were in another order; no writer
    made one) falls back to a map of every entry, read again from the manifest."""

    def __init__(self, m: ManifestReader) -> None:
        self._m = m
        self._it: Iterator[dict[str, Any]] | None = m.entries()
        self._map: dict[bytes, str | None] | None = None

    def get(self, rel: bytes) -> str | None:
        if self._it is not None:
            for e in self._it:
                if path_from_json(e["path"]) == rel:
                    return e.get("sha256")
            self._it = None
        if self._map is None:
            self._map = {path_from_json(e["path"]): e.get("sha256") for e in self._m.entries()}
        return self._map.get(rel)


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
        self._t = start_thread(self._run, "restore-decrypt", plain, age)

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


_STAGING = "backup-restore-"
# what follows the prefix: the owner's host, PID and process start time, and a random tag
_OWNER = re.compile(r"(?P<host>.+)-(?P<pid>[0-9]+)-(?P<start>[0-9]+)-[0-9a-f]{8}")
_RENAME_EXCHANGE = 2


def _start_time(pid: int) -> int | None:
    """Returns: the process's start time in clock ticks since boot (``/proc``), 0 where
    there is no ``/proc``, or None when the process is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
    except FileNotFoundError:
        return None if os.path.isdir("/proc/self") else 0
    except OSError:
        return 0
    # the command name, in parentheses, may hold spaces and parentheses of its own
    fields = stat_line[stat_line.rindex(b")") + 2 :].split()
    return None if fields[0] == b"Z" else int(fields[19])


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64] or "_"


def _owner_gone(name: str, prefix: str) -> bool:
    """Tell whether the staging directory ``name`` (``prefix`` then its owner) belongs to a
    restore whose process has ended: same host, and no live process with that PID and
    start time. A staging directory of another host, or in an older format, is kept: its
    owner cannot be asked."""
    m = _OWNER.fullmatch(name[len(prefix) :]) if name.startswith(prefix) else None
    if m is None or m["host"] != _host():
        return False
    pid = int(m["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    start = _start_time(pid)
    # a reused PID has another start time (0: this system cannot tell, so assume alive)
    return start is None or (start != 0 and start != int(m["start"]))


def _remove_tree(path: Path) -> None:
    """Remove a staging directory, whatever modes the restore gave what it holds and however
    deep it goes: a hostile archive can make a tree deeper than PATH_MAX and than Python's
    recursion limit, which ``os.walk`` and ``shutil.rmtree`` recurse into. Iterative, each
    directory opened from its parent's descriptor (two open at a time), links never
    followed. Never raises: it runs while another error is on its way out."""
    with contextlib.suppress(OSError):
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
            return
        _remove_dir_fd(os.open(path, _DIR_FLAGS))
    with contextlib.suppress(OSError):
        os.rmdir(path)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def _remove_dir_fd(fd: int) -> None:
    """Empty the directory open at ``fd`` (and close it)."""
    # per level from the top: the name of the directory in its parent, and the subdirectories
    # it still holds (its files are removed when it is first entered)
    stack: list[tuple[str, list[str]]] = [("", [])]
    entered = True
    try:
        while stack:
            name, subdirs = stack[-1]
            if entered:
                with contextlib.suppress(OSError):
                    os.fchmod(fd, 0o700)  # a restored read-only directory gives up its entries
                with os.scandir(fd) as it:
                    for e in it:
                        if e.is_dir(follow_symlinks=False):
                            subdirs.append(e.name)
                        else:
                            with contextlib.suppress(OSError):
                                os.unlink(e.name, dir_fd=fd)
            if subdirs:
                sub = subdirs.pop()
                try:
                    child = os.open(sub, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    entered = False
                    continue
                os.close(fd)
                fd = child
                stack.append((sub, []))
                entered = True
                continue
            stack.pop()
            if not stack:
                break
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            with contextlib.suppress(OSError):
                os.rmdir(name, dir_fd=fd)
            entered = False
    finally:
        os.close(fd)


def _beside_prefix(to: Path) -> str:
    # a long destination name still leaves room for the owner in NAME_MAX
    return f".{to.name[:100]}.{_STAGING}"


def _check_destination(to: Path, force: bool) -> None:
    """Refuse a destination that is not a directory, or not empty without ``force``;
    remove what a killed restore into it left behind first, so it never stands in the way."""
    with contextlib.suppress(OSError), os.scandir(to.parent) as it:
        beside = _beside_prefix(to)
        for e in it:
            if e.name.startswith(beside) and _owner_gone(e.name, beside):
                _remove_tree(Path(e.path))
    if to.exists():
        if not to.is_dir():
            raise RestoreError(f"destination {to} exists and is not a directory")
        inside = "." + _STAGING
        empty = True
        with os.scandir(to) as it:
            for e in it:
                if e.name.startswith(inside) and _owner_gone(e.name, inside):
                    _remove_tree(Path(e.path))
                else:
                    empty = False
        if not empty and not force:
            raise RestoreDestinationNotEmpty(str(to))


class _Terminated(BaseException):
    """SIGTERM during a restore: unwinds like an interrupt, so staging is removed."""


@contextlib.contextmanager
def _terminate_unwinds() -> Iterator[None]:
    """Make SIGTERM unwind the restore (removing its staging directory) and then end the
    process by SIGTERM as it would have. Only where SIGTERM is ours to handle: in the main
    thread of a process that left it at its default (the CLI; not a worker, whose pool
    handles it)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut cleanup short
        raise _Terminated

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


_renameat2: Any = None
with contextlib.suppress(OSError, AttributeError):
    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2


def _exchange(name: str, src_fd: int, dst_fd: int) -> bool:
    """Swap two entries of the same name in two directories in one step (Linux
    ``renameat2(RENAME_EXCHANGE)``). Returns False where the C library or the filesystem
    cannot."""
    if _renameat2 is None:
        return False
    b = os.fsencode(name)
    if _renameat2(src_fd, b, dst_fd, b, _RENAME_EXCHANGE) == 0:
        return True
    e = ctypes.get_errno()
    if e in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(e, os.strerror(e), name)


class _Staging:
    """A staging directory in the destination's filesystem, moved into place at the end.

    Its name carries the owner's host, PID and start time, so that what a killed restore
    left is recognised and removed by the next restore into the same destination. It holds
    the restored tree (``tree``) and, while an existing destination is merged, what the
    merge replaced (``old``).
    """

    def __init__(self, to: Path) -> None:
        self.to = to
        start = _start_time(os.getpid()) or 0
        owner = f"{_host()}-{os.getpid()}-{start}-{secrets.token_hex(4)}"
        if to.exists():
            self.path = to / f".{_STAGING}{owner}"
            self.inside = True
        else:
            to.parent.mkdir(parents=True, exist_ok=True)
            self.path = to.parent / f"{_beside_prefix(to)}{owner}"
            self.inside = False
        self.path.mkdir(mode=0o700)
        self.tree = self.path / "tree"
        self.tree.mkdir(mode=0o700)
        self._dev = os.lstat(self.path).st_dev
        # the merge's steps, to undo them if it fails: (kind, relative path, detail)
        self._done: list[tuple[str, bytes, Any]] = []
        self._old = 0
        self.keep = False

    def commit(self, written_dirs: Collection[bytes], restore_owner: bool) -> None:
        """Move the restored tree into place.

        A new destination is the staging tree, renamed. An existing one is merged: where
        both hold a directory, the merge descends into it; anything else the restore wrote
        replaces what is there in one step (a rename, or an exchange where the types
        differ), and nothing it did not write is touched. Symlinks in the destination are
        replaced, never followed. Directories in ``written_dirs`` (the restore's own, not
        parents made for what they hold) take the restored mode, owner and mtime.

        Raises:
            RestoreError: a step failed; the steps done are undone first, and the message
                says whether the destination is as it was.
        """
        if not self.inside:
            if b"" not in written_dirs:
                # staging was private while filling; the new directory gets the usual mode
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(self.tree, 0o777 & ~umask)
            os.rename(self.tree, self.to)
            os.rmdir(self.path)
            return
        root = os.lstat(self.tree)
        if stat.S_IMODE(root.st_mode) & 0o700 != 0o700:
            os.chmod(self.tree, 0o700)  # a restored read-only root: its entries must move out
        try:
            src = os.open(self.tree, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                dst = os.open(self.to, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    self._merge(src, dst, b"", written_dirs, restore_owner)
                finally:
                    os.close(dst)
            finally:
                os.close(src)
        except BaseException as e:
            if not self._undo():
                self.keep = True  # what the merge replaced is there, and nowhere else
                why = e.strerror if isinstance(e, OSError) else str(e) or type(e).__name__
                raise RestoreError(
                    f"moving the restored files into {self.to} failed ({why}) and could not "
                    f"be undone: the entries it replaced are kept in {self.path}"
                ) from None
            if isinstance(e, OSError):
                raise RestoreError(
                    f"moving the restored files into {self.to}: {e.strerror or e}; "
                    "the destination is untouched"
                ) from None
            raise
        _remove_tree(self.path)
        if b"" in written_dirs:
            self._set_meta(self.to, root, restore_owner)

    def _merge(
        self, src: int, dst: int, rel: bytes, written: Collection[bytes], restore_owner: bool
    ) -> None:
        for name in sorted(os.listdir(src)):
            r = os.fsencode(name) if not rel else rel + b"/" + os.fsencode(name)
            s = os.lstat(name, dir_fd=src)
            try:
                d: os.stat_result | None = os.lstat(name, dir_fd=dst)
            except FileNotFoundError:
                d = None
            if d is None:
                os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)
                self._done.append(("added", r, None))
            elif stat.S_ISDIR(s.st_mode) and stat.S_ISDIR(d.st_mode):
                if d.st_dev != self._dev:
                    raise RestoreError(
                        f"{os.fsdecode(os.path.join(os.fsencode(self.to), r))} is a mount point "
                        "(another filesystem): restore what goes there with --to naming it; "
                        "the destination is untouched"
                    )
                if stat.S_IMODE(s.st_mode) & 0o700 != 0o700:
                    os.chmod(name, 0o700, dir_fd=src)  # ours: its entries must move out
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                s_fd = os.open(name, flags, dir_fd=src)
                try:
                    d_fd = os.open(name, flags, dir_fd=dst)
                    try:
                        self._merge(s_fd, d_fd, r, written, restore_owner)
                        if r in written:
                            self._done.append(("meta", r, d))
                            self._set_meta(d_fd, s, restore_owner)
                    finally:
                        os.close(d_fd)
                finally:
                    os.close(s_fd)
            elif _exchange(name, src, dst):
                # the replaced entry now sits in staging, removed with it
                self._done.append(("swapped", r, None))
            elif (
                not stat.S_ISDIR(s.st_mode)
                and not stat.S_ISDIR(d.st_mode)
                and self._link_aside(name, dst, r)
            ):
                os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)  # one step
            else:
                # no exchange here (an old kernel or a network filesystem): a directory and
                # a non-directory cannot replace each other in one step
                old = self._old_slot()
                os.rename(name, old, src_dir_fd=dst)
                self._done.append(("moved-aside", r, old))
                os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)
                self._done.append(("added", r, None))

    def _link_aside(self, name: str, dst: int, r: bytes) -> bool:
        """Keep a second name of the entry a rename is about to replace, to undo it."""
        old = self._old_slot()
        try:
            os.link(name, old, src_dir_fd=dst, follow_symlinks=False)
        except OSError:
            return False  # hard links refused here: move it aside instead
        self._done.append(("replaced", r, old))
        return True

    def _old_slot(self) -> str:
        old = self.path / "old"
        if self._old == 0:
            old.mkdir(mode=0o700, exist_ok=True)
        self._old += 1
        return str(old / str(self._old))

    @staticmethod
    def _set_meta(d: int | Path, s: os.stat_result, restore_owner: bool) -> None:
        if restore_owner:
            with contextlib.suppress(OSError):
                os.chown(d, s.st_uid, s.st_gid)
        os.chmod(d, stat.S_IMODE(s.st_mode))
        os.utime(d, ns=(s.st_atime_ns, s.st_mtime_ns))

    def _undo(self) -> bool:
        """Undo the merge's steps, last first. Returns: whether all were undone."""
        to = os.fsencode(self.to)
        tree = os.fsencode(self.tree)
        ok = True
        for kind, r, detail in reversed(self._done):
            live = os.path.join(to, r)
            staged = os.path.join(tree, r)
            try:
                if kind == "added":
                    os.rename(live, staged)
                elif kind == "swapped":
                    parent = os.path.dirname(r)
                    base = os.path.basename(r)
                    a = os.open(os.path.join(tree, parent), os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        b = os.open(os.path.join(to, parent), os.O_RDONLY | os.O_DIRECTORY)
                        try:
                            if not _exchange(os.fsdecode(base), a, b):
                                raise OSError(errno.EINVAL, "cannot exchange back")
                        finally:
                            os.close(b)
                    finally:
                        os.close(a)
                elif kind in ("replaced", "moved-aside"):
                    os.rename(detail, live)
                elif kind == "meta":
                    self._set_meta(Path(os.fsdecode(live)), detail, os.geteuid() == 0)
            except OSError:
                ok = False
        self._done.clear()
        return ok

    def remove(self) -> None:
        if not self.keep:
            _remove_tree(self.path)


def _run_staged(
    to: Path,
    force: bool,
    work: Callable[[Extractor], None],
    include: Sequence[str],
    allow_external_symlinks: bool,
) -> None:
    _check_destination(to, force)
    threads = restore_threads()  # a bad setting fails before anything is made
    with _terminate_unwinds():
        try:
            staging = _Staging(to)
        except OSError as e:
            raise RestoreError(f"cannot write into {to}: {e.strerror or e}") from None
        try:
            ex = Extractor(
                os.fsencode(staging.tree),
                allow_external_symlinks=allow_external_symlinks,
                include=make_include(include),
                threads=threads,
                merge_into=os.fsencode(to) if staging.inside else None,
                hidden=os.fsencode(staging.path) if staging.inside else None,
            )
            try:
                with gc_paused():
                    work(ex)
                ex.finish()
            finally:
                ex.close()  # no worker may still write into staging when it moves or goes
            staging.commit(set(ex.dirs), ex.restore_owner)
        except OSError as e:
            staging.remove()
            if e.errno == errno.ENOSPC:
                raise RestoreError(
                    f"no space left on the device of {to}; the destination is untouched"
                ) from None
            raise RestoreError(
                f"writing into {to}{_entry_of(e, staging)}: {e.strerror or e}; "
                "the destination is untouched"
            ) from None
        except BaseException:
            staging.remove()
            raise


def _entry_of(e: OSError, staging: _Staging) -> str:
    """Returns: ``", entry 'PATH'"`` for the archive entry an OSError was about (its path
    below the staging tree, long ones shortened in the middle), or ``""``."""
    name = e.filename
    if not isinstance(name, str | bytes):
        return ""
    tree = os.fsencode(staging.tree) + b"/"
    raw = os.fsencode(name)
    if not raw.startswith(tree):
        return ""
    rel = raw[len(tree) :].decode("utf-8", "backslashreplace")
    if len(rel) > 120:
        rel = f"{rel[:50]}…{rel[-50:]}"
    return f", entry {rel!r}"


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
    manifests: list[ManifestReader] = []
    try:
        for a in chain:
            manifests.append(read_manifest(target_of(a), a, identities))
        # what a later archive writes or deletes is skipped in an earlier one; held are the
        # paths of the incrementals (the changes), never those of the full
        later: set[bytes] = set()
        skips: list[set[bytes]] = []
        links: list[dict[bytes, list[bytes]]] = []
        for i in range(len(manifests) - 1, -1, -1):
            m = manifests[i]
            skip: set[bytes] = set()
            named: dict[bytes, list[bytes]] = {}
            if i or later or include:
                for e in m.entries():
                    path = path_from_json(e["path"])
                    if e["type"] == "hardlink":
                        named.setdefault(path_from_json(e["link"]), []).append(path)
                    if path in later:
                        skip.add(path)
                    if i:
                        later.add(path)
                skip -= named.keys()  # a hard link's target is written, for its links
            later.update(path_from_json(p) for p in m["deleted"])
            skips.append(skip)
            links.append(named)
        later.clear()
        skips.reverse()
        links.reverse()
        result = RestoreResult(to)
        total = sum(m["size_in"] for m in manifests)

        def work(ex: Extractor) -> None:
            progress.start(f"restore {archive.id}", total)
            for a, m, skip, named in zip(chain, manifests, skips, links, strict=True):
                for p in m["deleted"]:
                    ex.delete(normalize_member_name(path_from_json(p), a.id))
                with target_of(a).open_read(a.location) as f:
                    hr = _stream(
                        f,
                        identities,
                        a.id,
                        functools.partial(
                            ex.extract,
                            archive=a.id,
                            skip=skip,
                            hashes=_Expected(m),
                            links=named,
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
    finally:
        for m in manifests:
            m.close()
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
    res = VerifyResult(a.id)
    with read_manifest(target, a, identities) as m:
        entries = m.entries()
        matched = 0  # members that were the manifest's next entry, as every writer made them
        # an archive in another order (none we wrote) is checked against a map, the old way
        expected: dict[bytes, dict[str, Any]] | None = None
        seen: set[bytes] = set()

        def entry_for(rel: bytes) -> dict[str, Any] | None:
            nonlocal matched, expected
            if expected is None:
                e = next(entries, None)
                if e is not None and path_from_json(e["path"]) == rel:
                    matched += 1
                    return e
                expected = {path_from_json(e["path"]): e for e in m.entries()}
                seen.update(path_from_json(e["path"]) for e in islice(m.entries(), matched))
            found = expected.get(rel)
            if found is not None:
                seen.add(rel)
            return found

        def body(r: tf.TarReader) -> None:
            buf = memoryview(bytearray(_READ))
            for mem in r:
                rel = normalize_member_name(mem.name, a.id)
                e = entry_for(rel)
                if e is None:
                    raise ArchiveCorrupt(a.id, f"entry {os.fsdecode(rel)!r} is not in the manifest")
                res.entries += 1
                if mem.type == tf.REGTYPE:
                    h = hashlib.sha256()
                    while n := r.readinto_data(buf):
                        h.update(buf[:n])
                        progress.advance(n)
                    if h.hexdigest() != e.get("sha256"):
                        raise ArchiveCorrupt(
                            a.id,
                            f"content of {os.fsdecode(rel)!r} does not match its manifest hash",
                        )
                    res.files_checked += 1
                    res.bytes += mem.size

        progress.start(f"verify {a.id}", m["size_in"])
        with target.open_read(a.location) as f:
            hr = _stream(f, identities, a.id, body)
        progress.finish()
        if expected is None:
            missing = [path_from_json(e["path"]) for e in entries]
        else:
            missing = list(set(expected) - seen)
    if missing:
        raise ArchiveCorrupt(
            a.id,
            f"{len(missing)} manifest entries missing from the archive, "
            f"e.g. {os.fsdecode(min(missing))!r}",
        )
    if a.sha256 and hr.h.hexdigest() != a.sha256:
        raise ArchiveCorrupt(a.id, "stored object's SHA-256 differs from the inventory's record")
    inventory.log(
        "verify", f"verified {a.id}: {res.files_checked} files", policy=a.policy, archive_id=a.id
    )
    return res
