"""Restore end to end: every point in time of a chain, --at/--archive/--include, and
safety: unsafe entries, corrupted or truncated archives, wrong keys, full disks. A failed
restore leaves the destination as it was and no staging directory behind."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tracemalloc
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import zstandard

from backup.archive.manifest import ManifestReader, encode_manifest
from backup.cli.output import parse_time
from backup.crypto.age import (
    PayloadError,
    decrypt_bytes,
    encrypt_bytes,
    load_identities,
    parse_recipient,
)
from backup.engine import run_backup
from backup.errors import (
    ArchiveCorrupt,
    Error,
    RestoreDestinationNotEmpty,
    RestoreError,
    UnsafeArchiveEntry,
)
from backup.inventory import Inventory
from backup.restore import _Expected, restore, restore_file, verify
from tests.conftest import Env, Key, require_tools, snapshot_tree
from tests.test_interop import (
    cli,
    decrypt_with_tools,
    encrypt_with_tools,
    link_groups,
    make_tree,
    set_times,
    sh,
    small_tmpfs,
    staging_left,
)


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tools("age", "zstd", "tar")


Snapshot = tuple[dict[bytes, tuple[Any, ...]], set[frozenset[bytes]]]


def take(root: Path) -> Snapshot:
    return snapshot_tree(root), link_groups(root)


def assert_restored(expected: Snapshot, out: Path) -> None:
    tree, groups = expected
    got = snapshot_tree(out)
    assert sorted(got) == sorted(tree), "different names"
    for p in tree:
        assert got[p] == tree[p], f"{p!r} differs"
    assert link_groups(out) == groups


# a chain of four archives ---------------------------------------------------------------


def _chain_step_1(src: Path) -> None:
    (src / "plain.txt").write_text("changed in 1\n")
    (src / "added.txt").write_text("added in 1")
    os.unlink(src / "exec.sh")
    # file replaced by a directory
    os.unlink(src / "zero")
    (src / "zero").mkdir()
    (src / "zero" / "inside").write_text("inside")
    # directory replaced by a file
    shutil.rmtree(src / "deep" / "a" / "b")
    (src / "deep" / "a" / "b").write_text("b is a file now")
    os.chmod(src / "ro.txt", 0o444)
    os.unlink(src / "link-rel")
    os.symlink("added.txt", src / "link-rel")
    (src / os.fsdecode(b"-odd\n\xff name")).write_text("odd")
    # a hard-linked file replaced by a directory
    os.unlink(src / "hp")
    (src / "hp").mkdir()
    (src / "hp" / "c").write_text("c")


def _chain_step_2(src: Path) -> None:
    os.unlink(src / "added.txt")  # link-rel now dangles
    shutil.rmtree(src / "zero")
    (src / "zero").write_bytes(b"")
    os.unlink(src / "deep" / "a" / "b")
    (src / "deep" / "a" / "b").mkdir()
    (src / "deep" / "a" / "b" / "new").write_text("new in 2")
    with open(src / "hl" / "a", "r+b") as f:
        f.write(b"LINKED")
    os.unlink(src / "hl-c")
    # and back to a file: the older archives hold a file, a directory, a file
    shutil.rmtree(src / "hp")
    (src / "hp").write_text("hp is a file again")


def _chain_step_3(src: Path) -> None:
    (src / "exec.sh").write_text("#!/bin/sh\necho back\n")
    os.chmod(src / "exec.sh", 0o750)
    (src / "empty" / "now-not").mkdir()
    os.chmod(src / "dir with space", 0o700)
    os.rename(src / os.fsdecode(b"bad\xff\xfename"), src / os.fsdecode(b"renamed\xfe"))
    (src / os.fsdecode(b"dir\xfe") / os.fsdecode(b"inner\xff")).write_text("inner 3")
    # symlink -> directory, file -> symlink, directory -> symlink
    os.unlink(src / "dirlink")
    (src / "dirlink").mkdir()
    (src / "dirlink" / "real").write_text("real")
    os.unlink(src / "-leading-dash")
    os.symlink("plain.txt", src / "-leading-dash")
    os.rmdir(src / "empty-ro")
    os.symlink("deep", src / "empty-ro")


def test_restore_every_point_of_a_chain(env: Env, inventory: Inventory) -> None:
    src = env.source
    make_tree(src, big=False)
    (src / "hp").write_text("hp")
    os.link(src / "hp", src / "hq")
    set_times(src)
    snaps: list[Snapshot] = []
    ids: list[str] = []
    for step in (None, _chain_step_1, _chain_step_2, _chain_step_3):
        if step is not None:
            step(src)
        res = run_backup(env.policy(), inventory)
        assert res.exit_code == 0
        ids.append(res.archive.id)
        snaps.append(take(src))
    kinds = [inventory.get(i).kind for i in ids]
    assert kinds == ["full", "incremental", "incremental", "incremental"]
    assert snaps[0] != snaps[1] != snaps[2] != snaps[3]

    listed = json.loads(cli(env, "list", "p", "--json").stdout)
    assert [a["id"] for a in listed] == ids
    ident = load_identities(env.key.path)
    for i, a in enumerate(listed):
        out = env.tmp / f"out{i}"
        # the times `list --json` prints are accepted back by --at (one through the CLI,
        # the others through the same parser, in this process: each CLI run costs ~1 s)
        if i == 1:
            proc = cli(env, "restore", "p", "--to", str(out), "--at", a["created"], "--json")
            assert proc.returncode == 0, proc.stderr
            assert json.loads(proc.stdout)["archives"] == ids[:2]
        else:
            res = restore("p", inventory, out, ident, at=parse_time(a["created"]))
            assert res.archives == ids[: i + 1]
        assert_restored(snaps[i], out)
        assert staging_left(env.tmp, out) == []

    # between two archives: the older one; by id prefix: that one
    t1 = inventory.get(ids[1]).created
    out = env.tmp / "between"
    res = restore("p", inventory, out, ident, at=t1 + (inventory.get(ids[2]).created - t1) / 2)
    assert res.archives == ids[:2]
    assert_restored(snaps[1], out)
    out = env.tmp / "by-id"
    res = restore("p", inventory, out, ident, archive_id=ids[2][:-2])
    assert res.archives == ids[:3]
    assert_restored(snaps[2], out)


def test_restore_include_and_time_before_first(env: Env, inventory: Inventory) -> None:
    make_tree(env.source, big=False)
    a = run_backup(env.policy(), inventory).archive
    ident = load_identities(env.key.path)
    out = env.tmp / "out"
    restore("p", inventory, out, ident, include=["deep", "*.txt"])
    full = snapshot_tree(env.source)
    want = {p: v for p, v in full.items() if p.startswith(b"deep") or p.endswith(b".txt")}
    got = snapshot_tree(out)
    # the parents of included files come back too, as directories
    assert {p: v for p, v in got.items() if p in want} == want
    assert set(got) - set(want) <= {b"dir with space", "ünïcødé".encode()}
    assert b"exec.sh" not in got and b"hl" not in got

    # tar keeps a hard-linked file's data under its first name (hl/a): included names
    # that only link to it still come back, with the content, linked to each other
    out = env.tmp / "links"
    restore("p", inventory, out, ident, include=["hl/b", "hl-c"])
    assert link_groups(out) == {frozenset({b"hl/b", b"hl-c"})}
    assert (out / "hl-c").read_bytes() == b"linked content"
    assert not (out / "hl" / "a").exists()
    out = env.tmp / "one-link"
    restore("p", inventory, out, ident, include=["hl-c"])
    assert sorted(os.listdir(out)) == ["hl-c"]
    assert snapshot_tree(out)[b"hl-c"][:4] == full[b"hl-c"][:4]

    early = a.created - timedelta(seconds=1)
    proc = cli(env, "restore", "p", "--to", str(env.tmp / "o2"), "--at", early.isoformat())
    assert proc.returncode == 1
    assert "no complete archive at or before" in proc.stderr
    assert not (env.tmp / "o2").exists()


def test_destination_not_empty_needs_force(env: Env, inventory: Inventory) -> None:
    (env.source / "f").write_text("from the archive")
    run_backup(env.policy(), inventory)
    dest = env.tmp / "dest"
    dest.mkdir()
    (dest / "mine").write_text("mine")
    (dest / "f").write_text("old")
    proc = cli(env, "restore", "p", "--to", str(dest))
    assert proc.returncode == 1
    assert "not empty" in proc.stderr and "--force" in proc.stderr
    assert (dest / "f").read_text() == "old"
    ident = load_identities(env.key.path)
    with pytest.raises(RestoreDestinationNotEmpty):
        restore("p", inventory, dest, ident)
    restore("p", inventory, dest, ident, force=True)
    assert (dest / "f").read_text() == "from the archive"
    assert (dest / "mine").read_text() == "mine"
    assert staging_left(dest, env.tmp) == []


# --force merges into what is there ----------------------------------------------------------


def test_force_include_replaces_only_the_included_file(env: Env, inventory: Inventory) -> None:
    """The issue's case: `restore P --to LIVE --include docs/a.txt --force` replaced the whole
    of LIVE/docs with a directory holding a.txt alone."""
    src = env.source
    (src / "docs" / "sub").mkdir(parents=True)
    for rel in ("docs/a.txt", "docs/b.txt", "docs/sub/c.txt", "top.txt"):
        (src / rel).write_text(f"{rel} as archived")
    run_backup(env.policy(), inventory)
    live = env.tmp / "live"
    shutil.copytree(src, live, symlinks=True)
    (live / "docs" / "a.txt").write_text("damaged")
    (live / "docs" / "b.txt").write_text("edited since")
    (live / "docs" / "new.txt").write_text("made since")
    (live / "top.txt").write_text("edited since")
    before = snapshot_tree(live)
    proc = cli(env, "restore", "p", "--to", str(live), "--include", "docs/a.txt", "--force")
    assert proc.returncode == 0, proc.stderr
    after = snapshot_tree(live)
    assert after[b"docs/a.txt"] == snapshot_tree(src)[b"docs/a.txt"]
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    # docs was not restored (only what it holds): its mode stays, its mtime is the change's
    assert changed <= {b"docs/a.txt", b"docs"}
    assert after[b"docs"][:2] == before[b"docs"][:2]
    assert staging_left(live, env.tmp) == []


def _restore_members(
    tmp: Path, key: Key, members: list[tuple[tarfile.TarInfo, bytes]], dest: Path, name: str
) -> None:
    archive = make_archive(tmp, key.recipient, members, name=name)
    restore_file(archive, dest, load_identities(key.path), force=True)


def test_force_second_archive_over_a_first_keeps_what_it_never_held(
    tmp_path: Path, key: Key
) -> None:
    dest = tmp_path / "dest"
    first = [
        _member("docs", tarfile.DIRTYPE),
        _member("docs/a", data=b"a from the first"),
        _member("docs/b", data=b"b from the first"),
        _member("docs/deep", tarfile.DIRTYPE),
        _member("docs/deep/d", data=b"d from the first"),
        _member("x", data=b"x from the first"),
    ]
    _restore_members(tmp_path, key, first, dest, "first")
    root, docs = _member(".", tarfile.DIRTYPE), _member("docs", tarfile.DIRTYPE)
    root[0].mode, root[0].mtime = 0o751, 1_600_000_000
    docs[0].mode, docs[0].mtime = 0o750, 1_650_000_000
    second = [
        root,
        docs,
        _member("docs/a", data=b"a from the second"),
        _member("docs/deep/e", data=b"e from the second"),  # its parent is not in the archive
        _member("docs/c", data=b"c from the second"),
        _member("y", data=b"y from the second"),
    ]
    (dest / "docs" / "deep").chmod(0o700)
    _restore_members(tmp_path, key, second, dest, "second")
    files = {p: v[3] for p, v in snapshot_tree(dest).items() if v[0] == "f"}
    assert files == {
        b"docs/a": b"a from the second",
        b"docs/b": b"b from the first",
        b"docs/c": b"c from the second",
        b"docs/deep/d": b"d from the first",
        b"docs/deep/e": b"e from the second",
        b"x": b"x from the first",
        b"y": b"y from the second",
    }
    # a directory the archive holds takes its mode and mtime, after what it received; one
    # made only to hold an entry keeps the destination's
    st = os.stat(dest / "docs")
    assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o750, 1_650_000_000 * 10**9)
    assert os.stat(dest / "docs" / "deep").st_mode & 0o7777 == 0o700
    st = os.stat(dest)
    assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o751, 1_600_000_000 * 10**9)
    assert staging_left(dest, tmp_path) == []


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "without-exchange"])
def test_force_replaces_across_types_and_never_follows_a_link_in_the_destination(
    tmp_path: Path, key: Key, exchange: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """File, directory and symlink replace one another; a symlink in the destination where
    the archive has a directory is replaced by it, never followed; other names of a
    replaced hard link keep their content. Without renameat2's exchange (an old kernel, a
    network filesystem) the same result."""
    import importlib

    if not exchange:
        monkeypatch.setattr(importlib.import_module("backup.restore"), "_renameat2", None)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "theirs").write_text("outside")
    dest = tmp_path / "dest"
    t = dest / "t"  # below the top: what the old commit replaced whole
    t.mkdir(parents=True)
    (t / "f").write_text("a file, a directory in the archive")
    (t / "d").mkdir()
    (t / "d" / "kept?").write_text("under a directory the archive has as a file")
    (t / "real").mkdir()
    (t / "real" / "mine").write_text("mine")
    (t / "l").symlink_to("real")
    (t / "out").symlink_to(outside)
    (t / "s").write_text("a file, a symlink in the archive")
    (t / "dl").mkdir()
    (t / "h1").write_text("old linked")
    os.link(t / "h1", t / "h2")
    (t / "untouched").write_text("untouched")
    members = [
        _member("t/d", data=b"now a file"),
        _member("t/dl", tarfile.SYMTYPE, link="f"),
        _member("t/f", tarfile.DIRTYPE),
        _member("t/f/in", data=b"in f"),
        _member("t/h1", data=b"new h1"),
        _member("t/l", tarfile.DIRTYPE),
        _member("t/l/x", data=b"in l"),
        _member("t/out/f", data=b"in out"),
        _member("t/s", tarfile.SYMTYPE, link="f/in"),
    ]
    _restore_members(tmp_path, key, members, dest, "types")
    got = snapshot_tree(t)
    assert {p: v[0] for p, v in got.items()} == {
        b"d": "f",
        b"dl": "l",
        b"f": "d",
        b"f/in": "f",
        b"h1": "f",
        b"h2": "f",
        b"l": "d",
        b"l/x": "f",
        b"out": "d",
        b"out/f": "f",
        b"real": "d",
        b"real/mine": "f",
        b"s": "l",
        b"untouched": "f",
    }
    assert (t / "d").read_text() == "now a file"
    assert (t / "s").read_text() == "in f"
    assert (t / "h1").read_text() == "new h1" and (t / "h2").read_text() == "old linked"
    assert os.listdir(outside) == ["theirs"] and os.listdir(t / "real") == ["mine"]
    assert staging_left(dest, tmp_path) == []


def test_force_merge_that_cannot_finish_is_undone(tmp_path: Path, key: Key) -> None:
    """A directory of the destination on another filesystem cannot receive a rename: the
    merge stops there, undoes what it did, and says why. (It used to delete the mounted
    filesystem's content, the whole top-level entry being replaced.)"""
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "a.txt").write_text("mine")
    with small_tmpfs(dest / "mnt") as mnt:
        (mnt / "on-the-mount").write_text("mounted")
        before = snapshot_tree(dest)
        archive = make_archive(
            tmp_path,
            key.recipient,
            [_member("a.txt", data=b"new a"), _member("mnt/f", data=b"f"), _OK],
        )
        with pytest.raises(RestoreError, match="mnt is a mount point") as ei:
            restore_file(archive, dest, load_identities(key.path), force=True)
        assert "untouched" in ei.value.get_message()
        assert snapshot_tree(dest) == before
        assert staging_left(dest, tmp_path) == []


def test_force_merge_where_permission_bits_bind(tmp_path: Path, key: Key) -> None:
    """As a user whom permission bits bind (root without the override capabilities):
    read-only directories the restore writes still give up their entries to the merge and
    get their modes at the end; a read-only directory of the destination that the restore
    would write into stops it, undone, in one line."""
    require_tools("setpriv")
    root, ro = _member(".", tarfile.DIRTYPE), _member("ro", tarfile.DIRTYPE)
    root[0].mode = ro[0].mode = 0o555
    archive = make_archive(
        tmp_path, key.recipient, [root, ro, _member("ro/f", data=b"f"), _member("top", data=b"t")]
    )
    dest = tmp_path / "dest"
    (dest / "ro").mkdir(parents=True)
    (dest / "ro" / "mine").write_text("mine")
    cmd = ["restore", "--file", str(archive), "--to", str(dest), "--identity", str(key.path)]
    setpriv = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]
    run = [*setpriv, sys.executable, "-m", "backup", *cmd, "--force"]
    proc = subprocess.run(run, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(dest)) == ["ro", "top"]
    assert sorted(os.listdir(dest / "ro")) == ["f", "mine"]
    assert os.stat(dest).st_mode & 0o777 == 0o555 == os.stat(dest / "ro").st_mode & 0o777

    dest2 = tmp_path / "dest2"
    (dest2 / "locked").mkdir(parents=True)
    (dest2 / "a").write_text("mine")
    archive = make_archive(
        tmp_path,
        key.recipient,
        [_member("a", data=b"new a"), _member("locked/f", data=b"f")],
        name="locked",
    )
    (dest2 / "locked").chmod(0o555)
    before = snapshot_tree(dest2)
    run = [*setpriv, sys.executable, "-m", "backup", *cmd[:2], str(archive), "--to", str(dest2)]
    proc = subprocess.run([*run, *cmd[5:], "--force"], capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Permission denied" in proc.stderr, proc.stderr
    assert "the destination is untouched" in proc.stderr
    assert snapshot_tree(dest2) == before
    assert staging_left(dest, dest2, tmp_path) == []


def test_destination_that_cannot_be_made_is_one_clear_error(tmp_path: Path, key: Key) -> None:
    archive = make_archive(tmp_path, key.recipient, [_OK])
    (tmp_path / "a-file").write_text("not a directory")
    dest = tmp_path / "a-file" / "dest"
    with pytest.raises(RestoreError, match=f"cannot write into {re.escape(str(dest))}"):
        restore_file(archive, dest, load_identities(key.path))
    assert (tmp_path / "a-file").read_text() == "not a directory"


# unsafe archives --------------------------------------------------------------------------


def _member(
    name: str | bytes, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = ""
) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(os.fsdecode(name))
    ti.type = kind
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    ti.mtime = 1_700_000_000
    ti.linkname = link
    return ti, data


def make_archive(
    tmp: Path, recipient: str, members: list[tuple[tarfile.TarInfo, bytes]], name: str = "evil"
) -> Path:
    """A tar built by Python's tarfile, compressed by the real zstd, encrypted by age -r."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for ti, data in members:
            t.addfile(ti, io.BytesIO(data) if ti.type == tarfile.REGTYPE else None)
    plain = tmp / f"{name}.tar"
    plain.write_bytes(buf.getvalue())
    out = tmp / f"{name}.tar.zst.age"
    encrypt_with_tools(recipient, plain, out)
    return out


_OK = _member("ok.txt", data=b"fine")
_UNSAFE: dict[str, tuple[list[tuple[tarfile.TarInfo, bytes]], str]] = {
    "absolute": (
        [_OK, _member("/tmp/backup-test-victim/abs", data=b"x")],
        "/tmp/backup-test-victim/abs",
    ),
    "dotdot": ([_OK, _member("../escaped", data=b"x")], "../escaped"),
    "inner-dotdot": ([_OK, _member("a/../../escaped", data=b"x")], "a/../../escaped"),
    "hardlink-dotdot": ([_OK, _member("h", tarfile.LNKTYPE, link="../victim/file")], "h"),
    "hardlink-absolute": ([_OK, _member("h", tarfile.LNKTYPE, link="/etc/hostname")], "h"),
    "symlink-dotdot": ([_OK, _member("s", tarfile.SYMTYPE, link="../victim")], "s"),
    "symlink-absolute": ([_OK, _member("s", tarfile.SYMTYPE, link="/etc")], "s"),
    "symlink-deep-dotdot": (
        [_member("a", tarfile.DIRTYPE), _member("a/s", tarfile.SYMTYPE, link="../../victim")],
        "a/s",
    ),
    "file-under-symlink": (
        [
            _member("sub", tarfile.DIRTYPE),
            _member("d", tarfile.SYMTYPE, link="sub"),
            _member("d/f", data=b"through the link"),
        ],
        "d/f",
    ),
    "hardlink-to-symlink-moves-it": (
        [
            _member("a", tarfile.DIRTYPE),
            _member("a/b", tarfile.DIRTYPE),
            # harmless where it is (a/b/../x is a/x) but not at the top of the tree
            _member("a/b/s", tarfile.SYMTYPE, link="../x"),
            _member("t", tarfile.LNKTYPE, link="a/b/s"),
        ],
        "t",
    ),
    # each link harmless by its own text; what it leads through makes it leave
    "symlink-through-a-link-to-dot": (
        [_member("a", tarfile.SYMTYPE, link="."), _member("b", tarfile.SYMTYPE, link="a/..")],
        "b",
    ),
    "symlink-through-a-directory-link": (
        [
            _member("x", tarfile.DIRTYPE),
            _member("x/dl", tarfile.SYMTYPE, link=".."),
            _member("x/s", tarfile.SYMTYPE, link="dl/.."),
        ],
        "x/s",
    ),
    "symlink-chain": (
        [
            _member("a", tarfile.DIRTYPE),
            _member("a/b", tarfile.DIRTYPE),
            _member("a/b/up", tarfile.SYMTYPE, link=".."),  # a
            _member("a/up2", tarfile.SYMTYPE, link="b/up/.."),  # the root
            _member("top", tarfile.SYMTYPE, link="a/up2/../x"),
        ],
        "top",
    ),
    "symlink-made-before-the-link-it-leads-through": (
        [_member("s", tarfile.SYMTYPE, link="z/../x"), _member("z", tarfile.SYMTYPE, link=".")],
        "s",
    ),
    "hardlink-to-a-symlink-through-a-link": (
        [
            _member("d", tarfile.DIRTYPE),
            _member("d/k", tarfile.SYMTYPE, link="."),
            _member("d/s", tarfile.SYMTYPE, link="k/.."),  # d/k/.. is the root
            _member("k", tarfile.SYMTYPE, link="."),
            _member("h", tarfile.LNKTYPE, link="d/s"),  # k/.. from the root: its parent
        ],
        "h",
    ),
}


@pytest.mark.parametrize("case", sorted(_UNSAFE))
def test_unsafe_entries_are_refused(tmp_path: Path, key: Key, case: str) -> None:
    members, entry = _UNSAFE[case]
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file").write_text("victim")
    work = tmp_path / "work"
    work.mkdir()
    archive = make_archive(tmp_path, key.recipient, members)
    dest = work / "dest"
    with pytest.raises(UnsafeArchiveEntry) as ei:
        restore_file(archive, dest, load_identities(key.path))
    msg = ei.value.get_message()
    assert "refusing unsafe entry" in msg and repr(entry) in msg, msg
    assert str(archive) in msg
    assert not dest.exists()
    assert staging_left(work) == []
    assert os.listdir(victim) == ["file"] and (victim / "file").read_text() == "victim"
    assert not Path("/tmp/backup-test-victim").exists()


def test_unsafe_entry_refused_by_cli_and_existing_destination_unchanged(
    tmp_path: Path, key: Key
) -> None:
    archive = make_archive(
        tmp_path,
        key.recipient,
        [_OK, _member("big", data=b"y" * 100_000), _member("../escaped", data=b"x")],
    )
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "ok.txt").write_text("mine")
    before = snapshot_tree(dest)
    proc = cli(
        None,
        "restore",
        "--file",
        str(archive),
        "--to",
        str(dest),
        "--identity",
        str(key.path),
        "--force",
    )
    assert proc.returncode == 1
    assert "refusing unsafe entry '../escaped'" in proc.stderr and str(archive) in proc.stderr
    assert snapshot_tree(dest) == before
    assert staging_left(dest, tmp_path) == []
    assert not (tmp_path / "escaped").exists()


def test_external_symlink_only_with_flag(tmp_path: Path, key: Key) -> None:
    archive = make_archive(
        tmp_path, key.recipient, [_OK, _member("etc", tarfile.SYMTYPE, link="/etc")]
    )
    base = ["restore", "--file", str(archive), "--identity", str(key.path)]
    proc = cli(None, *base, "--to", str(tmp_path / "no"))
    assert proc.returncode == 1
    assert "'etc'" in proc.stderr and "--allow-external-symlinks" in proc.stderr
    assert not (tmp_path / "no").exists() and staging_left(tmp_path) == []
    restore_file(archive, tmp_path / "yes", load_identities(key.path), allow_external_symlinks=True)
    assert os.readlink(tmp_path / "yes" / "etc") == "/etc"
    # still no write through an external symlink
    bad = make_archive(
        tmp_path,
        key.recipient,
        [_member("d", tarfile.SYMTYPE, link=str(tmp_path / "victim")), _member("d/f", data=b"x")],
        name="through",
    )
    (tmp_path / "victim").mkdir()
    with pytest.raises(UnsafeArchiveEntry, match="'d/f'"):
        restore_file(bad, tmp_path / "t", load_identities(key.path), allow_external_symlinks=True)
    assert os.listdir(tmp_path / "victim") == []
    assert not (tmp_path / "t").exists()


# damaged archives, wrong keys, full disks -------------------------------------------------


def _good_archive(tmp: Path, key: Key) -> tuple[Path, Path]:
    """A tar | zstd | age archive spanning several age chunks, and its source."""
    src = tmp / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    (src / "random.bin").write_bytes(os.urandom(300_000))
    (src / "z.txt").write_text("z")
    plain = tmp / "good.tar"
    sh(f"tar -c --format=pax -f {plain} -C {src} .")
    out = tmp / "good.tar.zst.age"
    encrypt_with_tools(key.recipient, plain, out)
    return out, src


def _flip_middle(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))


def _damage(case: str, archive: Path, tmp: Path, key: Key) -> tuple[Path, list[str]]:
    """Returns the archive to restore and the identity arguments."""
    if case == "corrupted":
        _flip_middle(archive)
    elif case == "truncated":
        data = archive.read_bytes()
        archive.write_bytes(data[: len(data) - 1000])
    elif case == "not-age":
        archive.write_bytes(b"PK\x03\x04 this is a zip file, not an age file" * 100)
    elif case == "age-but-not-zstd":
        plain = tmp / "text"
        plain.write_bytes(b"just text\n" * 1000)
        sh(f"age -r {key.recipient} -o {archive} {plain}")
    elif case == "wrong-key":
        other = tmp / "other.txt"
        sh(f"age-keygen -o {other}")
        return archive, ["--identity", str(other)]
    return archive, ["--identity", str(key.path)]


_DAMAGE_MESSAGES = {
    "corrupted": "corrupt",
    "truncated": "truncated",
    "not-age": "not an age file",
    "age-but-not-zstd": "corrupt",
    "wrong-key": "No identity matches",
}


@pytest.mark.parametrize("case", sorted(_DAMAGE_MESSAGES))
def test_damaged_archive_file_leaves_destination_untouched(
    tmp_path: Path, key: Key, case: str
) -> None:
    good, _src = _good_archive(tmp_path, key)
    archive, ident = _damage(case, good, tmp_path, key)
    dest = tmp_path / "new"
    proc = cli(None, "restore", "--file", str(archive), "--to", str(dest), *ident)
    assert proc.returncode == 1, proc.stderr
    assert str(archive) in proc.stderr
    assert _DAMAGE_MESSAGES[case] in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not dest.exists()
    assert staging_left(tmp_path) == []
    # into an existing destination, with --force: left as it was
    dest = tmp_path / "existing"
    dest.mkdir()
    (dest / "a.txt").write_text("mine")
    before = snapshot_tree(dest)
    with pytest.raises(Error, match=re.escape(str(archive))):
        restore_file(archive, dest, load_identities(ident[1]), force=True)
    assert snapshot_tree(dest) == before
    assert staging_left(dest, tmp_path) == []


def test_corrupted_archive_in_inventory_fails_restore_and_verify(
    env: Env, inventory: Inventory
) -> None:
    make_tree(env.source)
    aid = run_backup(env.policy(), inventory).archive.id
    archive = env.vault / "p" / f"{aid}.tar.zst.age"
    cwd = env.tmp / "cwd"
    cwd.mkdir()
    vault_before = {p: p.read_bytes() for p in env.vault.rglob("*") if p.is_file()}

    proc = cli(env, "verify", aid, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert aid in proc.stdout and "OK" in proc.stdout
    assert {p: p.read_bytes() for p in env.vault.rglob("*") if p.is_file()} == vault_before
    assert os.listdir(cwd) == []

    archive_backup = env.tmp / "archive.bak"
    shutil.copy(archive, archive_backup)
    _flip_middle(archive)
    proc = cli(env, "verify", aid, cwd=cwd)
    assert proc.returncode == 1
    assert aid in proc.stderr and "corrupt" in proc.stderr
    assert os.listdir(cwd) == []

    dest = env.tmp / "dest"
    with pytest.raises(PayloadError, match=aid):
        restore("p", inventory, dest, load_identities(env.key.path))
    assert not dest.exists() and staging_left(env.tmp) == []

    # re-encrypted to the right key after a change (age authenticates it): the manifest's
    # hashes catch it
    plain = env.tmp / "plain.tar"
    decrypt_with_tools(env.key, archive_backup, plain)
    data = plain.read_bytes()
    at = data.index(b"hello\n")
    plain.write_bytes(data[:at] + b"HELLO\n" + data[at + 6 :])
    encrypt_with_tools(env.key.recipient, plain, archive)
    with pytest.raises(
        ArchiveCorrupt, match=f"{aid}.*'plain.txt' does not match its manifest hash"
    ):
        verify(aid, inventory, load_identities(env.key.path))
    with pytest.raises(
        ArchiveCorrupt, match=f"{aid}.*'plain.txt' does not match its manifest hash"
    ):
        restore("p", inventory, dest, load_identities(env.key.path))
    assert not dest.exists() and staging_left(env.tmp) == []

    # a stored object swapped for another good one is caught by the inventory's hash
    other = run_backup(env.policy(), inventory, full=True).archive.id
    shutil.copy(env.vault / "p" / f"{other}.tar.zst.age", archive)
    with pytest.raises(ArchiveCorrupt, match=aid):
        restore("p", inventory, dest, load_identities(env.key.path), archive_id=aid)
    assert not dest.exists() and staging_left(env.tmp) == []


def _rewrite_manifest(env: Env, inventory: Inventory, aid: str, change: Any) -> None:
    """Decrypt an archive's manifest, let ``change`` edit its JSON, and store it again,
    encrypted to the same key (age cannot tell: anyone with the public key can do this)."""
    path = env.vault / inventory.get(aid).manifest_location
    plain = decrypt_bytes(path.read_bytes(), load_identities(env.key.path))
    m = json.loads(zstandard.ZstdDecompressor().decompressobj().decompress(plain))
    change(m)
    raw = zstandard.ZstdCompressor().compress(json.dumps(m).encode())
    path.write_bytes(encrypt_bytes(raw, [parse_recipient(env.key.recipient)]))


def test_a_manifest_out_of_archive_order_still_restores_and_verifies(
    env: Env, inventory: Inventory
) -> None:
    """Restore and verify read a manifest's entries as a stream, in archive order, as every
    writer wrote them; one in another order (and spaced, and with its fields after the
    entries, as the first writer put them) is still read right, through a map."""
    make_tree(env.source)
    full = run_backup(env.policy(), inventory).archive.id
    first = take(env.source)
    (env.source / "plain.txt").write_text("changed")
    (env.source / "hl-c").unlink()
    inc = run_backup(env.policy(), inventory).archive.id
    second = take(env.source)

    def shuffle(m: dict[str, Any]) -> None:
        entries = m.pop("entries")
        entries.reverse()
        deleted = m.pop("deleted")
        m["entries"], m["deleted"] = entries, deleted

    _rewrite_manifest(env, inventory, full, shuffle)
    ident = load_identities(env.key.path)
    assert verify(full, inventory, ident).files_checked > 10
    restore("p", inventory, env.tmp / "at-full", ident, archive_id=full)
    assert_restored(first, env.tmp / "at-full")
    restore("p", inventory, env.tmp / "at-inc", ident, archive_id=inc)
    assert_restored(second, env.tmp / "at-inc")

    # what verify catches either way: an entry the manifest lacks, one the archive lacks
    def drop(m: dict[str, Any]) -> None:
        m["entries"] = [e for e in m["entries"] if e["path"] != "exec.sh"]

    _rewrite_manifest(env, inventory, full, drop)
    with pytest.raises(ArchiveCorrupt, match=f"{full}.*'exec.sh' is not in the manifest"):
        verify(full, inventory, ident)

    def extra(m: dict[str, Any]) -> None:
        m["entries"].append(dict(m["entries"][0], path="never-archived"))

    _rewrite_manifest(env, inventory, inc, extra)
    with pytest.raises(ArchiveCorrupt, match=r"1 manifest entries missing.*'never-archived'"):
        verify(inc, inventory, ident)


def test_expected_hashes_in_order_hold_a_batch_and_out_of_order_still_answer() -> None:
    n = 200_000
    entries = [
        {"path": f"d/{i:06}", "type": "file", "offset": i, "sha256": f"{i:064x}"} for i in range(n)
    ]
    blob = encode_manifest({"format": 1, "deleted": []}, entries)
    with ManifestReader(io.BytesIO(blob), "a1") as m:
        tracemalloc.start()
        try:
            exp = _Expected(m)
            for i in range(0, n, 3):  # members between are not asked for (dirs, skipped)
                assert exp.get(f"d/{i:06}".encode()) == f"{i:064x}"
            held = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert held < 16 << 20, held  # a map of all 200,000 would be some 40 MB
        exp = _Expected(m)
        assert exp.get(b"d/000007") == f"{7:064x}"
        assert exp.get(b"d/000003") == f"{3:064x}"  # behind: through the map
        assert exp.get(b"d/199999") == f"{199999:064x}"
        assert exp.get(b"not there") is None


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "small") as mnt:
        yield mnt


def test_disk_full_during_restore(tmp_path: Path, key: Key, small_fs: Path) -> None:
    archive, _src = _good_archive(tmp_path, key)
    (_src / "big.bin").write_bytes(os.urandom(3 << 20))
    plain = tmp_path / "big.tar"
    sh(f"tar -c -f {plain} -C {_src} .")
    encrypt_with_tools(key.recipient, plain, archive)
    dest = small_fs / "dest"
    proc = cli(
        None, "restore", "--file", str(archive), "--to", str(dest), "--identity", str(key.path)
    )
    assert proc.returncode == 1
    assert "no space left" in proc.stderr and "untouched" in proc.stderr
    assert not dest.exists()
    assert os.listdir(small_fs) == []
    # the same into an existing destination on that disk
    dest.mkdir()
    (dest / "keep").write_text("keep")
    before = snapshot_tree(dest)
    with pytest.raises(RestoreError, match="no space left"):
        restore_file(archive, dest, load_identities(key.path), force=True)
    assert snapshot_tree(dest) == before
    assert staging_left(dest, small_fs) == []


def test_include_leaving_out_a_hard_link_target_of_a_file(tmp_path: Path, key: Key) -> None:
    """Without a manifest the link cannot be planned for: a clear error, not 'corrupt'."""
    archive = make_archive(
        tmp_path,
        key.recipient,
        [_member("a", data=b"data"), _member("b", tarfile.LNKTYPE, link="a")],
    )
    with pytest.raises(Error, match="'b' needs 'a', which --include leaves out") as ei:
        restore_file(archive, tmp_path / "out", load_identities(key.path), include=["b"])
    assert not isinstance(ei.value, ArchiveCorrupt)
    assert not (tmp_path / "out").exists() and staging_left(tmp_path) == []


def test_undamaged_archive_file_restores(tmp_path: Path, key: Key) -> None:
    """The control for the damage tests above: the same archive, undamaged, restores."""
    archive, src = _good_archive(tmp_path, key)
    res = restore_file(archive, tmp_path / "out", load_identities(key.path))
    assert res.files == 3
    assert snapshot_tree(tmp_path / "out") == snapshot_tree(src)


def test_restore_is_the_same_with_any_threads_and_without_c(
    env: Env, inventory: Inventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small files are written by one C call (extract._c_write_new) where it is built, and
    by Python otherwise; the filesystem threads are BACKUP_RESTORE_THREADS. Every way gives
    the same tree, and a bad thread count is a clear error."""
    import importlib

    from backup.errors import ConfigError

    extract_mod = importlib.import_module("backup.archive.extract")
    src = env.source
    make_tree(src, big=False)
    (src / "hp").write_text("hp")
    os.link(src / "hp", src / "hq")
    set_times(src)
    run_backup(env.policy(), inventory)
    _chain_step_1(src)
    run_backup(env.policy(), inventory)
    want = take(src)
    ident = load_identities(env.key.path)
    for i, (threads, c) in enumerate([("1", True), ("3", True), ("2", False)]):
        monkeypatch.setenv("BACKUP_RESTORE_THREADS", threads)
        if not c:
            monkeypatch.setattr(extract_mod, "_c_write_new", None)
        out = env.tmp / f"out{i}"
        restore("p", inventory, out, ident)
        assert_restored(want, out)
    monkeypatch.setenv("BACKUP_RESTORE_THREADS", "0")
    with pytest.raises(ConfigError, match="BACKUP_RESTORE_THREADS must be a whole number"):
        restore("p", inventory, env.tmp / "never", ident)
    assert not (env.tmp / "never").exists()
    assert staging_left(env.tmp, env.tmp / "never") == []
