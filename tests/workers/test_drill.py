"""Restore drills (the ``fork`` action) on a real cluster: Redis, ``backup worker`` and
``backup scheduler`` processes, a bucket source on moto's S3 server, and a stale-after of three
seconds.

The drill's check is slow deterministically: it waits for a file the test writes only after
the check has run for twice ``BACKUP_STALE_AFTER_SECONDS``, then exits with the code
the file holds. A live worker's job must not be swept meanwhile; a failed check fails the
job, visibly in ``backup status`` and in one failure notification; a worker that dies during
the check leaves a job whose outcome is unknown, which is failed, never reported as done.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backup.cli.queueing import broker_dispatch
from backup.inventory import Inventory
from backup.inventory.models import PolicyLock
from tests.conftest import MotoServer
from tests.servers import Receiver
from tests.workers.conftest import Cluster, wait_for

pytestmark = pytest.mark.slow

STALE = 3.0

CHECK = """\
touch "$GATE/started"
while [ ! -e "$GATE/release" ]; do sleep 0.05; done
code=$(cat "$GATE/release")
rm -f "$GATE/release" "$GATE/started"
echo "checked $BACKUP_DRILL_URL"
echo "verdict $code" >&2
exit "$code"
"""


class Gate:
    """Holds the drill's check until released with an exit code."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def started(self) -> bool:
        return (self.root / "started").exists()

    def release(self, code: int) -> None:
        tmp = self.root / "release.tmp"
        tmp.write_text(str(code))
        os.replace(tmp, self.root / "release")  # the check never reads a half-written file


@pytest.fixture
def drill(cluster: Cluster, aws_env: MotoServer, receiver: Receiver) -> tuple[Cluster, Gate, str]:
    s3 = aws_env.client()
    bucket = f"drill-src-{os.urandom(4).hex()}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=bucket, Key="site/index.html", Body=b"<h1>hello</h1>")
    gate = Gate(cluster.env.tmp / "gate")
    gate.root.mkdir()
    script = cluster.env.tmp / "check.sh"
    script.write_text(CHECK)
    env = cluster.env
    env.config.write_text(
        f"""[[policy]]
name = "p"
source = "s3://{bucket}/site/"
target = "file://{env.vault}"
recipients = ["{env.key.recipient}"]
actions = ["snapshot", "archive", "fork"]
[policy.notify]
on_success = ["{receiver.url("/ok")}"]
on_failure = ["{receiver.url("/failed")}"]
[policy.drill]
bucket = "{{bucket}}-d-{{time}}"
check = "GATE={gate.root} sh {script}"
"""
    )
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        cluster.environ[k] = os.environ[k]
    cluster.environ["BACKUP_S3_ENDPOINT_URL"] = aws_env.endpoint
    cluster.environ["BACKUP_STALE_AFTER_SECONDS"] = str(STALE)
    return cluster, gate, bucket


def queue(c: Cluster) -> str:
    store = c.store()
    job = store.create("backup", policy="p", state="queued")
    assert job is not None
    broker_dispatch(c.settings, store)("backup.run", job.id)
    return job.id


def hold_past_stale(c: Cluster, gate: Gate, job_id: str) -> None:
    """Keep the check running for two stale periods, the scheduler sweeping every half
    second, and watch the job stay this worker's, one attempt, its heartbeat fresh."""
    store = c.store()
    wait_for(lambda: gate.started, 120, "the drill's check to start", every=0.05)
    end = time.monotonic() + 2 * STALE
    while time.monotonic() < end:
        job = store.get(job_id)
        assert (job.state, job.attempts) == ("recorded", 1), (job.state, job.error)
        time.sleep(0.2)
    heartbeat = store.get(job_id).heartbeat
    assert heartbeat is not None
    age = (datetime.now(UTC) - heartbeat).total_seconds()
    assert age < STALE, f"the heartbeat stopped during the check ({age:.1f} s old)"


def notifications(receiver: Receiver, count: int) -> list[tuple[str, Any]]:
    wait_for(lambda: len(receiver.requests) >= count, 60, f"{count} notification(s)")
    time.sleep(1.5)  # a wrong second notification (a swept "done") would arrive now
    return [(path, payload) for path, _h, payload in receiver.requests]


def test_slow_drill_keeps_its_job_and_a_failed_check_fails_it(
    drill: tuple[Cluster, Gate, str], receiver: Receiver
) -> None:
    c, gate, bucket = drill
    c.worker()
    c.scheduler()
    job_id = queue(c)
    hold_past_stale(c, gate, job_id)
    gate.release(3)
    store = c.store()
    job = wait_for(lambda: (j := store.get(job_id)).state in ("done", "failed") and j, 60, "end")
    assert job.state == "failed" and job.attempts == 1
    assert job.error is not None
    assert f"Restore drill of s3://{bucket}/site/ in {bucket}-d-" in job.error
    assert job.error.endswith("failed: the check exited 3: verdict 3"), job.error
    # the archive it made before the drill is kept and recorded
    inv = Inventory(c.env.inventory_url)
    assert [(a.id, a.state) for a in inv.archives()] == [(job.archive_id, "complete")]
    assert not any("stopped beating" in e.message for e in inv.events())
    # visible in `backup status`, as JSON and as the table
    status = json.loads(c.cli("status", "--json").stdout)
    assert [(j["id"], j["error"]) for j in status["failed"]] == [(job_id, job.error)]
    assert status["recent"] == []
    assert "the check exited 3" in c.cli("status").stdout
    [(path, payload)] = notifications(receiver, 1)
    assert path == "/failed" and "FAILED" in payload["title"]
    assert "the check exited 3" in payload["message"]

    # the same slow check passing: done, once, one success notification
    receiver.requests.clear()
    second = queue(c)
    hold_past_stale(c, gate, second)
    gate.release(0)
    job = wait_for(lambda: (j := store.get(second)).state in ("done", "failed") and j, 60, "end")
    assert (job.state, job.attempts, job.error) == ("done", 1, None)
    result = json.loads(job.result)
    assert result["drill"]["ok"] and result["drill"]["bucket"].startswith(f"{bucket}-d-")
    [(path, _payload)] = notifications(receiver, 1)
    assert path == "/ok"


def test_worker_dying_during_the_drill_fails_the_job_as_unknown(
    drill: tuple[Cluster, Gate, str], receiver: Receiver
) -> None:
    c, gate, _bucket = drill
    w = c.worker(name="w1")
    c.scheduler()
    job_id = queue(c)
    store = c.store()
    wait_for(lambda: gate.started, 120, "the drill's check to start", every=0.05)
    archive_id = store.get(job_id).archive_id
    w.kill()  # SIGKILL to the worker, its pool and the check
    c.worker(name="w2")  # sends the notification
    job = wait_for(lambda: (j := store.get(job_id)).state in ("done", "failed") and j, 60, "sweep")
    assert job.state == "failed", "a job whose drill never ended was reported done"
    assert job.error is not None
    assert f"after archive {archive_id} was recorded" in job.error
    assert "the outcome of its restore drill (fork action) is unknown" in job.error
    inv = Inventory(c.env.inventory_url)
    assert [(a.id, a.state) for a in inv.archives()] == [(archive_id, "complete")]
    [(path, payload)] = notifications(receiver, 1)
    assert path == "/failed" and "unknown" in payload["message"]
    with inv.session() as s:  # the policy is free for its next run
        assert s.query(PolicyLock).count() == 0
    status = json.loads(c.cli("status", "--json").stdout)
    assert [j["id"] for j in status["failed"]] == [job_id]
