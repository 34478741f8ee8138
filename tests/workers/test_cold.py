"""A restore from DEEP_ARCHIVE, end to end on a real cluster and moto's S3 server: a full
and two incrementals stored in DEEP_ARCHIVE, a restore request with ``--notify``, the request
staying ``retrieving`` while moto says the restores are in progress (and the poller asking
again and again), then completing: the tree matches and one notification arrives."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import MotoServer, snapshot_tree, write_policy
from tests.servers import Receiver
from tests.targets.s3util import new_bucket, set_restore_transition
from tests.workers.conftest import Cluster, Proc, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def moto_restores(aws_env: MotoServer) -> Iterator[MotoServer]:
    yield aws_env
    set_restore_transition(aws_env.endpoint, None)


def test_deep_archive_restore_waits_in_retrieving_then_completes_and_notifies(
    cluster: Cluster, moto_restores: MotoServer, receiver: Receiver
) -> None:
    import os

    bucket = new_bucket(moto_restores)
    env = cluster.env
    write_policy(
        env.config,
        name="p",
        sources=[str(env.source)],
        target=f"s3://{bucket}/vault?storage_class=DEEP_ARCHIVE",
        recipients=[env.key.recipient],
        restore_tier="Bulk",
    )
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        cluster.environ[k] = os.environ[k]
    cluster.environ["BACKUP_S3_ENDPOINT_URL"] = moto_restores.endpoint
    cluster.environ["BACKUP_POLL_SECONDS"] = "0.5"
    cluster.environ["BACKUP_POLL_MAX_SECONDS"] = "1"
    cluster.worker()
    cluster.scheduler()

    (env.source / "a.txt").write_text("one\n")
    (env.source / "keep.bin").write_bytes(os.urandom(200_000))
    cluster.cli("run", "p", "--wait")
    (env.source / "b.txt").write_text("two\n")
    cluster.cli("run", "p", "--wait")
    (env.source / "a.txt").unlink()
    (env.source / "c").mkdir()
    (env.source / "c" / "d.txt").write_text("three\n")
    cluster.cli("run", "p", "--wait")

    s3 = moto_restores.client()
    objs = s3.list_objects_v2(Bucket=bucket)["Contents"]
    # the worker's copy of the inventory (one an hour at most), hot like the manifests
    copies = [o for o in objs if o["Key"].startswith("vault/.backup-inventory/")]
    assert [o.get("StorageClass", "STANDARD") for o in copies] == ["STANDARD"]
    objs = [o for o in objs if o not in copies]
    assert len(objs) == 6
    archives = [o for o in objs if o["Key"].endswith(".tar.zst.age")]
    manifests = [o for o in objs if o["Key"].endswith(".manifest.json.zst.age")]
    assert {o["StorageClass"] for o in archives} == {"DEEP_ARCHIVE"}
    assert {o.get("StorageClass", "STANDARD") for o in manifests} == {"STANDARD"}

    dest = env.tmp / "restored"
    plan = json.loads(cluster.cli("restore", "p", "--to", str(dest), "--dry-run", "--json").stdout)
    assert [o["storage_class"] for o in plan["objects"]] == ["DEEP_ARCHIVE"] * 3
    assert plan["tier"] == "Bulk" and plan["ready_in_seconds"][1] == 48 * 3600
    assert plan["total_cost_usd"] > 0
    assert not dest.exists()

    # moto quirk: a key whose restore state machine has never been stepped reports a
    # requested restore as finished at once (its state None reads as ongoing-request="false").
    # Step each archive into IN_PROGRESS (one manual step, one read), then hold it there.
    set_restore_transition(moto_restores.endpoint, {"progression": "manual", "times": 1})
    for o in archives:
        s3.restore_object(
            Bucket=bucket,
            Key=o["Key"],
            RestoreRequest={"Days": 1, "GlacierJobParameters": {"Tier": "Bulk"}},
        )
        assert s3.head_object(Bucket=bucket, Key=o["Key"])["Restore"] == 'ongoing-request="true"'
    set_restore_transition(moto_restores.endpoint, {"progression": "manual", "times": 10**9})

    req = json.loads(
        cluster.cli("restore", "p", "--to", str(dest), "--notify", receiver.url(), "--json").stdout
    )
    store = cluster.store()
    wait_for(lambda: store.get(req["job"]).state == "retrieving", 60, "retrieving")

    def checked_twice() -> Any:
        rows = [r for r in store.retrievals(req["job"]) if r.storage_class == "DEEP_ARCHIVE"]
        return len(rows) == 3 and all(r.checks >= 2 for r in rows) and rows

    rows = wait_for(checked_twice, 60, "the poller to check each archive twice")
    assert {r.tier for r in rows} == {"Bulk"}
    assert store.get(req["job"]).state == "retrieving"
    assert not dest.exists() and receiver.requests == []
    follower = _shows_retrieval_progress(cluster, req["job"], rows)
    # moto finishes the restores: the next check sees them ready, and the worker extracts
    set_restore_transition(moto_restores.endpoint, {"progression": "immediate"})
    job = wait_for(
        lambda: (j := store.get(req["job"])).state in ("done", "failed") and j, 120, "the restore"
    )
    assert job.state == "done", job.error
    assert snapshot_tree(dest) == snapshot_tree(env.source)
    wait_for(lambda: receiver.requests, 60, "the notification")
    time.sleep(2)
    assert len(receiver.requests) == 1
    assert str(dest) in receiver.requests[0][2]["message"]
    status = json.loads(cluster.cli("status", "--json").stdout)
    assert req["job"] in {j["id"] for j in status["recent"]}
    # `backup job ID --wait` said how the wait went, and ended with the job
    assert follower.popen.wait(timeout=60) == 0, follower.text()
    said = follower.text()
    assert f"{req['job']} retrieving: 3 of 6 objects ready" in said, said
    assert f"{req['job']} extracting" in said and "state: done" in said, said


def _utc(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text)


def _shows_retrieval_progress(cluster: Cluster, job_id: str, rows: list[Any]) -> Proc:
    """While a restore waits on DEEP_ARCHIVE: ``backup job ID`` and ``backup status`` give
    objects ready of total by class and tier, the expected ready time and the next check;
    ``backup job ID --wait`` prints them as they move. Returns the running follower."""
    shown = json.loads(cluster.cli("job", job_id, "--json").stdout)["retrieval"]
    # three archives being thawed, and their three manifests, which are hot and ready
    assert (shown["objects"], shown["ready"]) == (6, 3)
    assert sorted(
        (c["storage_class"], c["tier"], c["ready"], c["objects"]) for c in shown["classes"]
    ) == [
        ("DEEP_ARCHIVE", "Bulk", 0, 3),
        ("STANDARD", None, 3, 3),
    ]
    asked = max(r.requested for r in rows)
    # DEEP_ARCHIVE Bulk: 24 to 48 hours from the request
    assert _utc(shown["expected_ready"]["earliest"]) == asked + timedelta(hours=24)
    assert _utc(shown["expected_ready"]["latest"]) == asked + timedelta(hours=48)
    assert shown["expected_ready"]["late"] is False
    assert _utc(shown["next_check"]) <= datetime.now(UTC) + timedelta(seconds=5)
    text = cluster.cli("job", job_id).stdout
    assert "3 of 6 objects ready (DEEP_ARCHIVE Bulk 0 of 3, STANDARD 3 of 3)" in text, text
    day = (asked + timedelta(hours=24)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert f"expected ready {day} to " in text, text
    status = json.loads(cluster.cli("status", "--json").stdout)
    [pending] = [j for j in status["restores"] if j["id"] == job_id]
    assert pending["retrieval"]["ready"] == 3 and pending["retrieval"]["objects"] == 6
    assert "DEEP_ARCHIVE Bulk 0 of 3" in cluster.cli("status").stdout
    follower = cluster.start("job", job_id, "--wait", name="follower")
    wait_for(lambda: "next check" in follower.text(), 30, "the follower to print progress")
    return follower


def test_glacier_vault_restore_through_workers_and_sync_agrees(
    cluster: Cluster, aws_env: MotoServer, receiver: Receiver
) -> None:
    """A vault target end to end: the inventory records the vault's archive ids, the
    retrieval jobs are started for them, polled until moto finishes them, the job output
    downloaded and checked against the tree hash, the tree restored, one notification sent;
    then ``backup inventory sync`` finds both sides holding the same archives."""
    import os
    import secrets

    from backup.targets.glacier import parse_ref

    vault = f"v-{secrets.token_hex(4)}"
    glacier = aws_env.client("glacier")
    glacier.create_vault(vaultName=vault)
    env = cluster.env
    write_policy(
        env.config,
        name="p",
        sources=[str(env.source)],
        target=f"glacier://{vault}",
        recipients=[env.key.recipient],
        restore_tier="Expedited",
    )
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        cluster.environ[k] = os.environ[k]
    cluster.environ["BACKUP_GLACIER_ENDPOINT_URL"] = aws_env.endpoint
    cluster.environ["BACKUP_POLL_SECONDS"] = "0.5"
    cluster.environ["BACKUP_POLL_MAX_SECONDS"] = "1"
    cluster.worker()
    cluster.scheduler()

    (env.source / "a.txt").write_text("one\n")
    (env.source / "big.bin").write_bytes(os.urandom(300_000))
    cluster.cli("run", "p", "--wait")
    (env.source / "b.txt").write_text("two\n")
    (env.source / "a.txt").unlink()
    cluster.cli("run", "p", "--wait")

    store = cluster.store()
    archives = store.inventory.archives("p")
    assert len(archives) == 2
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.glacier.models import glacier_backends

    held = glacier_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].vaults[vault].archives
    for a in archives:  # each object is recorded by the id the vault gave it
        for ref in (a.location, a.manifest_location):
            assert parse_ref(f"glacier://{vault}", ref)[1] in held

    dest = env.tmp / "restored"
    req = json.loads(
        cluster.cli("restore", "p", "--to", str(dest), "--notify", receiver.url(), "--json").stdout
    )
    job = wait_for(
        lambda: (j := store.get(req["job"])).state in ("done", "failed") and j, 120, "the restore"
    )
    assert job.state == "done", job.error
    assert snapshot_tree(dest) == snapshot_tree(env.source)
    rows = store.retrievals(req["job"])
    assert len(rows) == 4 and {r.state for r in rows} == {"ready"}
    assert all(r.remote_job_id and r.storage_class == "VAULT" for r in rows)
    assert all(r.checks >= 1 for r in rows)  # started pending, found ready by the poller
    started = [j for j in glacier.list_jobs(vaultName=vault)["JobList"]]
    assert {j["ArchiveId"] for j in started} == {
        parse_ref(f"glacier://{vault}", r.ref)[1] for r in rows
    }
    wait_for(lambda: receiver.requests, 60, "the notification")
    time.sleep(1)
    assert len(receiver.requests) == 1
    assert "succeeded" in receiver.requests[0][2]["message"]

    sync = cluster.cli("inventory", "sync", f"glacier://{vault}", "--poll", "0.5", "--json")
    rep = json.loads(sync.stdout)
    assert rep["consistent"], rep
    assert rep["matched"] == 4 and rep["only_in_vault"] == rep["only_in_inventory"] == []
