"""A manifest streamed (``ManifestWriter.stream``) through age: the same document, read by
the real ``age`` and ``zstd`` programs, as the whole-in-memory encoding; and its file index
chunks, which together hold every entry and deleted path."""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path

import pytest
import zstandard

from backup.archive.manifest import (
    ManifestWriter,
    decode_index_chunk,
    decode_manifest,
    encode_manifest,
)
from backup.archive.pack import Record
from backup.crypto.age import AgeWriter, parse_recipient
from tests.conftest import Key, require_tools
from tests.test_interop import q, sh


def records(n: int, seed: int) -> list[Record]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        path = os.urandom(rng.randrange(1, 30)).replace(b"/", b"_")  # any bytes, UTF-8 or not
        r = Record(path, "file", 0o644, i, i + 1, i, 0, 0, i * 512)
        r.sha256 = f"{rng.getrandbits(256):064x}"
        out.append(r)
    return out


@pytest.mark.parametrize(
    ("n", "spool", "per"), [(0, 8 << 20, 10_000), (7, 64, 3), (25_003, 64, 10_000)]
)
def test_streamed_manifest_reads_with_age_and_zstd(
    tmp_path: Path, key: Key, n: int, spool: int, per: int
) -> None:
    require_tools("age", "zstd")
    head = {"format": 1, "archive_id": "x", "deleted": ["gone\udcff"], "size_in": n}
    entries = records(n, n)
    w = ManifestWriter(spool_in_memory=spool, index_chunk_entries=per)  # 64: on disk at once
    for r in entries:
        w.add(r)
    chunks: list[tuple[int, bytes]] = []
    path = tmp_path / "m.manifest.json.zst.age"
    with path.open("wb") as f, AgeWriter(f, [parse_recipient(key.recipient)]) as aw:
        w.stream(head, aw.write, on_chunk=lambda seq, blob: chunks.append((seq, blob)))
    # the real programs give back exactly the JSON the whole-in-memory encoding holds
    got = sh(f"age -d -i {q(key.path)} {q(path)} | zstd -d -q -c").stdout
    want = zstandard.ZstdDecompressor().decompressobj().decompress(encode_manifest(head, entries))
    assert got == want
    m = json.loads(got)
    assert [os.fsencode(e["path"]) for e in m["entries"]] == [r.path for r in entries]
    # the chunks: seq 0 the fields, then every entry once, in order, ``per`` to a chunk
    assert [s for s, _ in chunks] == list(range(1 + -(-n // per)))
    fields = decode_index_chunk(chunks[0][1], "x")
    assert fields == {k: v for k, v in m.items() if k != "entries"}
    assert decode_manifest(chunks[0][1], "x")["deleted"] == ["gone\udcff"]
    parts = [decode_index_chunk(b, "x")["entries"] for _, b in chunks[1:]]
    assert all(len(p) == per for p in parts[:-1])
    assert [e for p in parts for e in p] == m["entries"]


def test_finish_is_stream_whole() -> None:
    entries = records(2500, 1)
    w = ManifestWriter(spool_in_memory=64)
    for r in entries:
        w.add(r)
    got = w.finish({"format": 1, "deleted": []})
    out = io.BytesIO()
    w2 = ManifestWriter()
    for r in entries:
        w2.add(r)
    w2.stream({"format": 1, "deleted": []}, out.write)
    d = zstandard.ZstdDecompressor()
    assert d.decompressobj().decompress(got) == d.decompressobj().decompress(out.getvalue())
    assert zstandard.get_frame_parameters(out.getvalue()).has_checksum
