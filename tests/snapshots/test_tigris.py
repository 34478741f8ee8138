"""The Tigris implementation against a loopback endpoint that answers as Tigris documents and
records every request: for each operation, the exact x-tigris-* headers on the wire, each of
them covered by the SigV4 signature, and nothing leaking between concurrent calls."""

from __future__ import annotations

import random
import threading
import time

import pytest

from backup.errors import SnapshotError
from backup.snapshots import TigrisProvider, open_provider, parse_at
from backup.snapshots.base import SnapshotInfo, from_ns

from .fake_tigris import FakeTigris, Request


def only(reqs: list[Request]) -> Request:
    assert len(reqs) == 1, [(r.method, r.path, r.tigris()) for r in reqs]
    return reqs[0]


def signed(r: Request, expect: dict[str, str]) -> None:
    """The request carried exactly these x-tigris-* headers, each one signed."""
    assert r.tigris() == {k.lower(): v for k, v in expect.items()}
    missing = set(r.tigris()) - r.signed_headers
    assert not missing, f"unsigned: {missing}"


@pytest.fixture
def bucket(fake: FakeTigris) -> str:
    t0 = time.time_ns() - 10**12
    fake.put("data", "a", b"a1", t0)
    fake.put("data", "b", b"b1", t0 + 1)
    fake.put("data", "a", b"a2", t0 + 10**9)
    fake.put("data", "b", None, t0 + 2 * 10**9)
    fake.put("data", "c", b"c1", t0 + 2 * 10**9 + 1)
    return "data"


def test_probe_chooses_tigris_from_headbucket(fake: FakeTigris, bucket: str) -> None:
    p = open_provider(f"s3://{bucket}/")
    assert isinstance(p, TigrisProvider)
    assert only(fake.of("HEAD", "/data")).tigris() == {}  # probing sends nothing special
    fake.buckets["plain"] = type(fake.buckets["data"])()  # a bucket without snapshots
    assert open_provider("s3://plain").kind == "versioned"
    assert open_provider("s3://plain?snapshots=tigris").kind == "tigris"


def test_enable_creates_with_the_header(fake: FakeTigris) -> None:
    p = open_provider("s3://fresh?snapshots=tigris")
    p.enable()
    signed(only(fake.of("PUT", "/fresh")), {"X-Tigris-Enable-Snapshot": "true"})
    assert fake.buckets["fresh"].snapshots_enabled
    p.enable()  # already enabled: fine
    fake.buckets["old"] = type(fake.buckets["fresh"])()
    with pytest.raises(SnapshotError, match="enables them only when a bucket is created"):
        open_provider("s3://old?snapshots=tigris").enable()


def test_take_list_find_and_delete(fake: FakeTigris, bucket: str) -> None:
    p = open_provider(f"s3://{bucket}")
    s1 = p.take("nightly-1")
    signed(fake.of("PUT", "/data")[-1], {"X-Tigris-Snapshot": "true; name=nightly-1"})
    s2 = p.take()
    signed(fake.of("PUT", "/data")[-1], {"X-Tigris-Snapshot": "true"})
    assert len(s1.version) == 19 and int(s2.version) > int(s1.version)
    snaps = p.list()
    signed(only(fake.of("GET", "/")[-1:]), {"X-Tigris-Snapshot": "data"})
    assert [(s.version, s.name) for s in snaps] == [(s1.version, "nightly-1"), (s2.version, None)]
    assert p.find("nightly-1").version == s1.version
    p.delete(s1)
    signed(only(fake.of("DELETE")), {"X-Tigris-Snapshot-Version": s1.version})
    assert "data" in fake.buckets  # the bucket itself stays
    assert [s.version for s in p.list()] == [s2.version]
    with pytest.raises(SnapshotError, match="not a snapshot version"):
        p.delete(SnapshotInfo("data", "", None, from_ns(0)))


def test_reads_and_listings_at_a_version(fake: FakeTigris, bucket: str) -> None:
    p = open_provider(f"s3://{bucket}")
    t0 = min(e[0] for e in fake.buckets["data"].events)
    assert {o.key for o in p.list_objects(t0 + 1)} == {"a", "b"}
    signed(fake.of("GET", "/data")[-1], {"X-Tigris-Snapshot-Version": str(t0 + 1)})
    assert p.read("a", t0 + 1).read() == b"a1"
    signed(fake.of("GET", "/data/a")[-1], {"X-Tigris-Snapshot-Version": str(t0 + 1)})
    assert p.read("a").read() == b"a2"
    assert fake.of("GET", "/data/a")[-1].tigris() == {}
    head = p.head("a", t0 + 1)  # type: ignore[attr-defined]
    assert head["ContentLength"] == 2
    signed(only(fake.of("HEAD", "/data/a")), {"X-Tigris-Snapshot-Version": str(t0 + 1)})
    snap = p.take("s")
    assert {o.key for o in p.list_objects(snap)} == {"a", "c"}
    signed(fake.of("GET", "/data")[-1], {"X-Tigris-Snapshot-Version": snap.version})
    with pytest.raises(SnapshotError, match="no object 'b' at"):
        p.read("b", snap)
    # an ISO time is turned into a nanosecond version
    p.read("a", parse_at("2030-01-01T00:00:00Z"))
    signed(fake.of("GET", "/data/a")[-1], {"X-Tigris-Snapshot-Version": "1893456000000000000"})


def test_slice_compares_two_listings(fake: FakeTigris, bucket: str) -> None:
    p = open_provider(f"s3://{bucket}")
    t0 = min(e[0] for e in fake.buckets["data"].events)
    s = p.slice(t0 + 1, t0 + 3 * 10**9)
    assert [o.key for o in s.created] == ["c"]
    assert [o.key for o in s.changed] == ["a"]
    assert [o.key for o in s.deleted] == ["b"]
    assert s.uncertain == []
    versions = [r.tigris()["x-tigris-snapshot-version"] for r in fake.of("GET", "/data")[-2:]]
    assert versions == [str(t0 + 1), str(t0 + 3 * 10**9)]


def test_fork_lineage_rename(fake: FakeTigris, bucket: str) -> None:
    p = open_provider(f"s3://{bucket}")
    snap = p.take("before")
    res = p.fork("drill", snap)
    signed(
        fake.of("PUT", "/drill")[-1],
        {
            "X-Tigris-Fork-Source-Bucket": "data",
            "X-Tigris-Fork-Source-Bucket-Snapshot": snap.version,
        },
    )
    assert res.source_snapshot == snap.version and res.copied == 0
    lin = open_provider("s3://drill").lineage()
    assert (lin.source_bucket, lin.source_snapshot, lin.snapshots_enabled) == (
        "data",
        snap.version,
        True,
    )
    p.fork("now-fork")
    signed(fake.of("PUT", "/now-fork")[-1], {"X-Tigris-Fork-Source-Bucket": "data"})
    assert p.lineage().source_bucket is None
    p.rename("a", "renamed/a")  # type: ignore[attr-defined]
    r = fake.of("PUT", "/data/renamed/a")[-1]
    signed(r, {"X-Tigris-Rename": "true"})
    assert r.headers["x-amz-copy-source"] in ("data/a", "/data/a")
    assert {o.key for o in p.list_objects()} == {"c", "renamed/a"}


def test_bundle_streams_a_tar_with_errors_in_skip_mode(fake: FakeTigris, bucket: str) -> None:
    p = open_provider(f"s3://{bucket}")
    assert isinstance(p, TigrisProvider)
    stream = p.bundle(["a", "c", "missing"])
    got = dict(stream)
    assert got == {"a": b"a2", "c": b"c1"}
    assert stream.errors == {"errors": [{"key": "missing", "code": "NoSuchKey"}]}
    r = only(fake.of("POST"))
    assert "bundle" in r.query
    assert {"x-tigris-bundle-on-error", "x-tigris-bundle-format"} <= r.signed_headers
    assert r.headers["x-tigris-bundle-on-error"] == "skip"
    with pytest.raises(SnapshotError, match="bundle failed: HTTP 404 NoSuchKey"):
        p.bundle(["missing"], on_error="fail")


def test_errors_never_carry_credentials(fake: FakeTigris) -> None:
    p = open_provider("s3://nope?snapshots=tigris")
    with pytest.raises(SnapshotError) as ei:
        p.take("x")
    assert "NoSuchBucket" in str(ei.value)
    assert "tsec_test_secret" not in str(ei.value) and "tid_test" not in str(ei.value)


def test_concurrent_reads_of_different_snapshots_on_one_client(fake: FakeTigris) -> None:
    """Eight threads share one client; each reads random versions (or the live object).
    Each answer must be the one its own header asked for, and no request may carry another
    call's header."""
    base = time.time_ns() - 10**12
    versions = [fake.put("hot", "k", f"v{i}".encode(), base + i * 1000) for i in range(20)]
    p = TigrisProvider("hot")
    errors: list[str] = []
    plain = 0
    lock = threading.Lock()

    def worker(seed: int) -> None:
        nonlocal plain
        rnd = random.Random(seed)
        for _ in range(40):
            i = rnd.randrange(-1, 20)
            if i < 0:
                got = p.read("k").read()
                with lock:
                    plain += 1
                if got != b"v19":
                    errors.append(f"live read got {got!r}")
            else:
                got = p.read("k", versions[i] + rnd.randrange(0, 1000)).read()
                if got != f"v{i}".encode():
                    errors.append(f"version {i} got {got!r}")

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    reqs = fake.of("GET", "/hot/k")
    assert len(reqs) == 320
    assert sum(1 for r in reqs if not r.tigris()) == plain
    for r in reqs:
        if r.tigris():
            assert set(r.tigris()) == {"x-tigris-snapshot-version"}
            assert "x-tigris-snapshot-version" in r.signed_headers


def test_hooks_are_per_call_not_per_client(fake: FakeTigris, bucket: str) -> None:
    """A plain call on the hooked client right after a snapshot read carries no header."""
    p = TigrisProvider(bucket)
    with pytest.raises(SnapshotError, match="no object 'a' at 1"):
        p.read("a", 1)  # nothing existed at 1 ns after the epoch
    assert p.client.get_object(Bucket=bucket, Key="a")["Body"].read() == b"a2"
    p.client.delete_bucket  # noqa: B018  # attribute only: nothing sent
    last_two = fake.of("GET", "/data/a")[-2:]
    assert [r.tigris() for r in last_two] == [{"x-tigris-snapshot-version": "1"}, {}]
