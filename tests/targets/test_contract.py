"""One contract suite for every target. The local directory target always runs; cloud
targets join the ``target`` fixture's parameters as they are added (when their environment
variables are set)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from backup.errors import ObjectNotFound, TargetError, UnknownTargetScheme
from backup.targets import Readiness, Target, open_target


@pytest.fixture(params=["file", "s3"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    if request.param == "s3":
        # moto's server on loopback (tests/conftest.py), a fresh bucket per test
        aws = request.getfixturevalue("aws_env")
        bucket = f"contract-{secrets.token_hex(6)}"
        aws.client().create_bucket(Bucket=bucket)
        yield open_target(f"s3://{bucket}/vault")
        return
    yield open_target(f"file://{tmp_path / 'vault'}")


def put(t: Target, key: str, data: bytes) -> str:
    with t.open_write(key) as w:
        for i in range(0, len(data), 7000):
            w.write(data[i : i + 7000])
        return w.commit()


def test_write_read_list_delete(target: Target) -> None:
    data = os.urandom(100_000)
    ref = put(target, "p/a.tar.zst.age", data)
    put(target, "p/b.manifest.json.zst.age", b"m")
    put(target, "q/c", b"")
    assert target.exists(ref)
    with target.open_read(ref) as f:
        assert f.read() == data
    listed = list(target.list())
    assert [o.key for o in listed] == ["p/a.tar.zst.age", "p/b.manifest.json.zst.age", "q/c"]
    assert listed[0].size == len(data)
    assert [o.key for o in target.list("p/")] == ["p/a.tar.zst.age", "p/b.manifest.json.zst.age"]
    target.delete(ref)
    target.delete(ref)  # absent: not an error
    assert not target.exists(ref)
    with pytest.raises(ObjectNotFound):
        target.open_read(ref)


def test_nothing_visible_before_commit(target: Target) -> None:
    w = target.open_write("p/x")
    w.write(b"half an archive")
    assert not target.exists("p/x")
    assert list(target.list()) == []
    w.commit()
    assert target.exists("p/x")


def test_abort_and_exception_leave_nothing(target: Target, tmp_path: Path) -> None:
    w = target.open_write("p/aborted")
    w.write(b"x" * 1000)
    w.abort()
    w.abort()
    with pytest.raises(RuntimeError), target.open_write("p/crashed") as w2:
        w2.write(b"y" * 1000)
        raise RuntimeError("crash mid-write")
    assert list(target.list()) == []
    assert not target.exists("p/aborted") and not target.exists("p/crashed")
    leftovers = [p for p in (tmp_path / "vault").rglob("*") if p.is_file()]
    assert leftovers == []


def test_retrieval_is_immediate_for_hot_targets(target: Target) -> None:
    ref = put(target, "p/a", b"data")
    assert target.request_retrieval(ref).state is Readiness.READY
    assert target.retrieval_status(ref).state is Readiness.READY
    with pytest.raises(ObjectNotFound):
        target.retrieval_status("p/missing")


def test_abandon_partial_removes_a_dead_writers_leftovers(target: Target) -> None:
    dead = target.open_write("p/dead")
    dead.write(b"x" * 10_000)  # never committed nor aborted: its writer was killed
    other = target.open_write("p/other")
    other.write(b"still being written")
    assert target.abandon_partial("p/dead") >= 1
    assert target.abandon_partial("p/dead") == 0
    assert other.commit()
    assert target.exists("p/other")
    assert not target.exists("p/dead")


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a", ".partial/x"])
def test_invalid_keys_are_refused(target: Target, key: str) -> None:
    with pytest.raises(TargetError, match="invalid object key"):
        target.open_write(key)


def test_overwrite_is_atomic(target: Target) -> None:
    put(target, "p/a", b"old")
    w = target.open_write("p/a")
    w.write(b"new")
    with target.open_read("p/a") as f:
        assert f.read() == b"old"
    w.commit()
    with target.open_read("p/a") as f:
        assert f.read() == b"new"


def test_unknown_scheme_names_the_supported_ones() -> None:
    with pytest.raises(UnknownTargetScheme) as e:
        open_target("gopher://x/y")
    assert "gopher://x/y" in str(e.value) and "file://" in str(e.value)


def test_file_target_needs_absolute_path() -> None:
    with pytest.raises(TargetError):
        open_target("file://relative/path")


def test_sweep_partial_removes_abandoned_writes(tmp_path: Path) -> None:
    from backup.targets import FileTarget

    t = FileTarget(f"file://{tmp_path / 'v'}")
    w = t.open_write("p/a")
    w.write(b"abandoned")  # never committed: as after a crash
    partial = next((tmp_path / "v" / ".partial").iterdir())
    os.utime(partial, (0, 0))
    young = t.open_write("p/b")
    young.write(b"in progress")
    assert t.sweep_partial() == 1
    assert not partial.exists()
    young.commit()
    assert t.exists("p/b")


def test_file_target_writes_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large write is handed to the kernel's writeback as it goes (so the commit's fsync
    waits for the last window only), and what is read back is exactly what was written."""
    from backup.targets import file as file_mod

    monkeypatch.setattr(file_mod, "_WRITE_BEHIND", 1 << 20)
    advised: list[tuple[int, int, int]] = []
    real = os.posix_fadvise

    def spy(fd: int, offset: int, length: int, advice: int) -> None:
        advised.append((offset, length, advice))
        real(fd, offset, length, advice)

    monkeypatch.setattr(file_mod.os, "posix_fadvise", spy)
    t = file_mod.FileTarget(f"file://{tmp_path / 'v'}")
    data = secrets.token_bytes(5 << 20) + b"tail"
    with t.open_write("big") as w:
        for i in range(0, len(data), 256 << 10):
            w.write(data[i : i + (256 << 10)])
        ref = w.commit()
    with t.open_read(ref) as r:
        assert r.read() == data
    # once per MiB written, each time over the window just written and the one before it
    mib = 1 << 20
    assert advised == [
        (max(0, i - 1) * mib, (i + 1) * mib - max(0, i - 1) * mib, os.POSIX_FADV_DONTNEED)
        for i in range(5)
    ]


def test_sweep_partial_removes_only_writes_older_than_asked(target: Target) -> None:
    from datetime import timedelta

    dead = target.open_write("p/dead")
    dead.write(b"x" * 10_000)  # never committed nor aborted: its writer was killed
    # young (moto dates every upload 2010): it may be a live write
    assert target.sweep_partial(timedelta(days=36500)) == 0
    assert target.sweep_partial(timedelta(0)) >= 1
    assert target.abandon_partial("p/dead") == 0  # nothing of it is left
    assert list(target.list()) == []
