"""Tests of backup.archive.tarformat against the real GNU tar program, in both directions."""

from __future__ import annotations

import contextlib
import io
import os
import random
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backup.archive.tarformat import (
    BLOCK,
    CHRTYPE,
    DIRTYPE,
    END_OF_ARCHIVE,
    FIFOTYPE,
    LNKTYPE,
    REGTYPE,
    SYMTYPE,
    Member,
    TarReader,
    encode_header,
    padding,
)
from backup.errors import ArchiveCorrupt, ArchiveError
from tests.conftest import require_built

TAR = "/usr/bin/tar"
NS = 10**9

pytestmark = pytest.mark.skipif(not os.path.exists(TAR), reason="GNU tar not installed")


# -- helpers ---------------------------------------------------------------------------------


def build(entries: list[dict[str, Any]], *, end: bool = True) -> bytes:
    """Archive bytes for ``entries``: encode_header keyword arguments plus optional ``data``."""
    out = bytearray()
    for entry in entries:
        kwargs = dict(entry)
        data = kwargs.pop("data", b"")
        kwargs.setdefault("size", len(data))
        out += encode_header(**kwargs)
        out += data
        out += padding(len(data))
    if end:
        out += END_OF_ARCHIVE
    return bytes(out)


def read_all(archive: bytes, **kwargs: Any) -> list[tuple[Member, bytes]]:
    reader = TarReader(io.BytesIO(archive), **kwargs)
    result = []
    for member in reader:
        chunks = []
        while chunk := reader.read_data(100_000):
            chunks.append(chunk)
        result.append((member, b"".join(chunks)))
    return result


def run_tar(
    *args: str | os.PathLike[str], stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [TAR, *(os.fspath(a) for a in args)], input=stdin, capture_output=True, check=False
    )


def walk(root: bytes) -> set[bytes]:
    """All paths below ``root``, relative, as bytes."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in dirnames + filenames:
            found.add(os.path.relpath(os.path.join(dirpath, entry), root))
    return found


def parents(name: bytes) -> set[bytes]:
    parts = name.split(b"/")
    return {b"/".join(parts[:i]) for i in range(1, len(parts))}


class ChunkyStream:
    """A stream whose reads return short, random-sized chunks, like a pipe or decompressor."""

    def __init__(self, data: bytes, seed: int, readinto: bool) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._rng = random.Random(seed)
        if readinto:
            self.readinto = self._readinto

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = len(self._data)
        n = min(n, self._rng.randint(1, 70_000))
        chunk = bytes(self._data[self._pos : self._pos + n])
        self._pos += len(chunk)
        return chunk

    def _readinto(self, buf: memoryview) -> int:
        chunk = self.read(len(buf))
        buf[: len(chunk)] = chunk
        return len(chunk)


# -- ours -> GNU tar -------------------------------------------------------------------------

MIB = 1 << 20
RNG = random.Random(1234)
BIG = RNG.randbytes(3 * MIB + 17)
DEEP = b"deep/" + b"/".join(b"component-%02d" % i for i in range(20))
DEEP = DEEP[:199] + b"f"  # 200 bytes, components short, splittable at a '/'
LONG_COMPONENT = b"long/" + b"x" * 120 + b".txt"
LONG_TARGET = b"../" + b"t" * 147  # 150 bytes
UNICODE = "unicode/café-ñandú-日本語.txt".encode()
LONG_UNICODE = ("unicode/" + "ü" * 60 + "/" + "日本" * 20 + ".txt").encode()
NON_UTF8 = b"bad-\xff\xfe.txt"
LONG_NON_UTF8 = b"bad-dir-\xe9\xe8/" + b"\xff\xfe" * 55 + b"-name"
NS_MTIME = 1700000000_123456789
NEG_MTIME = -1_500_000_000

# A directory's entries are contiguous, as a tree walk writes them: GNU tar sets a directory's
# mtime once it sees a member outside it, so a later member inside would change it again.
OURS: list[dict[str, Any]] = [
    {"name": b"d", "type": DIRTYPE, "mode": 0o755, "mtime_ns": 1600000000_000000001},
    {"name": b"d/empty", "type": REGTYPE, "mtime_ns": 1600000000 * NS},
    {"name": b"d/one", "type": REGTYPE, "data": b"1", "mtime_ns": NS_MTIME},
    {"name": b"d/f511", "type": REGTYPE, "data": BIG[:511], "mtime_ns": 1},
    {"name": b"d/f512", "type": REGTYPE, "data": BIG[:512], "mtime_ns": NS},
    {"name": b"d/f513", "type": REGTYPE, "data": BIG[:513], "mtime_ns": 1234567890_5},
    {"name": b"d/big", "type": REGTYPE, "data": BIG, "mtime_ns": NS_MTIME},
    {
        "name": b"d/link",
        "type": SYMTYPE,
        "linkname": b"one",
        "mode": 0o777,
        "mtime_ns": NS_MTIME,
    },
    {"name": b"d/hard", "type": LNKTYPE, "linkname": b"d/one"},
    {"name": b"d/longlink", "type": SYMTYPE, "linkname": LONG_TARGET, "mode": 0o777},
    {"name": b"emptydir/", "type": DIRTYPE, "mode": 0o700, "mtime_ns": 1500000000_999999999},
    {"name": DEEP, "type": REGTYPE, "data": b"deep", "mtime_ns": NS_MTIME},
    {"name": LONG_COMPONENT, "type": REGTYPE, "data": b"long", "mtime_ns": NS_MTIME},
    {"name": NON_UTF8, "type": REGTYPE, "data": b"bad", "mtime_ns": NS_MTIME},
    {"name": LONG_NON_UTF8, "type": REGTYPE, "data": b"long bad", "mtime_ns": NS_MTIME},
    {"name": UNICODE, "type": REGTYPE, "data": b"uni", "mtime_ns": NS_MTIME, "uname": "jösé"},
    {"name": LONG_UNICODE, "type": REGTYPE, "data": b"long uni", "mtime_ns": NS_MTIME},
    {"name": b"setuid", "type": REGTYPE, "data": b"#!", "mode": 0o4755, "mtime_ns": NS_MTIME},
    {"name": b"private", "type": REGTYPE, "data": b"secret", "mode": 0o600, "mtime_ns": NS},
    {"name": b"negative", "type": REGTYPE, "data": b"old", "mtime_ns": NEG_MTIME},
    {"name": b"negative-whole", "type": REGTYPE, "mtime_ns": -86400 * NS},
    {"name": b"fifo", "type": FIFOTYPE, "mode": 0o640, "mtime_ns": NS_MTIME},
]


@pytest.fixture(scope="module")
def ours_archive() -> bytes:
    return build(OURS)


def test_blocks_are_aligned(ours_archive: bytes) -> None:
    assert len(ours_archive) % BLOCK == 0
    for entry in OURS:
        kwargs = {k: v for k, v in entry.items() if k != "data"}
        kwargs["size"] = len(entry.get("data", b""))
        assert len(encode_header(**kwargs)) % BLOCK == 0


def test_gnu_tar_lists_without_warnings(ours_archive: bytes) -> None:
    result = run_tar("-t", "-v", "--full-time", "--numeric-owner", "-f", "-", stdin=ours_archive)
    assert result.returncode == 0
    assert result.stderr == b""
    listing = result.stdout
    assert b"2023-11-14 22:13:20.123456789 d/one" in listing
    # Only the name: GNU tar 1.34 displays -1.5 s as 23:59:59.5, though it restores it exactly.
    assert b" 1969-12-31 " in listing
    assert b"-rwsr-xr-x" in listing


def test_gnu_tar_extracts_exactly(ours_archive: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "x"
    dest.mkdir()
    result = run_tar("-x", "--numeric-owner", "-f", "-", "-C", dest, stdin=ours_archive)
    assert result.returncode == 0, result.stderr
    # The only complaints allowed are about the deliberately pre-1970 mtimes.
    for line in result.stderr.splitlines():
        assert b"implausibly old time stamp" in line

    root = os.fsencode(dest)
    expected = set()
    for entry in OURS:
        name = entry["name"].rstrip(b"/")
        expected |= {name} | parents(name)
    assert walk(root) == expected

    for entry in OURS:
        path = os.path.join(root, entry["name"].rstrip(b"/"))
        st = os.lstat(path)
        kind = entry["type"]
        if kind == REGTYPE:
            with open(path, "rb") as f:
                assert f.read() == entry.get("data", b""), path
            assert stat.S_ISREG(st.st_mode)
        elif kind == DIRTYPE:
            assert stat.S_ISDIR(st.st_mode)
        elif kind == SYMTYPE:
            assert os.readlink(path) == entry["linkname"]
        elif kind == LNKTYPE:
            assert st.st_ino == os.lstat(os.path.join(root, entry["linkname"])).st_ino
        elif kind == FIFOTYPE:
            assert stat.S_ISFIFO(st.st_mode)
        if kind != LNKTYPE:
            assert stat.S_IMODE(st.st_mode) == entry.get("mode", 0o644), path
            assert st.st_mtime_ns == entry.get("mtime_ns", 0), path

    names = os.listdir(root)
    assert NON_UTF8 in names
    assert os.listdir(os.path.join(root, b"bad-dir-\xe9\xe8")) == [LONG_NON_UTF8.split(b"/")[1]]


def test_gnu_tar_extracts_in_c_locale(ours_archive: bytes, tmp_path: Path) -> None:
    # GNU tar converts pax names from UTF-8 to the locale charset; raw names must survive.
    env = dict(os.environ, LC_ALL="C")
    result = subprocess.run(
        [TAR, "-x", "-f", "-", "-C", str(tmp_path), NON_UTF8, LONG_NON_UTF8, UNICODE],
        input=ours_archive,
        capture_output=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    root = os.fsencode(tmp_path)
    assert NON_UTF8 in os.listdir(root)
    with open(os.path.join(root, LONG_NON_UTF8), "rb") as f:
        assert f.read() == b"long bad"
    with open(os.path.join(root, UNICODE), "rb") as f:
        assert f.read() == b"uni"


def test_our_reader_reads_our_archive(ours_archive: bytes) -> None:
    members = read_all(ours_archive)
    assert len(members) == len(OURS)
    for (member, data), entry in zip(members, OURS, strict=True):
        assert member.name == entry["name"].rstrip(b"/")
        assert member.type == entry["type"]
        assert data == entry.get("data", b"")
        assert member.size == len(data)
        assert member.mode == entry.get("mode", 0o644)
        assert member.mtime_ns == entry.get("mtime_ns", 0)
        assert member.linkname == entry.get("linkname", b"")
        assert member.uname == entry.get("uname", "")


def test_python_tarfile_reads_our_archive(ours_archive: bytes) -> None:
    # An independent oracle for the header encoding.
    with tarfile.open(
        fileobj=io.BytesIO(ours_archive), mode="r:", encoding="utf-8", errors="surrogateescape"
    ) as tar:
        infos = tar.getmembers()
    assert [os.fsencode(i.name) for i in infos] == [e["name"].rstrip(b"/") for e in OURS]
    assert [i.size for i in infos] == [len(e.get("data", b"")) for e in OURS]


# -- GNU tar -> ours -------------------------------------------------------------------------


def make_tree(root: Path, *, ustar: bool) -> None:
    """A tree with every kind of entry; ``ustar`` limits names to what ustar can hold."""
    r = os.fsencode(root)

    def write(rel: bytes, data: bytes, mode: int = 0o644) -> None:
        path = os.path.join(r, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)

    os.makedirs(os.path.join(r, b"emptydir"))
    os.makedirs(os.path.join(r, b"sticky"))
    os.chmod(os.path.join(r, b"sticky"), 0o1777)
    write(b"empty", b"")
    write(b"small", b"hello")
    write(b"dir/f511", BIG[:511])
    write(b"dir/f512", BIG[:512])
    write(b"dir/f513", BIG[:513])
    write(b"dir/sub/big", BIG[: 2 * MIB + 3])
    write(b"setuid", b"#!/bin/sh\n", 0o4755)
    write(b"private", b"secret", 0o600)
    write(NON_UTF8, b"bad")
    write(UNICODE, b"uni")
    write(DEEP, b"deep")  # splittable into ustar prefix + name
    os.symlink(b"small", os.path.join(r, b"dir/link"))
    os.link(os.path.join(r, b"small"), os.path.join(r, b"dir/hardlink"))
    os.mkfifo(os.path.join(r, b"fifo"), 0o640)
    if not ustar:
        write(LONG_COMPONENT, b"long")
        write(LONG_NON_UTF8, b"long bad")
        write(LONG_UNICODE, b"long uni")
        write(b"very/" + b"/".join([b"y" * 90] * 4), b"very long path")
        os.symlink(LONG_TARGET, os.path.join(r, b"dir/longlink"))
        os.link(os.path.join(r, LONG_COMPONENT), os.path.join(r, b"dir/hard-to-long"))

    # Distinct nanosecond mtimes, applied bottom-up so directory times stick.
    rng = random.Random(99)
    for dirpath, dirnames, filenames in os.walk(r, topdown=False):
        for entry in dirnames + filenames:
            mtime = 1600000000 * NS + rng.randrange(10**17)
            os.utime(os.path.join(dirpath, entry), ns=(mtime, mtime), follow_symlinks=False)


def expected_members(root: Path) -> dict[bytes, os.stat_result]:
    r = os.fsencode(root)
    return {b"tree/" + rel: os.lstat(os.path.join(r, rel)) for rel in walk(r)} | {
        b"tree": os.lstat(r)
    }


def content(root: Path, name: bytes) -> bytes:
    with open(os.path.join(os.fsencode(root), name.removeprefix(b"tree/")), "rb") as f:
        return f.read()


@pytest.mark.parametrize("fmt", ["gnu", "pax", "ustar"])
def test_reads_gnu_tar_archives(fmt: str, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    make_tree(tree, ustar=fmt == "ustar")
    mknod_ok = True
    try:
        os.mknod(tree / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        os.utime(tree / "null", ns=(NS_MTIME, NS_MTIME))
        os.utime(tree, ns=(NS_MTIME, NS_MTIME))
    except PermissionError:
        mknod_ok = False
    result = run_tar("-c", f"--format={fmt}", "-f", "-", "-C", tmp_path, "tree")
    assert result.returncode == 0, result.stderr
    archive = result.stdout
    expected = expected_members(tree)

    reader = TarReader(io.BytesIO(archive), name="gnu.tar")
    seen: dict[bytes, Member] = {}
    for i, member in enumerate(reader):
        st = expected[member.name]
        seen[member.name] = member
        if i % 3 == 0:  # exercise both read paths and skipping
            data = b"".join(iter(lambda: reader.read_data(7000), b""))
        elif i % 3 == 1:
            buf = bytearray(1 << 20)
            view = memoryview(buf)
            parts = []
            while n := reader.readinto_data(view):
                parts.append(bytes(view[:n]))
            data = b"".join(parts)
        else:
            data = archive[member.data_offset : member.data_offset + member.size]
        assert data == archive[member.data_offset : member.data_offset + member.size]

        assert member.mode == stat.S_IMODE(st.st_mode), member.name
        assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "root", "root")
        want_mtime = st.st_mtime_ns if fmt == "pax" else st.st_mtime_ns // NS * NS
        assert member.mtime_ns == want_mtime, member.name
        if stat.S_ISDIR(st.st_mode):
            assert member.type == DIRTYPE
            assert member.size == 0
        elif stat.S_ISLNK(st.st_mode):
            assert member.type == SYMTYPE
            assert member.linkname == os.readlink(os.path.join(os.fsencode(tmp_path), member.name))
        elif stat.S_ISFIFO(st.st_mode):
            assert member.type == FIFOTYPE
        elif stat.S_ISCHR(st.st_mode):
            assert member.type == CHRTYPE
            assert (member.devmajor, member.devminor) == (1, 3)
        elif member.type == LNKTYPE:
            assert member.size == 0
            assert os.path.samestat(st, expected[member.linkname])
            assert seen[member.linkname].type == REGTYPE  # the first occurrence came earlier
        else:
            assert member.type == REGTYPE
            assert member.size == st.st_size
            assert data == content(tree, member.name)

        # Member.offset starts a header sequence that parses to this same member.
        again = next(iter(TarReader(io.BytesIO(archive[member.offset :]))))
        assert again.name == member.name
        assert again.mtime_ns == member.mtime_ns
        assert again.linkname == member.linkname
        assert again.data_offset + member.offset == member.data_offset

    assert set(seen) == set(expected) - (set() if mknod_ok else {b"tree/null"})
    assert NON_UTF8 in {name.rpartition(b"/")[2] for name in seen}
    # The stream is read no further than the end-of-archive blocks GNU tar pads after.
    assert reader.read_data(10) == b""
    assert list(reader) == []


def test_reads_gnu_longname_and_longlink_headers(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    make_tree(tree, ustar=False)
    archive = run_tar("-c", "--format=gnu", "-f", "-", "-C", tmp_path, "tree").stdout
    assert b"././@LongLink" in archive
    types = {m.name: m for m, _ in read_all(archive)}
    assert types[b"tree/dir/longlink"].linkname == LONG_TARGET
    assert types[b"tree/" + LONG_NON_UTF8].type == REGTYPE
    assert types[b"tree/dir/hard-to-long"].linkname in {
        b"tree/" + LONG_COMPONENT,
        b"tree/dir/hard-to-long",
    }


def test_chunky_streams_give_identical_results(ours_archive: bytes) -> None:
    reference = read_all(ours_archive)
    for seed, readinto in ((1, True), (2, False)):
        reader = TarReader(ChunkyStream(ours_archive, seed, readinto))
        got = []
        buf = memoryview(bytearray(300_000))
        for member in reader:
            parts = []
            while n := reader.readinto_data(buf):
                parts.append(bytes(buf[:n]))
            got.append((member, b"".join(parts)))
        assert got == reference


def test_read_data_then_skip_partial(ours_archive: bytes) -> None:
    reader = TarReader(io.BytesIO(ours_archive))
    names = []
    for member in reader:
        names.append(member.name)
        if member.name == b"d/big":
            assert reader.read_data(1000) == BIG[:1000]
            reader.skip_data()
            assert reader.read_data(1000) == b""
        elif member.size:
            reader.read_data(1)  # leave the rest for the iterator to skip
    assert names == [e["name"].rstrip(b"/") for e in OURS]


# -- header encoding details -----------------------------------------------------------------


def test_header_field_choices() -> None:
    plain = encode_header(name=b"a/b", type=REGTYPE, size=5, mtime_ns=7 * NS, uid=1, gid=2)
    assert len(plain) == BLOCK  # everything fits: no pax header
    assert plain[257:265] == b"ustar\x0000"
    assert plain[148:156].endswith(b"\0 ")
    directory = encode_header(name=b"dir", type=DIRTYPE)
    assert directory[:4] == b"dir/"

    split = encode_header(name=DEEP, type=REGTYPE)
    assert len(split) == BLOCK  # prefix + name, no pax
    assert split[345:500].rstrip(b"\0") + b"/" + split[:100].rstrip(b"\0") == DEEP

    pax = encode_header(name=b"f", type=REGTYPE, mtime_ns=NS_MTIME)
    assert b"30 mtime=1700000000.123456789\n" in pax
    assert pax[:100].rstrip(b"\0") == b"./PaxHeaders/f"
    assert b"14 mtime=-1.5\n" in encode_header(name=b"f", type=REGTYPE, mtime_ns=-1_500_000_000)
    assert b"12 mtime=-2\n" in encode_header(name=b"f", type=REGTYPE, mtime_ns=-2 * NS)
    assert b"mtime=0.000000001\n" in encode_header(name=b"f", type=REGTYPE, mtime_ns=1)
    assert b" size=8589934592\n" in encode_header(name=b"f", type=REGTYPE, size=8**11)
    assert len(encode_header(name=b"f", type=REGTYPE, size=8**11 - 1)) == BLOCK
    assert b" uid=2097152\n" in encode_header(name=b"f", type=REGTYPE, uid=8**7)
    assert b" gname=" + b"g" * 32 + b"\n" in encode_header(name=b"f", type=REGTYPE, gname="g" * 32)
    assert b"hdrcharset" not in encode_header(name=b"\xff" * 200, type=REGTYPE)


def test_pax_record_length_carry() -> None:
    # Record lengths crossing 9->10, 99->100 and 999->1000 digits must count themselves right;
    # the reader checks each record ends exactly where its length says.
    entries = [
        {"name": b"n" * length, "type": REGTYPE, "data": b"%d" % length}
        for length in range(101, 1100)
    ]
    entries += [
        {"name": b"s", "type": SYMTYPE, "linkname": b"l" * length}
        for length in (88, 89, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99, 100, 101)
    ]
    archive = build(entries)
    got = read_all(archive)
    assert [m.name for m, _ in got[: 1100 - 101]] == [b"n" * n for n in range(101, 1100)]
    for member, data in got[: 1100 - 101]:
        assert data == b"%d" % len(member.name)
    result = run_tar("-t", "-f", "-", stdin=archive)
    assert result.returncode == 0
    assert result.stderr == b""
    for length in range(1, 200):
        header = encode_header(name=b"f", type=REGTYPE, uname="u" * length)
        if length >= 32:
            record = header[BLOCK:].split(b"\n")[0] + b"\n"
            assert int(record.split(b" ")[0]) == len(record)


def test_rejects_unrepresentable_members() -> None:
    with pytest.raises(ValueError):
        encode_header(name=b"", type=REGTYPE)
    with pytest.raises(ValueError):
        encode_header(name=b"/etc/passwd", type=REGTYPE)
    with pytest.raises(ValueError):
        encode_header(name=b"a\0b", type=REGTYPE)
    with pytest.raises(ValueError):
        encode_header(name=b"a", type=b"S")
    with pytest.raises(ValueError):
        encode_header(name=b"a", type=REGTYPE, size=-1)
    with pytest.raises(ValueError):
        encode_header(name=b"a", type=CHRTYPE, devmajor=8**7)


def test_padding() -> None:
    assert [len(padding(n)) for n in (0, 1, 511, 512, 513, 8**11)] == [0, 511, 1, 0, 511, 0]
    assert padding(3) == bytes(509)
    assert bytes(1024) == END_OF_ARCHIVE


# -- corruption ------------------------------------------------------------------------------

SMALL = build(
    [
        {"name": b"a", "type": REGTYPE, "data": b"x" * 700, "mtime_ns": NS_MTIME},
        {"name": b"b", "type": REGTYPE, "data": b"y" * 10},
    ]
)
# Layout: pax header + records (1024), header of a (512), data 700 + pad 324, header of b ...
A_DATA = 1536
B_HEADER = A_DATA + 1024


def corrupt_message(archive: bytes) -> str:
    with pytest.raises(ArchiveCorrupt) as info:
        read_all(archive, name="test.tar")
    message = str(info.value)
    assert "test.tar" in message
    return message


def test_bad_checksum() -> None:
    damaged = bytearray(SMALL)
    damaged[B_HEADER] ^= 0x01
    message = corrupt_message(bytes(damaged))
    assert "checksum" in message
    # the header names no entry: the message names the one it follows
    assert message.endswith(f"offset {B_HEADER}, after entry 'a'")


def test_signed_checksum_accepted() -> None:
    header = bytearray(encode_header(name=b"\xe9t\xe9", type=REGTYPE))
    signed = sum(b - 256 if b >= 128 else b for b in header[:148]) + 8 * 32
    signed += sum(header[156:])
    header[148:156] = b"%06o\0 " % signed
    [(member, _)] = read_all(bytes(header) + END_OF_ARCHIVE)
    assert member.name == b"\xe9t\xe9"


@pytest.mark.parametrize(
    ("cut", "where"),
    [
        (0, "end-of-archive"),
        (300, "header"),
        (700, "extended header"),
        (1024 + 100, "header"),
        (A_DATA + 100, "data of 'a'"),
        (A_DATA + 700 + 5, "padding after data of 'a'"),
        (B_HEADER + 512 + 10, "data of 'b'"),
        (len(SMALL) - 1024, "end-of-archive"),
    ],
)
def test_truncated(cut: int, where: str) -> None:
    message = corrupt_message(SMALL[:cut])
    assert where in message
    assert "offset" in message


def test_single_zero_block_then_eof_is_accepted() -> None:
    assert [m.name for m, _ in read_all(SMALL[:-512])] == [b"a", b"b"]


def test_lone_zero_block_followed_by_data() -> None:
    archive = SMALL[:-1024] + bytes(512) + encode_header(name=b"c", type=REGTYPE) + END_OF_ARCHIVE
    assert "lone zero block" in corrupt_message(archive)


def test_garbage() -> None:
    assert "checksum" in corrupt_message(random.Random(5).randbytes(4096))
    assert "checksum" in corrupt_message(b"hello world, not a tar file\n" * 100)


def test_malformed_fields() -> None:
    header = bytearray(encode_header(name=b"a", type=REGTYPE))
    header[124:136] = b"0000000009x\0"  # not octal; fix the checksum so only the field is wrong
    header[148:156] = b"        "
    header[148:156] = b"%06o\0 " % sum(header)
    assert "entry 'a': invalid size field" in corrupt_message(bytes(header) + END_OF_ARCHIVE)

    pax = bytearray(encode_header(name=b"a", type=REGTYPE, mtime_ns=NS_MTIME))
    pax[BLOCK : BLOCK + 2] = b"31"  # record length now overshoots its newline
    # reported with the member the record belongs to, which the next header names
    assert "entry 'a': malformed pax record" in corrupt_message(bytes(pax) + END_OF_ARCHIVE)


def test_base256_and_space_terminated_fields() -> None:
    header = bytearray(encode_header(name=b"a", type=REGTYPE))
    header[108:116] = b"\x80" + (3_000_000_000).to_bytes(7, "big")  # uid, GNU base-256
    header[136:148] = b"\xff" * 8 + (-5).to_bytes(4, "big", signed=True)  # mtime -5
    header[100:108] = b"  644 \0\0"  # old-style space padding
    header[148:156] = b"        "
    header[148:156] = b"%06o\0 " % sum(header)
    [(member, _)] = read_all(bytes(header) + END_OF_ARCHIVE)
    assert (member.uid, member.mtime_ns, member.mode) == (3_000_000_000, -5 * NS, 0o644)


def test_pax_global_header_and_hdrcharset() -> None:
    records = b"21 hdrcharset=BINARY\n" + b"13 uname=\xff\xfeu\n" + b"19 mtime=12.000005\n"
    body = records + padding(len(records))
    glob = bytearray(encode_header(name=b"g", type=REGTYPE, size=len(records)))
    glob[156:157] = b"g"
    glob[148:156] = b"        "
    glob[148:156] = b"%06o\0 " % sum(glob)
    archive = (
        bytes(glob)
        + body
        + build([{"name": b"x", "type": REGTYPE}, {"name": b"y", "type": REGTYPE, "mtime_ns": 3}])
    )
    (x, _), (y, _) = read_all(archive)
    assert x.uname == "\udcff\udcfeu"
    assert x.mtime_ns == 12_000_005_000
    assert y.mtime_ns == 3  # a member's own pax record overrides the global one
    assert x.offset == len(glob) + len(body)  # the global header belongs to no member


def test_unknown_member_type() -> None:
    header = bytearray(encode_header(name=b"weird", type=REGTYPE))
    header[156:157] = b"Z"
    header[148:156] = b"        "
    header[148:156] = b"%06o\0 " % sum(header)
    with pytest.raises(ArchiveError) as info:
        read_all(bytes(header) + END_OF_ARCHIVE)
    assert not isinstance(info.value, ArchiveCorrupt)
    assert "unsupported tar member type" in str(info.value)
    assert "weird" in str(info.value)


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_sparse_member_is_refused(fmt: str, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "plain").write_bytes(b"plain")
    sparse = tree / "sparse"
    with open(sparse, "wb") as f:
        f.write(b"head")
        f.seek(4 * MIB)
        f.write(b"tail")
    os.truncate(sparse, 16 * MIB)
    if os.stat(sparse).st_blocks * 512 >= 16 * MIB:
        pytest.skip("file system does not support sparse files")
    archive = run_tar("-c", "--sparse", f"--format={fmt}", "-f", "-", "-C", tmp_path, "tree").stdout
    if fmt == "gnu":
        assert b"S" in {archive[i + 156 : i + 157] for i in range(0, len(archive), BLOCK)}
    with pytest.raises(ArchiveError) as info:
        read_all(archive)
    assert not isinstance(info.value, ArchiveCorrupt)
    assert "unsupported tar member type" in str(info.value)
    assert "sparse" in str(info.value)


# -- property-style round trip ---------------------------------------------------------------


def random_name(rng: random.Random) -> bytes:
    alphabet = [bytes([b]) for b in range(1, 256) if b != ord("/")]
    parts = []
    for _ in range(rng.choice([1, 1, 2, 3, 5, 12])):
        length = rng.choice([1, 3, 8, 20, 60, 99, 100, 101, 130])
        if rng.random() < 0.5:
            part = bytes(rng.choices(b"abcdefghij._-", k=length))
        elif rng.random() < 0.5:
            part = "".join(rng.choices("éü日本ßΩ", k=length)).encode()[:length]
        else:
            part = b"".join(rng.choices(alphabet, k=length))
        parts.append(part)
    return b"/".join(parts)


def random_entries(seed: int, count: int) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    for i in range(count):
        kind = rng.choice([REGTYPE, REGTYPE, REGTYPE, DIRTYPE, SYMTYPE, LNKTYPE, FIFOTYPE])
        entry: dict[str, Any] = {
            "name": b"%d/" % i + random_name(rng),
            "type": kind,
            "mode": rng.randrange(0o10000),
            "mtime_ns": rng.choice(
                [0, NS, rng.randrange(-(10**19), 10**19), rng.randrange(8**11) * NS]
            ),
            "uid": rng.choice([0, 1000, 8**7 - 1, 8**7, 2**32 - 2]),
            "gid": rng.choice([0, 1000, 8**7, 65534]),
            "uname": rng.choice(["", "root", "jösé", "u" * 31, "u" * 32, "\udcff"]),
            "gname": rng.choice(["", "staff", "グループ"]),
        }
        if kind == REGTYPE:
            entry["data"] = rng.randbytes(rng.choice([0, 1, 511, 512, 513, rng.randrange(5000)]))
        elif kind in (SYMTYPE, LNKTYPE):
            entry["linkname"] = random_name(rng)
        yield entry


def test_round_trip_random_members() -> None:
    entries = list(random_entries(seed=42, count=400))
    archive = build(entries)
    got = read_all(archive)
    assert len(got) == len(entries)
    offset = 0
    for (member, data), entry in zip(got, entries, strict=True):
        assert member.name == entry["name"]
        assert member.type == entry["type"]
        assert data == entry.get("data", b"")
        assert member.size == len(data)
        assert member.mode == entry["mode"]
        assert member.mtime_ns == entry["mtime_ns"]
        assert (member.uid, member.gid) == (entry["uid"], entry["gid"])
        assert (member.uname, member.gname) == (entry["uname"], entry["gname"])
        assert member.linkname == entry.get("linkname", b"")
        assert member.offset == offset
        offset = member.data_offset + len(data) + len(padding(len(data)))

    # GNU tar and Python's tarfile agree with our reading of it.
    result = run_tar("-t", "-f", "-", stdin=archive)
    assert result.returncode == 0
    assert result.stderr == b""
    with tarfile.open(
        fileobj=io.BytesIO(archive), mode="r:", encoding="utf-8", errors="surrogateescape"
    ) as tar:
        names = [os.fsencode(info.name) for info in tar.getmembers()]
    assert names == [e["name"] for e in entries]


def test_pax_block_template_matches_the_general_encoder() -> None:
    # the shortcut for pax header blocks must produce exactly the general encoder's block
    from backup.archive import tarformat as tf

    rng = random.Random(1)
    for _ in range(2000):
        name = bytes(rng.choice(b"ab/\xff\x01z") for _ in range(rng.randint(1, 100)))
        size, mtime = rng.randrange(8**11), rng.randrange(8**11)
        assert tf._pax_block(name, size, mtime) == tf._ustar_block(
            name, 0o644, 0, 0, size, mtime, tf._PAX_LOCAL, b"", b"", b"", 0, 0, b""
        )


# -- the C encoder (backup/archive/_speedups.c) ---------------------------------------------


def _header_args(entry: dict[str, Any]) -> tuple[Any, ...]:
    return (
        entry["name"],
        entry["type"],
        entry.get("size", len(entry.get("data", b""))),
        entry.get("mode", 0o644),
        entry.get("mtime_ns", 0),
        entry.get("uid", 0),
        entry.get("gid", 0),
        entry.get("uname", ""),
        entry.get("gname", ""),
        entry.get("linkname", b""),
        entry.get("devmajor", 0),
        entry.get("devminor", 0),
    )


def _common_entries(seed: int, count: int) -> Iterator[dict[str, Any]]:
    """Members in the C encoder's common case, with the edges of every field."""
    rng = random.Random(seed)
    types = [REGTYPE, LNKTYPE, SYMTYPE, CHRTYPE, b"4", DIRTYPE, FIFOTYPE]
    for _ in range(count):
        name = bytes(rng.choice(b"ab/\xff\x01z.") for _ in range(rng.randint(1, 100)))
        if name.startswith(b"/"):
            name = b"x" + name[1:]
        kind = rng.choice(types)
        if kind == DIRTYPE and not name.endswith(b"/"):
            name = name[:99]  # room for the '/' a directory's name gets
        yield {
            "name": name,
            "type": kind,
            "size": rng.choice([0, 1, 511, 8**11 - 1, rng.randrange(8**11)]),
            "mode": rng.choice([0, 0o755, 0o107777, -1, rng.randrange(2**32)]),
            "mtime_ns": rng.choice(
                [
                    0,
                    1,
                    -1,
                    NS,
                    -NS,
                    -(NS + 1),
                    (8**11 - 1) * NS,
                    8**11 * NS,
                    8**11 * NS - 1,
                    -(2**63),
                    2**63 - 1,
                    rng.randrange(-(2**63), 2**63),
                    rng.randrange(2**31) * NS + rng.choice([0, 10**8, 123, 999_999_999]),
                ]
            ),
            "uid": rng.choice([0, 1000, 8**7 - 1]),
            "gid": rng.choice([0, 65534, 8**7 - 1]),
            "uname": rng.choice(["", "root", "u" * 31]),
            "gname": rng.choice(["", "staff", "g" * 31]),
            "linkname": rng.choice([b"", b"target", b"l" * 100, b"a/b/\xfe"]),
            "devmajor": rng.choice([0, 8, 8**7 - 1]),
            "devminor": rng.choice([0, 1, 8**7 - 1]),
        }


@pytest.fixture
def c_encoder() -> Any:
    from backup.archive import tarformat as tf

    return require_built(tf.c_encode_header, "the tar header encoding")


def test_c_encoder_matches_python_in_the_common_case(c_encoder: Any) -> None:
    from backup.archive import tarformat as tf

    for entry in _common_entries(seed=7, count=20000):
        args = _header_args(entry)
        fast = c_encoder(*args)
        assert fast is not None, entry  # every member here is in the C encoder's case
        assert fast == tf._encode_header(*args), entry


def test_c_encoder_defers_to_python_outside_the_common_case(c_encoder: Any) -> None:
    from backup.archive import tarformat as tf

    base = {"name": b"a", "type": REGTYPE}
    unusual: list[dict[str, Any]] = [
        {**base, "name": b"n" * 101},
        {**base, "name": b"d" * 100, "type": DIRTYPE},  # the added '/' makes it 101
        {**base, "name": b"p" * 60 + b"/" + b"q" * 60},  # split into prefix and name
        {**base, "linkname": b"l" * 101, "type": SYMTYPE},
        {**base, "size": 8**11},
        {**base, "size": 2**64},
        {**base, "uid": 8**7},
        {**base, "gid": 2**40},
        {**base, "uname": "jösé"},
        {**base, "gname": "g" * 32},
        {**base, "uname": "\udcff"},
        {**base, "mtime_ns": 2**64},
    ]
    for entry in unusual:
        args = _header_args(entry)
        assert c_encoder(*args) is None, entry
        assert encode_header(**{k: v for k, v in entry.items()}) == tf._encode_header(*args)
    invalid: list[dict[str, Any]] = [
        {**base, "name": b""},
        {**base, "name": b"/abs"},
        {**base, "name": b"a\0b"},
        {**base, "linkname": b"x\0"},
        {**base, "type": b"7"},
        {**base, "type": b"xx"},
        {**base, "size": -1},
        {**base, "uid": -1},
        {**base, "devminor": -1},
        {**base, "devmajor": 8**7},
    ]
    for entry in invalid:
        assert c_encoder(*_header_args(entry)) is None, entry
        with pytest.raises(ValueError):
            encode_header(**entry)


def test_c_encoder_agrees_on_random_members(c_encoder: Any) -> None:
    # the property test's members, many outside the common case: same bytes either way
    from backup.archive import tarformat as tf

    for entry in random_entries(seed=3, count=3000):
        args = _header_args(entry)
        fast = c_encoder(*args)
        assert fast is None or fast == tf._encode_header(*args), entry


@pytest.mark.parametrize("fmt", ["ours", "random", "gnu", "pax", "ustar", "oldgnu"])
def test_c_decoder_reads_like_python(
    fmt: str, c_encoder: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every member read with the C header decoder equals the Python reading of it
    from backup.archive import tarformat as tf

    if fmt == "ours":
        archive = build(OURS)
    elif fmt == "random":
        archive = build(list(random_entries(seed=9, count=600)))
    else:
        tree = tmp_path / "tree"
        tree.mkdir()
        make_tree(tree, ustar=fmt == "ustar")
        with contextlib.suppress(PermissionError):
            os.mknod(tree / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        result = run_tar("-c", f"--format={fmt}", "-f", "-", "-C", tmp_path, "tree")
        assert result.returncode == 0, result.stderr
        archive = result.stdout

    real = tf.c_decode_header
    assert real is not None
    decoded = 0

    def counting(block: bytes) -> Any:
        nonlocal decoded
        got = real(block)
        decoded += got is not None
        return got

    monkeypatch.setattr(tf, "c_decode_header", counting)
    with_c = read_all(archive)
    monkeypatch.setattr(tf, "c_decode_header", None)
    assert with_c == read_all(archive)
    assert decoded >= len(with_c) // 2, (decoded, len(with_c))
