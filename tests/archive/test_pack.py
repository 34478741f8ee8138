"""Tests of backup.archive.pack's records: the manifest entry encoder in C against its Python
definition (the packing itself is tested end to end in tests/test_engine.py and
tests/test_interop.py)."""

from __future__ import annotations

import importlib
import json
import os
import random
from typing import Any

import pytest

from backup.archive.pack import Record
from tests.conftest import require_built

# the module (backup.archive's `pack` is the function)
pack_mod = importlib.import_module("backup.archive.pack")

ODD_PATHS = [
    b"plain/name.txt",
    b'quote"d',
    b"back\\slash",
    b"new\nline\ttab\x01\x1f\x7f",
    b"caf\xc3\xa9/\xe6\x97\xa5\xe6\x9c\xac",
    b"emoji \xf0\x9f\x98\x80",
    b"not utf-8 \xff\xfe\x80",
    b"half \xe6\x97",
    b"x" * 4000,
    b"",
]


def random_record(rng: random.Random) -> Record:
    path = rng.choice(ODD_PATHS) if rng.random() < 0.5 else rng.randbytes(rng.randint(1, 300))
    r = Record(
        path,
        rng.choice(["file", "dir", "symlink", "hardlink", "fifo", "chr", "blk"]),
        rng.randrange(0o10000),
        rng.choice([0, -1, -(10**18), 2**63 - 1, rng.randrange(-(2**63), 2**63)]),
        rng.randrange(2**63),
        rng.choice([0, 2**63 - 1, rng.randrange(2**40)]),
        rng.randrange(2**32),
        rng.randrange(2**32),
        rng.randrange(2**50),
    )
    r.size = rng.choice([0, 1, rng.randrange(2**40)])
    if rng.random() < 0.5:
        r.data_offset = rng.randrange(2**50)
        r.sha256 = rng.randbytes(32).hex()
    if rng.random() < 0.3:
        r.link = rng.choice(ODD_PATHS) or b"t"
    if rng.random() < 0.2:
        r.file_size = rng.randrange(2**40)
    if rng.random() < 0.1:
        r.devmajor, r.devminor = rng.randrange(4096), rng.randrange(2**20)
    return r


@pytest.fixture
def c_entry_json() -> Any:
    return require_built(pack_mod._c_entry_json, "Record.to_json")


def test_c_entry_json_matches_python(c_entry_json: Any) -> None:
    rng = random.Random(5)
    for _ in range(20000):
        r = random_record(rng)
        fast = c_entry_json(r)
        assert fast is not None, r  # every record here is in the C encoder's case
        assert fast == r._to_json(), r


def test_entries_are_json_of_the_fields_that_are_set() -> None:
    rng = random.Random(6)
    for _ in range(2000):
        r = random_record(rng)
        want = {k: v for k, v in r.as_dict().items()}
        want["path"] = os.fsdecode(want["path"])
        if "link" in want:
            want["link"] = os.fsdecode(want["link"])
        assert json.loads(r.to_json()) == want
        # key order is the slot order
        assert list(json.loads(r.to_json())) == list(want)


def test_c_entry_json_defers_outside_the_common_case(c_entry_json: Any) -> None:
    r = Record(b"a", "file", 0o644, 0, 0, 0, 0, 0, 0)
    r.size = 2**64  # beyond 64 bits: Python writes it
    assert c_entry_json(r) is None
    assert json.loads(r.to_json())["size"] == 2**64
    r.size = 1
    r.sha256 = "é"  # not ASCII: not a digest this code writes, but encoded as Python would
    assert c_entry_json(r) is None
    assert r.to_json() == r._to_json()


def test_record_reads_like_a_dict() -> None:
    r = Record(b"p", "file", 0o600, 1, 2, 3, 4, 5, 6)
    assert "sha256" not in r and r.get("sha256", "none") == "none"
    with pytest.raises(KeyError):
        r["link"]
    r["sha256"] = "ab"
    assert "sha256" in r and r["sha256"] == "ab" and r.get("sha256") == "ab"
    assert r.as_dict() == {
        "path": b"p", "type": "file", "size": 0, "mode": 0o600, "mtime_ns": 1, "ctime_ns": 2,
        "ino": 3, "uid": 4, "gid": 5, "offset": 6, "sha256": "ab",
    }  # fmt: skip


def test_manifest_writer_streams_what_encode_manifest_encodes(tmp_path: Any) -> None:
    import zstandard
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from backup.archive.manifest import ManifestWriter, decode_manifest, encode_manifest

    def records(n: int, seed: int) -> list[Record]:
        rng = random.Random(seed)
        out = []
        for i in range(n):
            r = Record(os.urandom(rng.randrange(1, 30)), "file", 0o644, i, i + 1, i, 0, 0, i * 512)
            r.sha256 = f"{rng.getrandbits(256):064x}"
            out.append(r)
        return out

    @settings(max_examples=25, deadline=None, derandomize=True, database=None)
    @given(st.integers(0, 2500), st.integers(0, 10), st.sampled_from([64, 8 << 20]))
    def check(n: int, seed: int, spool: int) -> None:
        head = {"format": 1, "archive_id": "x", "deleted": ["d\udcff"], "size_in": n}
        entries = records(n, seed)
        w = ManifestWriter(spool_in_memory=spool)  # 64: spilled to disk from the first batch
        for r in entries:
            w.add(r)
        w.add({"path": "dict", "type": "dir", "size": 0})
        got = w.finish(head)
        want = encode_manifest(head, [*entries, {"path": "dict", "type": "dir", "size": 0}])
        d = zstandard.ZstdDecompressor()
        # the same JSON, byte for byte, in one frame with its checksum: every reader reads it
        assert d.decompressobj().decompress(got) == d.decompressobj().decompress(want)
        assert zstandard.get_frame_parameters(got).has_checksum
        m = decode_manifest(got, "x")
        assert [e["path"] for e in m["entries"][:-1]] == [os.fsdecode(r.path) for r in entries]
        assert m["size_in"] == n and w.count == n + 1

    check()


def _read_ahead_counted(entries: list[Any], hints: Any = None) -> Any:
    """read_ahead over ``entries``: each entry it gives out, whether it is a probe, and how
    many entries it had taken."""
    taken = 0

    def counted() -> Any:
        nonlocal taken
        for e in entries:
            taken += 1
            yield e

    for e, probe in pack_mod.read_ahead(counted(), hints or pack_mod.Hints()):
        yield e, probe, taken


def test_read_ahead_asks_for_files_ahead_within_its_bounds(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the packer asks the kernel for files ahead of the one it packs (a cold cache's small
    # files then arrive with many reads in flight), in order, never further than its bounds
    from backup.archive.scan import ScanResult, scan_iter

    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    sizes = [0, 1, 5000, 3 << 20] + [100] * 600
    for i, n in enumerate(sizes):
        (src / "d" / f"f{i:04d}").write_bytes(b"x" * n)
    os.symlink("f0001", src / "d" / "link")
    (src / "d" / "gone").write_bytes(b"y")
    walked = list(scan_iter("p", [("", src)], [], ScanResult()))
    (src / "d" / "gone").unlink()  # a file deleted after the walk: its hint fails quietly

    hinted: list[tuple[str, int]] = []
    real = os.posix_fadvise

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        assert offset == 0 and advice == os.POSIX_FADV_WILLNEED
        hinted.append((os.readlink(f"/proc/self/fd/{fd}"), length))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", record)
    seen, probes = [], []
    for e, probe, taken in _read_ahead_counted(walked):
        seen.append(e)
        if probe:
            probes.append(e.path)
        assert taken - len(seen) <= pack_mod._AHEAD_FILES
    assert seen == walked  # every entry, in order, unchanged
    with_content = [e for e in walked if e.kind == "file" and e.size]
    # one file with content in _PROBE_EVERY is a probe, read first without waiting
    assert probes == [e.path for e in with_content[:: pack_mod._PROBE_EVERY]]
    # every other file with content is hinted once, its first _HINT_BYTES only; no
    # directory, symlink or empty file, nothing for the file that was gone
    assert sorted(hinted) == sorted(
        (os.fsdecode(e.abspath), min(e.size, pack_mod._HINT_BYTES))
        for e in with_content
        if e.path not in probes and e.path != b"d/gone"
    )
    # with the hints off (the cache held the probes), nothing is asked
    hinted.clear()
    off = pack_mod.Hints()
    off.wanted = False
    assert [e for e, _, _ in _read_ahead_counted(walked, off)] == walked
    assert hinted == []


def test_read_ahead_holds_at_most_its_bytes(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from backup.archive.scan import ScanResult, scan_iter

    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"f{i:02d}").write_bytes(b"z" * (1 << 20))
    walked = list(scan_iter("p", [("", src)], [], ScanResult()))
    monkeypatch.setattr(pack_mod, "_AHEAD_BYTES", 4 << 20)
    got = 0
    for _, _, taken in _read_ahead_counted(walked):
        got += 1
        # 1 MiB hinted per file: at most 4 MiB, so 4 hinted files held past the one given
        # out, and the first file (a probe, hinted nothing) before them
        assert taken - got <= 5
    assert got == len(walked)


def on_tmpfs(path: Any) -> bool:
    """Whether ``path`` is on tmpfs, where every file is in memory and no read can miss."""
    best, kind = "", ""
    with open("/proc/mounts") as mounts:
        for line in mounts:
            _dev, mnt, fs = line.split()[:3]
            if str(path).startswith(mnt) and len(mnt) > len(best):
                best, kind = mnt, fs
    return kind == "tmpfs"


def test_a_probe_turns_the_hints_on_for_a_cold_file_and_off_for_a_cached_one(
    tmp_path: Any,
) -> None:
    if on_tmpfs(tmp_path):
        pytest.skip("tmpfs holds every file in memory: no read of it can miss the cache")
    f = tmp_path / "f"
    data = os.urandom(300_000)
    f.write_bytes(data)
    hints = pack_mod.Hints()
    buf = memoryview(bytearray(1 << 20))
    fd = os.open(f, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # out of the page cache
        hints.wanted = False
        assert hints.first_read(fd, buf) == len(data) and hints.wanted  # a miss: hints on
        assert bytes(buf[: len(data)]) == data
        assert hints.first_read(fd, buf) == len(data) and not hints.wanted  # held: off
        assert bytes(buf[: len(data)]) == data
    finally:
        os.close(fd)
