"""Scan: walk a policy's sources and say what each path is.

The scan reads metadata only (one ``lstat`` per path), so a no-change incremental costs
little more than this walk. Names are handled as raw bytes from start to end: a file name
that is not valid UTF-8 is still a file to protect.

Exclude patterns are shell globs. A pattern without ``/`` matches a name at any depth
(``*.tmp``, ``.cache``); a pattern with ``/`` matches the path relative to the source root
(``build/*``, ``logs/old``). An excluded directory is not descended into.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..errors import SourceError

__all__ = ["Entry", "ScanResult", "Unreadable", "compile_excludes", "scan", "scan_iter"]

# tar type letters, used as the entry kinds throughout
FILE, DIR, SYMLINK, HARDLINK, FIFO, CHR, BLK = (
    "file",
    "dir",
    "symlink",
    "hardlink",
    "fifo",
    "chr",
    "blk",
)


@dataclass(slots=True)
class Entry:
    """One path found by the scan."""

    path: bytes  # inside the archive: relative, '/'-separated
    abspath: bytes
    kind: str
    size: int
    mode: int  # st_mode
    mtime_ns: int
    ctime_ns: int
    ino: int
    dev: int
    nlink: int
    uid: int
    gid: int
    link: bytes = b""  # symlink target
    #: for a file whose content is not at ``abspath`` (an object in a bucket): opens it as a
    #: stream; the packer reads it from there (see backup/snapshots/source.py)
    opener: Callable[[], BinaryIO] | None = None


@dataclass(slots=True)
class Unreadable:
    """A path the scan or pack could not read: reported, never silently dropped."""

    path: bytes
    error: str


@dataclass(slots=True)
class ScanResult:
    entries: list[Entry] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)
    #: directories that could not be listed; what they held is carried over, not deleted
    unreadable_dirs: list[bytes] = field(default_factory=list)


def compile_excludes(patterns: Sequence[str]) -> Callable[[bytes, bytes], bool]:
    """Build the exclude test.

    Args:
        patterns: shell globs (see the module docstring).

    Returns:
        A function of (relative path, name) telling whether to exclude it.
    """
    name_pats = [p for p in patterns if "/" not in p.strip("/")]
    path_pats = [p.strip("/") for p in patterns if "/" in p.strip("/")]
    name_re = (
        re.compile(b"|".join(os.fsencode(fnmatch.translate(p)) for p in name_pats))
        if name_pats
        else None
    )
    path_re = (
        re.compile(b"|".join(os.fsencode(fnmatch.translate(p)) for p in path_pats))
        if path_pats
        else None
    )

    def excluded(rel: bytes, name: bytes) -> bool:
        return bool((name_re and name_re.match(name)) or (path_re and path_re.match(rel)))

    return excluded


def _kind(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISDIR(mode):
        return DIR
    if stat.S_ISLNK(mode):
        return SYMLINK
    if stat.S_ISFIFO(mode):
        return FIFO
    if stat.S_ISCHR(mode):
        return CHR
    if stat.S_ISBLK(mode):
        return BLK
    return None  # sockets and doors cannot be archived meaningfully


def _entry(rel: bytes, abspath: bytes, st: os.stat_result, kind: str) -> Entry:
    link = os.readlink(abspath) if kind == SYMLINK else b""
    return Entry(
        rel,
        abspath,
        kind,
        st.st_size if kind == FILE else 0,
        st.st_mode,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
        st.st_dev,
        st.st_nlink,
        st.st_uid,
        st.st_gid,
        link,
    )


def scan(
    policy_name: str, sources: Sequence[tuple[str, Path]], exclude: Sequence[str]
) -> ScanResult:
    """Walk the sources.

    Args:
        policy_name: for error messages.
        sources: (name inside the archive, absolute path); name ``""`` puts the source's
            contents at the archive root.
        exclude: exclude globs.

    Returns:
        Entries in a stable order (sorted names, parents before children).

    Raises:
        SourceError: when a source is missing or is not a directory or file; nothing is written then.
    """
    result = ScanResult()
    result.entries.extend(scan_iter(policy_name, sources, exclude, result))
    return result


def scan_iter(
    policy_name: str,
    sources: Sequence[tuple[str, Path]],
    exclude: Sequence[str],
    result: ScanResult,
) -> Iterator[Entry]:
    """Walk the sources lazily, so packing can start with the first entry.

    The sources are checked now; the walk happens as the entries are consumed, in the
    order :func:`scan` returns them. What cannot be read is added to ``result`` as the walk
    meets it (``result.entries`` is left alone).

    Raises:
        SourceError: when a source is missing or is not a directory or file (raised here,
            before anything is walked).
    """
    excluded = compile_excludes(exclude)
    roots: list[tuple[bytes, bytes, os.stat_result]] = []  # (name, absolute path, stat)
    for name, path in sources:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise SourceError(str(path), policy_name, "does not exist") from None
        except OSError as e:
            raise SourceError(str(path), policy_name, e.strerror or str(e)) from None
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            raise SourceError(str(path), policy_name, "is neither a directory nor a file")
        roots.append((os.fsencode(name), os.fsencode(path), st))
    return _iter_roots(roots, excluded, result)


def _iter_roots(
    roots: list[tuple[bytes, bytes, os.stat_result]],
    excluded: Callable[[bytes, bytes], bool],
    result: ScanResult,
) -> Iterator[Entry]:
    for bname, babs, bst in roots:
        if stat.S_ISREG(bst.st_mode):
            rel = bname or os.path.basename(babs)
            yield _entry(rel, babs, bst, FILE)
            continue
        if bname:
            yield _entry(bname, babs, bst, DIR)
        yield from _walk(babs, bname, excluded, result)


def _name(d: os.DirEntry[bytes]) -> bytes:
    return d.name


def _walk(
    top: bytes, top_rel: bytes, excluded: Callable[[bytes, bytes], bool], result: ScanResult
) -> Iterator[Entry]:
    # Depth-first, each directory's subtree directly after the directory itself: GNU tar
    # sets a directory's mtime when it meets the first member outside it, so this order is
    # what lets `tar -x` restore directory mtimes. An explicit stack, not recursion: trees can
    # be deeper than Python's recursion limit.
    stack: list[Iterator[os.DirEntry[bytes]]] = []
    rels: list[bytes] = []

    def push(dirpath: bytes, dirrel: bytes) -> None:
        try:
            with os.scandir(dirpath) as it:
                children = sorted(it, key=_name)
        except OSError as e:
            result.unreadable.append(Unreadable(dirrel or b".", e.strerror or str(e)))
            result.unreadable_dirs.append(dirrel)
            return
        stack.append(iter(children))
        rels.append(dirrel)

    push(top, top_rel)
    while stack:
        d = next(stack[-1], None)
        if d is None:
            stack.pop()
            rels.pop()
            continue
        dirrel = rels[-1]
        name = d.name
        rel = dirrel + b"/" + name if dirrel else name
        if excluded(rel, name):
            continue
        try:
            st = d.stat(follow_symlinks=False)
            kind = _kind(st.st_mode)
            if kind is None:
                continue
            e = _entry(rel, d.path, st, kind)
        except FileNotFoundError:
            continue  # vanished between listing and stat: it is not there to back up
        except OSError as err:
            result.unreadable.append(Unreadable(rel, err.strerror or str(err)))
            continue
        yield e
        if kind == DIR:
            push(d.path, rel)
