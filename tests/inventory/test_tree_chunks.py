"""The tree cache in format tree2 (backup/inventory/tree_codec.py ChunkWriter, Inventory's
tree_stream and cache_tree_stream): a tree written and read back a bounded chunk at a time,
in walk order, on SQLite and PostgreSQL; a chunk damaged, missing, out of order or a header
that does not match is not trusted (the file index is replayed); an older tree1 row is read
still."""

from __future__ import annotations

import importlib
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backup.inventory import Archive, Inventory
from backup.inventory.tree_codec import (
    TREE2_FORMAT,
    ChunkWriter,
    canonical_key,
    check_chunk,
    decode_chunk,
    decode_header2,
)

codec = importlib.import_module("backup.inventory.tree_codec")

T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


def add(inv: Inventory, aid: str, created: datetime, parent: str | None = None) -> None:
    inv.add_archive(
        Archive(
            id=aid,
            policy="p",
            target="file:///v",
            location=f"p/{aid}.tar.zst.age",
            manifest_location=f"p/{aid}.manifest.json.zst.age",
            kind="incremental" if parent else "full",
            parent_id=parent,
            created=created,
            state="complete",
        )
    )


def index(inv: Inventory, aid: str, paths: list[bytes]) -> None:
    inv.add_file_records(
        [
            dict(archive_id=aid, path=p, type="file", size=1, mode=0o644, mtime_ns=5,
                 ctime_ns=6, ino=7, uid=0, gid=0, sha256=None, link=None, offset=0)
            for p in paths
        ]
    )  # fmt: skip


def tree(n: int, seed: int = 1) -> list[tuple[bytes, tuple[str, int, int, int, int, int]]]:
    """``n`` paths in walk order, names with bytes on both sides of '/'."""
    rng = random.Random(seed)
    names = [b"a", b"a.b", b"a-b", b"a0", b"b", b"\x01", b"\xff", b"a b"]
    paths = {b"/".join(rng.choice(names) + b"%d" % rng.randrange(50) for _ in range(3))}
    while len(paths) < n:
        depth = rng.randrange(1, 4)
        paths.add(b"/".join(rng.choice(names) + b"%d" % rng.randrange(50) for _ in range(depth)))
    ordered = sorted(paths, key=canonical_key)
    return [(p, ("file", i, 0o644, i * 3, i * 5, i + 1)) for i, p in enumerate(ordered)]


def store(inv: Inventory, aid: str, items: list[Any]) -> None:
    w = ChunkWriter()
    for p, sig in items:
        w.add(p, *sig)
    assert w.ordered
    header, chunks = w.finish()
    inv.cache_tree_stream(aid, header, chunks)
    w.close()


def chunk_rows(inv: Inventory, aid: str) -> list[tuple[int, bytes]]:
    with inv._cursor() as cur:
        cur.execute(
            f"SELECT seq, blob FROM tree_chunks WHERE archive_id = {inv._mark} ORDER BY seq",
            (aid,),
        )
        return [(int(s), bytes(b)) for s, b in cur.fetchall()]


def test_canonical_key_orders_as_the_walk() -> None:
    # depth first, names bytewise, a directory before what it holds: "a/b" before "a.b"
    # ('.' < '/' bytewise), and "a" before both
    walk = [b"a", b"a/b", b"a/b/c", b"a/c", b"a b", b"a.b", b"a0", b"b"]
    assert sorted(walk) != walk
    assert sorted(walk, key=canonical_key) == walk


def test_chunks_round_trip(inventory: Inventory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "CHUNK_PATHS", 100)  # several chunks from a small tree
    add(inventory, "a1", T0)
    items = tree(1050)
    store(inventory, "a1", items)
    rows = chunk_rows(inventory, "a1")
    assert [s for s, _ in rows] == list(range(11))  # 10 of 100 paths and the last 50
    assert list(inventory.tree_stream("a1")) == items
    assert inventory.tree_state("a1") == dict(items)
    # the file index is not what was read: it is empty
    assert inventory.replay_tree("a1") == {}


def test_chunks_are_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "CHUNK_BYTES", 1000)
    w = ChunkWriter()
    for i in range(100):
        w.add(b"d/%03d-" % i + b"x" * 95, "file", i, 0o644, 1, 2, 3)
    header, chunks = w.finish()
    blobs = list(chunks)
    assert decode_header2(TREE2_FORMAT, header) == (len(blobs), 100)
    assert len(blobs) == 10  # ten paths of 100 bytes a chunk
    last = None
    for b in blobs:
        got = decode_chunk(b, last)
        assert got is not None and len(got) == 10
        last = canonical_key(got[-1][0])
    w.close()


def test_a_writer_out_of_walk_order_says_so() -> None:
    w = ChunkWriter()
    for p in (b"a", b"a.b", b"a/b"):  # bytewise, not the walk's order
        w.add(p, "file", 1, 2, 3, 4, 5)
    assert not w.ordered
    w.close()


@pytest.mark.parametrize(
    "damage",
    ["truncated", "bit flipped", "missing", "swapped", "header count", "extra", "repeated"],
)
def test_a_damaged_chunk_is_not_trusted(
    inventory: Inventory, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    monkeypatch.setattr(codec, "CHUNK_PATHS", 100)
    add(inventory, "a1", T0)
    index(inventory, "a1", [b"x", b"y"])
    items = tree(350)
    store(inventory, "a1", items)
    mark = inventory._mark
    rows = chunk_rows(inventory, "a1")
    with inventory._cursor(write=True) as cur:
        update = f"UPDATE tree_chunks SET blob = {mark} WHERE archive_id = 'a1' AND seq = {mark}"
        if damage == "truncated":
            cur.execute(update, (rows[1][1][:-7], 1))
        elif damage == "bit flipped":
            blob = bytearray(rows[2][1])
            blob[len(blob) // 2] ^= 0x10
            cur.execute(update, (bytes(blob), 2))
        elif damage == "missing":
            cur.execute("DELETE FROM tree_chunks WHERE archive_id = 'a1' AND seq = 3")
        elif damage == "swapped":  # each chunk sound, the stream out of order
            cur.execute(update, (rows[0][1], 1))
            cur.execute(update, (rows[1][1], 0))
        elif damage == "header count":
            cur.execute(
                f"UPDATE tree_cache SET blob = {mark} WHERE archive_id = 'a1'",
                (codec.encode_header2(4, 351),),
            )
        elif damage == "extra":  # a chunk the header does not count is never read
            cur.execute(
                f"UPDATE tree_cache SET blob = {mark} WHERE archive_id = 'a1'",
                (codec.encode_header2(3, 300),),
            )
        elif damage == "repeated":  # a sound chunk twice: its paths repeat
            cur.execute(update, (rows[2][1], 3))
    want = {b"x": ("file", 1, 0o644, 5, 6, 7), b"y": ("file", 1, 0o644, 5, 6, 7)}
    if damage == "extra":
        # the first 300 paths, as declared, are a tree this writer could have made
        assert list(inventory.tree_stream("a1")) == items[:300]
        return
    assert dict(inventory.tree_stream("a1")) == want  # the file index, replayed
    assert list(inventory.tree_stream("a1")) == sorted(want.items())
    assert inventory.tree_state("a1") == want


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.binary(max_size=300), st.one_of(st.none(), st.binary(max_size=5)))
def test_decode_chunk_never_raises(blob: bytes, after: bytes | None) -> None:
    got = decode_chunk(blob, after)
    assert got is None or isinstance(got, list)


def _chunks_of(items: list[Any]) -> list[bytes]:
    w = ChunkWriter()
    for p, sig in items:
        w.add(p, *sig)
    _header, chunks = w.finish()
    got = list(chunks)
    w.close()
    return got


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from(["flip", "cut", "none"]))
def test_the_check_pass_accepts_exactly_what_decoding_accepts(at: int, bit: int, how: str) -> None:
    # check_chunk (the cheap pass that decides whether a cache is trusted) and decode_chunk
    # (the stream read after it) must agree on every blob, damaged or not, or a chunk the
    # check passed could fail mid-merge
    first, second = _chunks_of(tree(300, seed=5)[:150]), _chunks_of(tree(300, seed=5)[150:])
    blob = first[0]
    if how == "flip":
        b = bytearray(blob)
        b[at % len(b)] ^= 1 << (bit % 8)
        blob = bytes(b)
    elif how == "cut":
        blob = blob[: at % len(blob)]
    for after in (None, canonical_key(b"a"), canonical_key(b"\xff" * 9)):
        items = decode_chunk(blob, after)
        checked = check_chunk(blob, after)
        if items is None:
            assert checked is None
        else:
            assert checked == (len(items), canonical_key(items[-1][0]))
    last = canonical_key(tree(300, seed=5)[149][0])
    assert check_chunk(second[0], last) == (150, canonical_key(tree(300, seed=5)[-1][0]))
    assert check_chunk(first[0], last) is None  # out of order after the previous chunk


def test_an_old_tree1_row_is_still_read_in_walk_order(inventory: Inventory) -> None:
    add(inventory, "a1", T0)
    index(inventory, "a1", [b"from-the-index"])
    state = dict(tree(300, seed=2))
    state.update({p: ("dir", 0, 0o755, 1, 2, 3) for p in (b"q", b"q/r", b"q.s")})
    inventory.cache_tree("a1", dict(sorted(state.items())))  # a tree1 row, bytewise order
    got = list(inventory.tree_stream("a1"))
    assert got == sorted(state.items(), key=lambda kv: canonical_key(kv[0]))
    assert [k for k, _ in got] != sorted(state)  # the order is the walk's, not bytewise


def test_older_trees_and_their_chunks_are_dropped(
    inventory: Inventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(codec, "CHUNK_PATHS", 100)
    add(inventory, "a1", T0)
    store(inventory, "a1", tree(250))
    add(inventory, "a2", T0 + timedelta(days=1), parent="a1")
    assert inventory.copy_tree_cache("a2", "a1")  # nothing changed: copied
    assert len(chunk_rows(inventory, "a2")) == 3
    assert list(inventory.tree_stream("a2")) == tree(250)
    assert chunk_rows(inventory, "a1") == []  # a1's cache went with a2's
    add(inventory, "a3", T0 + timedelta(days=2), parent="a2")
    store(inventory, "a3", tree(120, seed=3))
    assert chunk_rows(inventory, "a2") == [] and len(chunk_rows(inventory, "a3")) == 2
    assert not inventory.copy_tree_cache("a4", "a1")  # nothing to copy
