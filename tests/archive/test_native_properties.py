"""Every function of the C parts against its Python definition, on generated input.

The C modules (backup/archive/_fastwalk.c, _speedups.c) each stand in for a Python definition
that stays the one definition of the format or behaviour: a C function returns exactly what
the Python one returns, or None (or an errno) where its input is outside the common case, and
the caller then runs the Python one. Each property here checks that contract on input
hypothesis generates, and each also checks that the C side really took the common case on
input built to be in it (so no property can pass by the C always deferring):

- ``_speedups.encode``     vs ``tarformat._encode_header``
- ``_speedups.decode``     vs the tar reader's Python header parsing
- ``_speedups.entry_json`` vs ``pack.Record._to_json`` (and the JSON being valid)
- ``_speedups.write_new``  vs the extractor's Python small-file path
- ``_fastwalk.walk``       vs the Python walk, on generated trees with generated excludes
- ``_fastwalk.listing``    taken in batches of any size: what ``walk`` returns at once
- ``_speedups.tree_encode`` vs the tree cache's Python encoder: in
  tests/inventory/test_tree_codec.py, with that format's other properties

``test_every_exported_function_is_covered`` fails when a C function is added without a
property here. Examples are derandomized and bounded (a few seconds for the file), and
``scripts/sanitize`` runs this file against AddressSanitizer and UBSan builds.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import stat
import tempfile
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backup.archive import tarformat as tf
from backup.archive.pack import Record
from tests.archive.test_tar_fuzz import check as read_both_ways
from tests.conftest import require_built

scan_mod = importlib.import_module("backup.archive.scan")
extract_mod = importlib.import_module("backup.archive.extract")
pack_mod = importlib.import_module("backup.archive.pack")

NS = 10**9
PROPS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FEW = settings(PROPS, max_examples=40)


def _module(name: str) -> ModuleType:
    try:
        return importlib.import_module(f"backup.archive.{name}")
    except ImportError:
        require_built(None, f"backup.archive.{name}")
        raise


@pytest.fixture(scope="module")
def speedups() -> ModuleType:
    return _module("_speedups")


@pytest.fixture(scope="module")
def fastwalk() -> ModuleType:
    return _module("_fastwalk")


def test_every_exported_function_is_covered(speedups: ModuleType, fastwalk: ModuleType) -> None:
    def public(m: ModuleType) -> set[str]:
        return {n for n in vars(m) if not n.startswith("_")}

    # tree_encode's properties are with its format's: tests/inventory/test_tree_codec.py
    assert public(speedups) == {"encode", "decode", "entry_json", "write_new", "tree_encode"}
    assert public(fastwalk) == {"walk", "listing"}


# -- tar headers: encode -------------------------------------------------------------------

TYPES = [tf.REGTYPE, tf.LNKTYPE, tf.SYMTYPE, tf.CHRTYPE, tf.BLKTYPE, tf.DIRTYPE, tf.FIFOTYPE]
NAME_BYTES = st.sampled_from([b"a", b"b", b"/", b"\xff", b"\x01", b".", b" ", b"\n", b"\\"])
MTIME_EDGES = [0, 1, -1, NS, -NS, -(NS + 1), (8**11 - 1) * NS, 8**11 * NS, 8**11 * NS - 1]
MTIME_EDGES += [-(2**63), 2**63 - 1]
BEYOND_64 = [2**63, -(2**63) - 1]  # a tar header holds these; C's 64-bit numbers do not


def common_name(max_size: int) -> st.SearchStrategy[bytes]:
    """Names the C encoder takes: 1..max_size bytes, relative, no NUL."""
    return (
        st.lists(NAME_BYTES, min_size=1, max_size=max_size)
        .map(b"".join)
        .map(lambda n: b"x" + n[1:] if n.startswith(b"/") else n)
    )


def ascii_id(max_size: int) -> st.SearchStrategy[str]:
    return st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=max_size)


MTIMES = st.one_of(
    st.sampled_from(MTIME_EDGES),
    st.integers(-(2**63), 2**63 - 1),
    st.tuples(st.integers(0, 2**33), st.sampled_from([0, 1, 10**8, 999_999_999])).map(
        lambda t: t[0] * NS + t[1]
    ),
)


@st.composite
def common_headers(draw: st.DrawFn) -> tuple[Any, ...]:
    """encode's arguments in the C encoder's common case (it must not defer on these)."""
    kind = draw(st.sampled_from(TYPES))
    name = draw(common_name(100))
    if kind == tf.DIRTYPE and not name.endswith(b"/"):
        name = name[:99]  # room for the '/' a directory's name gets
    return (
        name,
        kind,
        draw(st.integers(0, 8**11 - 1)),
        draw(st.integers(-(2**40), 2**40)),
        draw(MTIMES),
        draw(st.integers(0, 8**7 - 1)),
        draw(st.integers(0, 8**7 - 1)),
        draw(ascii_id(31)),
        draw(ascii_id(31)),
        draw(common_name(100) | st.just(b"")),
        draw(st.integers(0, 8**7 - 1)),
        draw(st.integers(0, 8**7 - 1)),
    )


def _around(edge: int) -> st.SearchStrategy[int]:
    return st.integers(-2, 2).map(lambda d: edge + d)


@st.composite
def any_headers(draw: st.DrawFn) -> tuple[Any, ...]:
    """encode's arguments anywhere: too long, out of range, non-ASCII, invalid."""
    big = st.one_of(st.integers(-(2**70), 2**70), _around(0), _around(8**11), _around(2**63))
    ids = st.one_of(st.integers(-(2**40), 2**40), _around(0), _around(8**7), _around(2**63))
    text = st.one_of(ascii_id(40), st.text(max_size=40), st.just("\udcff"))
    return (
        draw(st.one_of(common_name(160), st.binary(max_size=160))),
        draw(st.sampled_from([*TYPES, b"7", b"x", b"", b"00", b"\0"])),
        draw(big),
        draw(big),
        draw(st.one_of(MTIMES, st.sampled_from(BEYOND_64), st.integers(-(2**80), 2**80))),
        draw(ids),
        draw(ids),
        draw(text),
        draw(text),
        draw(st.one_of(common_name(120), st.binary(max_size=120))),
        draw(ids),
        draw(ids),
    )


def python_header(args: tuple[Any, ...]) -> bytes | None:
    """The Python definition's bytes, or None where it refuses the member."""
    try:
        return tf._encode_header(*args)
    except (ValueError, UnicodeError):
        return None


@PROPS
@given(args=common_headers())
def test_encode_equals_python_in_the_common_case(speedups: ModuleType, args: Any) -> None:
    fast = speedups.encode(*args)
    assert fast is not None, args
    assert fast == tf._encode_header(*args)


@PROPS
@given(args=any_headers())
def test_encode_equals_python_or_defers(speedups: ModuleType, args: Any) -> None:
    fast = speedups.encode(*args)
    if fast is not None:
        assert fast == python_header(args)


# -- tar headers: decode -------------------------------------------------------------------

FIELD_SPANS = [(0, 100), (100, 148), (148, 156), (156, 157), (157, 257), (257, 345), (345, 500)]


@PROPS
@given(args=common_headers(), data=st.binary(max_size=600))
def test_decode_reads_our_headers_like_python(
    speedups: ModuleType, args: tuple[Any, ...], data: bytes
) -> None:
    if args[1] != tf.REGTYPE:
        data = b""  # only a regular file's header is followed by data
    args = (*args[:2], len(data), *args[3:])
    header = tf._encode_header(*args)
    # the member's own ustar block (after any pax header) is in the C decoder's case
    fields = speedups.decode(header[-tf.BLOCK :])
    assert fields is not None
    name, kind, _, mode, mtime_ns, uid, gid, uname, gname, link, major, minor = args
    if kind == tf.DIRTYPE and not name.endswith(b"/"):
        name += b"/"
    seconds = min(max(mtime_ns // NS, 0), 8**11 - 1)
    devices = (major, minor) if kind in (tf.CHRTYPE, tf.BLKTYPE) else (0, 0)
    expect = (kind, name, link, mode & 0o7777, uid, gid, len(data), seconds, uname, gname)
    assert fields == (*expect, *devices)
    archive = header + data + tf.padding(len(data)) + tf.END_OF_ARCHIVE
    assert read_both_ways(archive)[-1] == "end"


@PROPS
@given(
    args=common_headers(),
    span=st.sampled_from(FIELD_SPANS),
    junk=st.binary(min_size=1, max_size=16),
    at=st.integers(0, 99),
    fix=st.booleans(),
)
def test_decode_of_altered_headers_equals_python(
    speedups: ModuleType, args: tuple[Any, ...], span: Any, junk: bytes, at: int, fix: bool
) -> None:
    header = bytearray(tf._encode_header(*args[:2], 0, *args[3:])[-tf.BLOCK :])
    start, end = span
    pos = start + at % (end - start)
    header[pos : pos + len(junk)] = junk[: end - pos]
    block = bytes(header[: tf.BLOCK])
    if fix:  # a valid checksum, so the fields themselves are what is judged
        b = bytearray(block)
        b[148:156] = b" " * 8
        b[148:156] = b"%06o\0 " % (sum(b) & 0o777777)
        block = bytes(b)
    read_both_ways(block + tf.END_OF_ARCHIVE)


# -- manifest entries ----------------------------------------------------------------------

KINDS = ["file", "dir", "symlink", "hardlink", "fifo", "chr", "blk"]
I64 = st.integers(-(2**63), 2**63 - 1)
INTS = st.one_of(st.integers(0, 2**40), I64, st.integers(-(2**70), 2**70))
OPTIONAL_INT = st.one_of(st.none(), INTS, st.booleans(), st.just(1.5))
PATHS = st.one_of(common_name(60), st.binary(max_size=60))
HEX = st.text("0123456789abcdef", min_size=64, max_size=64)


@st.composite
def records(draw: st.DrawFn, *, common: bool) -> Record:
    ints = I64 if common else INTS
    r = Record(
        draw(PATHS),
        draw(st.sampled_from(KINDS) if common else st.sampled_from(KINDS) | st.text(max_size=8)),
        draw(ints),
        draw(ints),
        draw(ints),
        draw(ints),
        draw(ints),
        draw(ints),
        draw(ints),
    )
    r.size = draw(ints)
    opt_int = st.none() | I64 if common else OPTIONAL_INT
    r.data_offset = draw(opt_int)
    r.sha256 = draw(st.none() | HEX if common else st.none() | HEX | st.text(max_size=8))
    r.link = draw(st.none() | PATHS)
    r.file_size = draw(opt_int)
    r.devmajor = draw(opt_int)
    r.devminor = draw(opt_int)
    return r


def as_json_object(r: Record) -> dict[str, Any]:
    """What the manifest's JSON object must read back as: the set fields, paths decoded."""
    d = r.as_dict()
    for k in ("path", "link"):
        if k in d:
            d[k] = os.fsdecode(d[k])
    return {k: int(v) if isinstance(v, bool | float) else v for k, v in d.items()}


@PROPS
@given(r=records(common=True))
def test_entry_json_equals_python_in_the_common_case(speedups: ModuleType, r: Record) -> None:
    fast = speedups.entry_json(r)
    assert fast is not None
    assert fast == r._to_json()
    assert json.loads(fast) == as_json_object(r)


@PROPS
@given(r=records(common=False))
def test_entry_json_equals_python_or_defers(speedups: ModuleType, r: Record) -> None:
    fast = speedups.entry_json(r)
    slow = r._to_json()
    if fast is not None:
        assert fast == slow
    if not any(isinstance(getattr(r, k), bool | float) for k in Record.__slots__):
        # the Python definition is valid JSON too, whatever the strings hold
        assert json.loads(slow) == as_json_object(r)


@pytest.mark.parametrize("text", ["a\0b", 'a"b', "a\\b", "\x1f", "é", "\udcff", ""])
@pytest.mark.parametrize("field", ["type", "sha256"])
def test_entry_json_escapes_its_strings(speedups: ModuleType, field: str, text: str) -> None:
    # found by the properties above: both wrote the type and sha256 between quotes unescaped
    # (invalid JSON for a '"' or a control character), and the C cut a string at a NUL; now
    # the C leaves such strings to the Python definition, which escapes them
    r = Record(b"p", "file", 0o644, 0, 0, 1, 0, 0, 0)
    setattr(r, field, text)
    slow = r._to_json()
    assert json.loads(slow)[field] == text
    assert r.to_json() == slow
    plain = text.isascii() and text.isprintable() and '"' not in text and "\\" not in text
    assert speedups.entry_json(r) == (slow if plain else None)


# -- restore: one small file -----------------------------------------------------------------


def python_write(ex: Any, rel: bytes, data: bytes, member: Any, monkeypatch: Any) -> None:
    with monkeypatch.context() as m:
        m.setattr(extract_mod, "_c_write_new", None)
        ex._small_file_job(rel, data, member, "a.tar", None)


def written(path: Path) -> tuple[Any, ...]:
    st_ = os.lstat(path)
    return (
        path.read_bytes(),
        stat.S_IFMT(st_.st_mode),
        stat.S_IMODE(st_.st_mode),
        st_.st_mtime_ns,
        st_.st_atime_ns,
        st_.st_uid,
        st_.st_gid,
        st_.st_nlink,
    )


@FEW
@given(
    data=st.binary(max_size=3000),
    mode=st.one_of(st.integers(0, 0o7777), st.integers(0, 2**32)),
    mtime_ns=st.one_of(st.sampled_from(MTIME_EDGES), st.integers(-(2**62), 2**62)),
    owner=st.booleans(),
    ids=st.tuples(st.integers(0, 65534), st.integers(0, 65534)),
    name=st.sampled_from([b"f", b"\xff\n name", b"x" * 255]),
    umask=st.sampled_from([None, 0o022, 0o077, 0o002, 0]),
)
def test_write_new_equals_the_python_path(
    speedups: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    data: bytes,
    mode: int,
    mtime_ns: int,
    owner: bool,
    ids: tuple[int, int],
    name: bytes,
    umask: int | None,
) -> None:
    # given the process's umask, write_new sets a mode the umask leaves whole at creation
    # (no fchmod); any other mode, or an unknown umask (None), goes through fchmod
    member = SimpleNamespace(mode=mode, uid=ids[0], gid=ids[1], mtime_ns=mtime_ns)
    old_umask = os.umask(0o022 if umask is None else umask)
    try:
        told = () if umask is None else (extract_mod.process_umask(),)
        assert told in ((), (umask,))
        with tempfile.TemporaryDirectory() as tmp:
            check_write_new(speedups, monkeypatch, Path(tmp), data, member, owner, name, told)
    finally:
        os.umask(old_umask)


def check_write_new(
    speedups: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    tmp: Path,
    data: bytes,
    member: Any,
    owner: bool,
    name: bytes,
    umask: tuple[int, ...],
) -> None:
    mode, mtime_ns, ids = member.mode, member.mtime_ns, (member.uid, member.gid)
    c_dir, py_dir = tmp / "c", tmp / "py"
    c_dir.mkdir()
    py_dir.mkdir()
    got = speedups.write_new(
        os.fsencode(c_dir) + b"/" + name, data, mode, ids[0], ids[1], mtime_ns, owner, *umask
    )
    assert got == 0
    ex = extract_mod.Extractor(os.fsencode(py_dir), restore_owner=owner, threads=1)
    try:
        python_write(ex, name, data, member, monkeypatch)
    finally:
        ex.close()
    assert written(c_dir / os.fsdecode(name)) == written(py_dir / os.fsdecode(name))


@FEW
@given(data=st.binary(max_size=100), way=st.sampled_from(["exists", "no parent", "parent file"]))
def test_write_new_creates_nothing_where_the_python_path_must_clear_the_way(
    speedups: ModuleType, data: bytes, way: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "f").write_bytes(b"old")
        target = {
            "exists": root / "f",
            "no parent": root / "d" / "f",
            "parent file": root / "f" / "g",
        }
        path = os.fsencode(target[way])
        expect = {"exists": errno.EEXIST, "no parent": errno.ENOENT, "parent file": errno.ENOTDIR}
        assert speedups.write_new(path, data, 0o644, 0, 0, 0, False) == expect[way]
        assert sorted(os.listdir(root)) == ["f"] and (root / "f").read_bytes() == b"old"
        # beyond 64-bit nanoseconds: nothing created, the Python path sets that time
        new = os.fsencode(root / "new")
        assert speedups.write_new(new, data, 0o644, 0, 0, 2**64, False) == errno.EOVERFLOW
        assert not os.path.lexists(new)
        with pytest.raises(ValueError):
            speedups.write_new(new + b"\0x", data, 0o644, 0, 0, 0, False)


# -- the walk --------------------------------------------------------------------------------

# names with the bytes that trip matchers and path handling; '*', '?' and '[' are legal names
NAME_PART = st.sampled_from(
    [
        b"a",
        b"b",
        b"ab",
        b".",
        b"-",
        b"*",
        b"?",
        b"[",
        b"]",
        b"\\",
        b" ",
        b"\n",
        b"\xff",
        b"\xc3\xa9",
    ]
)
NAMES = st.one_of(
    st.lists(NAME_PART, min_size=1, max_size=6).map(b"".join),
    st.integers(200, 255).map(lambda n: b"L" * n),  # long names
).filter(lambda n: n not in (b".", b".."))
# pattern pieces: the C walk takes '*', '?' and literal bytes ('[' classes go to Python)
PATTERN_PART = st.sampled_from(
    ["a", "b", "ab", ".", "-", "*", "?", "**", "\\", " ", "\n", "\udcff", "é", "/", "L*"]
)
PATTERNS = st.lists(st.lists(PATTERN_PART, min_size=1, max_size=5).map("".join), max_size=4)


@st.composite
def trees(draw: st.DrawFn) -> list[tuple[bytes, str, bytes]]:
    """(relative path, kind, content or link target), parents before children."""
    out: list[tuple[bytes, str, bytes]] = []
    dirs: list[bytes] = [b""]
    for _ in range(draw(st.integers(0, 25))):
        parent = draw(st.sampled_from(dirs))
        name = draw(NAMES)
        rel = parent + b"/" + name if parent else name
        if any(rel == p or rel.startswith(p + b"/") for p, _, _ in out) or len(rel) > 1000:
            continue
        kind = draw(st.sampled_from(["file", "dir", "dir", "symlink", "fifo"]))
        extra = b""
        if kind == "file":
            extra = draw(st.binary(max_size=20))
        elif kind == "symlink":
            extra = draw(st.sampled_from([b"a", b"../x", b"/abs", b"\xff" * 3, b"L" * 300]))
        out.append((rel, kind, extra))
        if kind == "dir":
            dirs.append(rel)
    return out


def make(root: bytes, tree: list[tuple[bytes, str, bytes]]) -> None:
    for rel, kind, extra in tree:
        path = root + b"/" + rel
        if kind == "dir":
            os.mkdir(path)
        elif kind == "file":
            with open(path, "wb") as f:
                f.write(extra)
        elif kind == "symlink":
            os.symlink(extra, path)
        else:
            os.mkfifo(path)


def walk_both(sources: list[tuple[str, Path]], excludes: list[str]) -> tuple[Any, Any]:
    assert scan_mod._fast_patterns(excludes) is not None  # the C walk takes these
    c = scan_mod.scan("p", sources, excludes)
    saved = scan_mod._fastwalk
    scan_mod._fastwalk = None
    try:
        py = scan_mod.scan("p", sources, excludes)
    finally:
        scan_mod._fastwalk = saved

    def seen(r: Any) -> tuple[Any, ...]:
        entries = [
            (e.path, e.abspath, e.kind, e.size, e.mode, e.mtime_ns, e.ctime_ns, e.ino, e.dev,
             e.nlink, e.uid, e.gid, e.link, e.opener)
            for e in r.entries
        ]  # fmt: skip
        return entries, [(u.path, u.error) for u in r.unreadable], r.unreadable_dirs

    return seen(c), seen(py)


@FEW
@given(tree=trees(), excludes=PATTERNS, name=st.sampled_from(["", "src", "a b"]))
def test_walk_equals_python_on_generated_trees(
    fastwalk: ModuleType, tree: list[tuple[bytes, str, bytes]], excludes: list[str], name: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = os.fsencode(tmp)
        make(root, tree)
        c, py = walk_both([(name, Path(tmp))], excludes)
        assert c == py
        if not excludes:  # nothing left out: every path, and the source's own entry if named
            assert len(c[0]) == len(tree) + bool(name)


@FEW
@given(tree=trees(), excludes=PATTERNS, lookahead=st.integers(1, 3))
def test_walk_listed_ahead_a_little_equals_python(
    fastwalk: ModuleType,
    tree: list[tuple[bytes, str, bytes]],
    excludes: list[str],
    lookahead: int,
) -> None:
    # the scan's C walk lists a bounded number of entries ahead (scan._LOOKAHEAD): with a
    # tiny one nearly every directory is listed only when the walk reaches it, excludes and
    # unlistable directories included
    saved = scan_mod._LOOKAHEAD
    scan_mod._LOOKAHEAD = lookahead
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = os.fsencode(tmp)
            make(root, tree)
            os.mkdir(root + b"/unlistable")
            os.chmod(root + b"/unlistable", 0)
            try:
                c, py = walk_both([("src", Path(tmp))], excludes)
            finally:
                os.chmod(root + b"/unlistable", 0o700)
    finally:
        scan_mod._LOOKAHEAD = saved
    assert c == py


@FEW
@given(tree=trees(), batch=st.integers(1, 7), budget=st.integers(0, 4))
def test_listing_taken_in_batches_equals_the_walk(
    fastwalk: ModuleType, tree: list[tuple[bytes, str, bytes]], batch: int, budget: int
) -> None:
    # budget: entries listed ahead; directories beyond it are listed as the walk reaches them
    with tempfile.TemporaryDirectory() as tmp:
        root = os.fsencode(tmp)
        make(root, tree)
        os.mkdir(root + b"/unlistable")
        os.chmod(root + b"/unlistable", 0)
        try:
            whole = fastwalk.walk(root, b"src", [], [], scan_mod.Entry, scan_mod._KINDS, 2)
            w = fastwalk.listing(root, b"src", [], [], scan_mod.Entry, scan_mod._KINDS, 2, budget)
            entries: list[Any] = []
            errors: list[Any] = []
            while True:
                got, errs = w.take(batch)
                assert len(got) <= batch
                if not got and not errs:
                    break
                entries += got
                errors += errs
        finally:
            os.chmod(root + b"/unlistable", 0o700)
    assert w.take(batch) == ([], [])  # done, and stays done
    assert [tuple(getattr(e, f) for f in e.__slots__) for e in entries] == [
        tuple(getattr(e, f) for f in e.__slots__) for e in whole[0]
    ]
    assert errors == whole[1]
    assert len(entries) == len(tree) + 1  # the tree and the unlistable directory


@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("budget", [1, 2, 5, 40])
def test_listing_defers_siblings_and_lists_them_later(
    fastwalk: ModuleType, tmp_path: Path, threads: int, budget: int
) -> None:
    # several directories left unlisted at once when the budget is spent (siblings on the
    # walk's stack), each listed later from where the walk reaches it: same as the walk
    for a in range(4):
        for b in range(3):
            d = tmp_path / f"d{a}" / f"s{b}"
            d.mkdir(parents=True)
            for c in range(3):
                (d / f"f{c}").write_bytes(b"x" * c)
    root = os.fsencode(tmp_path)
    whole = fastwalk.walk(root, b"", [], [], scan_mod.Entry, scan_mod._KINDS, threads)
    w = fastwalk.listing(root, b"", [], [], scan_mod.Entry, scan_mod._KINDS, threads, budget)
    got, errors = w.take(0)
    assert [e.path for e in got] == [e.path for e in whole[0]]
    assert len(got) == 4 + 12 + 36 and errors == whole[1] == []


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory of many odd names, with a subdirectory of the same: for the matcher."""
    root = tmp_path_factory.mktemp("flat")
    names = {b"".join(p) for p in __import__("itertools").product(
        [b"a", b"b", b".", b"*", b"\xff", b"\n", b"\\"], repeat=3)}  # fmt: skip
    names |= {b"L" * 255, b"a" * 100 + b"b", b"ab" * 60}
    for sub in (b"", b"a"):
        if sub:
            os.mkdir(os.fsencode(root) + b"/" + sub + b"x")
        for n in names:
            d = os.fsencode(root) + (b"/" + sub + b"x" if sub else b"")
            with open(d + b"/" + n, "wb"):
                pass
    return root


@settings(PROPS, max_examples=100)
@given(excludes=PATTERNS)
def test_walk_excludes_equal_pythons_fnmatch(
    fastwalk: ModuleType, flat: Path, excludes: list[str]
) -> None:
    c, py = walk_both([("top", flat)], excludes)
    assert c == py


def test_walk_matches_a_pattern_only_in_full(fastwalk: ModuleType, tmp_path: Path) -> None:
    # an assume-free check that the generated cases above can tell a difference: each of
    # these excludes leaves out exactly what fnmatch says
    for n in (b"ab", b"abb", b"ba", b"a\nb"):
        (tmp_path / os.fsdecode(n)).write_bytes(b"")
    for pats, left in [
        (["a*b"], {b"ba"}),
        (["a?b"], {b"ab", b"ba"}),
        (["*"], set()),
        (["a"], {b"ab", b"abb", b"ba", b"a\nb"}),
        (["/a*"], {b"ba"}),
    ]:
        c, py = walk_both([("", tmp_path)], pats)
        assert c == py
        assert {e[0] for e in c[0]} == left, pats
