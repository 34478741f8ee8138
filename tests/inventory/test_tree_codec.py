"""The tree cache's encoding (backup/inventory/tree_codec.py): every tree round-trips, and no
bytes -- damaged, hostile, or an earlier ``marshal`` row -- make the decoder do anything but
return a tree this encoder could have written or None ("no cache": the index is replayed)."""

from __future__ import annotations

import importlib
import marshal
import struct
import sys
from datetime import UTC, datetime
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backup.inventory import Archive, Inventory, encode_tree
from backup.inventory.tree_codec import TREE_FORMAT, decode_tree

codec = importlib.import_module("backup.inventory.tree_codec")

PROPS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
KINDS = ["file", "dir", "symlink", "fifo", "chr", "blk"]
I64 = st.integers(-(2**63), 2**63 - 1)
ANY_INT = st.one_of(I64, st.integers(2**63, 2**64 - 1), st.integers(-(2**90), 2**90))
PATHS = st.one_of(
    st.binary(min_size=1, max_size=40).filter(lambda p: b"\0" not in p),
    st.binary(max_size=40),  # a NUL, or empty: no file system names one, but a dict can
)


def trees(*, common: bool) -> st.SearchStrategy[dict[bytes, tuple[Any, ...]]]:
    ints = I64 if common else ANY_INT
    kinds = (
        st.sampled_from(KINDS)
        if common
        else st.sampled_from(KINDS)
        | st.text(st.characters(min_codepoint=1, max_codepoint=127), min_size=1, max_size=9)
    )
    paths = PATHS.filter(lambda p: b"\0" not in p) if common else PATHS
    sig = st.tuples(kinds, ints, ints, ints, ints, ints)
    return st.dictionaries(paths, sig, max_size=30)


def valid(state: Any) -> bool:
    """A tree as this code uses it: bytes paths to (str, int x 5)."""
    return isinstance(state, dict) and all(
        isinstance(k, bytes)
        and isinstance(v, tuple)
        and len(v) == 6
        and isinstance(v[0], str)
        and all(type(x) is int for x in v[1:])
        for k, v in state.items()
    )


def frame(payload: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=1, write_checksum=True).compress(payload)


def payload_of(blob: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(blob)


@PROPS
@given(state=trees(common=False))
def test_every_tree_round_trips(state: dict[bytes, tuple[Any, ...]]) -> None:
    blob = encode_tree(state)
    assert decode_tree(TREE_FORMAT, blob) == state
    assert decode_tree(TREE_FORMAT, frame(codec._payload(state))) == state  # the Python path


@PROPS
@given(state=trees(common=True))
def test_c_encoder_writes_the_python_encoders_bytes(state: dict[bytes, tuple[Any, ...]]) -> None:
    c = codec._c_payload
    if c is None:
        pytest.skip("the C parts are not built (BACKUP_PURE_PYTHON)")
    assert c(state) == codec._payload(state)


@PROPS
@given(state=trees(common=False))
def test_c_encoder_equals_python_or_defers(state: dict[bytes, tuple[Any, ...]]) -> None:
    c = codec._c_payload
    if c is None:
        pytest.skip("the C parts are not built (BACKUP_PURE_PYTHON)")
    fast = c(state)
    assert fast is None or fast == codec._payload(state)


def test_c_encoder_defers_outside_its_case() -> None:
    c = codec._c_payload
    if c is None:
        pytest.skip("the C parts are not built (BACKUP_PURE_PYTHON)")
    sig = ("file", 1, 2, 3, 4, 5)
    for state in [
        {b"a\0b": sig},
        {b"a": ("file", 2**63, 2, 3, 4, 5)},
        {b"a": ("é", 1, 2, 3, 4, 5)},
        {b"a": ("", 1, 2, 3, 4, 5)},
        {b"a": ("file", 1, 2, 3, 4)},
        {b"a": ["file", 1, 2, 3, 4, 5]},
        {b"a": ("file", True, 2, 3, 4, 5)},
        {"a": sig},
        {b"k%d" % i: (f"t{i}", 1, 2, 3, 4, 5) for i in range(256)},  # 256 type names
    ]:
        assert c(state) is None, state
    for state in [{}, {b"k%d" % i: (f"t{i}", 1, 2, 3, 4, 5) for i in range(255)}]:
        assert c(state) == codec._payload(state)


def test_unusual_trees_round_trip() -> None:
    for state in [
        {},
        {b"": ("file", 0, 0, 0, 0, 0)},
        {b"a\0b": ("file", 1, 2, 3, 4, 5), b"c": ("dir", 0, 0, 0, 0, 0)},
        {b"x": ("file", 2**64 - 1, 0, -(2**63), 2**70, -(2**70))},
        {bytes([i]) + b"p": (f"t{i}", i, 0, 0, 0, 0) for i in range(255)},
    ]:
        assert decode_tree(TREE_FORMAT, encode_tree(state)) == state
    with pytest.raises(ValueError):
        encode_tree({bytes([i]): (f"t{i}", 0, 0, 0, 0, 0) for i in range(256)})
    with pytest.raises(ValueError):
        encode_tree({b"a": ("é", 0, 0, 0, 0, 0)})


@PROPS
@given(blob=st.binary(max_size=300))
def test_hostile_blobs_are_ignored(blob: bytes) -> None:
    assert decode_tree(TREE_FORMAT, blob) is None  # not even a zstd frame


@PROPS
@given(payload=st.binary(max_size=300))
def test_hostile_payloads_are_ignored_or_read_as_a_tree(payload: bytes) -> None:
    got = decode_tree(TREE_FORMAT, frame(codec._MAGIC + payload))
    assert got is None or valid(got)


@PROPS
@given(
    state=trees(common=False),
    at=st.integers(0, 10**6),
    junk=st.binary(min_size=1, max_size=9),
    cut=st.booleans(),
)
def test_altered_payloads_are_ignored_or_read_as_a_tree(
    state: dict[bytes, tuple[Any, ...]], at: int, junk: bytes, cut: bool
) -> None:
    payload = bytearray(codec._payload(state))
    i = at % len(payload)
    if cut:
        del payload[i:]
    else:
        payload[i : i + len(junk)] = junk
    got = decode_tree(TREE_FORMAT, frame(bytes(payload)))
    assert got is None or valid(got)
    if cut:
        assert got is None


def test_lies_in_the_header_are_ignored() -> None:
    good = codec._payload({b"a": ("file", 1, 2, 3, 4, 5), b"b": ("dir", 0, 0, 0, 0, 0)})
    n_at = len(codec._MAGIC)
    for n in (0, 1, 3, 2**64 - 1):
        bad = good[:n_at] + struct.pack("<Q", n) + good[n_at + 8 :]
        assert decode_tree(TREE_FORMAT, frame(bad)) is None, n
    # a repeated path: two paths "a" where the encoder never writes one twice
    twice = good.replace(b"a\0b", b"a\0a")
    assert decode_tree(TREE_FORMAT, frame(twice)) is None
    # trailing bytes after the last column
    assert decode_tree(TREE_FORMAT, frame(good + b"\0")) is None
    # a type code beyond the table
    codes_at = good.index(b"a\0b") + 3
    bad_code = good[:codes_at] + b"\x07" + good[codes_at + 1 :]
    assert decode_tree(TREE_FORMAT, frame(bad_code)) is None
    assert decode_tree(TREE_FORMAT, frame(good)) is not None


def test_a_frame_claiming_a_huge_content_is_not_decompressed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[int] = []
    real = zstandard.ZstdDecompressor

    def spy(*args: Any, **kwargs: Any) -> Any:
        made.append(1)
        return real(*args, **kwargs)

    big = zstandard.ZstdCompressor(level=3).compress(b"\0" * (64 << 20))
    assert zstandard.frame_content_size(big) == 64 << 20 and len(big) < 64 << 10
    monkeypatch.setattr(zstandard, "ZstdDecompressor", spy)
    assert decode_tree(TREE_FORMAT, big) is None  # over 1000x its size: never decompressed
    assert made == []
    # a frame that does not say its size is not decompressed either
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(b"x")
    assert decode_tree(TREE_FORMAT, unsized) is None
    assert made == []


def test_other_formats_are_ignored_and_marshal_is_never_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = {b"a": ("file", 1, 2, 3, 4, 5)}
    old = frame(marshal.dumps(state))
    version = f"marshal-zstd-py{sys.version_info[0]}.{sys.version_info[1]}"

    def refuse(*args: Any) -> Any:
        raise AssertionError("marshal.loads called on a tree cache")

    monkeypatch.setattr(marshal, "loads", refuse)
    assert decode_tree(version, old) is None
    assert decode_tree(TREE_FORMAT, old) is None  # marshal bytes under the new name: garbage
    assert decode_tree("tree2-zstd", encode_tree(state)) is None


def test_an_old_marshal_row_is_replayed_from_the_index(
    inventory: Inventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    inventory.add_archive(
        Archive(
            id="a1",
            policy="p",
            target="file:///v",
            location="p/a1.tar.zst.age",
            manifest_location="p/a1.manifest.json.zst.age",
            kind="full",
            parent_id=None,
            created=datetime(2026, 11, 1, tzinfo=UTC),
            state="complete",
        )
    )
    inventory.add_file_records(
        [
            dict(archive_id="a1", path=b"x", type="file", size=1, mode=0o644, mtime_ns=5,
                 ctime_ns=6, ino=7, uid=0, gid=0, sha256=None, link=None, offset=0)
        ]
    )  # fmt: skip
    planted = {b"planted": ("file", 1, 2, 3, 4, 5)}
    with inventory._cursor(write=True) as cur:
        mark = inventory._mark
        cur.execute(
            f"INSERT INTO tree_cache (archive_id, format, blob) VALUES ({mark}, {mark}, {mark})",
            ("a1", "marshal-zstd-py3.11", frame(marshal.dumps(planted))),
        )
    monkeypatch.setattr(marshal, "loads", lambda *a: pytest.fail("marshal.loads called"))
    assert inventory.tree_state("a1") == {b"x": ("file", 1, 0o644, 5, 6, 7)}
    # and a row of this format is read from the cache
    with inventory._cursor(write=True) as cur:
        cur.execute("DELETE FROM tree_cache")
    inventory.cache_tree("a1", planted)
    assert inventory.tree_state("a1") == planted


@PROPS
@given(trees(common=False))
def test_builder_encodes_what_encode_tree_does(state: dict[bytes, tuple[Any, ...]]) -> None:
    # a full backup builds its tree a path at a time, as columns; the row must be the one the
    # dict would have made (any ints, NULs in paths, any type names), and decode to the dict
    b = codec.TreeBuilder()
    for path, sig in state.items():
        b.add(path, *sig)
    assert len(b) == len(state)
    assert b.encode() == encode_tree(state)
    assert decode_tree(TREE_FORMAT, b.encode()) == state


def test_builder_keeps_columns_exact_across_a_late_overflow() -> None:
    # int64 columns until a number needs more; what came before stays exact
    b = codec.TreeBuilder()
    state = {b"a": ("file", 1, 0o644, 5, 6, 7), b"b": ("file", 2, 0o600, 2**64 + 3, 6, 8)}
    state[b"c"] = ("dir", 0, 0o755, -1, -(2**70), 9)
    for path, sig in state.items():
        b.add(path, *sig)
    assert decode_tree(TREE_FORMAT, b.encode()) == state
