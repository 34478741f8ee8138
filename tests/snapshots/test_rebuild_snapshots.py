"""Disaster drills on snapshot buckets: a bucket source (its ``snapshot`` action and its
archives, full and incrementals with changes, a deletion and a rename), archived into a
snapshot-enabled target (versioned, on moto) or a directory (the source on the Tigris fake).
Then the inventory and the policy file are lost, ``backup inventory rebuild TARGET`` runs,
and the archive list and the ``snapshots`` rows are what they were (bucket, name, version,
time, policy, archive), each point in time restores byte for byte, a damaged manifest and a
foreign object are named and skipped, and a second rebuild changes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from backup.cli import cli
from backup.crypto.age import load_identities
from backup.inventory import Inventory, Snapshot
from backup.jobs.backups import back_up as run_backup
from backup.policy import Retention, load_policies
from backup.restore import restore
from backup.snapshot_actions import snapshot_source
from tests.conftest import Key, write_policy

from .conftest import at, unique
from .fake_tigris import FakeTigris


def rows(inv: Inventory) -> list[tuple[Any, ...]]:
    return [
        (
            a.id,
            a.policy,
            a.target,
            a.kind,
            a.parent_id,
            a.created,
            a.state,
            a.size_in,
            a.size_tar,
            a.size_stored,
            a.sha256,
            a.manifest_sha256,
            a.entries,
            a.deleted_paths,
            a.location,
            a.manifest_location,
        )
        for a in inv.archives(None)
    ]


def snapshot_rows(inv: Inventory) -> list[tuple[Any, ...]]:
    with inv.session() as db:
        return sorted(
            (s.bucket, s.name or "", s.version, s.created, s.policy or "", s.archive_id or "")
            for s in db.query(Snapshot).all()
        )


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def rebuild(target: str, *extra: str) -> tuple[int, dict[str, Any]]:
    r = CliRunner().invoke(cli, ["inventory", "rebuild", target, "--json", *extra])
    assert r.exit_code in (0, 3), r.output
    return r.exit_code, json.loads(r.stdout)


def lose_everything(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The disaster: the policy file and the inventory are gone; a new, empty inventory."""
    config.unlink()
    url = f"sqlite:///{tmp_path / 'rebuilt.db'}"
    monkeypatch.setenv("BACKUP_INVENTORY_URL", url)
    return url


def test_versioned_target_and_source_rebuilt_with_their_snapshot_rows(
    s3: Any, key: Key, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, vault = unique("src"), unique("vault")
    for b in (src, vault):
        s3.create_bucket(Bucket=b)
        s3.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})
    config = tmp_path / "policies.toml"
    write_policy(
        config,
        name="media",
        source=f"s3://{src}/data/",
        # no prefix: the snapshot manifests sit beside the archives; rebuilt from the URL
        # without its query, the rows keep the policy's
        target=f"s3://{vault}?storage_class=STANDARD_IA",
        target_snapshots=True,
        recipients=[key.recipient],
        full_every="7d",
    )
    monkeypatch.setenv("BACKUP_CONFIG", str(config))
    monkeypatch.setenv("BACKUP_IDENTITY", str(key.path))
    inv_url = f"sqlite:///{tmp_path / 'inv.db'}"
    monkeypatch.setenv("BACKUP_INVENTORY_URL", inv_url)
    policy = load_policies(config)["media"]
    inv = Inventory(inv_url)

    def state() -> dict[str, bytes]:
        out = {}
        for o in s3.list_objects_v2(Bucket=src, Prefix="data/").get("Contents", []):
            body = s3.get_object(Bucket=src, Key=o["Key"])["Body"].read()
            out[o["Key"][len("data/") :]] = body
        return out

    s3.put_object(Bucket=src, Key="data/a.txt", Body=b"one")
    s3.put_object(Bucket=src, Key="data/d/old-name.bin", Body=b"R" * 3000)
    s3.put_object(Bucket=src, Key="data/gone.txt", Body=b"deleted later")
    snapshot_source(policy.source or "", "media", Retention(), inv, now=at(-60))
    points = [(run_backup(policy, inv, now=at(0)).archive, state())]
    s3.put_object(Bucket=src, Key="data/a.txt", Body=b"one, changed")
    s3.delete_object(Bucket=src, Key="data/gone.txt")
    points.append((run_backup(policy, inv, now=at(60)).archive, state()))
    s3.copy_object(
        Bucket=src,
        Key="data/d/new-name.bin",
        CopySource={"Bucket": src, "Key": "data/d/old-name.bin"},
    )
    s3.delete_object(Bucket=src, Key="data/d/old-name.bin")
    snapshot_source(policy.source or "", "media", Retention(), inv, now=at(90))
    points.append((run_backup(policy, inv, now=at(120)).archive, state()))
    assert [a.kind for a, _ in points] == ["full", "incremental", "incremental"]
    before, snaps_before = rows(inv), snapshot_rows(inv)
    # two snapshot-action rows, and per archive its source and its target snapshot
    assert len(snaps_before) == 2 + 2 * 3
    inv.close()

    damaged = "media/20200101T000000Z-0badf00d"
    s3.put_object(Bucket=vault, Key=f"{damaged}.tar.zst.age", Body=b"x" * 100)
    s3.put_object(Bucket=vault, Key=f"{damaged}.manifest.json.zst.age", Body=b"not age")
    s3.put_object(Bucket=vault, Key="notes/readme.txt", Body=b"someone else's")
    rebuilt = lose_everything(config, tmp_path, monkeypatch)

    code, rep = rebuild(f"s3://{vault}")
    assert code == 3  # the damaged manifest
    assert rep["added"] == [a.id for a, _ in points]
    assert [d["key"] for d in rep["damaged"]] == [f"{damaged}.manifest.json.zst.age"]
    assert rep["foreign"] == ["notes/readme.txt"]  # the snapshot manifests are not foreign
    assert len(rep["snapshots"]["added"]) == len(snaps_before)
    inv = Inventory(rebuilt)
    assert rows(inv) == before
    assert snapshot_rows(inv) == snaps_before

    ids = load_identities(key.path)
    for i, (archive, expected) in enumerate(points):
        restore("media", inv, tmp_path / f"r{i}", ids, at=archive.created)
        assert tree(tmp_path / f"r{i}") == expected

    code, rep = rebuild(f"s3://{vault}")
    assert rep["added"] == [] and rep["known"] == [a.id for a, _ in points]
    assert rep["snapshots"]["added"] == []
    assert rows(inv) == before and snapshot_rows(inv) == snaps_before
    inv.close()


def test_tigris_source_snapshot_rows_rebuilt_from_its_snapshot_listing(
    fake: FakeTigris, key: Key, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault = tmp_path / "vault"
    config = tmp_path / "policies.toml"
    write_policy(
        config,
        name="media",
        source="s3://media/photos/",
        target=f"file://{vault}",
        recipients=[key.recipient],
        full_every="7d",
    )
    monkeypatch.setenv("BACKUP_CONFIG", str(config))
    monkeypatch.setenv("BACKUP_IDENTITY", str(key.path))
    inv_url = f"sqlite:///{tmp_path / 'inv.db'}"
    monkeypatch.setenv("BACKUP_INVENTORY_URL", inv_url)
    policy = load_policies(config)["media"]
    inv = Inventory(inv_url)
    objects = {"a.jpg": b"A" * 500, "sub/b.jpg": b"B" * 700, "old.jpg": b"renamed later"}
    for k, v in objects.items():
        fake.put("media", f"photos/{k}", v)
    fake.put("media", "elsewhere/x", b"not in the source")
    # someone else's snapshot of the same bucket: seen, never recorded
    from backup.snapshots import TigrisProvider

    TigrisProvider("media", "").take("by-hand")
    points = [(run_backup(policy, inv, now=at(0)).archive, dict(objects))]
    objects["a.jpg"] = b"A, changed"
    fake.put("media", "photos/a.jpg", objects["a.jpg"])
    snapshot_source(policy.source or "", "media", Retention(), inv, now=at(30))
    points.append((run_backup(policy, inv, now=at(60)).archive, dict(objects)))
    objects["new.jpg"] = objects.pop("old.jpg")
    fake.put("media", "photos/new.jpg", objects["new.jpg"])
    fake.put("media", "photos/old.jpg", None)  # deleted
    del objects["sub/b.jpg"]
    fake.put("media", "photos/sub/b.jpg", None)
    points.append((run_backup(policy, inv, now=at(120)).archive, dict(objects)))
    before, snaps_before = rows(inv), snapshot_rows(inv)
    assert len(snaps_before) == 1 + 3
    inv.close()

    (vault / "media" / "20200101T000000Z-0badf00d.tar.zst.age").write_bytes(b"x" * 10)
    (vault / "media" / "20200101T000000Z-0badf00d.manifest.json.zst.age").write_bytes(b"bad")
    (vault / "stray.txt").write_bytes(b"foreign")
    rebuilt = lose_everything(config, tmp_path, monkeypatch)

    code, rep = rebuild(f"file://{vault}", "--dry-run")
    assert len(rep["snapshots"]["added"]) == 0  # nothing recorded, so nothing to link yet
    assert Inventory(rebuilt).archives(None) == []
    code, rep = rebuild(f"file://{vault}")
    assert code == 3
    assert rep["added"] == [a.id for a, _ in points]
    assert [d["key"] for d in rep["damaged"]] == [
        "media/20200101T000000Z-0badf00d.manifest.json.zst.age"
    ]
    assert rep["foreign"] == ["stray.txt"]
    assert rep["snapshots"]["others"] == 1  # the hand-made one
    inv = Inventory(rebuilt)
    assert rows(inv) == before
    assert snapshot_rows(inv) == snaps_before

    ids = load_identities(key.path)
    for i, (archive, expected) in enumerate(points):
        restore("media", inv, tmp_path / f"r{i}", ids, archive_id=archive.id)
        assert tree(tmp_path / f"r{i}") == expected

    code, rep = rebuild(f"file://{vault}")
    assert rep["added"] == [] and rep["snapshots"]["added"] == []
    assert rows(inv) == before and snapshot_rows(inv) == snaps_before
    inv.close()


def test_retrieving_manifests_is_refused_where_they_are_hot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: Key
) -> None:
    monkeypatch.setenv("BACKUP_INVENTORY_URL", f"sqlite:///{tmp_path / 'inv.db'}")
    monkeypatch.setenv("BACKUP_IDENTITY", str(key.path))
    (tmp_path / "vault").mkdir()
    r = CliRunner().invoke(
        cli, ["inventory", "rebuild", f"file://{tmp_path / 'vault'}", "--retrieve-manifests"]
    )
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1] == (
        "error: --retrieve-manifests: only a glacier:// vault's rebuild retrieves manifests"
    )
