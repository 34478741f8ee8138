"""The packed file index (backup/inventory/packed.py): an archive's manifest read as rows."""

from __future__ import annotations

import pytest
import zstandard

from backup.archive.manifest import encode_manifest
from backup.archive.pack import Record
from backup.errors import FileIndexCorrupt
from backup.inventory import FILE_INDEX_COLUMNS
from backup.inventory.packed import FORMAT, rows_from_manifest

HEAD = {"format": 1, "archive_id": "a1", "kind": "incremental"}


def record(path: bytes, typ: str, **fields: object) -> Record:
    r = Record(path, typ, 0o640, -5, 1_700_000_000_123_456_789, 2**63 - 1, 1000, 2**32 - 1, 512)
    r.update(**fields)
    return r


def test_every_entry_and_deletion_becomes_its_row() -> None:
    odd = b'caf\xe9/\xff\xfe "quoted"\n\\'
    entries = [
        record(b"d", "dir"),
        record(odd, "file", size=7, sha256="ab" * 32, data_offset=1024),
        record(b"d/empty", "file", size=0, sha256="cd" * 32),
        record(b"d/link", "symlink", link=b"../\xff-target"),
        record(b"d/hard", "hardlink", link=odd, file_size=7),
        record(b"dev", "chr", devmajor=1, devminor=3),
    ]
    blob = encode_manifest(
        {**HEAD, "deleted": ["gone", odd.decode("utf-8", "surrogateescape")]}, entries
    )
    rows = rows_from_manifest("a1", blob, FORMAT)
    assert len(FILE_INDEX_COLUMNS) == len(rows[0])
    by_path = {r[1]: dict(zip(FILE_INDEX_COLUMNS, r, strict=True)) for r in rows[:6]}
    common = dict(
        archive_id="a1", mode=0o640, mtime_ns=-5, ctime_ns=1_700_000_000_123_456_789,
        ino=2**63 - 1, uid=1000, gid=2**32 - 1, offset=512,
    )  # fmt: skip
    assert by_path[b"d"] == dict(common, path=b"d", type="dir", size=0, sha256=None, link=None)
    assert by_path[odd] == dict(common, path=odd, type="file", size=7, sha256="ab" * 32, link=None)
    assert by_path[b"d/link"]["link"] == b"../\xff-target"
    # a hard link's row carries its file's size (what the next incremental compares)
    assert by_path[b"d/hard"] == dict(
        common, path=b"d/hard", type="hardlink", size=7, sha256=None, link=odd
    )
    assert by_path[b"dev"]["type"] == "chr"
    zeros = ("deleted", 0, 0, 0, 0, 0, 0, 0, None, None, 0)
    assert rows[6:] == [("a1", b"gone", *zeros), ("a1", odd, *zeros)]


def test_damage_is_named() -> None:
    blob = encode_manifest({**HEAD, "deleted": []}, [record(b"x%d" % i, "dir") for i in range(500)])
    with pytest.raises(FileIndexCorrupt, match="a1 cannot be read: unknown format 'x'"):
        rows_from_manifest("a1", blob, "x")
    flipped = bytearray(blob)
    flipped[len(flipped) // 2] ^= 0x40
    with pytest.raises(FileIndexCorrupt, match="a1 cannot be read: manifest unreadable"):
        rows_from_manifest("a1", bytes(flipped), FORMAT)
    with pytest.raises(FileIndexCorrupt, match="manifest unreadable"):
        rows_from_manifest("a1", blob[: len(blob) // 2], FORMAT)
    lacking = zstandard.ZstdCompressor().compress(b'{"format":1,"entries":[{"path":"x"}]}')
    with pytest.raises(FileIndexCorrupt, match="an entry lacks 'type'"):
        rows_from_manifest("a1", lacking, FORMAT)
    not_entries = zstandard.ZstdCompressor().compress(b'{"format":1,"entries":[1],"deleted":[]}')
    with pytest.raises(FileIndexCorrupt, match="not a manifest's layout"):
        rows_from_manifest("a1", not_entries, FORMAT)
