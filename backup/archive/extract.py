"""Extract: apply tar streams to a staging directory, safely.

Invariants:

- Nothing outside the staging directory is ever written. Entries with absolute paths or
  ``..`` are refused; hard links must point inside the archive; symlinks that lead outside
  the destination, resolved through every other link of the final tree, are refused unless
  explicitly allowed. Symlinks are created only after every other entry of every archive is
  in place, so no write can ever pass through one.
- An existing path is unlinked before it is replaced, never truncated in place: it may be a
  hard link whose other names must keep their old content.
- Directory modes and mtimes are applied last, deepest first, so a read-only directory
  still receives its files and its mtime is not disturbed by them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..errors import ArchiveCorrupt, ArchiveError, UnsafeArchiveEntry
from ..progress import Progress
from . import tarformat as tf
from .fsjobs import FSJobs
from .scan import env_threads

__all__ = ["Extractor", "normalize_member_name", "process_umask", "restore_threads"]

_BUF = 1 << 20
_SMALL = 1 << 20  # files up to this size are read whole and written by the pool

_c_write_new: Callable[..., int] | None
try:  # a small file's creation in one call outside the GIL (_speedups.c), when it was built
    from ._speedups import write_new as _c_write  # type: ignore[import-not-found]
except ImportError:
    _c_write_new = None
else:
    _c_write_new = _c_write


def _read_all(reader: tf.TarReader, size: int, archive: str, rel: bytes) -> bytes:
    parts = []
    left = size
    while left:
        b = reader.read_data(left)
        if not b:
            raise ArchiveCorrupt(archive, f"data of {os.fsdecode(rel)!r} ends early")
        parts.append(b)
        left -= len(b)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def process_umask() -> int:
    """Returns: the process's umask as Linux reports it (``/proc/self/status``), or -1 where
    it cannot be read without setting it (os.umask would change it for every thread a
    moment): the C writer then sets each file's mode with fchmod, as without it."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return -1


def restore_threads() -> int:
    """Returns: the restore's filesystem threads: ``BACKUP_RESTORE_THREADS``, else one per
    CPU (2 to 8). More threads overlap the round trips of network and cloud disks; on a local
    disk, threads beyond the cores only contend in the kernel (measured on two cores: four
    threads doubled the system time of a 70k-file restore).

    Raises:
        ConfigError: the variable is not a whole number from 1 to 64.
    """
    return env_threads("BACKUP_RESTORE_THREADS", max(2, min(8, os.cpu_count() or 1)))


def normalize_member_name(name: bytes, archive: str) -> bytes:
    """Make a member name relative and canonical, refusing unsafe ones.

    Args:
        name: as in the tar stream (``./a/b``, ``a/b/``).
        archive: archive name, for errors.

    Returns:
        The canonical relative path, or ``b""`` for the archive root.

    Raises:
        UnsafeArchiveEntry: absolute paths and ``..`` components.
    """
    if name.startswith(b"/"):
        raise UnsafeArchiveEntry(archive, os.fsdecode(name), "absolute path")
    parts = [p for p in name.split(b"/") if p not in (b"", b".")]
    if b".." in parts:
        raise UnsafeArchiveEntry(archive, os.fsdecode(name), "'..' in path")
    return b"/".join(parts)


#: a link whose links nest deeper leads nowhere (Linux follows at most 40 in one lookup)
_MAX_HOPS = 40
#: the longest symlink target Linux makes (PATH_MAX less the terminating NUL)
_MAX_LINK = 4095

_LINK, _DIR, _OTHER = 0, 1, 2

# a directory a resolution is in: its path, and whether it is in staging and in the
# destination (neither: known by name only, as nothing or not a directory is there now)
_Frame = tuple[bytes, bool, bool]
_NAMED: _Frame = (b"", False, False)


class Expected(Protocol):
    """The manifest's SHA-256 of a file's content, asked for in archive order."""

    def get(self, rel: bytes, /) -> str | None: ...


class _Outside(Exception):
    """A resolution left the root."""


class _TooDeep(Exception):
    """A resolution reached a link nested too deep to resolve from there."""

    def __init__(self, rel: bytes, target: bytes, parent: list[_Frame]) -> None:
        self.rel, self.target, self.parent = rel, target, parent


class _FinalTree:
    """The tree as it stands once the restore is in place, for resolving symlinks in it:
    the staging directory (with the symlinks still to be made) laid over the destination
    it merges into, if any.

    Args:
        stage: the staging directory.
        symlinks: the symlinks to be made, by path: their targets.
        dest: the existing destination the staging merges into (None: a new one).
        hidden: a path in ``dest`` the final tree does not hold (the staging directory).
    """

    def __init__(
        self, stage: bytes, symlinks: dict[bytes, bytes], dest: bytes | None, hidden: bytes | None
    ) -> None:
        self.stage = stage
        self.symlinks = symlinks
        self.dest = dest
        self.hidden = hidden
        self._at_root = (True, dest is not None)
        self._cache: dict[tuple[bytes, bool, bool], tuple[int, bytes, bool, bool] | None] = {}
        # where each symlink leads (None: nowhere) and how deep its links nest, once known
        self._resolved: dict[bytes, tuple[list[_Frame] | None, int]] = {}
        self._pending: set[bytes] = set()
        self._outside: set[bytes] = set()

    @staticmethod
    def _kind(path: bytes) -> tuple[int, bytes] | None:
        try:
            st = os.lstat(path)
        except OSError:
            # missing; or unreadable, which the resolution then takes for missing (and goes
            # on by name, as for any directory it cannot see into)
            return None
        if stat.S_ISLNK(st.st_mode):
            return _LINK, os.readlink(path)
        return (_DIR if stat.S_ISDIR(st.st_mode) else _OTHER), b""

    def lookup(
        self, rel: bytes, in_stage: bool, in_dest: bool
    ) -> tuple[int, bytes, bool, bool] | None:
        """What ``rel`` is, given whether its parent directory is in staging and in the
        destination: (kind, link target, in staging, in the destination), or None if
        nothing. Staging wins, except that two directories merge."""
        key = (rel, in_stage, in_dest)
        if key in self._cache:
            return self._cache[key]
        found: tuple[int, bytes, bool, bool] | None = None
        staged = None
        if in_stage:
            if rel in self.symlinks:
                staged = (_LINK, self.symlinks[rel])
            else:
                staged = self._kind(self.stage + b"/" + rel)
        there = None
        if in_dest and self.dest is not None:
            p = self.dest + b"/" + rel
            if p != self.hidden:
                there = self._kind(p)
        if staged is not None:
            merged = staged[0] == _DIR and there is not None and there[0] == _DIR
            found = (staged[0], staged[1], True, merged)
        elif there is not None:
            found = (there[0], there[1], False, True)
        self._cache[key] = found
        return found

    def leaves(self, rel: bytes, target: bytes) -> bool:
        """Tell whether the symlink at ``rel``, pointing to ``target``, resolves outside the
        root, following every symlink on the way as the kernel would. Where the path meets
        something that is not a directory (or nothing), it goes on by name: that part of
        the tree may be made later, and must not then lead outside either. A link that
        leads nowhere (a loop, or links nested more than 40 deep: ELOOP) does not leave."""
        parent: list[_Frame] = []
        for part in rel.split(b"/")[:-1]:  # real directories in staging
            entered = self._enter(parent, part)
            parent.append(entered if isinstance(entered, tuple) else _NAMED)
        # a chain nested deeper than the recursion goes is resolved from its far end first
        work = [(rel, target, parent)]
        waiting = {rel}
        try:
            while work:
                try:
                    self._follow(*work[-1], 0)
                except _TooDeep as e:
                    if e.rel in waiting:  # it needs itself: a loop
                        self._resolved[e.rel] = (None, _MAX_HOPS + 1)
                    else:
                        work.append((e.rel, e.target, e.parent))
                        waiting.add(e.rel)
                    continue
                waiting.discard(work.pop()[0])
        except _Outside:
            # each link waiting needs the next one, which leads outside: so does it
            self._outside.update(waiting)
            return True
        return False

    def _enter(self, stack: list[_Frame], part: bytes) -> _Frame | bytes:
        """The frame of ``part`` in the directory on top of ``stack``, or the target of the
        symlink it is."""
        in_stage, in_dest = stack[-1][1:] if stack else self._at_root
        if not (in_stage or in_dest):
            return _NAMED
        path = stack[-1][0] + b"/" + part if stack else part
        found = self.lookup(path, in_stage, in_dest)
        if found is None or found[0] == _OTHER:
            return _NAMED
        if found[0] == _DIR:
            return (path, found[2], found[3])
        return found[1]

    def _follow(
        self, rel: bytes, target: bytes, parent: list[_Frame], depth: int
    ) -> tuple[list[_Frame] | None, int]:
        """Where the symlink at ``rel``, in the directory ``parent`` leads to, leads: the
        frames of that place (None: nowhere), and how deep the links it goes through nest.
        Each link is resolved once, so a chain costs its length, not its length squared.

        Raises:
            _Outside: it leads outside the root.
            _TooDeep: resolving it needs a link nested deeper than ``_MAX_HOPS`` here,
                which is not resolved yet.
        """
        if rel in self._resolved:
            return self._resolved[rel]
        if rel in self._outside:
            raise _Outside
        if rel in self._pending:
            return None, 0  # a loop
        if depth > _MAX_HOPS:
            raise _TooDeep(rel, target, list(parent))
        if target.startswith(b"/"):
            self._outside.add(rel)
            raise _Outside
        hops = 1
        stack: list[_Frame] | None = list(parent)
        self._pending.add(rel)
        try:
            for part in target.split(b"/"):
                assert stack is not None
                if part in (b"", b"."):
                    continue
                if part == b"..":
                    if not stack:
                        raise _Outside
                    stack.pop()
                    continue
                entered = self._enter(stack, part)
                if isinstance(entered, tuple):
                    stack.append(entered)
                    continue
                path = stack[-1][0] + b"/" + part if stack else part
                ends, nested = self._follow(path, entered, stack, depth + 1)
                hops = max(hops, nested + 1)
                if ends is None or hops > _MAX_HOPS:
                    stack = None
                    break
                stack = list(ends)
        except _Outside:
            # known at once the next time (say, for each link of a long chain)
            self._outside.add(rel)
            raise
        finally:
            self._pending.discard(rel)
        self._resolved[rel] = (stack, hops)
        return stack, hops


def _leaves_message(target: bytes, how: str) -> str:
    what = f"{how}: symlink" if how else "symlink"
    return (
        f"{what} to {os.fsdecode(target)!r} leads outside the destination "
        "(--allow-external-symlinks restores it as it is)"
    )


@dataclass(slots=True)
class _DirMeta:
    mode: int
    mtime_ns: int
    uid: int
    gid: int


class Extractor:
    """Applies archives, oldest first, to one staging directory.

    Args:
        root: the staging directory (exists, empty).
        allow_external_symlinks: restore symlinks that point outside the destination.
        include: restore only paths it accepts (and what lies under accepted directories).
        restore_owner: set uid/gid (default: when running as root, as tar does).
        threads: filesystem threads (default: :func:`restore_threads`).
        merge_into: the existing destination the staging directory will be merged into:
            a restored symlink may lead through the links it holds, so they count too.
        hidden: the staging directory's path inside ``merge_into``.
    """

    def __init__(
        self,
        root: bytes,
        *,
        allow_external_symlinks: bool = False,
        include: Callable[[bytes], bool] | None = None,
        restore_owner: bool | None = None,
        threads: int | None = None,
        merge_into: bytes | None = None,
        hidden: bytes | None = None,
    ) -> None:
        self.root = root
        self.merge_into = merge_into
        self.hidden = hidden
        self.allow_external_symlinks = allow_external_symlinks
        self.include = include
        self.restore_owner = os.geteuid() == 0 if restore_owner is None else restore_owner
        # path -> target, mtime, uid, gid, archive, how it came (for errors)
        self.symlinks: dict[bytes, tuple[bytes, int, int, int, str, str]] = {}
        self.dirs: dict[bytes, _DirMeta] = {}
        self.files = 0
        self.bytes = 0
        self._buf = bytearray(_BUF)
        self.jobs = FSJobs(threads=restore_threads() if threads is None else threads)
        # directories created or queued for creation: spares an lstat per entry
        self.known_dirs: set[bytes] = {b""}
        # who owns a file the restore creates: the effective user, and the staging root's
        # group where the root is set-group-ID (what it holds inherits both), else the
        # effective group; directory modes come last (finish), so no directory below the
        # root turns set-group-ID while files are created. A member owned so needs no chown.
        root_st = os.stat(root)
        self._new_owner = (
            os.geteuid(),
            root_st.st_gid if root_st.st_mode & stat.S_ISGID else os.getegid(),
        )
        self._umask = process_umask()

    def _abs(self, rel: bytes) -> bytes:
        return self.root + b"/" + rel if rel else self.root

    def _wanted(self, rel: bytes) -> bool:
        return self.include is None or self.include(rel)

    def _clear(self, rel: bytes) -> None:
        """Remove whatever is at ``rel`` (file, link or whole directory)."""
        p = self._abs(rel)
        try:
            st = os.lstat(p)
        except (FileNotFoundError, NotADirectoryError):
            # NotADirectoryError: a parent is a file here (an older archive's file that a
            # hard link needed); nothing can be under it
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(p)
        else:
            os.unlink(p)

    def _forget_under(self, rel: bytes, was_dir: bool | None = None) -> None:
        """Drop pending symlinks and directory metadata at or below ``rel``.

        ``was_dir=False`` says the reader knows ``rel`` is not a directory it created or
        queued: then nothing can be recorded below it (recording a path below it would have
        queued it), and the disk need not be asked."""
        self.symlinks.pop(rel, None)
        # Only a directory can have anything recorded below it; checking first keeps this
        # O(1) per entry instead of a scan of every pending directory for every file.
        if self.dirs.pop(rel, None) is None and (
            was_dir is False or not os.path.isdir(self._abs(rel))
        ):
            return
        prefix = rel + b"/"
        for d in (self.symlinks, self.dirs):
            for k in [k for k in d if k.startswith(prefix)]:
                del d[k]

    def delete(self, rel: bytes) -> None:
        """Apply an incremental's deletion of ``rel``."""
        self.jobs.drain()
        self.known_dirs.discard(rel)
        self._forget_under(rel)
        self._clear(rel)

    def _parent(self, rel: bytes, archive: str) -> None:
        """Make the parents of ``rel`` real directories, refusing a path through a symlink."""
        if b"/" not in rel:
            return
        parent = rel.rsplit(b"/", 1)[0]
        probe = parent
        while self.symlinks:
            if probe in self.symlinks:
                raise UnsafeArchiveEntry(
                    archive, os.fsdecode(rel), f"parent {os.fsdecode(probe)!r} is a symlink"
                )
            if b"/" not in probe:
                break
            probe = probe.rsplit(b"/", 1)[0]
        missing: list[bytes] = []
        p = parent
        while p not in self.known_dirs:
            missing.append(p)
            if b"/" not in p:
                break
            p = p.rsplit(b"/", 1)[0]
        for d in reversed(missing):  # top down, as tar would make them
            self._mkdir(d, 0o777)

    def _mkdir(self, rel: bytes, mode: int) -> None:
        """Queue the creation of directory ``rel`` (replacing a non-directory there)."""
        self.known_dirs.add(rel)
        self.jobs.submit(rel, self._dir_job, rel, mode)

    def _dir_job(self, rel: bytes, mode: int) -> None:
        self._mkdirs(rel, mode)

    def _mkdir_one(self, rel: bytes, mode: int) -> None:
        """Make ``rel`` a directory, replacing a non-directory there; another worker may be
        doing the same at the same moment, which is not an error."""
        ap = self._abs(rel)
        while True:
            try:
                os.mkdir(ap, mode)
                return
            except FileExistsError:
                try:
                    if stat.S_ISDIR(os.lstat(ap).st_mode):
                        return
                    os.unlink(ap)  # a file where the archive now has a directory
                except FileNotFoundError:
                    pass  # replaced or removed by another worker meanwhile: try again

    def _mkdirs(self, rel: bytes, mode: int) -> None:
        """Make ``rel`` a directory, creating its missing parents first (jobs run in any
        order, so a parent's own job may not have run yet; it then finds it done)."""
        todo = [rel]
        while todo:
            d = todo[-1]
            try:
                # a parent made here gets the mode its own job would give it
                self._mkdir_one(d, mode if len(todo) == 1 else 0o700 if d in self.dirs else 0o777)
            except (FileNotFoundError, NotADirectoryError):
                # a parent is missing, or is a file an earlier archive left there
                if b"/" not in d:
                    raise
                todo.append(d.rsplit(b"/", 1)[0])
                continue
            todo.pop()

    def _chown_needed(self, m: tf.Member) -> bool:
        """Tell whether a file this restore creates for ``m`` must be given its owner: not
        when owners are not restored, nor when it is created with the right one."""
        return self.restore_owner and (m.uid, m.gid) != self._new_owner

    def _meta(self, fd_or_path: int | bytes, m: tf.Member) -> None:
        if self._chown_needed(m):
            try:
                if isinstance(fd_or_path, int):
                    os.fchown(fd_or_path, m.uid, m.gid)
                else:
                    os.lchown(fd_or_path, m.uid, m.gid)
            except OSError:
                pass  # as tar does: ownership is best effort
        if isinstance(fd_or_path, int):
            os.fchmod(fd_or_path, m.mode & 0o7777)
        else:
            os.chmod(fd_or_path, m.mode & 0o7777)
        if isinstance(fd_or_path, int):
            os.utime(fd_or_path, ns=(m.mtime_ns, m.mtime_ns))
        else:
            os.utime(fd_or_path, ns=(m.mtime_ns, m.mtime_ns), follow_symlinks=False)

    def extract(
        self,
        reader: tf.TarReader,
        archive: str,
        *,
        skip: set[bytes] | None = None,
        hashes: Expected | None = None,
        links: dict[bytes, list[bytes]] | None = None,
        progress: Progress | None = None,
    ) -> None:
        """Apply every member of one tar stream.

        Args:
            reader: the archive's tar stream.
            archive: its name, for errors.
            skip: paths a later archive replaces or deletes: read past, not written.
            hashes: expected SHA-256 of file contents by path (from the manifest), asked
                in member order.
            links: hard-link names by the path they link to (from the manifest).
            progress: told of content bytes as they are read.
        """
        skip = skip or set()
        progress = progress or Progress()
        mv = memoryview(self._buf)
        # members --include leaves out whose content went to an included hard link instead
        moved: dict[bytes, bytes] = {}
        for m in reader:
            rel = normalize_member_name(m.name, archive)
            if not rel:
                # the root is the archive's only when all of it is restored
                if m.type == tf.DIRTYPE and self.include is None:
                    self.dirs[b""] = _DirMeta(m.mode, m.mtime_ns, m.uid, m.gid)
                continue
            if links and m.type == tf.REGTYPE and rel not in skip and not self._wanted(rel):
                # tar stores a hard-linked file's data under its first name only: when
                # --include leaves that name out, an included name must receive the data
                names = [n for n in links.get(rel, ()) if n not in skip and self._wanted(n)]
                if names:
                    self.jobs.drain()
                    self._parent(names[0], archive)
                    self.jobs.drain()
                    self._forget_under(names[0])
                    expected = hashes.get(rel) if hashes else None
                    self._write_file(reader, names[0], m, archive, expected, mv, progress)
                    moved[rel] = names[0]
                    continue
            if rel in skip or not self._wanted(rel):
                if m.size:
                    progress.advance(m.size)
                continue
            self._parent(rel, archive)
            t = m.type
            if t == tf.DIRTYPE:
                self.symlinks.pop(rel, None)
                if rel not in self.known_dirs:
                    self._mkdir(rel, 0o700)
                self.dirs[rel] = _DirMeta(m.mode, m.mtime_ns, m.uid, m.gid)
                continue
            was_dir = rel in self.known_dirs
            if was_dir:
                # a directory becomes something else: nothing queued may still write below it
                self.jobs.drain()
                self.known_dirs.discard(rel)
            if t == tf.REGTYPE:
                self._forget_under(rel, was_dir)
                expected = hashes.get(rel) if hashes else None
                if m.size <= _SMALL:
                    data = _read_all(reader, m.size, archive, rel)
                    progress.advance(m.size)
                    self.jobs.submit(
                        rel, self._small_file_job, rel, data, m, archive, expected, nbytes=m.size
                    )
                    self.files += 1
                    self.bytes += m.size
                else:
                    self.jobs.wait(rel)  # its parent it creates itself if need be
                    self._write_file(reader, rel, m, archive, expected, mv, progress)
                continue
            # links, FIFOs and devices are few: handle them with nothing else in flight
            self.jobs.drain()
            if t == tf.SYMTYPE:
                # where a relative one leads depends on the links made after it: checked
                # in finish(), with all of them known
                if not self.allow_external_symlinks and m.linkname.startswith(b"/"):
                    raise UnsafeArchiveEntry(
                        archive, os.fsdecode(rel), _leaves_message(m.linkname, "")
                    )
                if len(m.linkname) > _MAX_LINK:
                    raise ArchiveCorrupt(
                        archive,
                        f"symlink {os.fsdecode(rel)!r} has a target of {len(m.linkname)} "
                        f"bytes; no system makes one longer than {_MAX_LINK}",
                    )
                self._forget_under(rel)
                self._clear(rel)
                self.symlinks[rel] = (m.linkname, m.mtime_ns, m.uid, m.gid, archive, "")
            elif t == tf.LNKTYPE:
                try:
                    target = normalize_member_name(m.linkname, archive)
                except UnsafeArchiveEntry as e:
                    # name the member being restored, not only its link target
                    raise UnsafeArchiveEntry(
                        archive,
                        os.fsdecode(rel),
                        f"hard link to {os.fsdecode(m.linkname)!r}: {e.args[2]}",
                    ) from None
                if not target:
                    raise UnsafeArchiveEntry(
                        archive, os.fsdecode(rel), "hard link to the archive root"
                    )
                target = moved.get(target, target)
                if target == rel:
                    continue  # the data was written here
                self._forget_under(rel)
                self._clear(rel)
                if target in self.symlinks:
                    # a relative symlink copied to another depth may lead elsewhere: it is
                    # checked where it lands, in finish()
                    ln, mtime_ns, uid, gid = self.symlinks[target][:4]
                    how = f"hard link to symlink {os.fsdecode(target)!r}"
                    self.symlinks[rel] = (ln, mtime_ns, uid, gid, archive, how)
                    continue
                try:
                    os.link(self._abs(target), self._abs(rel), follow_symlinks=False)
                except FileNotFoundError:
                    if not self._wanted(target):
                        raise ArchiveError(
                            archive,
                            f"hard link {os.fsdecode(rel)!r} needs {os.fsdecode(target)!r}, which --include "
                            "leaves out: include it too",
                        ) from None
                    raise ArchiveCorrupt(
                        archive,
                        f"hard link {os.fsdecode(rel)!r} to missing {os.fsdecode(target)!r}",
                    ) from None
                self.files += 1
            elif t == tf.FIFOTYPE:
                self._forget_under(rel)
                self._clear(rel)
                os.mkfifo(self._abs(rel), 0o600)
                self._meta(self._abs(rel), m)
            elif t in (tf.CHRTYPE, tf.BLKTYPE):
                self._forget_under(rel)
                self._clear(rel)
                if os.geteuid() == 0:
                    kind = stat.S_IFCHR if t == tf.CHRTYPE else stat.S_IFBLK
                    os.mknod(self._abs(rel), kind | 0o600, os.makedev(m.devmajor, m.devminor))
                    self._meta(self._abs(rel), m)
        self.jobs.drain()

    def _open_new(self, rel: bytes) -> int:
        ap = self._abs(rel)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(ap, flags, 0o600)
        except FileExistsError:
            self._clear(rel)
        except (FileNotFoundError, NotADirectoryError):
            # the parent's job has not run yet, or an earlier archive left a file there
            parent = rel.rsplit(b"/", 1)[0] if b"/" in rel else b""
            if not parent:
                raise
            self._mkdirs(parent, 0o700 if parent in self.dirs else 0o777)
        return os.open(ap, flags, 0o600)

    def _small_file_job(
        self, rel: bytes, data: bytes, m: tf.Member, archive: str, expected: str | None
    ) -> None:
        # checked before a byte is written: a bad file never lands, even in staging
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise ArchiveCorrupt(
                archive, f"content of {os.fsdecode(rel)!r} does not match its manifest hash"
            )
        # one call outside the GIL instead of six round trips through it; an open that found
        # something in the way (or no parent yet) created nothing, and the Python path below
        # clears the way
        ap = self._abs(rel)
        if _c_write_new is not None and not _c_write_new(
            ap, data, m.mode, m.uid, m.gid, m.mtime_ns, self._chown_needed(m), self._umask
        ):
            return
        fd = self._open_new(rel)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            self._meta(fd, m)
        finally:
            os.close(fd)

    def _write_file(
        self,
        reader: tf.TarReader,
        rel: bytes,
        m: tf.Member,
        archive: str,
        expected: str | None,
        mv: memoryview,
        progress: Progress,
    ) -> None:
        fd = self._open_new(rel)
        try:
            h = hashlib.sha256() if expected else None
            while True:
                n = reader.readinto_data(mv)
                if not n:
                    break
                chunk = mv[:n]
                if h is not None:
                    h.update(chunk)
                view = chunk
                while view:
                    w = os.write(fd, view)
                    view = view[w:]
                progress.advance(n)
            if h is not None and h.hexdigest() != expected:
                raise ArchiveCorrupt(
                    archive, f"content of {os.fsdecode(rel)!r} does not match its manifest hash"
                )
            self._meta(fd, m)
        finally:
            os.close(fd)
        self.files += 1
        self.bytes += m.size

    def drain(self) -> None:
        """Wait for queued filesystem work; raise the first error it met."""
        self.jobs.drain()

    def close(self) -> None:
        """Stop the worker threads."""
        self.jobs.close()

    def finish(self) -> None:
        """Check where every symlink leads, create them, then set directory metadata
        deepest first.

        Raises:
            UnsafeArchiveEntry: a symlink resolves outside the destination (unless allowed),
                through whatever chain of links the restore and the destination hold.
        """
        self.jobs.drain()
        if not self.allow_external_symlinks and self.symlinks:
            tree = _FinalTree(
                self.root,
                {rel: v[0] for rel, v in self.symlinks.items()},
                self.merge_into,
                self.hidden,
            )
            for rel, (target, _, _, _, archive, how) in sorted(self.symlinks.items()):
                if tree.leaves(rel, target):
                    raise UnsafeArchiveEntry(
                        archive, os.fsdecode(rel), _leaves_message(target, how)
                    )
        for rel, (target, mtime_ns, uid, gid, _, _) in sorted(self.symlinks.items()):
            ap = self._abs(rel)
            parent = ap.rsplit(b"/", 1)[0]
            os.makedirs(parent, exist_ok=True)
            self._clear(rel)
            os.symlink(target, ap)
            if self.restore_owner:
                with contextlib.suppress(OSError):
                    os.lchown(ap, uid, gid)
            os.utime(ap, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
            self.files += 1
        for rel in sorted(self.dirs, key=lambda r: r.count(b"/"), reverse=True):
            meta = self.dirs[rel]
            ap = self._abs(rel)
            try:
                if self.restore_owner:
                    with contextlib.suppress(OSError):
                        os.lchown(ap, meta.uid, meta.gid)
                os.chmod(ap, meta.mode & 0o7777)
                os.utime(ap, ns=(meta.mtime_ns, meta.mtime_ns))
            except FileNotFoundError:
                continue
