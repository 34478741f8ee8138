"""Interop with the real programs, both ways: our archives restore with
``age -d | zstd -d | tar -x``, and ``tar -c | zstd | age -r`` archives restore with
``backup restore --file``.

This module also holds the tree builder and the real-tool helpers the other end-to-end
test modules import."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from backup.engine import run_backup
from backup.inventory import Inventory
from tests.conftest import Env, Key, require_tools, snapshot_tree, write_policy

# mtimes with a nanosecond part, all distinct; one before 1970
_BASE_NS = 1_700_000_000_123_456_789


def sh(cmd: str, *, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run a shell pipeline; a failure of any stage fails it."""
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, check=False)
    if check:
        assert proc.returncode == 0, f"{cmd}\n{proc.stderr.decode(errors='replace')}"
    return proc


def q(p: Path | str | bytes) -> str:
    return shlex.quote(os.fsdecode(p))


def cli(
    env: Env | None, *args: str, extra_env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``backup ARGS`` as a subprocess, in ``env``'s environment when given."""
    e = env.environ() if env is not None else dict(os.environ)
    if extra_env:
        e.update(extra_env)
    return subprocess.run(
        [sys.executable, "-m", "backup", *args],
        env=e,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def decrypt_with_tools(key: Key, archive: Path, out: Path) -> None:
    """``age -d -i KEY ARCHIVE | zstd -d > OUT``."""
    sh(f"age -d -i {q(key.path)} {q(archive)} | zstd -d -q -c > {q(out)}")


def extract_with_tools(key: Key, archive: Path, dest: Path) -> None:
    """``age -d -i KEY ARCHIVE | zstd -d | tar -x -C DEST``."""
    dest.mkdir(parents=True, exist_ok=True)
    sh(f"age -d -i {q(key.path)} {q(archive)} | zstd -d -q -c | tar -x -C {q(dest)}")


def encrypt_with_tools(recipient: str, tar_file: Path, out: Path) -> None:
    """``zstd < TAR | age -r RECIPIENT > OUT``."""
    sh(f"zstd -q -c {q(tar_file)} | age -r {q(recipient)} -o {q(out)}")


def staging_left(*dirs: Path) -> list[str]:
    """Staging directories (``.backup-restore-*``) left in any of ``dirs``."""
    found = []
    for d in dirs:
        if d.is_dir():
            found += [n for n in os.listdir(d) if "backup-restore-" in n]
    return found


@contextmanager
def small_tmpfs(mnt: Path, size: str = "2m") -> Iterator[Path]:
    """Mount a small tmpfs on ``mnt`` (root only) to run out of space on purpose."""
    mnt.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {proc.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def link_groups(root: Path) -> set[frozenset[bytes]]:
    """Sets of relative paths that share an inode (hard-link groups)."""
    by_ino: dict[int, set[bytes]] = defaultdict(set)
    rootb = os.fsencode(root)
    for dirpath, _dirs, files in os.walk(rootb):
        for n in files:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            if not os.path.islink(p) and st.st_nlink > 1:
                by_ino[st.st_ino].add(os.path.relpath(p, rootb))
    return {frozenset(g) for g in by_ino.values()}


def assert_same_tree(expected: Path, actual: Path) -> None:
    """Names, types, modes, mtimes to the ns, contents, link targets and hard-link groups."""
    a, b = snapshot_tree(expected), snapshot_tree(actual)
    assert sorted(b) == sorted(a), "different names"
    for p in a:
        assert b[p] == a[p], f"{p!r} differs"
    assert link_groups(actual) == link_groups(expected)


def set_times(root: Path, *, whole_seconds: bool = False, start: int = 0) -> None:
    """Give every path under ``root`` a distinct mtime with a nanosecond part, children
    before their directories so a directory's time is not disturbed afterwards."""
    rootb = os.fsencode(root)
    i = start
    for dirpath, dirs, files in os.walk(rootb, topdown=False):
        for n in sorted(files + dirs):
            p = os.path.join(dirpath, n)
            i += 1
            t = _BASE_NS + i * 1_000_003_007
            if n == b"old":
                t = -1_500_000_001  # before 1970
            if whole_seconds:
                t -= t % 1_000_000_000
            os.utime(p, ns=(t, t), follow_symlinks=False)


def make_tree(root: Path, *, whole_seconds: bool = False, big: bool = True) -> None:
    """A small tree with everything a restore must bring back: odd names (spaces, unicode,
    bytes that are not UTF-8, a leading dash, a newline), modes, ns mtimes, symlinks
    (relative, dangling, to a directory), hard links, empty and read-only directories, a long
    path, an empty file, and content that spans several age chunks."""
    r = os.fsencode(root)

    def w(rel: bytes, data: bytes, mode: int = 0o644) -> None:
        p = os.path.join(r, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
        os.chmod(p, mode)

    w(b"plain.txt", b"hello\n")
    w(b"exec.sh", b"#!/bin/sh\necho hi\n", 0o755)
    w(b"ro.txt", b"read only", 0o400)
    w(b"zero", b"")
    w(b"old", b"before the epoch")
    w(b"dir with space/file name with spaces.txt", b"spaces")
    w("ünïcødé/日本語.txt".encode(), "ünïcødé".encode())
    w(b"bad\xff\xfename", b"not utf-8")
    w(b"dir\xfe/inner\xff", b"inner")
    w(b"-leading-dash", b"dash")
    w(b"new\nline", b"newline")
    w(b"deep/a/b/c/" + b"x" * 120, b"long path")
    if big:
        w(b"big.bin", os.urandom(150_000))  # incompressible: several 64 KiB age chunks
    w(b"hl/a", b"linked content")
    os.link(os.path.join(r, b"hl/a"), os.path.join(r, b"hl/b"))
    os.link(os.path.join(r, b"hl/a"), os.path.join(r, b"hl-c"))
    os.makedirs(os.path.join(r, b"empty"))
    os.makedirs(os.path.join(r, b"empty-ro"))
    os.symlink(b"plain.txt", os.path.join(r, b"link-rel"))
    os.symlink(b"../../plain.txt", os.path.join(r, b"deep/a/up"))
    os.symlink(b"missing", os.path.join(r, b"dangling"))
    os.symlink(b"deep", os.path.join(r, b"dirlink"))
    os.symlink(b"bad\xff\xfename", os.path.join(r, b"link\xff"))
    os.chmod(os.path.join(r, b"empty-ro"), 0o555)
    os.chmod(os.path.join(r, b"deep/a"), 0o750)
    set_times(root, whole_seconds=whole_seconds)


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tools("age", "zstd", "tar")


def _only_archive(vault: Path, policy: str = "p") -> Path:
    archives = sorted((vault / policy).glob("*.tar.zst.age"))
    assert len(archives) == 1, archives
    return archives[0]


def test_our_archive_restores_with_age_zstd_tar(env: Env, inventory: Inventory) -> None:
    make_tree(env.source)
    res = run_backup(env.policy(), inventory)
    assert res.exit_code == 0
    archive = _only_archive(env.vault)
    assert archive.name == f"{res.archive.id}.tar.zst.age"
    out = env.tmp / "out"
    extract_with_tools(env.key, archive, out)
    # a single source's contents sit directly in the directory tar extracts into
    assert (out / "plain.txt").read_bytes() == b"hello\n"
    assert_same_tree(env.source, out)


def test_several_sources_each_under_its_own_name(
    tmp_path: Path, key: Key, inventory: Inventory
) -> None:
    alpha, beta = tmp_path / "alpha", tmp_path / "beta"
    make_tree(alpha, big=False)
    beta.mkdir()
    (beta / "b.txt").write_text("beta")
    config = tmp_path / "multi.toml"
    vault = tmp_path / "vault"
    write_policy(
        config,
        name="m",
        sources=[str(alpha), str(beta)],
        target=f"file://{vault}",
        recipients=[key.recipient],
    )
    from backup.policy import load_policies

    run_backup(load_policies(config)["m"], inventory)
    archive = _only_archive(vault, "m")
    plain = tmp_path / "plain.tar"
    decrypt_with_tools(key, archive, plain)
    names = sh(f"tar -t -f {q(plain)}").stdout.splitlines()
    assert names and all(n.startswith((b"alpha", b"beta")) for n in names), names[:5]
    assert b"beta/b.txt" in names
    out = tmp_path / "out"
    extract_with_tools(key, archive, out)
    assert sorted(os.listdir(out)) == ["alpha", "beta"]
    assert_same_tree(alpha, out / "alpha")
    assert (out / "beta" / "b.txt").read_text() == "beta"


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_archive_made_by_tar_zstd_age_restores(tmp_path: Path, key: Key, fmt: str) -> None:
    src = tmp_path / "src"
    # GNU format stores whole seconds only
    make_tree(src, whole_seconds=fmt == "gnu")
    plain, archive = tmp_path / "t.tar", tmp_path / "t.tar.zst.age"
    # gnu is GNU tar's default format: no --format option for it
    option = "" if fmt == "gnu" else f"--format={fmt}"
    sh(f"tar -c {option} -f {q(plain)} -C {q(src)} .")
    data = plain.read_bytes()
    if fmt == "gnu":
        assert data[257:265] == b"ustar  \0"
        assert b"././@LongLink" in data  # the long path
    else:
        assert data[257:265] == b"ustar\x0000" and data[156:157] == b"x"
    encrypt_with_tools(key.recipient, plain, archive)
    out = tmp_path / "out"
    proc = cli(
        None, "restore", "--file", str(archive), "--to", str(out), "--identity", str(key.path)
    )
    assert proc.returncode == 0, proc.stderr
    assert "restored" in proc.stdout
    assert_same_tree(src, out)
    assert staging_left(tmp_path, out) == []
