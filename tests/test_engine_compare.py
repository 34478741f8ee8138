"""The incremental's streamed comparison (engine.merge_walk: the walk merged with the
parent's tree read as a stream in walk order) against its definition (engine.select_changed
over the whole walk and the parent's tree as a dict), on generated parent trees and walks:
changed, new, deleted, hard-linked, unreadable and under unreadable directories, names with
bytes that sort around '/', several sources, and walks out of walk order."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from backup.archive.scan import DIR, FILE, SYMLINK, Entry, ScanResult, Unreadable
from backup.engine import merge_walk, select_changed
from backup.inventory import sig_of
from backup.inventory.tree_codec import canonical_key

# bytes below, at and above "/" (0x2f) in names: "a.b" sorts before "a/..." bytewise, after it
# in walk order
NAMES = st.sampled_from([b"a", b"b", b"c", b"a-b", b"a b", b"a.b", b"a0", b"\x01", b"\xff"])
PATHS = st.lists(NAMES, min_size=1, max_size=3).map(b"/".join)


def entry(path: bytes, kind: str, size: int, mtime: int, ino: int, nlink: int) -> Entry:
    mode = {FILE: 0o100644, DIR: 0o40755, SYMLINK: 0o120777}[kind]
    return Entry(path, b"/src/" + path, kind, size, mode, mtime, mtime, ino, 1, nlink, 0, 0)


def walk_order(paths: list[bytes]) -> list[bytes]:
    """The paths as the walk meets them, parents first: each path's ancestors added."""
    full = set()
    for p in paths:
        parts = p.split(b"/")
        full.update(b"/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return sorted(full, key=canonical_key)


@st.composite
def cases(draw: Any) -> tuple[list[Entry], dict[bytes, Any], list[Unreadable], list[bytes]]:
    paths = walk_order(draw(st.lists(PATHS, unique=True, max_size=25)))
    if draw(st.integers(0, 4)) == 0:  # a walk out of walk order (a bucket's listing, say)
        paths = draw(st.permutations(paths))
    sources = draw(st.sampled_from([None, [b"src1", b"src2"], [b"x", b"x.y", b"x0"]]))
    if sources is not None:  # several sources: each path under its source's name
        paths = [b"/".join((draw(st.sampled_from(sources)), p)) for p in paths]
        paths = walk_order(list(dict.fromkeys(paths)))
    walk = []
    for p in paths:
        kind = draw(st.sampled_from([FILE, FILE, DIR, SYMLINK]))
        ino = draw(st.integers(1, 6))  # shared inodes: hard-link groups
        nlink = draw(st.integers(1, 3)) if kind == FILE else 1
        walk.append(entry(p, kind, draw(st.integers(0, 2)), draw(st.integers(0, 2)), ino, nlink))
    parent: dict[bytes, Any] = {}
    for e in walk:  # the parent saw most of these, some differently
        if draw(st.booleans()) or draw(st.booleans()):
            same = draw(st.booleans())
            parent[e.path] = sig_of(
                e.kind if same else draw(st.sampled_from([FILE, DIR, "hardlink"])),
                e.size if same else draw(st.integers(0, 2)),
                e.mode, e.mtime_ns, e.ctime_ns, e.ino,
            )  # fmt: skip
    for p in draw(st.lists(PATHS, max_size=10)):  # and paths the walk no longer meets
        parent.setdefault(
            b"gone/" + p if draw(st.booleans()) else p + b"x", sig_of(FILE, 1, 0o644, 1, 1, 9)
        )
    unreadable = [
        Unreadable(p, "Permission denied")
        for p in draw(st.lists(st.sampled_from(sorted(parent) or [b"z"]), max_size=3))
    ]
    dirs = draw(st.lists(st.sampled_from([b"gone", b"a", b"", b"b/c"]), max_size=2, unique=True))
    return walk, parent, unreadable, dirs


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(cases())
def test_streamed_comparison_equals_the_definition(case: Any) -> None:
    walk, parent, unreadable, dirs = case
    want_selected, want_deleted = select_changed(walk, dict(parent), unreadable, dirs)

    consumed = []

    def lazily() -> Any:
        for e in walk:  # the walk reports what it could not read as it goes: after, here
            consumed.append(e)
            yield e

    scanned = ScanResult([], [], [])
    gen = lazily()

    def walk_then_report() -> Any:
        yield from gen
        scanned.unreadable.extend(unreadable)
        scanned.unreadable_dirs.extend(dirs)

    stream = iter(sorted(parent.items(), key=lambda kv: canonical_key(kv[0])))
    selected, deleted = merge_walk(walk_then_report(), stream, scanned)
    assert [e.path for e in selected] == [e.path for e in want_selected]
    assert deleted == want_deleted
    assert next(stream, None) is None  # the parent's tree read to its end
    assert consumed == walk
