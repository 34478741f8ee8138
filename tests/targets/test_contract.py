"""One contract suite for every target: the local directory, S3 (moto's server) and a
Glacier vault (moto's server for archives and retrieval jobs; the loopback vault of
``glacier_fixture.py`` where a write must be left half done, as moto has no vault multipart
upload). Where a target legitimately differs the suite asks the contract's own attributes
(``reads_need_retrieval``, ``lists_at_once``, ``refs_are_keys``), never the target's type."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backup.errors import ObjectNotFound, TargetError, UnknownTargetScheme
from backup.targets import Readiness, Target, open_target

from .glacier_fixture import FakeVaults

MiB = 1024 * 1024


def _glacier(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Target:
    aws = request.getfixturevalue("aws_env")
    monkeypatch.setenv("BACKUP_GLACIER_ENDPOINT_URL", aws.endpoint)
    name = f"contract-{secrets.token_hex(6)}"
    aws.client("glacier").create_vault(vaultName=name)
    return open_target(f"glacier://{name}?part_size=1&tier=expedited")


def _hot(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if kind == "s3":
        # moto's server on loopback (tests/conftest.py), a fresh bucket per test
        aws = request.getfixturevalue("aws_env")
        bucket = f"contract-{secrets.token_hex(6)}"
        aws.client().create_bucket(Bucket=bucket)
        return open_target(f"s3://{bucket}/vault")
    return open_target(f"file://{tmp_path / 'vault'}")


@pytest.fixture(params=["file", "s3", "glacier"])
def target(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Target:
    if request.param == "glacier":
        return _glacier(request, monkeypatch)
    return _hot(request.param, request, tmp_path)


@pytest.fixture(params=["file", "s3", "glacier"])
def writer_target(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Target]:
    """For writes left half done: a vault is the loopback one, which has multipart uploads."""
    if request.param != "glacier":
        yield _hot(request.param, request, tmp_path)
        return
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with FakeVaults() as fv:
        monkeypatch.setenv("BACKUP_GLACIER_ENDPOINT_URL", fv.endpoint)
        yield open_target("glacier://v?part_size=1")


def put(t: Target, key: str, data: bytes) -> str:
    with t.open_write(key) as w:
        for i in range(0, len(data), 7000):
            w.write(data[i : i + 7000])
        return w.commit()


def read_back(t: Target, ref: str, timeout: float = 30) -> bytes:
    """Read an object as the contract says: a retrieval first where reads need one."""
    if t.reads_need_retrieval:
        assert t.retrieval_status(ref).state is Readiness.NOT_REQUESTED
        assert t.request_retrieval(ref).state in (Readiness.PENDING, Readiness.READY)
        end = time.monotonic() + timeout
        while t.retrieval_status(ref).state is not Readiness.READY:
            assert time.monotonic() < end, "the retrieval did not finish"
            time.sleep(0.3)
    with t.open_read(ref) as f:
        return f.read()


def test_write_read_list_delete(target: Target) -> None:
    data = os.urandom(100_000)
    ref = put(target, "p/a.tar.zst.age", data)
    put(target, "p/b.manifest.json.zst.age", b"m")
    put(target, "q/c", b"")
    assert (ref == "p/a.tar.zst.age") is target.refs_are_keys
    assert target.exists(ref)
    assert read_back(target, ref) == data
    if target.lists_at_once:
        listed = list(target.list())
        assert [o.key for o in listed] == ["p/a.tar.zst.age", "p/b.manifest.json.zst.age", "q/c"]
        assert listed[0].size == len(data)
        assert [o.key for o in target.list("p/")] == [
            "p/a.tar.zst.age",
            "p/b.manifest.json.zst.age",
        ]
    else:
        with pytest.raises(TargetError, match="inventory"):
            list(target.list())
    target.delete(ref)
    if not target.lists_at_once:
        return  # it cannot look (and moto's vault answers 500 to deleting an absent archive)
    target.delete(ref)  # absent: not an error
    assert not target.exists(ref)
    with pytest.raises(ObjectNotFound):
        target.open_read(ref)


def test_nothing_visible_before_commit(writer_target: Target) -> None:
    target = writer_target
    w = target.open_write("p/x")
    w.write(os.urandom(MiB + 1))  # a vault's multipart upload has begun
    if target.lists_at_once:
        assert not target.exists("p/x")
        assert list(target.list()) == []
    ref = w.commit()
    assert target.partial_uploads() == ()  # what was in flight is the object now
    assert target.exists(ref)


def test_abort_and_exception_leave_nothing(writer_target: Target, tmp_path: Path) -> None:
    target = writer_target
    w = target.open_write("p/aborted")
    w.write(b"x" * (MiB + 1))
    w.abort()
    w.abort()
    with pytest.raises(RuntimeError), target.open_write("p/crashed") as w2:
        w2.write(b"y" * (MiB + 1))
        raise RuntimeError("crash mid-write")
    assert target.partial_uploads() == ()
    if target.lists_at_once:
        assert list(target.list()) == []
        assert not target.exists("p/aborted") and not target.exists("p/crashed")
    leftovers = [p for p in (tmp_path / "vault").rglob("*") if p.is_file()]
    assert leftovers == []


def test_retrieval_reads_as_the_contract_says(target: Target) -> None:
    ref = put(target, "p/a", b"data")
    if target.reads_need_retrieval:
        assert target.retrieval_status(ref).state is Readiness.NOT_REQUESTED
        with pytest.raises(TargetError, match="retrieval"):
            target.open_read(ref)
        assert read_back(target, ref) == b"data"
        assert target.request_retrieval(ref).state is Readiness.READY  # the job is reused
        return
    assert target.request_retrieval(ref).state is Readiness.READY
    assert target.retrieval_status(ref).state is Readiness.READY
    with pytest.raises(ObjectNotFound):
        target.retrieval_status("p/missing")


def test_restore_notices_name_only_this_targets_objects(target: Target) -> None:
    """What a service's restore messages say finished, as references of this target: an
    S3 target takes its bucket's keys under its prefix, a vault its own archives."""
    from backup.coldplan import RestoreEvent

    ref = put(target, "p/a", b"data")
    assert target.restored_refs([]) == set()
    bucket = getattr(target, "bucket", "other")
    prefix = getattr(target, "prefix", "")
    events = [RestoreEvent(bucket, prefix + "p/a"), RestoreEvent("other", "p/b")]
    if target.reads_need_retrieval:
        aid = ref.split("#")[1]
        vault = target.url.split("//")[1].split("?")[0]
        arn = f"arn:aws:glacier:us-east-1:123456789012:vaults/{vault}"
        events += [
            RestoreEvent("", "", archive_id=aid, vault_arn=arn),
            RestoreEvent("", "", archive_id="other", vault_arn=arn + "x"),
        ]
    got = target.restored_refs(events)
    if target.url.startswith("file:"):
        assert got == set()  # nothing announces a directory's reads
    else:
        assert ref in got and "p/b" not in got


def test_abandon_partial_removes_a_dead_writers_leftovers(writer_target: Target) -> None:
    target = writer_target
    dead = target.open_write("p/dead")
    dead.write(b"x" * (MiB + 1))  # never committed nor aborted: its writer was killed
    other = target.open_write("p/other")
    other.write(b"still being written")
    assert target.abandon_partial("p/dead") >= 1
    assert target.abandon_partial("p/dead") == 0
    ref = other.commit()
    assert ref
    assert target.exists(ref)
    if target.lists_at_once:
        assert not target.exists("p/dead")


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a", ".partial/x"])
def test_invalid_keys_are_refused(target: Target, key: str) -> None:
    with pytest.raises(TargetError, match="invalid object key"):
        target.open_write(key)


def test_overwrite_is_atomic(target: Target) -> None:
    old = put(target, "p/a", b"old")
    w = target.open_write("p/a")
    w.write(b"new")
    if not target.refs_are_keys:
        # a vault never overwrites: a second write of a key is another archive, and each
        # reference reads what was written under it
        new = w.commit()
        assert new != old
        assert read_back(target, old) == b"old" and read_back(target, new) == b"new"
        return
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


def test_sweep_partial_removes_only_writes_older_than_asked(writer_target: Target) -> None:
    from datetime import timedelta

    target = writer_target
    dead = target.open_write("p/dead")
    dead.write(b"x" * (MiB + 1))  # never committed nor aborted: its writer was killed
    # young (moto dates every upload 2010): it may be a live write
    assert target.sweep_partial(timedelta(days=36500)) == 0
    assert target.sweep_partial(timedelta(0)) >= 1
    assert target.abandon_partial("p/dead") == 0  # nothing of it is left
    assert target.partial_uploads() == ()
    if target.lists_at_once:
        assert list(target.list()) == []


def test_every_optional_method_has_a_default() -> None:
    """A target needs only the abstract methods; the rest of the contract works from them."""
    from backup.targets import FileTarget

    optional = {
        name
        for name, v in vars(Target).items()
        if callable(v) and not name.startswith("_") and name not in Target.__abstractmethods__
    }
    assert {"request_retrieval", "retrieval_status", "exists", "stat", "describe"} <= optional
    assert {"partial_uploads", "restored_refs", "set_legal_hold", "object_lock"} <= optional
    assert "request_retrieval" not in vars(FileTarget)  # the default serves a directory
