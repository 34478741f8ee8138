"""ManifestReader: a manifest read as a stream gives exactly what decode_manifest gives
(fields, and the slim entries in order), for every layout a writer produced and for any
path bytes, however the text falls into pieces; a damaged manifest is ArchiveCorrupt."""

from __future__ import annotations

import io
import json
import os
import random

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from backup.archive import manifest as mf
from backup.archive.manifest import (
    ManifestReader,
    ManifestWriter,
    decode_manifest,
    encode_manifest,
    path_to_json,
)
from backup.archive.pack import Record
from backup.errors import ArchiveCorrupt

# bytes that are JSON's business (quotes, backslashes, braces, the batch boundary itself),
# not UTF-8 at all, and multi-byte UTF-8
_ODD = [b'"', b"\\", b"},{", b'},{"', b"]", b"\xff", b"\xc3\xa9", b"\xe2\x82", b" ", b"\n"]
paths = st.lists(
    st.one_of(st.sampled_from(_ODD), st.binary(min_size=1, max_size=6)), min_size=1, max_size=6
).map(lambda parts: b"".join(parts).replace(b"/", b"_").replace(b"\x00", b"0") or b"x")


def _record(i: int, path: bytes, kind: int) -> Record:
    r = Record(path, ("file", "dir", "symlink", "hardlink")[kind], 0o644, i, i, i, 0, 0, i * 512)
    if kind == 0:
        r.size, r.sha256 = i, f"{i:064x}"
    elif kind in (2, 3):
        r.link = path[::-1]
    return r


def _fields(n: int) -> dict[str, object]:
    return {
        "format": 1,
        "archive_id": "a1",
        "size_in": 10**12 + n,  # a long number, to be cut by a piece's end
        "deleted": [path_to_json(b"gone \xff"), 'x},{"y'],
        "unreadable": [{"path": "u", "error": "e"}, {"path": "v", "error": "f"}],
    }


def _layouts(recs: list[Record]) -> dict[str, bytes]:
    fields = _fields(len(recs))
    w = ManifestWriter(spool_in_memory=128, index_chunk_entries=7)
    for r in recs:
        w.add(r)
    dicts = [json.loads(r.to_json()) for r in recs]
    # the first writer: one json.dumps of a dict whose entries came before deleted et al.
    first = {k: fields[k] for k in ("format", "archive_id", "size_in")}
    first["entries"] = dicts
    first |= {k: fields[k] for k in ("deleted", "unreadable")}
    raw = json.dumps(first, ensure_ascii=True, separators=(",", ":")).encode()
    return {
        "encode_manifest": encode_manifest(fields, recs),
        "writer": w.finish(fields),
        "first writer": zstandard.ZstdCompressor().compress(raw),
        "spaced": zstandard.ZstdCompressor().compress(json.dumps(first, indent=1).encode()),
    }


def _read(blob: bytes) -> tuple[dict[str, object], list[dict[str, object]]]:
    with ManifestReader(io.BytesIO(blob), "a1") as m:
        entries = list(m.entries())
        assert list(m.entries()) == entries  # a second pass reads the same
        return m.fields, entries


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(paths, st.integers(0, 3)), max_size=40),
    st.sampled_from([1, 2, 3, 7, 64, 1 << 20]),
)
def test_reads_what_decode_manifest_reads(items: list[tuple[bytes, int]], piece: int) -> None:
    recs = [_record(i, p, k) for i, (p, k) in enumerate(items)]
    mp = pytest.MonkeyPatch()
    mp.setattr(mf, "_READ_TEXT", piece)
    try:
        for layout, blob in _layouts(recs).items():
            whole = decode_manifest(blob, "a1", slim=True)
            fields, entries = _read(blob)
            assert entries == whole.pop("entries"), layout
            assert fields == whole, layout
            assert [os.fsencode(e["path"]) for e in entries] == [r.path for r in recs]
    finally:
        mp.undo()


def test_many_entries_in_batches_in_order() -> None:
    rng = random.Random(5)
    recs = [
        _record(i, os.urandom(rng.randrange(1, 20)).replace(b"/", b"_"), i % 4)
        for i in range(30_000)
    ]
    for layout, blob in _layouts(recs).items():
        fields, entries = _read(blob)
        assert [os.fsencode(e["path"]) for e in entries] == [r.path for r in recs], layout
        assert fields["size_in"] == 10**12 + 30_000 and fields["deleted"][1] == 'x},{"y'


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"[]",
        b'{"format":2,"deleted":[],"entries":[]}',
        b'{"format":1,"deleted":[],"entries":[{"path":"a"},{"nopath":1}]}',
        b'{"format":1,"deleted":[],"entries":[{"path":"a"},{"path":"b"}',
        b'{"format":1,"deleted":[],"entries":[{"path":"a"} {"path":"b"}]}',
        b'{"format":1,"deleted":[],"entries":[1,2]}',
        b'{"format":1,"deleted":[]}',
        b'{"format":1,"entries":[{"path":"a"},{"path":"b"}',
        b'{"format":1 "deleted":[]}',
        b'{"format":1,"deleted":["\xff"],"entries":[]}',
    ],
)
def test_damage_is_archive_corrupt(text: bytes) -> None:
    blob = zstandard.ZstdCompressor().compress(text)
    with pytest.raises(ArchiveCorrupt, match="a1"), ManifestReader(io.BytesIO(blob), "a1") as m:
        list(m.entries())


def test_not_zstd_is_archive_corrupt() -> None:
    with pytest.raises(ArchiveCorrupt, match="manifest unreadable"):
        ManifestReader(io.BytesIO(b"not zstd at all"), "a1").fields  # noqa: B018


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_damage_is_archive_corrupt_or_a_valid_read(data: st.DataObject) -> None:
    recs = [_record(i, f"p{i}".encode(), i % 4) for i in range(30)]
    text = (
        zstandard.ZstdDecompressor().decompressobj().decompress(_layouts(recs)["encode_manifest"])
    )
    at = data.draw(st.integers(0, len(text) - 1))
    cut = data.draw(st.booleans())
    bad = (
        text[:at]
        if cut
        else text[:at] + data.draw(st.binary(min_size=1, max_size=3)) + text[at + 1 :]
    )
    blob = zstandard.ZstdCompressor().compress(bad)
    try:
        fields, entries = _read(blob)
    except ArchiveCorrupt:
        return
    # what reads at all reads as json.loads reads it
    whole = json.loads(bad, object_hook=mf._slim)
    assert entries == whole.pop("entries") and fields == whole
