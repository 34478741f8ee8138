"""Hostile tar archives. Whatever bytes it is given, the tar reader either yields members whose
numbers a restore can apply or raises the project's ArchiveError, in one line naming the
archive (and the entry, where there is one); it never hangs and never raises anything else,
and its C and Python header decoders reach the same result.

A bounded, derandomized property-based fuzz (hypothesis: fixed examples per run, so CI sees the
same cases every time) checks that over raw bytes, random checksummed headers, hostile pax
records and mutations of real archives; what it and the issue found is kept in
``tar_corpus/`` and replayed through the reader and through ``backup restore --file`` and
``backup verify``, which must print the reader's one line and exit 1.
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backup.archive import tarformat as tf
from backup.archive.tarformat import (
    BLOCK,
    DIRTYPE,
    END_OF_ARCHIVE,
    REGTYPE,
    SYMTYPE,
    TarReader,
    encode_header,
    padding,
)
from backup.engine import run_backup
from backup.errors import ArchiveError
from backup.inventory import Inventory
from tests.conftest import Env, Key, require_built, require_tools
from tests.test_interop import encrypt_with_tools

CORPUS = Path(__file__).parent / "tar_corpus"
NAME = "fuzz.tar"
# what restoring a member can apply: off_t sizes, 32-bit uid_t/gid_t, 64-bit time_t seconds,
# the int os.makedev takes
MAX_SIZE = 2**63 - 1
MAX_ID = 2**32 - 1
MTIME_NS = range(-(2**63) * 10**9, 2**63 * 10**9)
MAX_DEV = 2**31 - 1

# Fixed example counts, derandomized: the same cases on every run, 20-30 s for the four.
FUZZ = settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- running the reader ----------------------------------------------------------------------


class Hang(Exception):
    """The reader did not finish in time: a loop that never ends."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"the reader ran for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextmanager
def decoder(c: bool) -> Iterator[None]:
    """Read headers with the C decoder (where built) or with Python alone."""
    saved = tf.c_decode_header
    tf.c_decode_header = saved if c else None
    try:
        yield
    finally:
        tf.c_decode_header = saved


def read(data: bytes, *, c: bool) -> tuple[Any, ...]:
    """Everything the reader makes of ``data``: each member with its data, then either "end"
    or the error's class and message. Checks on the way what a restore relies on."""
    got: list[Any] = []
    reader = TarReader(io.BytesIO(data), name=NAME)
    end = 0  # where the previous member's data and padding end
    with decoder(c), time_limit(10):
        try:
            for m in reader:
                assert m.offset >= end, "the reader went backwards"
                assert m.data_offset > m.offset
                assert 0 <= m.size <= MAX_SIZE
                assert 0 <= m.uid <= MAX_ID and 0 <= m.gid <= MAX_ID
                assert m.mtime_ns in MTIME_NS
                assert 0 <= m.devmajor <= MAX_DEV and 0 <= m.devminor <= MAX_DEV
                assert m.name and b"\0" not in m.name and b"\0" not in m.linkname
                assert m.type in (REGTYPE, DIRTYPE, SYMTYPE, b"1", b"3", b"4", b"6")
                assert len(got) <= len(data) // BLOCK, "more members than header blocks"
                content = bytearray()
                while chunk := reader.read_data(1 << 16):
                    content += chunk
                assert len(content) == m.size
                end = m.data_offset + m.size + -m.size % BLOCK
                got.append((m, bytes(content)))
        except ArchiveError as e:
            message = str(e)
            assert NAME in message and "\n" not in message, message
            got.append((type(e).__name__, message))
            return tuple(got)
    got.append("end")
    return tuple(got)


def check(data: bytes) -> tuple[Any, ...]:
    """The property: both decoders end the same way (``read`` checks the rest)."""
    python = read(data, c=False)
    if tf.c_decode_header is not None:
        assert read(data, c=True) == python
    return python


@pytest.fixture(autouse=True)
def _c_decoder_built() -> None:
    require_built(tf.c_decode_header, "the tar header decoding")


# -- building blocks -------------------------------------------------------------------------


def fix_checksum(block: bytes | bytearray, *, signed: bool = False) -> bytes:
    b = bytearray(block)
    b[148:156] = b"        "
    total = sum(x - 256 if signed and x >= 128 else x for x in b)
    b[148:156] = b"%06o\0 " % (total & 0o777777)
    return bytes(b)


def pax_record(key: bytes, value: bytes, lie: int = 0) -> bytes:
    body = b" %s=%s\n" % (key, value)
    length = len(body) + len(str(len(body)))
    if len(str(length)) != len(str(len(body))):
        length = len(body) + len(str(length))
    return b"%d%s" % (length + lie, body)


def extended(typeflag: bytes, data: bytes) -> bytes:
    """An extended header ('x', 'g', 'L', 'K') holding ``data``, with its padding."""
    h = bytearray(encode_header(name=b"././@ext", type=REGTYPE, size=len(data)))
    h[156:157] = typeflag
    return fix_checksum(h) + data + padding(len(data))


def number_field(width: int) -> st.SearchStrategy[bytes]:
    """Ways to fill a numeric header field of ``width`` bytes, valid and not."""
    octal = st.integers(0, 8 ** (width - 1) - 1).map(lambda v: b"%0*o\0" % (width - 1, v))
    positive = st.integers(0, 2 ** (8 * (width - 1)) - 1).map(
        lambda v: b"\x80" + v.to_bytes(width - 1, "big")
    )
    negative = st.integers(-(2 ** (8 * width - 1)), -1).map(
        lambda v: b"\xff" + v.to_bytes(width, "big", signed=True)[1:]
    )
    odd = st.sampled_from(
        [b" " * width, b"\0" * width, b"7" * width, b"-1".ljust(width, b"\0"), b"8\0", b"0x1"]
    ).map(lambda v: v[:width].ljust(width, b"\0"))
    return st.one_of(octal, positive, negative, odd, st.binary(min_size=width, max_size=width))


FIELDS = {  # offset, width
    "mode": (100, 8),
    "uid": (108, 8),
    "gid": (116, 8),
    "size": (124, 12),
    "mtime": (136, 12),
    "devmajor": (329, 8),
    "devminor": (337, 8),
}
# strategies built once: building one per draw took most of the fuzz's time
NUMBERS = {width: number_field(width) for width in (8, 12)}
TYPEFLAGS = [b"0", b"\0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"x", b"g", b"L", b"K"]
TYPEFLAGS += [b"S", b"M", b"V", b"N", b"Z"]
ANY_TYPEFLAG = st.sampled_from(TYPEFLAGS)
FIELD_SETS = st.sets(st.sampled_from(sorted(FIELDS)))
MAGICS = st.sampled_from([b"ustar\x0000", b"ustar  \0", b"\0" * 8])
PAX_KEYS = [b"path", b"linkpath", b"size", b"mtime", b"uid", b"gid", b"uname", b"gname"]
PAX_KEYS += [b"hdrcharset", b"GNU.sparse.size", b"GNU.volume.offset", b"atime", b"pa\0th"]
PAX_VALUES = [
    b"",
    b"0",
    b"-1",
    b"-5",
    b"1e400",
    b"99999999999999999999",
    b"9" * 40,
    b"1" * 5000,
    b"4294967296",
    b"4294967295",
    b"9223372036854775807",
    b"9223372036854775808",
    b"1.",
    b".5",
    b"-",
    b"1.5.5",
    b"+1",
    b" 1",
    b"1_0",
    b"\xd9\xa1",  # an Arabic-Indic digit: isdigit() in str, not in bytes
    b"a\0b",
    b"\0",
    b"name/../x",
    b"\xff\xfe",
]


@st.composite
def header(draw: st.DrawFn) -> bytes:
    """A checksummed header block, valid or of random bytes, in which chosen fields hold what
    a writer (or an attacker) could put there."""
    if draw(st.booleans()):
        block = bytearray(encode_header(name=b"member", type=REGTYPE))
    else:  # random bytes from a drawn seed: much cheaper to draw than 512 bytes one by one
        block = bytearray(random.Random(draw(st.integers(0, 2**32))).randbytes(BLOCK))
    if draw(st.booleans()):
        block[257:265] = draw(MAGICS)
    block[156:157] = draw(ANY_TYPEFLAG)
    for name in draw(FIELD_SETS):
        offset, width = FIELDS[name]
        block[offset : offset + width] = draw(NUMBERS[width])
    if draw(st.booleans()):
        block[0:100] = draw(st.binary(max_size=100)).ljust(100, b"\0")
    how = draw(st.sampled_from(["unsigned", "signed", "none"]))
    return bytes(block) if how == "none" else fix_checksum(block, signed=how == "signed")


# known keys, and unknown ones, never empty (a record with an empty key is malformed)
ANY_PAX_KEY = st.sampled_from(PAX_KEYS) | st.binary(min_size=1, max_size=6).map(
    lambda k: b"k" + k.replace(b"=", b"_")
)
ANY_PAX_VALUE = (
    st.sampled_from(PAX_VALUES)
    | st.binary(max_size=24)
    | st.integers(-(10**25), 10**25).map(lambda v: b"%d" % v)
)
LIES = st.sampled_from([-1, 1, -5, 100])


@st.composite
def pax_member(draw: st.DrawFn) -> bytes:
    """Hostile pax records (keys, values, a length that lies) before an ordinary member."""
    count = draw(st.integers(1, 5))
    # one record's length may be off, so that most examples get past the framing
    liar = draw(st.integers(0, count - 1)) if draw(st.integers(0, 3)) == 3 else -1
    records = b"".join(
        pax_record(
            draw(ANY_PAX_KEY),
            draw(ANY_PAX_VALUE),
            draw(LIES) if i == liar else 0,
        )
        for i in range(count)
    )
    if draw(st.booleans()):
        records += b"\0" * draw(st.integers(1, 20))
    kind = draw(st.sampled_from([b"x", b"x", b"g"]))
    data = draw(st.binary(max_size=700))
    member = encode_header(name=b"member", type=REGTYPE, size=len(data))
    out = extended(kind, records) + member + data + padding(len(data))
    if draw(st.booleans()):
        out += encode_header(name=b"after", type=SYMTYPE, linkname=b"member")
    return out + END_OF_ARCHIVE


def _base_archives() -> list[bytes]:
    """Archives to mutate: this project's headers (ustar, pax mtimes, long names and link
    targets) and Python tarfile's GNU (L/K headers, base-256), pax and ustar formats."""
    ours = b"".join(
        (
            encode_header(name=b"d", type=DIRTYPE, mtime_ns=1),
            encode_header(name=b"d/f", type=REGTYPE, size=3, mtime_ns=1_700_000_000_123),
            b"abc" + padding(3),
            encode_header(name=b"d/" + b"n" * 150, type=SYMTYPE, linkname=b"t" * 120),
            encode_header(name=b"dev", type=b"3", devmajor=1, devminor=3, uid=8**7),
            END_OF_ARCHIVE,
        )
    )
    out = [ours]
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
            info = tarfile.TarInfo("dir/" + "long" * 30 if fmt != tarfile.USTAR_FORMAT else "f")
            info.size = 600
            info.uid = 3_000_000 if fmt != tarfile.USTAR_FORMAT else 7
            info.mtime = 1_600_000_000
            t.addfile(info, io.BytesIO(bytes(range(256)) * 3))
            link = tarfile.TarInfo("link")
            link.type = tarfile.SYMTYPE
            link.linkname = "target" * (30 if fmt != tarfile.USTAR_FORMAT else 1)
            t.addfile(link)
        out.append(buf.getvalue())
    return out


BASES = _base_archives()
ANY_BASE = st.sampled_from(BASES)
MUTATIONS = st.sampled_from([*sorted(FIELDS), "typeflag", "byte", "records"])
BAD_RECORDS = st.sampled_from([b"0 path=x\n", b"99 a=b\n", b"5 =x\n", b"3 \n"])


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A real archive with some header fields or bytes replaced, checksums mostly fixed so
    the reader looks past them, sometimes cut short."""
    data = bytearray(draw(ANY_BASE))
    blocks = len(data) // BLOCK
    touched = set()
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, blocks - 1)) * BLOCK
        touched.add(at)
        what = draw(MUTATIONS)
        if what in FIELDS:
            offset, width = FIELDS[what]
            data[at + offset : at + offset + width] = draw(NUMBERS[width])
        elif what == "typeflag":
            data[at + 156] = draw(ANY_TYPEFLAG)[0]
        elif what == "byte":
            data[at + draw(st.integers(0, BLOCK - 1))] = draw(st.integers(0, 255))
        else:  # overwrite the start of a block (pax records, when it holds some)
            text = draw(BAD_RECORDS)
            data[at : at + len(text)] = text
    if draw(st.booleans()):
        for at in touched:
            data[at : at + BLOCK] = fix_checksum(data[at : at + BLOCK])
    if draw(st.integers(0, 4)) == 0:
        del data[draw(st.integers(0, len(data))) :]
    return bytes(data)


# -- the fuzz --------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=3 * BLOCK))
def test_fuzz_any_bytes(data: bytes) -> None:
    check(data)


@FUZZ
@given(
    st.lists(header(), min_size=1, max_size=4),
    st.binary(max_size=1100),
    st.booleans(),
)
def test_fuzz_random_headers(headers: list[bytes], body: bytes, end: bool) -> None:
    check(b"".join(headers) + body + (END_OF_ARCHIVE if end else b""))


@FUZZ
@given(pax_member())
def test_fuzz_pax_records(data: bytes) -> None:
    check(data)


@FUZZ
@given(mutated())
def test_fuzz_mutated_archives(data: bytes) -> None:
    check(data)


# -- crafted cases (the issue's) and the fuzz's finds ----------------------------------------


def _set(block: bytes, **fields: bytes) -> bytes:
    """``block`` with numeric fields replaced by raw bytes of their width, checksum fixed."""
    h = bytearray(block)
    for field, raw in fields.items():
        offset, width = FIELDS[field]
        assert len(raw) == width
        h[offset : offset + width] = raw
    return fix_checksum(h)


def _member(name: bytes = b"f", typeflag: bytes = REGTYPE, **fields: bytes) -> bytes:
    """A member's header (no data) with numeric fields replaced by raw bytes."""
    link = b"t" if typeflag == SYMTYPE else b""
    return _set(encode_header(name=name, type=typeflag, linkname=link), **fields)


def _pax(*records: bytes, typeflag: bytes = REGTYPE, then: bytes = b"") -> bytes:
    return extended(b"x", b"".join(records)) + _member(b"f", typeflag) + then


def _base256(value: int, width: int) -> bytes:
    if value < 0:
        return value.to_bytes(width, "big", signed=True)
    return b"\x80" + value.to_bytes(width - 1, "big")


# name -> (archive without its end marker, what the one-line error must say)
CRAFTED: dict[str, tuple[bytes, str]] = {
    # a negative size moved the reader back onto the same header: 100% CPU forever
    "negative size (hang)": (
        _member(b"a") + _member(b"link", SYMTYPE, size=_base256(-512, 12)),
        "entry 'link': size -512 out of range",
    ),
    "negative extended header size (hang)": (
        _set(extended(b"x", b""), size=_base256(-512, 12)) + _member(b"a"),
        "extended header size -512 out of range",
    ),
    "size -1": (_member(b"a", size=b"\xff" * 12), "entry 'a': size -1 out of range"),
    "base-256 size beyond off_t": (
        _member(b"a", size=_base256(2**80, 12)),
        f"entry 'a': size {2**80} out of range",
    ),
    "base-256 uid -5": (_member(b"a", uid=_base256(-5, 8)), "entry 'a': uid -5 out of range"),
    "base-256 uid beyond uid_t": (
        _member(b"a", uid=_base256(2**56 - 1, 8)),
        f"entry 'a': uid {2**56 - 1} out of range",
    ),
    "base-256 mtime beyond time_t": (
        _member(b"a", mtime=_base256(2**80, 12)),
        f"entry 'a': mtime {2**80} s out of range",
    ),
    "base-256 device number": (
        _member(b"dev", b"3", devmajor=_base256(2**40, 8)),
        f"entry 'dev': devmajor {2**40} out of range",
    ),
    "non-octal size": (_member(b"a", size=b"0000000009x\0"), "entry 'a': invalid size field"),
    "pax path with NUL": (_pax(pax_record(b"path", b"a\0b")), "NUL byte in pax path value"),
    "pax linkpath with NUL": (
        _pax(pax_record(b"linkpath", b"x\0y"), typeflag=SYMTYPE),
        "entry 'f': NUL byte in pax linkpath value",
    ),
    "pax size 99999999999999999999": (
        _pax(pax_record(b"size", b"99999999999999999999")),
        "entry 'f': size 99999999999999999999 out of range",
    ),
    "pax size -1": (_pax(pax_record(b"size", b"-1")), "entry 'f': invalid pax size value b'-1'"),
    "pax mtime 1e400": (_pax(pax_record(b"mtime", b"1e400")), "entry 'f': invalid pax time"),
    "pax mtime of 30 digits": (
        _pax(pax_record(b"mtime", b"9" * 30)),
        "entry 'f': mtime 999999999999999999999999999999 s out of range",
    ),
    "pax mtime of 5000 digits": (
        _pax(pax_record(b"mtime", b"1" * 5000)),
        "entry 'f': pax time b'1111111111111111111111111111111111111111...' out of range",
    ),
    "pax uid -5": (_pax(pax_record(b"uid", b"-5")), "entry 'f': invalid pax uid value b'-5'"),
    "pax uid 99999999999999999999": (
        _pax(pax_record(b"uid", b"99999999999999999999")),
        "entry 'f': uid 99999999999999999999 out of range",
    ),
    "pax gid 2**32": (_pax(pax_record(b"gid", b"4294967296")), "entry 'f': gid 4294967296 out"),
    "pax record length lies": (
        _pax(b"99 path=x\n"),
        "entry 'f': malformed pax record at byte 0 of pax header at offset 0",
    ),
    "pax record length 0": (
        _pax(pax_record(b"uid", b"1") + b"0 path=x\n"),
        "entry 'f': malformed pax record at byte 8 of pax header",
    ),
}

# What the fuzz found on 4442433 (hypothesis's shrunk examples; there each one looped, raised
# IndexError or yielded a member a restore cannot apply): file -> what the error says now
FOUND = {
    "extended-header-size-negative-mutated.tar": "extended header size -7168 out of range",
    "extended-header-size-negative-indexerror.tar": "extended header size -8192 out of range",
    "extended-header-size-negative-random.tar": "extended header size -35134 out of range",
    "size-negative-mutated.tar": "entry './PaxHeaders/d': size -1 out of range",
    "pax-path-nul-mutated.tar": "NUL byte in pax path value",
    "gid-2-32-mutated.tar": "entry './PaxHeaders/d': gid 4294967296 out of range",
    "devmajor-2-31-mutated.tar": "entry 'dev': devmajor 2147483648 out of range",
    "pax-size-huge.tar": "entry 'member': size 99999999999999999999 out of range",
    "pax-mtime-huge.tar": "entry 'member': mtime 99999999999999999999 s out of range",
    "devminor-negative-random.tar": "devminor -1 out of range",
    "size-huge-random.tar": "entry '\\x01': size 2851938975085144155301 out of range",
    "uid-2-32-random.tar": "entry '\\x01': uid 4294967296 out of range",
}


def _cases() -> list[Any]:
    crafted = [pytest.param(a + END_OF_ARCHIVE, e, id=n) for n, (a, e) in CRAFTED.items()]
    found = [pytest.param((CORPUS / n).read_bytes(), e, id=n) for n, e in FOUND.items()]
    return crafted + found


@pytest.mark.parametrize(("archive", "expected"), _cases())
def test_hostile_archive_one_error(archive: bytes, expected: str) -> None:
    outcome = check(archive)
    assert outcome[-1] != "end", outcome
    kind, message = outcome[-1]
    assert kind == "ArchiveCorrupt"
    assert expected in message


# -- through the commands --------------------------------------------------------------------


def _backup(env: Env | None, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``backup ARGS``; a hang fails the test instead of stalling the suite."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "backup", *args],
            env=env.environ() if env is not None else dict(os.environ),
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"backup {' '.join(args)} still running after {timeout} s")


def _one_line_error(proc: subprocess.CompletedProcess[str], *names: str) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "case",
    [
        "negative size (hang)",
        "pax path with NUL",
        "pax uid 99999999999999999999",
        "base-256 mtime beyond time_t",
        "base-256 device number",
    ],
)
def test_restore_file_of_hostile_archive(case: str, tmp_path: Path, key: Key) -> None:
    # tar | zstd | age made with the real programs, restored with `backup restore --file`
    require_tools("age", "zstd")
    archive, expected = CRAFTED[case]
    plain = tmp_path / "hostile.tar"
    plain.write_bytes(archive + END_OF_ARCHIVE)
    hostile = tmp_path / "hostile.tar.zst.age"
    encrypt_with_tools(key.recipient, plain, hostile)
    dest = tmp_path / "dest"
    args = ["restore", "--file", str(hostile), "--to", str(dest), "--identity", str(key.path)]
    line = _one_line_error(_backup(None, *args), str(hostile), expected)
    assert line.startswith("error: Archive "), line
    assert not dest.exists()


def test_verify_and_restore_of_a_hostile_archive_in_the_target(
    env: Env, inventory: Inventory
) -> None:
    # an archive replaced in the target by one that loops the old reader: `backup verify`
    # and `backup restore` end in one line naming the archive and the entry
    require_tools("age", "zstd")
    (env.source / "plain.txt").write_text("plain")
    os.symlink("plain.txt", env.source / "link")
    aid = run_backup(env.policy(), inventory).archive.id
    stored = env.vault / "p" / f"{aid}.tar.zst.age"
    assert stored.is_file()
    plain = env.tmp / "hostile.tar"
    # a member the manifest lists, then whatever: the old reader never got past it
    hostile = _member(b"link", SYMTYPE, size=_base256(-512, 12))
    plain.write_bytes(hostile + _member(b"plain.txt") + END_OF_ARCHIVE)
    encrypt_with_tools(env.key.recipient, plain, stored)

    _one_line_error(_backup(env, "verify", aid), aid, "entry 'link': size -512 out of range")
    dest = env.tmp / "dest"
    proc = _backup(env, "restore", "p", "--to", str(dest))
    _one_line_error(proc, aid, "entry 'link': size -512 out of range")
    assert not dest.exists()


def test_restore_file_applies_what_the_reader_accepts(tmp_path: Path, key: Key) -> None:
    # the ranges' other side: mtimes beyond 64-bit nanoseconds (a file dated 2300 or 1600,
    # as GNU tar writes them) and the largest uid restore as they are, not as an overflow
    require_tools("age", "zstd")
    y2300 = 10_413_792_000 * 10**9 + 5
    y1600 = -11_676_096_000 * 10**9
    plain = tmp_path / "edges.tar"
    plain.write_bytes(
        encode_header(name=b"future", type=REGTYPE, size=2, mtime_ns=y2300, uid=2**32 - 2)
        + b"hi"
        + padding(2)
        + encode_header(name=b"past", type=REGTYPE, mtime_ns=y1600)
        + END_OF_ARCHIVE
    )
    archive = tmp_path / "edges.tar.zst.age"
    encrypt_with_tools(key.recipient, plain, archive)
    dest = tmp_path / "dest"
    args = ["restore", "--file", str(archive), "--to", str(dest), "--identity", str(key.path)]
    proc = _backup(None, *args)
    assert proc.returncode == 0, proc.stderr
    assert (dest / "future").read_bytes() == b"hi"
    assert os.stat(dest / "future").st_mtime_ns == y2300
    # file systems clamp times they cannot store (ext4: 1901): only that it was set
    assert os.stat(dest / "past").st_mtime_ns < 0
