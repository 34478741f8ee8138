"""The scan: the C walk and the Python walk give the same entries, errors and order.

Every test runs against both walks (``walker`` fixture); the C one is skipped only where the
extension is not built, and ``test_c_walk_is_built`` fails when a compiler is there but the
build did not happen, so a broken build cannot hide behind the fallback.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backup.archive.scan import DIR, FILE, SYMLINK, ScanResult, prefetch, scan, scan_iter

# the module, not the package's `scan` function of the same name
scan_mod = importlib.import_module("backup.archive.scan")
WALKERS = ["c", "python"]


@pytest.fixture(params=WALKERS)
def walker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "c":
        if not scan_mod.fast_walk_available():
            pytest.skip("the C walk is not built here")
    else:
        monkeypatch.setattr(scan_mod, "_fastwalk", None)
    yield request.param


def _mktree(root: Path) -> None:
    root.mkdir()
    (root / "a.txt").write_text("a")
    (root / "b").mkdir()
    (root / "b" / "c.tmp").write_text("c")
    (root / "b" / "deep").mkdir()
    (root / "b" / "deep" / "f").write_text("f")
    (root / "empty").mkdir()
    (root / "ab").write_text("sorts after a.txt? no: 'a.txt' < 'ab' by bytes")
    os.symlink("a.txt", root / "link")
    os.symlink("/nowhere/at/all", root / "dangling")
    os.link(root / "a.txt", root / "hard")
    os.mkfifo(root / "fifo")
    odd = os.fsencode(root) + b"/caf\xe9-\xff.bin"  # not UTF-8
    with open(odd, "wb") as f:
        f.write(b"odd")
    (root / "node_modules").mkdir()
    (root / "node_modules" / "x.js").write_text("x")
    (root / "b" / "node_modules").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))  # sockets are left out
    sock.close()
    deep = root / "d"
    for i in range(40):
        deep = deep / f"{i}"
    deep.mkdir(parents=True)
    (deep / "bottom").write_text("bottom")


def _expected(root: Path, top_rel: bytes = b"") -> list[tuple[bytes, str]]:
    """The walk order, computed independently: depth first, names sorted as bytes."""
    out: list[tuple[bytes, str]] = []

    def rec(d: bytes, rel: bytes) -> None:
        for name in sorted(os.listdir(d)):
            p = d + b"/" + name
            r = rel + b"/" + name if rel else name
            st = os.lstat(p)
            if stat.S_ISSOCK(st.st_mode):
                continue
            kind = {
                stat.S_IFREG: FILE,
                stat.S_IFDIR: DIR,
                stat.S_IFLNK: SYMLINK,
                stat.S_IFIFO: "fifo",
            }[stat.S_IFMT(st.st_mode)]
            out.append((r, kind))
            if kind == DIR:
                rec(p, r)

    rec(os.fsencode(root), top_rel)
    return out


def test_walk_order_kinds_and_metadata(tmp_path: Path, walker: str) -> None:
    root = tmp_path / "src"
    _mktree(root)
    res = scan("p", [("", root)], [])
    assert [(e.path, e.kind) for e in res.entries] == _expected(root)
    assert res.unreadable == [] and res.unreadable_dirs == []
    by = {e.path: e for e in res.entries}
    st = os.lstat(root / "a.txt")
    a = by[b"a.txt"]
    assert (a.size, a.mode, a.mtime_ns, a.ctime_ns, a.ino, a.dev, a.nlink, a.uid, a.gid) == (
        st.st_size,
        st.st_mode,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
        st.st_dev,
        st.st_nlink,
        st.st_uid,
        st.st_gid,
    )
    assert a.abspath == os.fsencode(root / "a.txt") and a.nlink == 2
    assert by[b"hard"].ino == a.ino
    assert by[b"link"].link == b"a.txt" and by[b"link"].size == 0
    assert by[b"dangling"].link == b"/nowhere/at/all"
    assert by[b"b"].size == 0 and by[b"b"].kind == DIR
    assert by[b"caf\xe9-\xff.bin"].size == 3


def test_c_and_python_walks_agree(tmp_path: Path) -> None:
    if not scan_mod.fast_walk_available():
        pytest.skip("the C walk is not built here")
    root = tmp_path / "src"
    _mktree(root)
    shutil.copytree(Path(__file__).parent, root / "copy")  # some more ordinary files
    for exclude in ([], ["*.tmp", "node_modules"], ["b/*", "d/0/1"], ["*"], ["?.txt", "/b"]):
        fast = scan("p", [("", root), ("named", root / "b")], exclude)
        saved = scan_mod._fastwalk
        scan_mod._fastwalk = None
        try:
            slow = scan("p", [("", root), ("named", root / "b")], exclude)
        finally:
            scan_mod._fastwalk = saved
        assert fast.entries == slow.entries, exclude
        assert fast.unreadable == slow.unreadable


@pytest.mark.parametrize(
    ("exclude", "gone", "kept"),
    [
        (["*.tmp"], [b"b/c.tmp"], [b"b", b"a.txt"]),
        # a name pattern at any depth; the directory is not entered
        (["node_modules"], [b"node_modules", b"node_modules/x.js", b"b/node_modules"], [b"b"]),
        # a trailing slash still means the name
        (["node_modules/"], [b"node_modules/x.js", b"b/node_modules"], [b"b/deep"]),
        # with a slash inside or at the start: the path from the source root
        (["/node_modules"], [b"node_modules"], [b"b/node_modules"]),
        (["b/deep"], [b"b/deep", b"b/deep/f"], [b"b", b"b/c.tmp"]),
        # `*` crosses slashes, as fnmatch's does
        (
            ["d/*/bottom"],
            [
                b"d/0/1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16/17/18/19/20/21/22/23/24/25/26/27/28/29/30/31/32/33/34/35/36/37/38/39/bottom"
            ],
            [b"d/0"],
        ),
        (["?.txt"], [b"a.txt"], [b"ab"]),
        # classes work too (these take the Python walk)
        (["[ab].txt"], [b"a.txt"], [b"ab"]),
        (["caf?-?.bin"], [b"caf\xe9-\xff.bin"], [b"a.txt"]),
    ],
)
def test_excludes(
    tmp_path: Path, walker: str, exclude: list[str], gone: list[bytes], kept: list[bytes]
) -> None:
    root = tmp_path / "src"
    _mktree(root)
    paths = {e.path for e in scan("p", [("", root)], exclude).entries}
    for g in gone:
        assert g not in paths, (exclude, g)
    for k in kept:
        assert k in paths, (exclude, k)


def test_named_sources_and_a_single_file(tmp_path: Path, walker: str) -> None:
    root = tmp_path / "src"
    _mktree(root)
    res = scan("p", [("docs", root / "b"), ("", root / "a.txt")], [])
    assert [e.path for e in res.entries] == [
        b"docs",
        b"docs/c.tmp",
        b"docs/deep",
        b"docs/deep/f",
        b"docs/node_modules",
        b"a.txt",
    ]


def test_scan_iter_reports_into_the_result(tmp_path: Path, walker: str) -> None:
    root = tmp_path / "src"
    _mktree(root)
    result = ScanResult()
    entries = list(scan_iter("p", [("", root)], [], result))
    assert [(e.path, e.kind) for e in entries] == _expected(root)
    assert result.entries == []


_PROBE = """
import json, os, sys
from pathlib import Path
import importlib
m = importlib.import_module("backup.archive.scan")
if sys.argv[2] == "python":
    m._fastwalk = None
r = m.scan("p", [("", Path(sys.argv[1]))], [])
print(json.dumps({
    "paths": [os.fsdecode(e.path) for e in r.entries],
    "unreadable": [[u.path.decode(), u.error] for u in r.unreadable],
    "dirs": [d.decode() for d in r.unreadable_dirs],
}))
"""


def test_unreadable_directory_is_reported_not_dropped(tmp_path: Path, walker: str) -> None:
    root = tmp_path / "src"
    _mktree(root)
    os.chmod(root / "b" / "deep", 0)
    cmd = [sys.executable, "-c", _PROBE, str(root), walker]
    if os.geteuid() == 0:  # root reads anything: drop the capabilities that let it
        cmd = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    try:
        out = json.loads(subprocess.run(cmd, capture_output=True, check=True).stdout)
    finally:
        os.chmod(root / "b" / "deep", 0o755)
    assert out["unreadable"] == [["b/deep", "Permission denied"]]
    assert out["dirs"] == ["b/deep"]
    assert "b/deep" in out["paths"] and "b/deep/f" not in out["paths"]
    assert "b/node_modules" in out["paths"]  # the walk goes on after it

    os.chmod(root, 0)
    cmd[-2] = str(root)
    try:
        out = json.loads(subprocess.run(cmd, capture_output=True, check=True).stdout)
    finally:
        os.chmod(root, 0o755)
    assert out == {"paths": [], "unreadable": [[".", "Permission denied"]], "dirs": [""]}


def test_prefetch_is_taken_once_and_sees_the_tree_as_it_was(tmp_path: Path, walker: str) -> None:
    root = tmp_path / "src"
    _mktree(root)
    started = prefetch("p", [("", root)], [])
    assert started == (walker == "c")  # only the C walk runs outside the GIL
    if started:
        scan_mod._prefetched[next(iter(scan_mod._prefetched))][0].join()
    (root / "later.txt").write_text("made after the prefetch")
    first = {e.path for e in scan("p", [("", root)], []).entries}
    assert (b"later.txt" in first) == (walker != "c")
    second = {e.path for e in scan("p", [("", root)], []).entries}
    assert b"later.txt" in second  # a prefetch serves one scan, then walks are fresh again


def test_failed_prefetch_leaves_the_error_to_the_scan(tmp_path: Path, walker: str) -> None:
    from backup.errors import SourceError

    prefetch("p", [("", tmp_path / "missing")], [])
    with pytest.raises(SourceError, match="does not exist"):
        scan("p", [("", tmp_path / "missing")], [])


def test_walk_threads_setting(tmp_path: Path, walker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from backup.errors import ConfigError

    root = tmp_path / "src"
    _mktree(root)
    monkeypatch.setenv("BACKUP_WALK_THREADS", "1")
    one = scan("p", [("", root)], []).entries
    monkeypatch.setenv("BACKUP_WALK_THREADS", "7")
    assert scan("p", [("", root)], []).entries == one
    monkeypatch.setenv("BACKUP_WALK_THREADS", "many")
    if walker == "c":
        with pytest.raises(ConfigError, match="BACKUP_WALK_THREADS must be a whole number"):
            scan("p", [("", root)], [])
    else:  # the Python walk has no threads to set
        assert scan("p", [("", root)], []).entries == one


def test_c_walk_is_built() -> None:
    """The install compiles the C walk where a compiler is found (setup.py); a build that
    silently failed would leave every backup on the slower walk."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here: the Python walk is used")
    assert scan_mod.fast_walk_available()
