"""Disaster drill on a Glacier vault (moto's server, whose jobs finish after seconds): a full
and two incrementals (changes, a deletion, a rename), then the inventory and the policy file
are lost. ``backup inventory rebuild glacier://VAULT`` first reports what the vault holds and
what retrieving the manifests costs, requesting nothing; with ``--retrieve-manifests
--no-wait`` it starts one job per manifest (none for an archive) and returns; run again
without the option, it finds those jobs, records every archive exactly as before, and names
the damaged manifest and the foreign archive; a further run changes nothing and starts no
job. Then each point in time is restored through the workers (retrievals, polling,
extraction) and equals the tree it was, byte for byte."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import pytest

from backup.engine import run_backup
from backup.inventory import Archive, Inventory
from backup.jobs import JobStore
from backup.targets.glacier import GlacierTarget, parse_ref
from tests.conftest import Env, MotoServer, snapshot_tree, write_policy
from tests.workers.conftest import (  # noqa: F401  (fixtures)
    Cluster,
    cluster,
    inventory_url,
    wait_for,
)

pytestmark = pytest.mark.slow


def rows(inv: Inventory) -> list[tuple[Any, ...]]:
    """What the archive list must keep across a rebuild."""
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


def archive_jobs(glacier: Any, vault: str) -> list[dict[str, Any]]:
    return [
        j
        for j in glacier.list_jobs(vaultName=vault)["JobList"]
        if j["Action"] == "ArchiveRetrieval"
    ]


def store(t: GlacierTarget, key: str, data: bytes) -> str:
    with t.open_write(key) as w:
        w.write(data)
        return w.commit()


def test_vault_drill_rebuild_then_restore_every_point_in_time(
    cluster: Cluster,  # noqa: F811
    aws_env: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    vault = f"dr-{secrets.token_hex(4)}"
    url = f"glacier://{vault}"
    glacier = aws_env.client("glacier")
    glacier.create_vault(vaultName=vault)
    env = cluster.env
    write_policy(
        env.config,
        name="p",
        sources=[str(env.source)],
        target=url,
        recipients=[env.key.recipient],
        full_every="7d",
    )
    monkeypatch.setenv("BACKUP_GLACIER_ENDPOINT_URL", aws_env.endpoint)
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        cluster.environ[k] = os.environ[k]
    cluster.environ["BACKUP_GLACIER_ENDPOINT_URL"] = aws_env.endpoint
    cluster.environ["BACKUP_POLL_SECONDS"] = "0.5"
    cluster.environ["BACKUP_POLL_MAX_SECONDS"] = "1"

    src = env.source
    inv = Inventory(env.inventory_url)
    points: list[tuple[Archive, dict[bytes, Any]]] = []
    (src / "a.txt").write_text("one\n")
    (src / "d").mkdir()
    (src / "d" / "keep.bin").write_bytes(os.urandom(200_000))
    (src / "d" / "old-name.txt").write_text("renamed later\n")
    points.append((run_backup(env.policy(), inv).archive, snapshot_tree(src)))
    (src / "a.txt").write_text("one, changed\n")
    (src / "b.txt").write_text("two\n")
    points.append((run_backup(env.policy(), inv).archive, snapshot_tree(src)))
    (src / "b.txt").unlink()
    (src / "d" / "old-name.txt").rename(src / "d" / "new-name.txt")
    points.append((run_backup(env.policy(), inv).archive, snapshot_tree(src)))
    assert [a.kind for a, _ in points] == ["full", "incremental", "incremental"]
    before = rows(inv)
    inv.close()

    t = GlacierTarget(url)
    damaged_id = "20200101T000000Z-0badf00d"
    store(t, f"p/{damaged_id}.tar.zst.age", os.urandom(2000))
    damaged_manifest = store(t, f"p/{damaged_id}.manifest.json.zst.age", b"not an age file")
    foreign = glacier.upload_archive(
        vaultName=vault, archiveDescription="someone else's", body=b"foreign bytes"
    )["archiveId"]

    # the disaster: no inventory, no policy file; only the identity and the vault's URL
    env.config.unlink()
    rebuilt = f"sqlite:///{tmp_path / 'rebuilt.db'}"
    cluster.environ["BACKUP_INVENTORY_URL"] = rebuilt

    # without the opt-in: what exists and what the manifests cost; nothing requested
    r = cluster.cli("inventory", "rebuild", url, "--poll", "0.5", "--json")
    rep = json.loads(r.stdout)
    assert rep["added"] == [] and rep["state"] == "unretrieved"
    assert sorted(o["archive_id"] for o in rep["found"]) == sorted(
        [damaged_id, *(a.id for a, _ in points)]
    )
    assert rep["plan"]["objects"] == 4 and rep["plan"]["cost_usd"] > 0
    assert rep["foreign"] == [f"vault archive {foreign}"]
    assert archive_jobs(glacier, vault) == []
    assert Inventory(rebuilt).archives(None) == []
    text = cluster.cli("inventory", "rebuild", url, "--poll", "0.5").stdout
    assert "--retrieve-manifests" in text and "costs about $" in text

    # opted in, not waiting: one job per manifest, none for an archive
    r = cluster.cli(
        "inventory", "rebuild", url, "--retrieve-manifests", "--tier", "Expedited",
        "--no-wait", "--json",
    )  # fmt: skip
    rep = json.loads(r.stdout)
    assert rep["state"] == "retrieving" and len(rep["requested"]) == 4 and rep["added"] == []
    manifests = {parse_ref(url, a.manifest_location)[1] for a, _ in points}
    manifests.add(parse_ref(url, damaged_manifest)[1])
    assert {j["ArchiveId"] for j in archive_jobs(glacier, vault)} == manifests
    assert len(archive_jobs(glacier, vault)) == 4

    # resumed later, without the option: the same jobs, every archive recorded as it was
    r = cluster.cli("inventory", "rebuild", url, "--poll", "0.5", "--json", check=False)
    assert r.returncode == 3, r.stderr  # the damaged manifest is reported
    rep = json.loads(r.stdout)
    assert rep["state"] == "done" and rep["requested"] == []
    assert rep["added"] == [a.id for a, _ in points]
    assert [d["key"] for d in rep["damaged"]] == [f"p/{damaged_id}.manifest.json.zst.age"]
    assert rep["foreign"] == [f"vault archive {foreign}"]
    assert len(archive_jobs(glacier, vault)) == 4
    assert rows(Inventory(rebuilt)) == before

    # a second rebuild changes nothing and starts nothing
    r = cluster.cli("inventory", "rebuild", url, "--poll", "0.5", "--json", check=False)
    rep = json.loads(r.stdout)
    assert rep["added"] == [] and sorted(rep["known"]) == sorted(a.id for a, _ in points)
    assert rep["differing"] == [] and rep["requested"] == []
    assert len(archive_jobs(glacier, vault)) == 4
    assert rows(Inventory(rebuilt)) == before

    # one inventory job served every run, and serves inventory sync too
    inventory_jobs = [
        j
        for j in glacier.list_jobs(vaultName=vault)["JobList"]
        if j["Action"] == "InventoryRetrieval"
    ]
    assert len(inventory_jobs) == 1
    sync = json.loads(cluster.cli("inventory", "sync", url, "--poll", "0.5", "--json").stdout)
    assert sync["matched"] == 6 and sync["only_in_inventory"] == []
    assert len(glacier.list_jobs(vaultName=vault)["JobList"]) == 1 + 4

    # every point in time, through the workers' cold path
    cluster.worker()
    cluster.scheduler()
    store_ = JobStore(Inventory(rebuilt))
    for i, (archive, tree) in enumerate(points):
        dest = env.tmp / f"restored-{i}"
        req = json.loads(
            cluster.cli(
                "restore", "p", "--to", str(dest), "--at", archive.created.isoformat(),
                "--tier", "Expedited", "--json",
            ).stdout
        )  # fmt: skip
        job = wait_for(
            lambda job_id=req["job"]: (j := store_.get(job_id)).state in ("done", "failed") and j,
            120,
            f"the restore of {archive.id}",
        )
        assert job.state == "done", job.error
        assert json.loads(job.result)["archive_id"] == archive.id
        assert snapshot_tree(dest) == tree


def test_vault_children_ready_before_their_parent_wait_for_it(
    env: Env, aws_env: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Manifest jobs finish in any order: an incremental whose manifest is ready while its
    parent's job still runs is held, not reported as an orphan, and recorded (parents first)
    by the run that finds the parent's job finished."""
    import time

    from backup.crypto.age import load_identities
    from backup.rebuild_vault import rebuild_vault

    vault = f"dr-{secrets.token_hex(4)}"
    url = f"glacier://{vault}"
    glacier = aws_env.client("glacier")
    glacier.create_vault(vaultName=vault)
    monkeypatch.setenv("BACKUP_GLACIER_ENDPOINT_URL", aws_env.endpoint)
    write_policy(
        env.config, name="p", sources=[str(env.source)], target=url,
        recipients=[env.key.recipient], full_every="7d",
    )  # fmt: skip
    inv = Inventory(env.inventory_url)
    chain = []
    for i in range(3):
        (env.source / f"f{i}.txt").write_text(f"file {i}\n")
        chain.append(run_backup(env.policy(), inv).archive)
    inv.close()
    t = GlacierTarget(url)
    # the full's manifest comes back slowest (moto: Bulk 10 s, Expedited 2 s)
    t.start_retrieval(chain[0].manifest_location, tier="Bulk")
    for a in chain[1:]:
        t.start_retrieval(a.manifest_location, tier="Expedited")
    rebuilt = Inventory(f"sqlite:///{tmp_path / 'rebuilt.db'}")
    ids = load_identities(env.key.path)
    while (first := rebuild_vault(rebuilt, t, ids, wait=False)).state == "inventory-pending":
        time.sleep(0.5)  # moto's inventory job: 5 s
    assert first.state == "retrieving"
    assert first.report.added == [] and first.report.orphans == []
    assert [aid for aid, _job in first.pending] == [chain[0].id]
    assert first.report.manifests_read == 2
    out = rebuild_vault(rebuilt, t, ids, poll_seconds=0.5, timeout=60)
    assert out.state == "done" and out.requested == [] and out.report.orphans == []
    got = first.report.added + out.report.added
    assert got == [a.id for a in chain]
    assert [(a.id, a.parent_id) for a in rebuilt.archives("p")] == [
        (a.id, a.parent_id) for a in chain
    ]
    rebuilt.close()
