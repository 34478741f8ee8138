"""Scan: walk a policy's sources and say what each path is.

The scan reads metadata only (one ``lstat`` per path), so a no-change incremental costs
little more than this walk. Names are handled as raw bytes from start to end: a file name
that is not valid UTF-8 is still a file to protect.

Exclude patterns are shell globs. A pattern without ``/`` matches a name at any depth
(``*.tmp``, ``.cache``; a trailing ``/`` is ignored, ``node_modules/``); a pattern with ``/``
inside or at its start matches the path relative to the source root (``build/*``,
``logs/old``, ``/tmp``). An excluded directory is not descended into.

The walk itself runs in C when the extension ``_fastwalk`` is built (it is, on install, where
a compiler is found): outside the GIL, several directories at a time, with the same result as
the Python walk below, which stays as the fallback (and for ``[...]`` classes in excludes).
A CLI run can start that walk before it has imported the inventory's libraries
(:func:`prefetch`), so the two overlap.

Memory: :func:`scan_iter` never holds an :class:`Entry` per path of the tree. The C walk lists
ahead of what is taken, about :data:`_LOOKAHEAD` entries (a compact C structure, released
directory by directory as it is consumed; a directory beyond is listed when the walk reaches
it) and builds the Python entries a batch at a time as they are taken; a prefetch does only
the first listing.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final

from ..errors import ConfigError, SourceError
from ..threads import start_thread

try:
    # by name, not `from . import`: that form reads (to grimp and import-linter) as an import
    # of this package's __init__, which re-exports this module, a cycle that is not there
    _fastwalk: Any = importlib.import_module("._fastwalk", __package__)
except ImportError:  # not compiled here: the Python walk gives the same result, more slowly
    _fastwalk = None

__all__ = [
    "Entry",
    "ScanResult",
    "Unreadable",
    "compile_excludes",
    "fast_walk_available",
    "prefetch",
    "scan",
    "scan_iter",
]

# tar type letters, used as the entry kinds throughout
FILE: Final = "file"
DIR: Final = "dir"
SYMLINK: Final = "symlink"
HARDLINK: Final = "hardlink"
FIFO: Final = "fifo"
CHR: Final = "chr"
BLK: Final = "blk"


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


def _split_excludes(patterns: Sequence[str]) -> tuple[list[str], list[str]]:
    """(patterns matched against a name, patterns matched against the relative path)."""
    names: list[str] = []
    paths: list[str] = []
    for p in patterns:
        core = p.strip("/")
        if not core:
            continue
        (paths if "/" in core or p.startswith("/") else names).append(core)
    return names, paths


def compile_excludes(patterns: Sequence[str]) -> Callable[[bytes, bytes], bool]:
    """Build the exclude test.

    Args:
        patterns: shell globs (see the module docstring).

    Returns:
        A function of (relative path, name) telling whether to exclude it.
    """
    name_pats, path_pats = _split_excludes(patterns)
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
    early = _take_prefetched(sources, exclude)
    if early is not None:
        result = ScanResult()
        result.entries.extend(_iter_roots(early.roots, None, early.fast, result, early.walkers))
        return result
    return _scan_now(policy_name, sources, exclude)


def _scan_now(
    policy_name: str, sources: Sequence[tuple[str, Path]], exclude: Sequence[str]
) -> ScanResult:
    result = ScanResult()
    result.entries.extend(_scan_iter_now(policy_name, sources, exclude, result))
    return result


#: entries the C walk builds at a time for a lazy walk: a batch, not the tree, is in memory
_BATCH = 4096
#: entries the C walk lists ahead of what was taken, about (~170 bytes each, so ~22 MB): a
#: directory met beyond it is listed when the walk reaches it, on the thread taking entries,
#: so the listing held is bounded, not the tree's. A prefetch lists this much before the scan
#: starts: a tree of 100k files is listed whole while `backup run` imports (at 1 << 16 the
#: last third was listed afterwards, ~20 ms of a 0.55 s no-change run).
_LOOKAHEAD = 1 << 17


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
    early = _take_prefetched(sources, exclude)
    if early is not None:
        return _iter_roots(early.roots, None, early.fast, result, early.walkers)
    return _scan_iter_now(policy_name, sources, exclude, result)


def _scan_iter_now(
    policy_name: str,
    sources: Sequence[tuple[str, Path]],
    exclude: Sequence[str],
    result: ScanResult,
) -> Iterator[Entry]:
    roots = _check_roots(policy_name, sources)
    return _iter_roots(roots, compile_excludes(exclude), _fast_patterns(exclude), result)


_Root = tuple[bytes, bytes, os.stat_result]  # (name, absolute path, stat)


def _check_roots(policy_name: str, sources: Sequence[tuple[str, Path]]) -> list[_Root]:
    roots: list[_Root] = []
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
    if all(name for name, _, _ in roots):
        # several sources, each under its name: walked in the order of their names, so the
        # whole walk is in walk order (what the tree cache is stored in, and merged against)
        roots.sort(key=lambda r: r[0])
    return roots


def walk_threads() -> int:
    """Returns: the C walk's threads: ``BACKUP_WALK_THREADS``, else twice the CPUs (2 to 8),
    more than the cores so that a cold cache's disk waits overlap.

    Raises:
        ConfigError: the variable is not a whole number from 1 to 64.
    """
    return env_threads("BACKUP_WALK_THREADS", max(2, min(8, 2 * (os.cpu_count() or 1))))


def env_threads(name: str, default: int) -> int:
    """Returns: a thread count from the environment variable ``name``, else ``default``.

    Raises:
        ConfigError: the variable is not a whole number from 1 to 64.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= 64:
        raise ConfigError(f"{name} must be a whole number from 1 to 64, not {raw!r}")
    return int(raw)


_KINDS = (FILE, DIR, SYMLINK, FIFO, CHR, BLK)  # the C walk's kind numbers, in its order


def fast_walk_available() -> bool:
    """Returns: whether the C walk is built (else every walk is the Python one)."""
    return _fastwalk is not None


def _fast_patterns(patterns: Sequence[str]) -> tuple[list[bytes], list[bytes]] | None:
    """The excludes for the C walk, or None when it cannot take them (not built, or a
    ``[...]`` class, which only Python's fnmatch implements)."""
    if _fastwalk is None or any("[" in p for p in patterns):
        return None
    names, paths = _split_excludes(patterns)
    return [os.fsencode(p) for p in names], [os.fsencode(p) for p in paths]


def _iter_roots(
    roots: list[_Root],
    excluded: Callable[[bytes, bytes], bool] | None,
    fast: tuple[list[bytes], list[bytes]] | None,
    result: ScanResult,
    listed: list[Any] | None = None,
) -> Iterator[Entry]:
    """The walk of each root in turn; ``listed``: the C walk's listings of the directory
    roots, in order, made beforehand (a prefetch), else each is listed when reached."""
    for bname, babs, bst in roots:
        if stat.S_ISREG(bst.st_mode):
            rel = bname or os.path.basename(babs)
            yield _entry(rel, babs, bst, FILE)
            continue
        if bname:
            yield _entry(bname, babs, bst, DIR)
        if fast is not None:
            walker = listed.pop(0) if listed else _listing(babs, bname, fast)
            yield from _walk_fast(walker, result)
        else:
            assert excluded is not None  # a prefetch is only ever of a C walk
            yield from _walk(babs, bname, excluded, result)


def _listing(top: bytes, top_rel: bytes, patterns: tuple[list[bytes], list[bytes]]) -> Any:
    """The C walk's listing of ``top`` (the GIL released): a ``Walker`` whose ``take(n)``
    builds the next ``n`` entries."""
    assert _fastwalk is not None
    return _fastwalk.listing(
        top, top_rel, patterns[0], patterns[1], Entry, _KINDS, walk_threads(), _LOOKAHEAD
    )


def _walk_fast(walker: Any, result: ScanResult) -> Iterator[Entry]:
    while True:
        entries, errors = walker.take(_BATCH)
        for rel, errno, is_dir in errors:
            result.unreadable.append(Unreadable(rel or b".", os.strerror(errno)))
            if is_dir:
                result.unreadable_dirs.append(rel)
        if not entries and not errors:
            return
        yield from entries
        entries = []  # the batch goes before the next is built


# prefetch ----------------------------------------------------------------------------------

_PrefetchKey = tuple[tuple[tuple[str, str], ...], tuple[str, ...]]


@dataclass(slots=True)
class _Listed:
    """A prefetch: the sources' roots, checked, and the C walk's listing of each directory
    root; their entries are built as the scan that takes this consumes them."""

    roots: list[_Root]
    fast: tuple[list[bytes], list[bytes]]
    walkers: list[Any]


_prefetched: dict[_PrefetchKey, tuple[threading.Thread, list[_Listed]]] = {}
_prefetch_lock = threading.Lock()


def _prefetch_key(sources: Sequence[tuple[str, Path]], exclude: Sequence[str]) -> _PrefetchKey:
    return tuple((n, str(p)) for n, p in sources), tuple(exclude)


def prefetch(policy_name: str, sources: Sequence[tuple[str, Path]], exclude: Sequence[str]) -> bool:
    """Start walking the sources on a thread now; the next :func:`scan` or :func:`scan_iter`
    of the same sources and excludes takes the result instead of walking again.

    Only the C walk is started early: it runs outside the GIL, so whatever this process does
    meanwhile (importing the inventory's libraries, opening it) overlaps it; a Python walk
    would only compete with that for the GIL. A prefetch that failed (a missing source, say)
    is dropped, and the scan that would have taken it walks and reports the error itself.

    Args:
        policy_name: for error messages.
        sources: as for :func:`scan`.
        exclude: as for :func:`scan`.

    Returns:
        Whether a walk was started.
    """
    fast = _fast_patterns(exclude)
    if fast is None:
        return False
    key = _prefetch_key(sources, exclude)
    box: list[_Listed] = []

    def walk() -> None:
        with contextlib.suppress(Exception):  # reported by the scan that runs instead
            roots = _check_roots(policy_name, sources)
            walkers = [_listing(a, n, fast) for n, a, st in roots if not stat.S_ISREG(st.st_mode)]
            box.append(_Listed(roots, fast, walkers))

    t = start_thread(walk, "backup-prefetch-walk")
    with _prefetch_lock:
        _prefetched[key] = (t, box)  # taken by a later scan of this process, never the walk
    return True


def _take_prefetched(sources: Sequence[tuple[str, Path]], exclude: Sequence[str]) -> _Listed | None:
    if not _prefetched:
        return None
    with _prefetch_lock:
        got = _prefetched.pop(_prefetch_key(sources, exclude), None)
    if got is None:
        return None
    thread, box = got
    thread.join()
    return box[0] if box else None


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
