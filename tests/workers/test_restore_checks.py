"""What would fail a restore when its cold data arrives is found before any retrieval is
requested, through real workers and moto's S3 server: an identity that cannot decrypt (none,
or not a recipient, proved on the archives' hot manifests), a destination bucket that is
missing or overlaps the source. And a bucket source restored into another bucket through the
workers ends as it should."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

from backup.crypto.age import X25519Identity
from tests.conftest import MotoServer, write_policy
from tests.servers import Receiver
from tests.targets.s3util import new_bucket
from tests.workers.conftest import Cluster, wait_for

pytestmark = pytest.mark.slow


def _aws(cluster: Cluster, aws: MotoServer) -> None:
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        cluster.environ[k] = os.environ[k]
    cluster.environ["BACKUP_S3_ENDPOINT_URL"] = aws.endpoint
    cluster.environ["BACKUP_POLL_SECONDS"] = "0.5"
    cluster.environ["BACKUP_POLL_MAX_SECONDS"] = "1"


def _ended(cluster: Cluster, job_id: str) -> Any:
    store = cluster.store()
    return wait_for(
        lambda: (j := store.get(job_id)).state in ("done", "failed") and j, 120, "the restore"
    )


def _nothing_retrieved(cluster: Cluster, s3: Any, bucket: str, job_id: str) -> None:
    assert cluster.store().retrievals(job_id) == []
    for o in s3.list_objects_v2(Bucket=bucket)["Contents"]:
        if o["Key"].endswith(".tar.zst.age"):
            assert "Restore" not in s3.head_object(Bucket=bucket, Key=o["Key"])


def test_an_identity_that_cannot_decrypt_fails_before_any_retrieval(
    cluster: Cluster, aws_env: MotoServer, receiver: Receiver
) -> None:
    vault = new_bucket(aws_env)
    env = cluster.env
    write_policy(
        env.config,
        name="p",
        sources=[str(env.source)],
        target=f"s3://{vault}/v?storage_class=DEEP_ARCHIVE",
        recipients=[env.key.recipient],
    )
    _aws(cluster, aws_env)
    (env.source / "a.txt").write_text("one\n")
    own_key = cluster.environ.pop("BACKUP_IDENTITY")  # the workers start without one
    worker = cluster.worker()
    cluster.cli("run", "p", "--wait")
    s3 = aws_env.client()
    dest = env.tmp / "restored"

    req = json.loads(
        cluster.cli("restore", "p", "--to", str(dest), "--notify", receiver.url(), "--json").stdout
    )
    job = _ended(cluster, req["job"])
    assert job.state == "failed" and "BACKUP_IDENTITY is not set" in (job.error or "")
    _nothing_retrieved(cluster, s3, vault, job.id)
    wait_for(lambda: receiver.requests, 60, "the notification")
    assert "BACKUP_IDENTITY is not set" in receiver.requests[0][2]["message"]

    # a worker whose identity is not a recipient
    worker.kill()
    stranger = env.tmp / "stranger.txt"
    stranger.write_text(X25519Identity.generate().to_string() + "\n")
    cluster.worker(BACKUP_IDENTITY=str(stranger))
    req = json.loads(
        cluster.cli("restore", "p", "--to", str(dest), "--notify", receiver.url(), "--json").stdout
    )
    job = _ended(cluster, req["job"])
    assert job.state == "failed"
    assert f"the identity in {stranger}" in (job.error or "") and "not a recipient" in job.error
    _nothing_retrieved(cluster, s3, vault, job.id)
    wait_for(lambda: len(receiver.requests) == 2, 60, "the second notification")
    assert "not a recipient" in receiver.requests[1][2]["message"]
    # the key's content is never in an error, a log line or the inventory
    secret = stranger.read_text().strip()
    assert secret not in job.error and secret not in json.dumps(receiver.requests)
    assert not dest.exists()

    # --identity cannot reach the workers: refused at once, nothing recorded
    before = {j.id for j in cluster.store().jobs(kind="restore")}
    r = cluster.cli("restore", "p", "--to", str(dest), "--identity", own_key, check=False)
    assert r.returncode == 1 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "their own BACKUP_IDENTITY" in r.stderr and "Traceback" not in r.stderr
    assert {j.id for j in cluster.store().jobs(kind="restore")} == before


def test_bucket_restore_through_workers_checks_the_destination_first_and_ends_done(
    cluster: Cluster, aws_env: MotoServer, receiver: Receiver
) -> None:
    s3 = aws_env.client()
    src = new_bucket(aws_env, prefix="src")
    s3.put_bucket_versioning(Bucket=src, VersioningConfiguration={"Status": "Enabled"})
    for i in range(3):
        s3.put_object(Bucket=src, Key=f"data/f{i}.txt", Body=f"file {i}\n".encode())
    vault = new_bucket(aws_env)
    env = cluster.env
    write_policy(
        env.config,
        name="media",
        source=f"s3://{src}/data/",
        target=f"s3://{vault}/v?storage_class=DEEP_ARCHIVE",
        recipients=[env.key.recipient],
    )
    _aws(cluster, aws_env)
    cluster.worker()
    cluster.scheduler()
    cluster.cli("run", "media", "--wait")

    for to, why in [
        (f"s3://nothing-here-{os.urandom(4).hex()}/copy", "does not exist"),
        (f"s3://{src}/data/sub", "overlaps the source"),
    ]:
        req = json.loads(
            cluster.cli("restore", "media", "--to", to, "--notify", receiver.url(), "--json").stdout
        )
        job = _ended(cluster, req["job"])
        assert job.state == "failed" and why in (job.error or ""), job.error
        _nothing_retrieved(cluster, s3, vault, job.id)
    wait_for(lambda: len(receiver.requests) == 2, 60, "two notifications")

    dest = new_bucket(aws_env, prefix="dest")
    r = cluster.cli(
        "restore", "media", "--to", f"s3://{dest}/copy", "--notify", receiver.url(), "--wait"
    )
    assert f"restored into s3://{dest}/copy/: 3 objects written" in r.stdout, r.stdout
    got = {
        o["Key"]: s3.get_object(Bucket=dest, Key=o["Key"])["Body"].read()
        for o in s3.list_objects_v2(Bucket=dest)["Contents"]
    }
    assert got == {f"copy/f{i}.txt": f"file {i}\n".encode() for i in range(3)}
    wait_for(lambda: len(receiver.requests) == 3, 60, "the notification")
    time.sleep(1)
    assert len(receiver.requests) == 3
    message = receiver.requests[2][2]["message"]
    assert "succeeded" in message and f"s3://{dest}/copy/" in message


def test_a_vault_restore_proves_the_identity_on_the_recorded_header_before_any_job(
    cluster: Cluster, aws_env: MotoServer, receiver: Receiver
) -> None:
    """A vault's manifests are cold too, so the identity is proved on the manifest's age
    header the backup recorded in the inventory: a worker holding a stranger's key fails the
    request at once, and the vault is asked for no retrieval job (each is paid for)."""
    import secrets

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
    )
    _aws(cluster, aws_env)
    cluster.environ["BACKUP_GLACIER_ENDPOINT_URL"] = aws_env.endpoint
    (env.source / "a.txt").write_text("one\n")
    cluster.environ.pop("BACKUP_IDENTITY")
    broker = cluster.environ.pop("BACKUP_BROKER_URL")
    cluster.cli("run", "p")  # in-process: no identity needed to back up
    cluster.environ["BACKUP_BROKER_URL"] = broker
    [archive] = cluster.store().inventory.archives()
    assert cluster.store().inventory.manifest_header(archive.id) is not None
    stranger = env.tmp / "stranger.txt"
    stranger.write_text(X25519Identity.generate().to_string() + "\n")
    cluster.worker(BACKUP_IDENTITY=str(stranger))
    dest = env.tmp / "restored"
    req = json.loads(
        cluster.cli("restore", "p", "--to", str(dest), "--notify", receiver.url(), "--json").stdout
    )
    job = _ended(cluster, req["job"])
    assert job.state == "failed"
    assert f"the identity in {stranger}" in (job.error or "") and "not a recipient" in job.error
    assert cluster.store().retrievals(job.id) == []
    assert glacier.list_jobs(vaultName=vault)["JobList"] == []
    wait_for(lambda: receiver.requests, 60, "the notification")
    assert "not a recipient" in receiver.requests[0][2]["message"]
    assert not dest.exists()
