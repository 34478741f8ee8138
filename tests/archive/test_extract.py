"""Tests of the restore's one-call file creation in C (extract._c_write_new), and of where
restored symlinks lead; restores as a whole are tested in tests/test_restore.py."""

from __future__ import annotations

import errno
import importlib
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from backup.crypto.age import load_identities
from backup.errors import ArchiveCorrupt, UnsafeArchiveEntry
from backup.restore import restore_file
from tests.conftest import Key, require_built, require_tools, snapshot_tree
from tests.test_interop import staging_left
from tests.test_restore import _OK, _member, make_archive

extract_mod = importlib.import_module("backup.archive.extract")


@pytest.fixture
def write_new() -> Any:
    return require_built(extract_mod._c_write_new, "a restored file's creation")


def test_creates_the_file_with_its_content_and_metadata(write_new: Any, tmp_path: Path) -> None:
    p = os.fsencode(tmp_path / "f\xff")
    for mtime_ns in (1_700_000_000_123_456_789, -1_500_000_001, 0):
        if os.path.lexists(p):
            os.unlink(p)
        assert write_new(p, b"data" * 1000, 0o4751, os.getuid(), os.getgid(), mtime_ns, True) == 0
        st = os.lstat(p)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o4751
        assert st.st_mtime_ns == mtime_ns and st.st_atime_ns == mtime_ns
        with open(p, "rb") as f:
            assert f.read() == b"data" * 1000


def test_an_open_that_creates_nothing_returns_its_errno(write_new: Any, tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.write_bytes(b"keep")
    link = tmp_path / "link"
    link.symlink_to(existing)
    assert write_new(os.fsencode(existing), b"new", 0o600, 0, 0, 0, False) == errno.EEXIST
    # a symlink in the way is never followed
    assert write_new(os.fsencode(link), b"new", 0o600, 0, 0, 0, False) == errno.EEXIST
    assert existing.read_bytes() == b"keep"
    missing_parent = os.fsencode(tmp_path / "no" / "f")
    assert write_new(missing_parent, b"x", 0o600, 0, 0, 0, False) == errno.ENOENT
    under_a_file = os.fsencode(existing / "f")
    assert write_new(under_a_file, b"x", 0o600, 0, 0, 0, False) == errno.ENOTDIR


def test_refuses_a_path_with_a_nul(write_new: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="embedded null byte"):
        write_new(os.fsencode(tmp_path / "a") + b"\0b", b"x", 0o600, 0, 0, 0, False)
    assert list(tmp_path.iterdir()) == []


def test_other_errors_raise_oserror_naming_the_path(write_new: Any, tmp_path: Path) -> None:
    long_name = os.fsencode(tmp_path) + b"/" + b"n" * 300
    with pytest.raises(OSError) as info:
        write_new(long_name, b"x", 0o600, 0, 0, 0, False)
    assert info.value.errno == errno.ENAMETOOLONG and info.value.filename == long_name


# where restored symlinks lead -------------------------------------------------------------


def _restore(
    tmp: Path, key: Key, members: list[tuple[tarfile.TarInfo, bytes]], dest: Path, **kw: Any
) -> None:
    archive = make_archive(tmp, key.recipient, members, name=dest.name)
    restore_file(archive, dest, load_identities(key.path), **kw)


def test_symlinks_are_resolved_not_read_as_text(tmp_path: Path, key: Key) -> None:
    """A link is judged by where it leads through the other links, not by its text alone:
    links that read as leaving but stay inside restore, and loops (which lead nowhere)."""
    require_tools("age", "zstd", "tar")
    members = [
        _member("x", tarfile.DIRTYPE),
        _member("x/y", tarfile.DIRTYPE),
        _member("dl", tarfile.SYMTYPE, link="x/y"),
        _member("s", tarfile.SYMTYPE, link="dl/../../x"),  # x/y -> x -> the root -> x
        _member("loop1", tarfile.SYMTYPE, link="loop2/.."),
        _member("loop2", tarfile.SYMTYPE, link="loop1/.."),
        _member("gone", tarfile.SYMTYPE, link="missing/../x"),
    ]
    dest = tmp_path / "out"
    _restore(tmp_path, key, members, dest)
    assert os.readlink(dest / "s") == "dl/../../x" and (dest / "s").resolve() == dest / "x"
    assert os.readlink(dest / "loop1") == "loop2/.."
    assert os.readlink(dest / "gone") == "missing/../x"


def test_links_in_the_destination_count_when_merging(tmp_path: Path, key: Key) -> None:
    """With --force the restored links join the destination's: one that leads out through a
    link already there is refused (and nothing changes); once the archive replaces that
    link with a directory, the same link stays inside and restores."""
    require_tools("age", "zstd", "tar")
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "ext").symlink_to(outside)
    (dest / "d").mkdir()
    (dest / "d" / "up").symlink_to("..")
    before = snapshot_tree(dest)
    for name, link in (("s", "ext/f"), ("t", "d/up/..")):
        with pytest.raises(UnsafeArchiveEntry, match=f"'{name}'.*leads outside") as ei:
            _restore(
                tmp_path, key, [_OK, _member(name, tarfile.SYMTYPE, link=link)], dest, force=True
            )
        assert "--allow-external-symlinks" in ei.value.get_message()
        assert snapshot_tree(dest) == before and staging_left(dest, tmp_path) == []
    # the archive's own ext: a directory where the destination has a link to outside
    members = [
        _member("ext", tarfile.DIRTYPE),
        _member("ext/f", data=b"f"),
        _member("s", tarfile.SYMTYPE, link="ext/f"),
    ]
    _restore(tmp_path, key, members, dest, force=True)
    assert (dest / "s").read_text() == "f" and os.listdir(outside) == []
    # allowed: restored as they are, and still never followed while restoring
    _restore(tmp_path, key, [_member("t", tarfile.SYMTYPE, link="d/up/..")], dest, force=True,
             allow_external_symlinks=True)  # fmt: skip
    assert os.readlink(dest / "t") == "d/up/.."


def test_a_symlink_target_no_system_can_make_is_refused_at_once(tmp_path: Path, key: Key) -> None:
    """Not resolved component by component first: one clear error naming the entry."""
    require_tools("age", "zstd", "tar")
    with pytest.raises(ArchiveCorrupt, match="symlink 's' has a target of 6000 bytes"):
        _restore(tmp_path, key, [_OK, _member("s", tarfile.SYMTYPE, link="a/" * 3000)],
                 tmp_path / "out")  # fmt: skip
    assert not (tmp_path / "out").exists() and staging_left(tmp_path) == []


def test_long_chains_of_links_resolve_without_recursion_limits(tmp_path: Path, key: Key) -> None:
    """A chain of 1000 links nests deeper than a resolution recurses (and than the
    kernel follows: each link is judged by where it leads from it); one that ends outside
    is refused, one that ends inside restores."""
    require_tools("age", "zstd", "tar")
    n = 1000
    chain = [_member(f"l{i}", tarfile.SYMTYPE, link=f"l{i + 1}") for i in range(n)]
    with pytest.raises(UnsafeArchiveEntry, match="leads outside"):
        _restore(tmp_path, key, [*chain, _member(f"l{n}", tarfile.SYMTYPE, link="..")],
                 tmp_path / "out")  # fmt: skip
    assert not (tmp_path / "out").exists()
    _restore(tmp_path, key, [*chain, _member(f"l{n}", tarfile.SYMTYPE, link="x/..")],
             tmp_path / "in")  # fmt: skip
    assert os.readlink(tmp_path / "in" / "l0") == "l1" and len(os.listdir(tmp_path / "in")) == n + 1


def test_owner_is_set_only_where_the_new_file_lacks_it(tmp_path: Path) -> None:
    """A file the restore creates belongs to the effective user and to the effective group
    (or, under a set-group-ID root, the root's group): for a member owned so, the chown is
    spared; any other owner is set when owners are restored, none when they are not."""
    root = tmp_path / "r"
    root.mkdir()

    def member(uid: int, gid: int) -> Any:
        return _owned(uid, gid)

    me = (os.geteuid(), os.getegid())
    ex = extract_mod.Extractor(os.fsencode(root), restore_owner=True, threads=1)
    try:
        assert not ex._chown_needed(member(*me))
        assert ex._chown_needed(member(me[0] + 1, me[1]))
        assert ex._chown_needed(member(me[0], me[1] + 1))
    finally:
        ex.close()
    ex = extract_mod.Extractor(os.fsencode(root), restore_owner=False, threads=1)
    try:
        assert not ex._chown_needed(member(me[0] + 1, me[1] + 1))
    finally:
        ex.close()
    # under a set-group-ID root, what the restore creates takes the root's group
    other_gid = me[1] + 1
    try:
        os.chown(root, -1, other_gid)
    except PermissionError:
        pytest.skip("needs root to give the directory another group")
    os.chmod(root, 0o2755)
    ex = extract_mod.Extractor(os.fsencode(root), restore_owner=True, threads=1)
    try:
        assert ex._chown_needed(member(*me))
        assert not ex._chown_needed(member(me[0], other_gid))
        ex._small_file_job(b"d/f", b"x", member(me[0], other_gid), "a.tar", None)
        ex._small_file_job(b"g", b"y", member(*me), "a.tar", None)
        ex.drain()
    finally:
        ex.close()
    assert (os.lstat(root / "d" / "f").st_uid, os.lstat(root / "d" / "f").st_gid) == (
        me[0],
        other_gid,
    )
    assert os.lstat(root / "g").st_gid == me[1]


def _owned(uid: int, gid: int) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(mode=0o644, uid=uid, gid=gid, mtime_ns=1_700_000_000_000_000_000)
