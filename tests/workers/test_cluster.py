"""End to end on a real cluster: Redis, ``backup worker`` and ``backup scheduler`` processes.

Each test proves one of the promises in docs/cluster.md: queued work is done exactly once,
a worker killed mid-archive costs a retry and nothing else, one scheduler is active however
many run, a restore request ends in a notification, and a Redis restart loses nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backup.cli.queueing import broker_dispatch
from backup.inventory import Inventory
from tests.conftest import snapshot_tree, write_policy
from tests.servers import Mailbox, Receiver, text_of
from tests.workers.conftest import Cluster, free_port, wait_for

pytestmark = pytest.mark.slow


def queue(c: Cluster, policy: str) -> str:
    store = c.store()
    job = store.create("backup", policy=policy, state="queued")
    assert job is not None
    broker_dispatch(c.settings, store)("backup.run", job.id)
    return job.id


def write_policies(c: Cluster, names: list[str], **fields: object) -> None:
    """Several tiny policies, each with a source of its own, in the cluster's policy file."""
    text = []
    for n in names:
        src = c.env.tmp / "sources" / n
        src.mkdir(parents=True, exist_ok=True)
        (src / "f.txt").write_text(f"data of {n}\n")
        one = c.env.tmp / "one.toml"
        write_policy(
            one,
            name=n,
            sources=[str(src)],
            target=f"file://{c.env.vault}",
            recipients=[c.env.key.recipient],
            **fields,
        )
        text.append(one.read_text())
    c.env.config.write_text("\n".join(text))


def test_run_is_queued_and_a_worker_records_the_archive(cluster: Cluster) -> None:
    (cluster.env.source / "a.txt").write_text("hello\n")
    cluster.worker()
    r = cluster.cli("run", "p", "--wait", "--json")
    d = json.loads(r.stdout)
    assert d["state"] == "complete" and d["kind"] == "full" and d["entries"] == 1
    job = cluster.store().get(d["job"])
    assert (job.state, job.attempts, job.archive_id) == ("done", 1, d["id"])
    # without --wait the command returns at once with the job's id
    r = cluster.cli("run", "p", "--json")
    queued = json.loads(r.stdout)
    assert queued["state"] == "queued"
    wait_for(lambda: cluster.store().get(queued["job"]).state == "done", 60, "second run")
    status = json.loads(cluster.cli("status", "--json").stdout)
    assert {j["id"] for j in status["recent"]} >= {d["job"], queued["job"]}


def test_fifty_backups_on_two_workers_each_run_exactly_once(cluster: Cluster) -> None:
    names = [f"p{i:02d}" for i in range(50)]
    write_policies(cluster, names)
    cluster.worker(name="w1")
    cluster.worker(name="w2")
    ids = [queue(cluster, n) for n in names]
    store = cluster.store()
    wait_for(lambda: all(store.get(i).state == "done" for i in ids), 180, "50 jobs done", every=0.5)
    jobs = [store.get(i) for i in ids]
    assert all(j.attempts == 1 for j in jobs), [(j.id, j.attempts) for j in jobs]
    inv = Inventory(cluster.env.inventory_url)
    archives = inv.archives()
    assert sorted(a.policy for a in archives) == names  # one archive per policy, no duplicate
    assert all(a.state == "complete" for a in archives)
    assert len({j.worker for j in jobs}) >= 2, "both workers took jobs"


def test_worker_killed_mid_archive_job_completes_once_without_leftovers(
    cluster: Cluster,
) -> None:
    # slow to pack on purpose: incompressible data at zstd level 19
    src = cluster.env.source
    for i in range(4):
        (src / f"blob{i}").write_bytes(os.urandom(4 << 20))
    write_policy(
        cluster.env.config,
        name="p",
        sources=[str(src)],
        target=f"file://{cluster.env.vault}",
        recipients=[cluster.env.key.recipient],
        compression_level=19,
    )
    w1 = cluster.worker(name="w1")
    cluster.scheduler()
    job_id = queue(cluster, "p")
    store = cluster.store()
    wait_for(
        lambda: (j := store.get(job_id)).state == "packing" and j.bytes_done > 0,
        60,
        "packing to start",
        every=0.1,
    )
    # the write is under way when the worker dies (checked before the kill: the scheduler on
    # this host sees the process gone at once and sweeps its partial write right away)
    wait_for(
        lambda: list((cluster.env.vault / ".partial").glob("*.partial")),
        60,
        "a partial write",
        every=0.05,
    )
    w1.kill()  # SIGKILL to the worker and its pool process
    first = store.get(job_id)
    assert first.state in ("packing", "queued") and first.archive_id
    cluster.worker(name="w2")
    job = wait_for(
        lambda: (j := store.get(job_id)).state in ("done", "failed") and j, 120, "the job to end"
    )
    assert job.state == "done", job.error
    assert job.attempts == 2
    inv = Inventory(cluster.env.inventory_url)
    rows = {a.id: a.state for a in inv.archives(states=("complete", "failed", "writing"))}
    assert rows[first.archive_id] == "failed"
    assert [a for a, s in rows.items() if s == "complete"] == [job.archive_id]
    # nothing left behind; the worker's copy of the inventory (written after the job is done)
    # may still be on its way through .partial/ when the job reads done
    wait_for(
        lambda: not list((cluster.env.vault / ".partial").glob("*.partial")),
        30,
        "no partial write left",
    )
    stored = sorted(p.name for p in (cluster.env.vault / "p").iterdir())
    assert stored == sorted(
        [f"{job.archive_id}.tar.zst.age", f"{job.archive_id}.manifest.json.zst.age"]
    )
    events = [e.message for e in inv.events()]
    assert any("stopped beating" in m for m in events)


def test_restore_request_is_carried_out_and_notifies_mail_and_webhook(
    cluster: Cluster, smtp: Mailbox, receiver: Receiver
) -> None:
    (cluster.env.source / "docs").mkdir()
    (cluster.env.source / "docs" / "a.txt").write_text("alpha\n")
    (cluster.env.source / "b.bin").write_bytes(os.urandom(300_000))
    # the webhook's credentials live in the worker's environment only: the request names it
    hook = f"json://hookuser:Pa55w0rdXYZ@127.0.0.1:{receiver.port}/hook"
    cluster.worker(BACKUP_NOTIFY_HOOK=hook)
    cluster.scheduler()
    cluster.cli("run", "p", "--wait")
    dest = cluster.env.tmp / "restored"
    t0 = time.monotonic()
    r = cluster.cli(
        "restore",
        "p",
        "--to",
        str(dest),
        "--notify",
        smtp.url(),
        "--notify",
        "hook",
        "--json",
    )
    assert time.monotonic() - t0 < 20
    assert "BACKUP_NOTIFY_HOOK" in r.stderr  # not defined here: a note, and it is queued
    req = json.loads(r.stdout)
    assert req["state"] == "requested"
    job = wait_for(
        lambda: (j := cluster.store().get(req["job"])).state in ("done", "failed") and j,
        120,
        "the restore",
    )
    assert job.state == "done", job.error
    assert snapshot_tree(dest) == snapshot_tree(cluster.env.source)
    wait_for(lambda: smtp.messages and receiver.requests, 60, "both notifications")
    time.sleep(2)  # a duplicate would arrive now
    assert len(smtp.messages) == 1 and len(receiver.requests) == 1
    body = text_of(smtp.messages[0][2])
    assert str(dest) in body and "Files:     2" in body, body
    path, headers, message = receiver.requests[0]
    assert path == "/hook" and str(dest) in message["message"]
    assert headers["Authorization"].startswith("Basic ")
    assert cluster.store().get(job.id).notify_state == "sent"
    assert json.loads(cluster.store().get(job.id).notify) == [smtp.url(), "hook"]


def test_redis_restart_mid_run_loses_nothing(cluster: Cluster, tmp_path: Path) -> None:
    redis_server = shutil.which("redis-server")
    assert redis_server, "redis-server is installed by ./scripts/test"
    port = free_port()

    def start_redis() -> subprocess.Popen[bytes]:
        p = subprocess.Popen(
            [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        from tests.workers.conftest import redis_answers

        wait_for(lambda: redis_answers(f"redis://127.0.0.1:{port}/0"), 20, "redis up")
        return p

    redis = start_redis()
    cluster.environ["BACKUP_BROKER_URL"] = f"redis://127.0.0.1:{port}/0"
    names = [f"r{i}" for i in range(12)]
    write_policies(cluster, names)
    try:
        cluster.worker()
        cluster.scheduler()
        ids = [queue(cluster, n) for n in names]
        store = cluster.store()
        wait_for(lambda: any(store.get(i).state == "done" for i in ids), 60, "a first job")
        redis.send_signal(signal.SIGKILL)  # it keeps nothing on disk: every queued message is lost
        redis.wait()
        time.sleep(2)
        redis = start_redis()
        wait_for(lambda: all(store.get(i).state == "done" for i in ids), 120, "all jobs", every=0.5)
        assert all(store.get(i).attempts == 1 for i in ids)
        inv = Inventory(cluster.env.inventory_url)
        assert sorted(a.policy for a in inv.archives()) == sorted(names)
    finally:
        redis.kill()
        redis.wait()


def test_two_schedulers_one_active_and_a_scheduled_policy_fires(cluster: Cluster) -> None:
    (cluster.env.source / "a.txt").write_text("scheduled\n")
    write_policy(
        cluster.env.config,
        name="p",
        sources=[str(cluster.env.source)],
        target=f"file://{cluster.env.vault}",
        recipients=[cluster.env.key.recipient],
        schedule="* * * * *",
    )
    # start just after a minute boundary would fire at once; start between :05 and :45
    while not 5 <= datetime.now(UTC).second <= 45:
        time.sleep(0.5)
    cluster.worker()
    s1 = cluster.scheduler(name="s1")
    s2 = cluster.scheduler(name="s2")
    store = cluster.store()
    from workers.scheduler import LEASE

    first = wait_for(lambda: store.lease_holder(LEASE), 30, "an active scheduler")
    jobs = wait_for(
        lambda: [j for j in store.jobs(kind="backup") if j.state == "done"], 90, "scheduled run"
    )
    slots = [j.scheduled_for for j in store.jobs(kind="backup")]
    assert len(slots) == len(set(slots)) == 1, slots
    assert jobs[0].origin == "schedule"
    logs = s1.text() + s2.text()
    assert logs.count("now the active scheduler") == 1, logs
    # the active one dies: the other takes over once the lease expires
    active, standby = (s1, s2) if first[0].endswith(str(s1.popen.pid)) else (s2, s1)
    active.kill()
    wait_for(
        lambda: (h := store.lease_holder(LEASE)) and h[0].endswith(str(standby.popen.pid)),
        30,
        "the standby scheduler to take over",
    )


def test_serve_embedded_needs_no_redis(cluster: Cluster) -> None:
    (cluster.env.source / "a.txt").write_text("embedded\n")
    environ = dict(cluster.environ)
    del environ["BACKUP_BROKER_URL"]
    cluster.environ = environ
    serve = cluster.start("serve", "--concurrency", "1", name="serve")
    wait_for(lambda: " ready." in serve.text(), 60, "serve to start")
    store = cluster.store()
    job = store.create("backup", policy="p", state="queued")
    assert job is not None
    broker_dispatch(cluster.settings, store)("backup.run", job.id)  # the SQLite broker
    wait_for(lambda: store.get(job.id).state == "done", 60, "the job via the embedded broker")
    # stopped and started again, queued work waits in the SQLite file, not in memory
    serve.kill()
    job2 = store.create("backup", policy="p", state="queued")
    assert job2 is not None
    broker_dispatch(cluster.settings, store)("backup.run", job2.id)
    serve2 = cluster.start("serve", "--concurrency", "1", name="serve2")
    wait_for(lambda: " ready." in serve2.text(), 60, "serve to start again")
    wait_for(lambda: store.get(job2.id).state == "done", 60, "the job queued while down")
    assert store.get(job2.id).attempts == 1
