"""Policy actions on snapshot buckets against moto: the snapshot action with retention,
protecting an archive in a target bucket, restore drills and their expiry."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from backup.errors import SnapshotError
from backup.inventory import Archive, Event, Inventory, Snapshot
from backup.policy import Retention
from backup.snapshot_actions import expire_drills, fork_drill, protect_archive, snapshot_source
from backup.snapshots import VersionedProvider

from .conftest import Writer, at, unique


@pytest.fixture
def inv(tmp_path: Path) -> Any:
    i = Inventory(f"sqlite:///{tmp_path / 'inv.db'}")
    yield i
    i.close()


def snapshots_in(inv: Inventory) -> list[Snapshot]:
    with inv.session() as db:
        return list(db.query(Snapshot).order_by(Snapshot.id).all())


def test_snapshot_action_keeps_by_retention(writer: Writer, inv: Inventory, s3: Any) -> None:
    writer.put("a", b"1", 1)
    writer.stamp()
    url = f"s3://{writer.bucket}"
    p = VersionedProvider(writer.bucket, client=s3)
    foreign = p.take("someone-else")
    archived = p.take("media-archive-20260301T110000Z")  # the archive action's: not pruned
    runs = [
        snapshot_source(url, "media", Retention(keep_last=2), inv, now=at(3600 * i))
        for i in range(4)
    ]
    assert runs[0].taken.name == "media-20260301T120000Z"
    assert [len(r.deleted) for r in runs] == [0, 0, 1, 1]
    left = [s.name for s in p.list()]
    assert left == ["someone-else", archived.name, runs[2].taken.name, runs[3].taken.name]
    assert foreign.name in left  # snapshots the policy did not take are never pruned
    # the inventory forgets the snapshots retention deleted
    rows = snapshots_in(inv)
    assert [(r.policy, r.version) for r in rows] == [("media", r.taken.version) for r in runs[2:]]


def test_protect_archive_snapshots_only_the_archive(s3: Any, inv: Inventory) -> None:
    bucket = unique("vault")
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    aid = "20260301T120000Z-0badf00d"
    inv.add_archive(
        Archive(
            id=aid,
            policy="p",
            target=f"s3://{bucket}/v",
            location=f"p/{aid}.tar.zst.age",
            manifest_location=f"p/{aid}.manifest.json.zst.age",
            kind="full",
            created=at(0),
            state="complete",
        )
    )
    for k in (f"v/p/{aid}.tar.zst.age", f"v/p/{aid}.manifest.json.zst.age", "v/p/other"):
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())
    snap = protect_archive(f"s3://{bucket}/v?storage_class=DEEP_ARCHIVE", "p", aid, inv)
    assert snap.name == f"archive-{aid}"
    # an overwrite and a delete in the bucket cannot take the archive away
    s3.put_object(Bucket=bucket, Key=f"v/p/{aid}.tar.zst.age", Body=b"overwritten")
    s3.delete_object(Bucket=bucket, Key=f"v/p/{aid}.manifest.json.zst.age")
    p = VersionedProvider(bucket, f"v/p/{aid}", client=s3)
    got = {o.key: p.read(o.key, snap).read() for o in p.list_objects(snap)}
    assert got == {
        f"v/p/{aid}.tar.zst.age": f"v/p/{aid}.tar.zst.age".encode(),
        f"v/p/{aid}.manifest.json.zst.age": f"v/p/{aid}.manifest.json.zst.age".encode(),
    }
    (row,) = snapshots_in(inv)
    assert (row.archive_id, row.version, row.bucket) == (aid, snap.version, f"s3://{bucket}/v/")
    with pytest.raises(SnapshotError, match="need an s3:// target"):
        protect_archive("file:///srv/vault", "p", aid, inv)


def test_fork_drill_pass_fail_and_expiry(writer: Writer, inv: Inventory, s3: Any) -> None:
    writer.put("data/x", b"payload", 1)
    writer.stamp()
    url = f"s3://{writer.bucket}/data/"
    with pytest.raises(SnapshotError, match="no snapshot to drill on"):
        fork_drill(url, "p", inv, bucket_pattern="{bucket}-d", check_command="true")
    VersionedProvider(writer.bucket, client=s3).take("s1")
    check = (
        'test "$BACKUP_DRILL_SNAPSHOT" -gt 0 && '
        'echo "$BACKUP_DRILL_URL" && test "$BACKUP_DRILL_SOURCE" = "' + url + '"'
    )
    ok = fork_drill(
        url, "p", inv, bucket_pattern="{bucket}-ok-{time}", check_command=check, now=at(0)
    )
    assert ok.ok and ok.returncode == 0 and ok.bucket == f"{writer.bucket}-ok-120000"
    assert f"s3://{ok.bucket}/data/" in ok.output
    assert s3.get_object(Bucket=ok.bucket, Key="data/x")["Body"].read() == b"payload"
    bad = fork_drill(
        url, "p", inv, bucket_pattern="{bucket}-bad", check_command="echo broken; exit 3"
    )
    assert not bad.ok and bad.returncode == 3 and "broken" in bad.output
    assert (ok.verdict, bad.verdict) == ("passed", "the check exited 3: broken")
    slow = fork_drill(
        url, "p", inv, bucket_pattern="{bucket}-slow", check_command="sleep 30", timeout=0.5
    )
    assert (slow.ok, slow.verdict) == (False, "the check timed out after 0.5 s")
    with inv.session() as db:
        drills = [json.loads(e.data) for e in db.query(Event).filter(Event.kind == "drill")]
    assert [(d["bucket"], d["ok"]) for d in drills] == [
        (ok.bucket, True),
        (bad.bucket, False),
        (slow.bucket, False),
    ]
    with pytest.raises(SnapshotError, match="not a valid bucket name"):
        fork_drill(url, "p", inv, bucket_pattern="{bucket}_UNDER_{date}", check_command="true")
    # nothing is old enough yet; then both forks go, and only once
    assert expire_drills(inv, timedelta(days=1)) == []
    later = at(0) + timedelta(days=400)
    assert sorted(expire_drills(inv, timedelta(days=1), now=later)) == sorted(
        [ok.bucket, bad.bucket, slow.bucket]
    )
    names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert ok.bucket not in names and bad.bucket not in names and writer.bucket in names
    assert expire_drills(inv, timedelta(days=1), now=later) == []


def test_expire_refuses_a_bucket_whose_lineage_differs(
    writer: Writer, inv: Inventory, s3: Any
) -> None:
    writer.put("k", b"v", 1)
    writer.stamp()
    VersionedProvider(writer.bucket, client=s3).take()
    url = f"s3://{writer.bucket}"
    res = fork_drill(url, "p", inv, bucket_pattern="{bucket}-x", check_command="true")
    # someone replaced the fork's lineage: it is no longer provably the drill's fork
    s3.put_object(
        Bucket=res.bucket,
        Key=".backup-snapshots/lineage.json",
        Body=json.dumps({"source_bucket": "production", "complete": True}).encode(),
    )
    assert expire_drills(inv, timedelta(0), now=at(0) + timedelta(days=999)) == []
    assert res.bucket in {b["Name"] for b in s3.list_buckets()["Buckets"]}
