"""The portable implementation end to end against moto's server mode with versioning."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from backup.errors import SnapshotError
from backup.snapshots import VersionedProvider, open_provider, to_ns
from backup.snapshots.versioned import RESERVED

from .conftest import Writer, at, unique

Make = Callable[..., VersionedProvider]


def contents(p: VersionedProvider, when: Any) -> dict[str, bytes]:
    return {o.key: p.read(o.key, when).read() for o in p.list_objects(when)}


@pytest.fixture
def history(writer: Writer) -> Writer:
    """a: v1@10 v2@20; b: v1@10, deleted@30, re-created@40; c: created@30; d: deleted@20."""
    writer.put("a", b"a1", 10)
    writer.put("b", b"b1", 10)
    writer.put("d", b"d1", 10)
    writer.put("a", b"a2", 20)
    writer.delete("d", 20)
    writer.delete("b", 30)
    writer.put("c", b"c1", 30)
    writer.put("b", b"b2", 40)
    writer.stamp()
    return writer


def test_point_in_time_listing_and_reads(history: Writer, provider: Make) -> None:
    p = provider()
    assert contents(p, at(5)) == {}
    assert contents(p, at(15)) == {"a": b"a1", "b": b"b1", "d": b"d1"}
    assert contents(p, at(25)) == {"a": b"a2", "b": b"b1"}
    assert contents(p, at(35)) == {"a": b"a2", "c": b"c1"}
    assert contents(p, at(45)) == {"a": b"a2", "b": b"b2", "c": b"c1"}
    # a nanosecond time works as well as a datetime
    assert [o.key for o in p.list_objects(to_ns(at(35)))] == ["a", "c"]
    with pytest.raises(SnapshotError, match="no object 'b' at 2026-03-01T12:00:35Z"):
        p.read("b", at(35))


def test_slices(history: Writer, provider: Make) -> None:
    p = provider()
    s = p.slice(at(15), at(35))
    assert [o.key for o in s.created] == ["c"]
    assert [o.key for o in s.changed] == ["a"]
    assert [o.key for o in s.deleted] == ["b", "d"]
    assert s.uncertain == []
    # deleted and re-created within the slice: present at both ends, another version
    s = p.slice(at(15), at(45))
    assert [o.key for o in s.created] == ["c"]
    assert [o.key for o in s.changed] == ["a", "b"]
    assert [o.key for o in s.deleted] == ["d"]
    s = p.slice(at(41), at(50))
    assert (s.created, s.changed, s.deleted) == ([], [], [])


def test_time_in_the_same_second_is_included_and_uncertain(history: Writer, provider: Make) -> None:
    p = provider()
    # a2 is stamped 12:00:20; T = 12:00:20.5 counts it, but the listing cannot prove it
    (state,), uncertain = p.states([at(20.5)])
    assert state["a"].version_id is not None
    assert p.read("a", at(20.5)).read() == b"a2"
    assert "a" in uncertain and "d" in uncertain
    (_,), uncertain = p.states([at(21)])
    assert uncertain == set()


def test_objects_written_in_the_same_second(writer: Writer, provider: Make) -> None:
    writer.put("k", b"one", 10.1)
    writer.put("k", b"two", 10.4)
    writer.put("k", b"three", 10.7)
    writer.stamp()
    p = provider()
    h = next(p.histories())
    assert len({e.ns for e in h.entries}) == 1  # the listing shows one second for all three
    assert p.read("k", at(11)).read() == b"three"
    assert p.read("k", at(10.2)).read() == b"three"  # the second counts whole
    (_,), unc = p.states([at(10.5)])
    assert unc == {"k"}


def test_delete_markers_spread_across_pages(writer: Writer, provider: Make, s3: Any) -> None:
    # "m" has a long run of delete markers, so with 2 keys per page some pages hold
    # delete markers only, and histories run across several pages in both arrays
    writer.put("a", b"a", 1)
    for i in range(4):
        writer.put("m", f"m{i}".encode(), 10 + 10 * i)
        writer.delete("m", 15 + 10 * i)
        writer.delete("m", 16 + 10 * i)  # a marker on a marker
    writer.put("z", b"z", 1)
    writer.stamp()
    pages: list[dict[str, Any]] = []
    real = s3.list_object_versions

    def spy(**kw: Any) -> Any:
        pages.append(r := real(**kw))
        return r

    small = provider(page_size=2)
    small.client = type("C", (), {"list_object_versions": staticmethod(spy)})()  # type: ignore[assignment]
    big = provider()
    hs_small = list(small.histories())
    hs_big = list(big.histories())
    assert len(pages) > 5 and small.list_requests == len(pages)
    assert any("Versions" not in pg and pg.get("DeleteMarkers") for pg in pages)
    assert [(h.key, [(e.version_id, e.deleted) for e in h.entries]) for h in hs_small] == [
        (h.key, [(e.version_id, e.deleted) for e in h.entries]) for h in hs_big
    ]
    assert [h.key for h in hs_small] == ["a", "m", "z"]
    assert len(hs_small[1].entries) == 12
    for t, expect in [(12, b"m0"), (15.5, None), (22, b"m1"), (47, None), (60, None)]:
        e, _ = big.state_at(hs_small[1], to_ns(at(t)))
        assert (big.read("m", at(t)).read() if e else None) == expect


def test_null_version_ids(s3: Any) -> None:
    bucket = unique()
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="old", Body=b"before versioning")
    p = VersionedProvider(bucket, client=s3)
    with pytest.raises(SnapshotError, match="versioning is off"):
        p.take()
    p.enable()
    snap = p.take("first")
    s3.put_object(Bucket=bucket, Key="old", Body=b"after")
    h = next(p.histories())
    assert [e.version_id for e in h.entries][-1] == "null"
    assert p.read("old", snap).read() == b"before versioning"
    assert p.read("old").read() == b"after"
    fork = unique("fork")
    res = p.fork(fork, snap)
    assert res.copied == 1
    assert s3.get_object(Bucket=fork, Key="old")["Body"].read() == b"before versioning"


def test_multipart_version_near_t_is_uncertain(
    versioned_bucket: str, s3: Any, provider: Make
) -> None:
    up = s3.create_multipart_upload(Bucket=versioned_bucket, Key="big")
    part = s3.upload_part(
        Bucket=versioned_bucket, Key="big", UploadId=up["UploadId"], PartNumber=1, Body=b"x" * 100
    )
    s3.complete_multipart_upload(
        Bucket=versioned_bucket,
        Key="big",
        UploadId=up["UploadId"],
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )
    p = provider(multipart_grace=600)
    h = next(p.histories())
    assert "-" in h.entries[0].etag
    e, unc = p.state_at(h, h.entries[0].ns + 120 * 10**9)
    assert e is not None and unc  # started 2 minutes before T: may have completed after it
    e, unc = p.state_at(h, h.entries[0].ns + 3600 * 10**9)
    assert e is not None and not unc


def test_snapshots_record_exact_versions(history: Writer, provider: Make, s3: Any) -> None:
    p = provider()
    snap = p.take("nightly-1")
    assert len(snap.version) == 19 and snap.name == "nightly-1"
    # changes after the snapshot, stamped in the snapshot's own second or earlier, cannot
    # fool it: the snapshot holds version ids, not times
    s3.put_object(Bucket=history.bucket, Key="a", Body=b"a3")
    s3.delete_object(Bucket=history.bucket, Key="c")
    assert contents(p, snap) == {"a": b"a2", "b": b"b2", "c": b"c1"}
    assert contents(p, None) == {"a": b"a3", "b": b"b2"}
    s = p.slice(snap, at(10**9))
    assert [o.key for o in s.changed] == ["a"] and [o.key for o in s.deleted] == ["c"]
    snap2 = p.take()
    assert [(x.name, x.version) for x in p.list()] == [
        ("nightly-1", snap.version),
        (None, snap2.version),
    ]
    assert p.find("nightly-1") == snap and p.find(snap2.version) == snap2
    # the manifests live under the reserved prefix and never show in listings
    assert all(not o.key.startswith(RESERVED) for o in p.list_objects())
    assert all(not h.key.startswith(RESERVED) for h in p.histories())
    p.delete(snap)
    assert [x.version for x in p.list()] == [snap2.version]
    with pytest.raises(SnapshotError, match="no snapshot named or versioned 'nightly-1'"):
        p.find("nightly-1")
    with pytest.raises(ValueError, match="snapshot name"):
        p.take("bad name/")


def test_prefix_limits_everything(writer: Writer, provider: Make) -> None:
    writer.put("data/x", b"x", 10)
    writer.put("other/y", b"y", 10)
    writer.stamp()
    p = provider(prefix="data/")
    assert [o.key for o in p.list_objects(at(20))] == ["data/x"]
    snap = p.take("s")
    assert list(p.manifest(snap)["objects"]) == ["data/x"]
    wider = provider()
    with pytest.raises(SnapshotError, match="covers only prefix 'data/'"):
        list(wider.list_objects(snap))


def test_fork_copies_the_snapshot_and_records_lineage(
    history: Writer, provider: Make, s3: Any
) -> None:
    p = provider(workers=4)
    snap = p.take("before-fork")
    s3.put_object(Bucket=history.bucket, Key="a", Body=b"after the snapshot")
    fork = unique("fork")
    res = p.fork(fork, snap)
    assert (res.copied, res.skipped, res.bytes_copied) == (3, 0, 6)
    f = VersionedProvider(fork, client=s3)
    assert contents(f, None) == {"a": b"a2", "b": b"b2", "c": b"c1"}
    lin = f.lineage()
    assert (lin.source_bucket, lin.source_snapshot, lin.complete, lin.snapshots_enabled) == (
        history.bucket,
        snap.version,
        True,
        True,
    )
    assert p.lineage().source_bucket is None
    # running it again is a no-op; forking another snapshot into it is refused
    assert p.fork(fork, snap).copied == 0
    other = p.take()
    with pytest.raises(SnapshotError, match="is a fork of"):
        p.fork(fork, other)


def test_fork_from_now_takes_a_snapshot(history: Writer, provider: Make, s3: Any) -> None:
    p = provider()
    fork = unique("fork")
    res = p.fork(fork)
    assert res.source_snapshot == p.find(f"fork-{fork}").version
    assert contents(VersionedProvider(fork, client=s3), None) == contents(p, None)


def test_fork_into_a_foreign_bucket_is_refused(history: Writer, provider: Make, s3: Any) -> None:
    other = unique("busy")
    s3.create_bucket(Bucket=other)
    s3.put_object(Bucket=other, Key="mine", Body=b"!")
    with pytest.raises(SnapshotError, match="is not empty and is not a fork of"):
        provider().fork(other, provider().take())


def test_fork_resumes_after_a_failure(
    writer: Writer, provider: Make, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(6):
        writer.put(f"k{i}", f"v{i}".encode(), 10)
    writer.stamp()
    p = provider(workers=1)
    snap = p.take()
    fork = unique("fork")
    real = VersionedProvider._copy
    calls = {"n": 0}

    def flaky(self: VersionedProvider, st: Any, dest: str) -> Any:
        calls["n"] += 1
        if calls["n"] == 4:
            raise SnapshotError(self.bucket, "simulated crash")
        return real(self, st, dest)

    monkeypatch.setattr(VersionedProvider, "_copy", flaky)
    with pytest.raises(SnapshotError, match="simulated crash"):
        p.fork(fork, snap)
    assert VersionedProvider(fork, client=s3).lineage().complete is False
    monkeypatch.setattr(VersionedProvider, "_copy", real)
    res = p.fork(fork, snap)
    # k0..k2 were copied before the crash; at most the one copy already queued behind it
    assert res.skipped in (3, 4) and res.copied + res.skipped == 6
    f = VersionedProvider(fork, client=s3)
    assert f.lineage().complete
    assert contents(f, None) == {f"k{i}": f"v{i}".encode() for i in range(6)}


def test_fork_uses_multipart_copy_above_the_threshold(
    versioned_bucket: str, s3: Any, provider: Make
) -> None:
    big = bytes(range(256)) * (11 * 4096)  # 11 MiB
    s3.put_object(Bucket=versioned_bucket, Key="big", Body=big, ContentType="application/x-test")
    s3.put_object(Bucket=versioned_bucket, Key="small", Body=b"s")
    p = provider(copy_threshold=6 << 20, part_size=5 << 20)
    fork = unique("fork")
    res = p.fork(fork, p.take())
    assert res.copied == 2
    got = s3.get_object(Bucket=fork, Key="big")
    assert got["Body"].read() == big
    assert got["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 1 MiB
    assert got["ContentType"] == "application/x-test"
    assert (
        s3.get_object(Bucket=fork, Key="small")["ETag"]
        == s3.get_object(Bucket=versioned_bucket, Key="small")["ETag"]
    )


def test_open_provider_probes_and_forces(versioned_bucket: str, aws_env: Any) -> None:
    p = open_provider(f"s3://{versioned_bucket}/data/")
    assert isinstance(p, VersionedProvider) and p.prefix == "data/"
    assert open_provider(f"s3://{versioned_bucket}?snapshots=tigris").kind == "tigris"
    with pytest.raises(SnapshotError, match="snapshots='zfs'"):
        open_provider(f"s3://{versioned_bucket}?snapshots=zfs")
    with pytest.raises(SnapshotError, match="not a bucket URL"):
        open_provider("file:///tmp/x")


def test_enable_creates_the_bucket_with_versioning(s3: Any) -> None:
    name = unique()
    p = VersionedProvider(name, client=s3)
    p.enable()
    assert s3.get_bucket_versioning(Bucket=name)["Status"] == "Enabled"
    assert p.lineage().snapshots_enabled
