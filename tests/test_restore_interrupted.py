"""A restore that does not finish leaves no staging directory that lasts: removed on an
error, an interrupt or SIGTERM; after SIGKILL, removed by the next restore into the same
destination (and only when its owner is dead). The restores here are real `backup restore`
processes reading a real age/zstd archive through a FIFO, so they can be stopped mid-way."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backup.crypto.age import load_identities
from backup.progress import Progress
from backup.restore import _host, _start_time, restore_file
from tests.conftest import Key, require_tools, snapshot_tree
from tests.test_interop import encrypt_with_tools, sh, staging_left


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tools("age", "zstd", "tar")


def _archive(tmp: Path, key: Key) -> tuple[Path, Path]:
    """An archive of several age chunks (incompressible content), and its source."""
    src = tmp / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "random.bin").write_bytes(os.urandom(300_000))
    plain = tmp / "a.tar"
    sh(f"tar -c --format=pax -f {plain} -C {src} .")
    out = tmp / "a.tar.zst.age"
    encrypt_with_tools(key.recipient, plain, out)
    return out, src


def _wait(cond: object, proc: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 60
    while not cond():  # type: ignore[operator]
        if proc.poll() is not None:
            pytest.fail(f"restore ended before {what}: {proc.communicate()}")
        assert time.monotonic() < deadline, f"no {what} after 60 s"
        time.sleep(0.02)


def _start(
    tmp: Path, key: Key, archive: Path, dest: Path, *extra: str
) -> tuple[subprocess.Popen[str], int]:
    """Start `backup restore --file FIFO --to DEST`, feed it the first third of ``archive``
    and return once its staging directory exists (the process then waits for more)."""
    fifo = tmp / "archive.fifo"
    os.mkfifo(fifo)
    cmd = [sys.executable, "-m", "backup", "restore", "--file", str(fifo), "--to", str(dest)]
    proc = subprocess.Popen(
        [*cmd, "--identity", str(key.path), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    fd: list[int] = []

    def opened() -> bool:
        try:
            fd.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError as e:
            if e.errno != errno.ENXIO:  # no reader yet
                raise
        return bool(fd)

    _wait(opened, proc, "opening the archive")
    os.set_blocking(fd[0], True)
    data = archive.read_bytes()
    os.write(fd[0], data[: len(data) // 3])
    _wait(lambda: staging_left(dest, dest.parent), proc, "a staging directory")
    return proc, fd[0]


@pytest.mark.parametrize("existing", [True, False], ids=["existing-empty", "new"])
def test_leftover_of_a_killed_restore_is_removed_by_the_next(
    tmp_path: Path, key: Key, existing: bool
) -> None:
    archive, src = _archive(tmp_path, key)
    dest = tmp_path / "dest"
    if existing:
        dest.mkdir()
    proc, fd = _start(tmp_path, key, archive, dest)
    proc.kill()
    proc.wait()
    os.close(fd)
    # what SIGKILL leaves: the staging directory, named after its owner
    left = staging_left(dest, tmp_path)
    assert len(left) == 1 and f"-{proc.pid}-" in left[0], left
    assert os.listdir(dest) == left if existing else not dest.exists()

    # the next restore into that destination is not stopped by it (an empty destination
    # needs no --force) and removes it
    restore_file(archive, dest, load_identities(key.path))
    assert snapshot_tree(dest) == snapshot_tree(src)
    assert staging_left(dest, tmp_path) == []


def test_sigterm_removes_staging_and_ends_the_process_by_sigterm(tmp_path: Path, key: Key) -> None:
    archive, _src = _archive(tmp_path, key)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine").write_text("mine")
    before = snapshot_tree(dest)
    proc, fd = _start(tmp_path, key, archive, dest, "--force")
    proc.send_signal(signal.SIGTERM)

    def handled() -> bool:
        # the handler ignores further SIGTERMs while the restore unwinds; it may also have
        # unwound and ended already (on a loaded machine, between two looks)
        if proc.poll() is not None:
            return True
        with open(f"/proc/{proc.pid}/status") as f:
            ign = next(line for line in f if line.startswith("SigIgn:"))
        return bool(int(ign.split()[1], 16) & (1 << (signal.SIGTERM - 1)))

    deadline = time.monotonic() + 60
    while not handled():
        assert time.monotonic() < deadline, "SIGTERM not handled after 60 s"
        time.sleep(0.02)
    os.close(fd)  # the reading thread's read returns; it stops
    assert proc.wait(timeout=60) == -signal.SIGTERM, proc.communicate()
    assert staging_left(dest, tmp_path) == []
    assert snapshot_tree(dest) == before


def _blocked(pid: int, tid: int) -> int:
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        return int(next(line for line in f if line.startswith("SigBlk:")).split()[1], 16)


def test_only_the_main_thread_can_take_sigint_or_sigterm(tmp_path: Path, key: Key) -> None:
    """The kernel hands a signal sent to the process to any thread not blocking it. Had a
    helper (the decrypting reader waiting on the archive, a filesystem worker) taken it, the
    main thread, waiting on that helper's queue, would never run the handler: Ctrl-C and
    SIGTERM would do nothing until more data came. Every other thread blocks both."""
    archive, _src = _archive(tmp_path, key)
    dest = tmp_path / "dest"
    proc, fd = _start(tmp_path, key, archive, dest)
    try:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{proc.pid}/task"))
        assert len(tids) > 1, "the restore runs helper threads"
        both = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))
        assert _blocked(proc.pid, proc.pid) & both == 0
        helpers = {tid: _blocked(proc.pid, tid) & both for tid in tids if tid != proc.pid}
        assert helpers == dict.fromkeys(helpers, both), helpers
    finally:
        proc.kill()
        proc.wait()
        os.close(fd)


class _Interrupt(Progress):
    def advance(self, nbytes: int) -> None:
        raise KeyboardInterrupt


def test_interrupt_removes_staging(tmp_path: Path, key: Key) -> None:
    """Ctrl-C (KeyboardInterrupt, wherever the restore is) unwinds through the staging's
    removal; the destination is as it was."""
    archive, _src = _archive(tmp_path, key)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "a.txt").write_text("mine")
    before = snapshot_tree(dest)
    with pytest.raises(KeyboardInterrupt):
        restore_file(archive, dest, load_identities(key.path), force=True, progress=_Interrupt())
    assert snapshot_tree(dest) == before and staging_left(dest, tmp_path) == []
    with pytest.raises(KeyboardInterrupt):
        restore_file(archive, tmp_path / "new", load_identities(key.path), progress=_Interrupt())
    assert not (tmp_path / "new").exists() and staging_left(tmp_path) == []


def test_only_a_dead_owners_staging_is_removed(tmp_path: Path, key: Key) -> None:
    """A staging directory of a live restore, of another host, or of an older version is
    never removed: only one whose owner is known to be dead."""
    archive, _src = _archive(tmp_path, key)
    dead = subprocess.Popen(["true"])
    dead.wait()
    me, start = os.getpid(), _start_time(os.getpid())
    names = {
        "live": f".backup-restore-{_host()}-{me}-{start}-0123abcd",
        "pid-reused": f".backup-restore-{_host()}-{me}-{(start or 0) + 1}-0123abcd",
        "dead": f".backup-restore-{_host()}-{dead.pid}-1-0123abcd",
        "other-host": f".backup-restore-elsewhere.example-{dead.pid}-1-0123abcd",
        "older-version": ".backup-restore-0123abcd",
    }
    dest = tmp_path / "dest"
    dest.mkdir()
    for name in names.values():
        (dest / name / "tree").mkdir(parents=True)
        (dest / name / "tree" / "f").write_text("x")
    (tmp_path / f".dest.backup-restore-{_host()}-{dead.pid}-1-0123abcd").mkdir()
    restore_file(archive, dest, load_identities(key.path), force=True)
    assert sorted(staging_left(dest, tmp_path)) == sorted(
        names[k] for k in ("live", "other-host", "older-version")
    )


def test_a_tree_deeper_than_path_max_ends_in_one_line_and_leaves_no_staging(
    tmp_path: Path, key: Key
) -> None:
    """A valid archive whose one path has 3000 components (beyond PATH_MAX): the restore
    fails in one line naming the destination and the entry, and its staging directory, too
    deep for os.walk and shutil.rmtree (they recursed past Python's limit and left it), is
    removed."""
    import io
    import tarfile

    deep = "/".join(["d"] * 3000) + "/f.txt"
    plain = tmp_path / "deep.tar"
    with tarfile.open(plain, "w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo(deep)
        info.size = 5
        t.addfile(info, io.BytesIO(b"deep\n"))
    archive = tmp_path / "deep.tar.zst.age"
    encrypt_with_tools(key.recipient, plain, archive)
    dest = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "backup", "restore", "--file", str(archive), "--to", str(dest)],
        env={**os.environ, "BACKUP_IDENTITY": str(key.path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr[-2000:]
    assert f"writing into {dest}, entry 'd/d/" in proc.stderr
    assert "File name too long" in proc.stderr and "Traceback" not in proc.stderr
    assert not dest.exists() and staging_left(tmp_path) == []


def test_staging_removal_is_iterative_and_makes_read_only_dirs_give_way(tmp_path: Path) -> None:
    """The removal of a staging tree goes deeper than Python's recursion limit and than
    PATH_MAX, through read-only directories, and never follows a link out of it."""
    from backup.restore import _remove_tree

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    root = tmp_path / "staging"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    fds = [fd]
    for _ in range(max(sys.getrecursionlimit() + 500, 2500)):  # 5000 bytes of path
        os.mkdir("d", dir_fd=fd)
        with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "w") as f:
            f.write("x")
        os.symlink(str(outside), "link", dir_fd=fd)
        fd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        fds.append(fd)
    for fd in reversed(fds):
        os.fchmod(fd, 0o500)
        os.close(fd)
    _remove_tree(root)
    assert not root.exists()
    assert (outside / "keep.txt").read_text() == "keep"
