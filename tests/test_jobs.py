"""Jobs and the runner, in-process: every state change is a compare-and-set, so a task
delivered twice does no harm (no second archive, no second notification), and two runs of
one policy never overlap."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from backup.inventory import Inventory
from backup.jobs import JobNotFound, JobStore
from backup.jobs.runner import Runner
from backup.settings import Settings
from tests.conftest import Env, MotoServer, write_policy
from tests.servers import Receiver


def make_runner(env: Env) -> tuple[Runner, list[tuple[str, str]]]:
    sent: list[tuple[str, str]] = []
    settings = Settings(config=env.config, inventory_url=env.inventory_url)
    r = Runner(Inventory(env.inventory_url), settings, lambda t, j: sent.append((t, j)), "w:1")
    return r, sent


def test_cas_moves_a_job_once(inventory: Inventory) -> None:
    store = JobStore(inventory)
    job = store.create("backup", policy="p", state="queued")
    assert job is not None
    assert store.claim(job.id, "queued", "packing", "a:1") is True
    assert store.claim(job.id, "queued", "packing", "b:2") is False  # delivered twice
    j = store.get(job.id)
    assert (j.state, j.worker, j.attempts) == ("packing", "a:1", 1)
    assert store.cas(job.id, ["queued"], "failed") is False
    assert store.cas(job.id, ["packing"], "done") is True
    assert store.get(job.id).finished is not None
    assert store.get(job.id[:12]).id == job.id  # unique prefix
    with pytest.raises(JobNotFound, match=r"No job matches 'nope'$"):
        store.get("nope")
    assert store.create("backup", policy="p", state="queued") is not None
    with pytest.raises(JobNotFound, match="ambiguous prefix"):
        store.get("b")


def test_one_job_per_policy_and_schedule_slot(inventory: Inventory) -> None:
    from datetime import UTC, datetime

    store = JobStore(inventory)
    slot = datetime(2026, 11, 21, 2, tzinfo=UTC)
    assert store.create("backup", policy="p", state="queued", scheduled_for=slot) is not None
    assert store.create("backup", policy="p", state="queued", scheduled_for=slot) is None
    assert store.create("backup", policy="q", state="queued", scheduled_for=slot) is not None


def test_backup_delivered_twice_records_one_archive(env: Env) -> None:
    (env.source / "a").write_text("x")
    runner, _ = make_runner(env)
    job = runner.store.create("backup", policy="p", state="queued")
    assert job is not None
    assert runner.run_backup(job.id) == "done"
    assert runner.run_backup(job.id) == "done"  # the second delivery finds it done
    assert len(runner.inventory.archives()) == 1
    assert runner.store.get(job.id).attempts == 1
    result = json.loads(runner.store.get(job.id).result)
    assert result["archive_id"] == runner.inventory.archives()[0].id


def test_overlapping_run_of_a_policy_is_skipped(env: Env) -> None:
    runner, _ = make_runner(env)
    store = runner.store
    first = store.create("backup", policy="p", state="queued")
    second = store.create("backup", policy="p", state="queued")
    assert first is not None and second is not None
    assert store.claim(first.id, "queued", "packing", "other:1")
    assert store.lock_policy("p", first.id) is None  # the first run is under way elsewhere
    assert runner.run_backup(second.id) == "skipped"
    assert first.id in (store.get(second.id).error or "")
    assert runner.inventory.archives() == []
    store.cas(first.id, ["packing"], "done")
    store.unlock_policy("p", first.id)
    third = store.create("backup", policy="p", state="queued")
    assert third is not None
    assert runner.run_backup(third.id) == "done"


def test_failed_run_is_recorded_with_the_reason(env: Env) -> None:
    runner, _ = make_runner(env)
    env.source.rmdir()
    job = runner.store.create("backup", policy="p", state="queued")
    assert job is not None
    assert runner.run_backup(job.id) == "failed"
    assert "does not exist" in (runner.store.get(job.id).error or "")
    # the lock was released: the next run is not skipped
    env.source.mkdir()
    again = runner.store.create("backup", policy="p", state="queued")
    assert again is not None
    assert runner.run_backup(again.id) == "done"


def test_notification_is_sent_once_when_delivered_twice(env: Env, receiver: Receiver) -> None:
    write_policy(
        env.config,
        name="p",
        sources=[str(env.source)],
        target=f"file://{env.vault}",
        recipients=[env.key.recipient],
    )
    env.config.write_text(
        env.config.read_text() + f'[policy.notify]\non_success = ["{receiver.url()}"]\n'
    )
    runner, sent = make_runner(env)
    job = runner.store.create("backup", policy="p", state="queued")
    assert job is not None
    runner.run_backup(job.id)
    assert sent == [("backup.notify", job.id)]
    assert runner.notify(job.id) is True
    assert runner.notify(job.id) is False  # a second delivery sends nothing
    assert len(receiver.requests) == 1
    assert runner.store.get(job.id).notify_state == "sent"
    assert "Backup p: done" in receiver.requests[0][2]["title"]


def test_failed_run_notifies_on_failure_urls_only(env: Env, receiver: Receiver) -> None:
    env.config.write_text(
        env.config.read_text()
        + f'[policy.notify]\non_success = ["{receiver.url("/ok")}"]\n'
        + f'on_failure = ["{receiver.url("/failed")}"]\n'
    )
    runner, sent = make_runner(env)
    env.source.rmdir()
    job = runner.store.create("backup", policy="p", state="queued")
    assert job is not None
    assert runner.run_backup(job.id) == "failed"
    assert sent == [("backup.notify", job.id)]
    assert runner.notify(job.id) is True
    assert [r[0] for r in receiver.requests] == ["/failed"]
    payload = receiver.requests[0][2]
    assert "FAILED" in payload["title"] and "does not exist" in payload["message"]


def test_policy_notifies_named_targets_defined_where_it_is_sent(
    env: Env, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A policy may name targets instead of holding their credentials; a name the sending
    process does not define fails the notification, saying which."""
    env.config.write_text(
        env.config.read_text() + '[policy.notify]\non_success = ["ops", "audit"]\n'
    )
    monkeypatch.setenv("BACKUP_NOTIFY_OPS", f"json://u:Pa55w0rd@127.0.0.1:{receiver.port}/ops")
    runner, sent = make_runner(env)
    job = runner.store.create("backup", policy="p", state="queued")
    assert job is not None
    assert runner.run_backup(job.id) == "done"
    assert sent == [("backup.notify", job.id)]
    assert runner.notify(job.id) is False  # audit is not defined here
    assert [r[0] for r in receiver.requests] == ["/ops"]  # ops was told all the same
    assert runner.store.get(job.id).notify_state == "failed"
    assert runner.inventory.events(1)[0].message == (
        f"notification for job {job.id} failed (targets not defined here: audit)"
    )


def test_restore_request_runs_through_its_states(
    env: Env, tree_snapshot: Callable[..., object]
) -> None:
    (env.source / "d").mkdir()
    (env.source / "d" / "f").write_text("content")
    runner, sent = make_runner(env)
    b = runner.store.create("backup", policy="p", state="queued")
    assert b is not None
    runner.run_backup(b.id)
    aid = runner.inventory.archives()[0].id
    to = env.tmp / "out"
    req = runner.store.create(
        "restore", policy="p", state="requested", params={"archive_id": aid, "to": str(to)}
    )
    assert req is not None
    runner.settings.identity = env.key.path  # proved on the manifest before any retrieval
    assert runner.start_restore(req.id) == "ready"  # a file target is ready at once
    assert sent[-1] == ("backup.extract", req.id)
    assert [r.state for r in runner.store.retrievals(req.id)] == ["ready", "ready"]
    assert runner.extract(req.id) == "done"
    assert runner.extract(req.id) == "done"  # delivered twice: nothing more happens
    assert tree_snapshot(to) == tree_snapshot(env.source)
    assert json.loads(runner.store.get(req.id).result)["files"] == 1


def test_restore_of_a_policy_no_longer_in_the_file_fails_naming_it(env: Env) -> None:
    """A request recorded for a policy that was removed from the policy file since: the
    start fails with one line naming the policy and the file (it was a bare KeyError)."""
    runner, _ = make_runner(env)
    b = runner.store.create("backup", policy="p", state="queued")
    assert b is not None
    runner.run_backup(b.id)
    aid = runner.inventory.archives()[0].id
    req = runner.store.create(
        "restore", policy="gone", state="requested", params={"archive_id": aid, "to": "s3://b"}
    )
    assert req is not None
    runner.settings.identity = env.key.path
    assert runner.start_restore(req.id) == "failed"
    error = runner.store.get(req.id).error or ""
    assert "no policy named 'gone'" in error and str(env.config) in error, error
    assert runner.store.retrievals(req.id) == []


def test_restore_without_an_identity_fails_and_says_so(env: Env) -> None:
    runner, _ = make_runner(env)
    b = runner.store.create("backup", policy="p", state="queued")
    assert b is not None
    runner.run_backup(b.id)
    aid = runner.inventory.archives()[0].id
    req = runner.store.create(
        "restore", policy="p", state="requested", params={"archive_id": aid, "to": "/tmp/x-none"}
    )
    assert req is not None
    runner.start_restore(req.id)
    assert runner.extract(req.id) == "failed"
    assert "BACKUP_IDENTITY" in (runner.store.get(req.id).error or "")


def test_bucket_policy_runs_its_snapshot_and_fork_actions(env: Env, aws_env: MotoServer) -> None:
    import secrets

    s3 = aws_env.client()
    bucket = f"src-{secrets.token_hex(5)}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=bucket, Key="k", Body=b"v1")

    def policy(check: str) -> None:
        env.config.write_text(
            "[[policy]]\n"
            'name = "media"\n'
            f'source = "s3://{bucket}"\n'
            f'target = "file://{env.vault}"\n'
            f'recipients = ["{env.key.recipient}"]\n'
            'actions = ["snapshot", "fork"]\n'
            "[policy.retention]\nkeep_last = 2\n"
            f"[policy.drill]\ncheck = '{check}'\nkeep_for = \"1h\"\n"
        )

    policy('test -n "$BACKUP_DRILL_URL"')
    runner, _ = make_runner(env)
    job = runner.store.create("backup", policy="media", state="queued")
    assert job is not None
    assert runner.run_backup(job.id) == "done", runner.store.get(job.id).error
    result = json.loads(runner.store.get(job.id).result)
    assert result["actions"] == ["snapshot", "fork"]
    assert result["snapshot"]["taken"]["name"].startswith("media-")
    assert result["drill"]["ok"] is True
    fork = result["drill"]["bucket"]
    assert s3.get_object(Bucket=fork, Key="k")["Body"].read() == b"v1"
    assert runner.inventory.archives() == []  # no archive action asked for
    policy("exit 3")
    time.sleep(1.1)  # the drill bucket is named to the second
    again = runner.store.create("backup", policy="media", state="queued")
    assert again is not None
    assert runner.run_backup(again.id) == "failed"
    assert "check exited 3" in (runner.store.get(again.id).error or "")


def test_snapshot_and_fork_actions_need_a_bucket_source(env: Env) -> None:
    from backup.errors import PolicyError
    from backup.policy import load_policies

    env.config.write_text(
        env.config.read_text().replace(
            "[policy.retention]", 'actions = ["snapshot"]\n[policy.retention]'
        )
    )
    with pytest.raises(PolicyError, match="actions: snapshot and fork apply to a bucket source"):
        load_policies(env.config)


def test_restore_request_of_a_bucket_source_into_another_bucket(
    env: Env, aws_env: MotoServer, receiver: Receiver
) -> None:
    import secrets

    s3 = aws_env.client()
    src, dst = f"src-{secrets.token_hex(5)}", f"dst-{secrets.token_hex(5)}"
    for b in (src, dst):
        s3.create_bucket(Bucket=b)
        s3.put_bucket_versioning(Bucket=b, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=src, Key="docs/a.txt", Body=b"alpha")
    s3.put_object(Bucket=src, Key="b.bin", Body=b"\0" * 5000)
    env.config.write_text(
        "[[policy]]\n"
        'name = "media"\n'
        f'source = "s3://{src}"\n'
        f'target = "file://{env.vault}"\n'
        f'recipients = ["{env.key.recipient}"]\n'
    )
    runner, _ = make_runner(env)
    runner.settings.identity = env.key.path
    b = runner.store.create("backup", policy="media", state="queued")
    assert b is not None
    assert runner.run_backup(b.id) == "done", runner.store.get(b.id).error
    aid = runner.inventory.archives()[0].id
    req = runner.store.create(
        "restore",
        policy="media",
        state="requested",
        params={"archive_id": aid, "to": f"s3://{dst}/restored"},
        notify=[receiver.url()],
    )
    assert req is not None
    assert runner.start_restore(req.id) == "ready"
    assert runner.extract(req.id) == "done", runner.store.get(req.id).error
    got = {
        o["Key"]: s3.get_object(Bucket=dst, Key=o["Key"])["Body"].read()
        for o in s3.list_objects_v2(Bucket=dst)["Contents"]
    }
    assert got == {"restored/docs/a.txt": b"alpha", "restored/b.bin": b"\0" * 5000}
    assert runner.notify(req.id) is True
    assert f"s3://{dst}/restored" in receiver.requests[0][2]["message"]


def ended_process_worker(env: Env, role: str) -> str:
    """The ``worker`` a process records on the jobs it claims, of a process that has ended."""
    import subprocess
    import sys

    code = f"from backup.jobs import process_name; print(process_name({role!r}))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env.environ(), capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def dead_run(runner: Runner, env: Env, worker: str) -> tuple[str, str]:
    """A run of policy p by ``worker`` that holds the lock and was writing an archive."""
    from datetime import UTC, datetime

    from backup.engine import archive_keys
    from backup.inventory import Archive
    from backup.targets import open_target

    store = runner.store
    job = store.create("backup", policy="p", state="queued")
    assert job is not None
    assert store.claim(job.id, "queued", "packing", worker)
    assert store.lock_policy("p", job.id) is None
    aid = "20261121T020000Z-0dead0ff"
    key, manifest_key = archive_keys("p", aid)
    runner.inventory.add_archive(
        Archive(
            id=aid,
            policy="p",
            target=f"file://{env.vault}",
            location=key,
            manifest_location=manifest_key,
            kind="full",
            created=datetime.now(UTC),
            state="writing",
        )
    )
    store.update(job.id, archive_id=aid)
    open_target(f"file://{env.vault}").open_write(key).write(b"half an archive")
    assert list((env.vault / ".partial").iterdir())
    # killed while its manifest was streamed: the file index's first chunks were recorded
    from backup.archive.manifest import encode_index_chunk

    runner.inventory.add_file_index_chunk(aid, 0, encode_index_chunk(b'{"format":1}'))
    runner.inventory.add_file_index_chunk(aid, 1, encode_index_chunk(b'{"entries":[]}'))
    assert runner.inventory.packed_manifest_head(aid) is not None
    return job.id, aid


def test_sweep_fails_an_in_process_run_whose_process_is_gone(env: Env) -> None:
    runner, _ = make_runner(env)
    worker = ended_process_worker(env, "cli")
    job_id, aid = dead_run(runner, env, worker)
    assert runner.sweep_dead() == []  # nothing to hand out again: nobody queued it
    j = runner.store.get(job_id)
    pid, host = worker.split("@")[1].split(":")[1], worker.split("@")[1].split(":")[0]
    assert j.state == "failed"
    assert j.error == f"interrupted in packing: process {pid} on {host} is gone"
    assert runner.inventory.get(aid).state == "failed"
    assert list((env.vault / ".partial").iterdir()) == []
    assert runner.inventory.packed_manifest_head(aid) is None  # its index chunks went too
    assert runner.store.lock_policy("p", "next") is None


def test_sweep_requeues_a_dead_worker_of_this_host_without_waiting(env: Env) -> None:
    runner, _ = make_runner(env)
    job_id, aid = dead_run(runner, env, ended_process_worker(env, ""))
    # its heartbeat is fresh, but its process is gone: no need to wait for the heartbeat
    assert runner.sweep_dead() == [job_id]
    assert runner.store.get(job_id).state == "queued"
    assert runner.inventory.get(aid).state == "failed"
    assert list((env.vault / ".partial").iterdir()) == []
    assert runner.inventory.packed_manifest_head(aid) is None


def test_next_run_takes_over_from_a_holder_elsewhere_whose_heartbeat_expired(env: Env) -> None:
    from datetime import UTC, datetime, timedelta

    runner, _ = make_runner(env)
    job_id, aid = dead_run(runner, env, "otherhost:42:1234.0123456789ab")
    second = runner.store.create("backup", policy="p", state="queued")
    assert second is not None
    assert runner.run_backup(second.id) == "skipped"  # its heartbeat is fresh: it may run
    runner.store.update(job_id, heartbeat=datetime.now(UTC) - timedelta(seconds=120))
    third = runner.store.create("backup", policy="p", state="queued")
    assert third is not None
    assert runner.run_backup(third.id) == "done"
    dead = runner.store.get(job_id)
    assert dead.state == "failed"
    assert (dead.error or "").startswith(
        "interrupted in packing: no heartbeat from otherhost:42:1234.0123456789ab for 12"
    )
    assert runner.inventory.get(aid).state == "failed"
    assert list((env.vault / ".partial").iterdir()) == []


def test_a_lock_left_by_a_run_that_ended_does_not_skip_the_next(env: Env) -> None:
    """Killed between recording its end and releasing the lock."""
    runner, _ = make_runner(env)
    store = runner.store
    first = store.create("backup", policy="p", state="queued")
    assert first is not None
    assert store.claim(first.id, "queued", "packing", "w:1")
    assert store.lock_policy("p", first.id) is None
    assert store.cas(first.id, ["packing"], "failed", error="gone")
    second = store.create("backup", policy="p", state="queued")
    assert second is not None
    assert runner.run_backup(second.id) == "done"
