"""A bucket as a backup source and target, end to end on moto: the bucket is archived as of
snapshots through the core pipeline (a full, then incrementals holding only what changed,
deletions recorded), restored to points in time key by key and byte by byte, restored into
another bucket and in place; a snapshot-enabled target bucket is snapshotted after each
archive lands."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from backup.archive.scan import DIR, FILE
from backup.bucket_restore import restore_to_bucket
from backup.errors import SnapshotError
from backup.inventory import Inventory, Snapshot
from backup.restore import restore
from backup.snapshots import VersionedProvider, to_ns
from backup.snapshots.source import SOURCE_TIME_META, bucket_scan
from tests.conftest import Key, require_tools, write_policy

from .conftest import Writer, at, unique


def test_bucket_scan_maps_keys_to_safe_paths(writer: Writer, s3: Any) -> None:
    for k in (
        "photos/a.txt",
        "photos/sub/b.bin",
        "photos/sub/",
        "photos/e/",
        "photos//bad",
        "photos/../up",
        "photos2/other",
        "photos/skip.tmp",
    ):
        writer.put(k, k.encode(), 10)
    writer.stamp()
    p = VersionedProvider(writer.bucket, "photos", client=s3)
    snap = p.take()
    res = bucket_scan(p, snap, exclude=["*.tmp"])
    assert [(e.path, e.kind) for e in res.entries] == [
        (b"a.txt", FILE),
        (b"e", DIR),
        (b"sub", DIR),
        (b"sub/b.bin", FILE),
    ]
    assert sorted(u.path for u in res.unreadable) == [b"photos/../up", b"photos//bad"]
    a = res.entries[0]
    assert a.size == len(b"photos/a.txt") and a.mtime_ns == to_ns(at(10))
    assert a.opener is not None and a.opener().read() == b"photos/a.txt"
    # a new version is a new signature; the same version keeps it
    again = bucket_scan(p, p.take(), exclude=["*.tmp"]).entries[0]
    assert again.ino == a.ino
    s3.put_object(Bucket=writer.bucket, Key="photos/a.txt", Body=b"photos/a.txt")
    changed = bucket_scan(p, p.take(), exclude=["*.tmp"]).entries[0]
    assert changed.ino != a.ino


@pytest.fixture
def bucket_policy(
    tmp_path: Path, key: Key, versioned_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> Any:
    config = tmp_path / "policies.toml"
    vault = tmp_path / "vault"
    write_policy(
        config,
        name="media",
        source=f"s3://{versioned_bucket}/data/",
        target=f"file://{vault}",
        recipients=[key.recipient],
        full_every="7d",
    )
    inv_url = f"sqlite:///{tmp_path / 'inv.db'}"
    monkeypatch.setenv("BACKUP_CONFIG", str(config))
    monkeypatch.setenv("BACKUP_INVENTORY_URL", inv_url)
    from backup.policy import load_policies

    return load_policies(config)["media"], Inventory(inv_url), vault


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _at_snapshot(p: VersionedProvider, snap: Any) -> dict[str, bytes]:
    return {o.key[len(p.prefix) :]: p.read(o.key, snap).read() for o in p.list_objects(snap)}


def test_bucket_source_archived_in_incrementals_and_restored(
    bucket_policy: Any, writer: Writer, s3: Any, key: Key, tmp_path: Path
) -> None:
    from backup.jobs.backups import back_up as run_backup

    policy, inv, vault = bucket_policy
    b = writer.bucket
    for i in range(5):
        s3.put_object(Bucket=b, Key=f"data/f{i}.bin", Body=bytes([i]) * (1000 + i))
    s3.put_object(Bucket=b, Key="data/sub/deep.txt", Body=b"deep")
    s3.put_object(Bucket=b, Key="elsewhere/x", Body=b"not in the source")
    r1 = run_backup(policy, inv, now=at(0))
    assert r1.archive.kind == "full" and r1.archive.entries == 7  # 6 files + the sub dir
    s3.put_object(Bucket=b, Key="data/f0.bin", Body=b"changed")
    s3.delete_object(Bucket=b, Key="data/f1.bin")
    s3.put_object(Bucket=b, Key="data/new.txt", Body=b"new")
    r2 = run_backup(policy, inv, now=at(60))
    assert r2.archive.kind == "incremental" and r2.archive.parent_id == r1.archive.id
    assert r2.deleted == 1
    assert sorted(x.path for x in inv.records(r2.archive.id)) == [b"f0.bin", b"f1.bin", b"new.txt"]
    r3 = run_backup(policy, inv, now=at(120))  # nothing changed: an empty incremental
    assert r3.archive.entries == 0 and r3.deleted == 0

    # each archive is recorded with the snapshot it was packed from
    with inv.session() as db:
        snaps = {s.archive_id: s for s in db.query(Snapshot).all()}
    assert set(snaps) == {r1.archive.id, r2.archive.id, r3.archive.id}
    p = VersionedProvider(b, "data/", client=s3)
    s1 = p.find(snaps[r1.archive.id].version)
    s2 = p.find(snaps[r2.archive.id].version)
    # restored to each point in time, key by key and byte by byte
    from backup.crypto.age import load_identities

    ids = load_identities(key.path)
    restore("media", inv, tmp_path / "r1", ids, archive_id=r1.archive.id)
    assert _tree(tmp_path / "r1") == _at_snapshot(p, s1)
    restore("media", inv, tmp_path / "r3", ids)
    assert _tree(tmp_path / "r3") == _at_snapshot(p, s2)
    assert "f1.bin" not in _tree(tmp_path / "r3")

    # and the archive is standard: age -d | zstd -d | tar -x restores it
    require_tools("age", "zstd", "tar")
    out = tmp_path / "bytar"
    out.mkdir()
    arch = vault / r1.archive.location
    subprocess.run(
        f"age -d -i {key.path} {arch} | zstd -d | tar -x -C {out}", shell=True, check=True
    )
    assert _tree(out) == _at_snapshot(p, s1)

    # into another bucket (out of place), with the source time in metadata
    dest = unique("restored")
    s3.create_bucket(Bucket=dest)
    rb = restore_to_bucket(policy, inv, f"s3://{dest}/copy", ids, archive_id=r1.archive.id)
    assert rb.uploaded == 6 and rb.deleted == 0
    got = {
        o["Key"][len("copy/") :]: s3.get_object(Bucket=dest, Key=o["Key"])["Body"].read()
        for o in s3.list_objects_v2(Bucket=dest)["Contents"]
    }
    assert got == _at_snapshot(p, s1)
    meta = s3.head_object(Bucket=dest, Key="copy/f2.bin")["Metadata"]
    listed = s3.head_object(Bucket=b, Key="data/f2.bin")["LastModified"]
    assert meta[SOURCE_TIME_META] == listed.isoformat().replace("+00:00", "Z")
    with pytest.raises(SnapshotError, match="overlaps the source"):
        restore_to_bucket(policy, inv, f"s3://{b}/data/", ids)

    # in place: new versions and delete markers only, history kept
    before = len(s3.list_object_versions(Bucket=b, Prefix="data/").get("Versions", []))
    rb = restore_to_bucket(
        policy, inv, f"s3://{b}/data/", ids, archive_id=r1.archive.id, in_place=True
    )
    assert (rb.uploaded, rb.deleted) == (2, 1)  # f0 and f1 written back; new.txt deleted
    assert rb.unchanged == 4
    assert _at_snapshot(p, p.take()) == _at_snapshot(p, s1)
    versions = s3.list_object_versions(Bucket=b, Prefix="data/")
    assert len(versions.get("Versions", [])) == before + 2
    assert any(m["Key"] == "data/new.txt" for m in versions.get("DeleteMarkers", []))
    assert s3.get_object(Bucket=b, Key="elsewhere/x")["Body"].read() == b"not in the source"


def test_target_bucket_snapshot_after_each_archive(
    tmp_path: Path, key: Key, s3: Any, aws_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backup.jobs.backups import back_up as run_backup
    from backup.policy import load_policies

    vault = unique("vault")
    s3.create_bucket(Bucket=vault)
    s3.put_bucket_versioning(Bucket=vault, VersioningConfiguration={"Status": "Enabled"})
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    config = tmp_path / "p.toml"
    write_policy(
        config,
        name="p",
        sources=[str(src)],
        target=f"s3://{vault}/backups",
        recipients=[key.recipient],
        target_snapshots=True,
    )
    inv = Inventory(f"sqlite:///{tmp_path / 'inv.db'}")
    r = run_backup(load_policies(config)["p"], inv)
    with inv.session() as db:
        (row,) = db.query(Snapshot).all()
    assert row.archive_id == r.archive.id and row.name == f"archive-{r.archive.id}"
    p = VersionedProvider(vault, f"backups/p/{r.archive.id}", client=s3)
    snap = p.find(row.version)
    keys = sorted(o.key for o in p.list_objects(snap))
    assert keys == sorted(f"backups/{k}" for k in (r.archive.location, r.archive.manifest_location))
    # overwriting the archive in the bucket cannot take it away
    s3.put_object(Bucket=vault, Key=keys[1], Body=b"ransomware")
    assert p.read(keys[1], snap).read() != b"ransomware"
    inv.close()


def test_tigris_source_reads_small_objects_in_bundles(fake: Any) -> None:
    from backup.snapshots import TigrisProvider

    for i in range(7):
        fake.put("media", f"p/k{i}", f"value {i}".encode())
    fake.put("media", "p/big", b"B" * 5000)
    p = TigrisProvider("media", "p/")
    snap = p.take("s")
    fake.put("media", "p/k3", b"changed after the snapshot")
    res = bucket_scan(p, snap, bundle_below=1000, bundle_keys=3)
    got = {e.path.decode(): e.opener().read() for e in res.entries if e.opener}
    assert got == {**{f"k{i}": f"value {i}".encode() for i in range(7)}, "big": b"B" * 5000}
    bundles = fake.of("POST", "/media")
    assert [json.loads(r.body)["keys"] for r in bundles] == [
        ["p/k0", "p/k1", "p/k2"],
        ["p/k3", "p/k4", "p/k5"],
        ["p/k6"],
    ]
    # k3 changed since the snapshot: its bundled bytes were refused, and it was read at the
    # snapshot's version instead; "big" was never bundled
    gets = [(r.path, r.tigris()) for r in fake.of("GET", "/media/p/")]
    assert gets == [
        ("/media/p/big", {"x-tigris-snapshot-version": snap.version}),
        ("/media/p/k3", {"x-tigris-snapshot-version": snap.version}),
    ]


def test_bucket_source_to_a_deep_archive_target(
    writer: Writer, s3: Any, key: Key, tmp_path: Path, aws_env: Any
) -> None:
    """The issue's scenario: a source bucket archived to a DEEP_ARCHIVE bucket in
    incrementals, then restored to a point in time, compared key by key and byte by byte."""
    from backup.crypto.age import load_identities
    from backup.jobs.backups import back_up as run_backup
    from backup.policy import load_policies
    from backup.targets import Readiness, open_target
    from tests.targets.s3util import set_restore_transition

    vault = unique("deep")
    s3.create_bucket(Bucket=vault)
    config = tmp_path / "p.toml"
    write_policy(
        config,
        name="src",
        source=f"s3://{writer.bucket}",
        target=f"s3://{vault}/v?storage_class=DEEP_ARCHIVE",
        recipients=[key.recipient],
    )
    pol = load_policies(config)["src"]
    inv = Inventory(f"sqlite:///{tmp_path / 'inv.db'}")
    b = writer.bucket
    states = []
    runs = []
    for step in range(3):
        for i in range(4):
            if (i + step) % 3 == 0:
                s3.put_object(Bucket=b, Key=f"k{i}", Body=f"{i} at {step}".encode() * 50)
        if step == 2:
            s3.delete_object(Bucket=b, Key="k0")
        runs.append(run_backup(pol, inv, now=at(3600 * step)).archive)
        states.append(
            {
                o["Key"]: s3.get_object(Bucket=b, Key=o["Key"])["Body"].read()
                for o in s3.list_objects_v2(Bucket=b).get("Contents", [])
                if not o["Key"].startswith(".backup-snapshots/")
            }
        )
    assert [a.kind for a in runs] == ["full", "incremental", "incremental"]
    assert runs[2].deleted_paths == 1
    stored = s3.head_object(Bucket=vault, Key=f"v/{runs[1].location}")
    assert stored["StorageClass"] == "DEEP_ARCHIVE"
    target = open_target(pol.target)
    set_restore_transition(aws_env.endpoint, {"progression": "immediate"})
    try:
        for a in runs:
            target.request_retrieval(a.location, tier="Bulk")
            assert target.retrieval_status(a.location).state is Readiness.READY
        ids = load_identities(key.path)
        for n in (1, 2):
            out = tmp_path / f"at{n}"
            restore("src", inv, out, ids, at=at(3600 * n + 1))
            assert _tree(out) == states[n]
    finally:
        set_restore_transition(aws_env.endpoint, None)
    inv.close()
