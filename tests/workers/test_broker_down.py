"""``backup run`` while the broker does not answer: the run is recorded, the user is told in
one line that it is queued and is sent when the broker answers, a retry does not record a
second run, and once the broker answers the scheduler sends it and a worker runs it once.
Real Redis, real ``backup worker`` and ``backup scheduler`` processes."""

from __future__ import annotations

import json

import pytest

from backup.inventory import Inventory
from tests.workers.conftest import Cluster, free_port, wait_for

pytestmark = pytest.mark.slow


def test_run_while_the_broker_is_down_is_queued_once_and_runs_once(cluster: Cluster) -> None:
    (cluster.env.source / "a.txt").write_text("hello\n")
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    real = cluster.environ["BACKUP_BROKER_URL"]
    cluster.environ["BACKUP_BROKER_URL"] = down

    first = cluster.cli("run", "p")
    store = cluster.store()
    [job] = store.jobs(kind="backup")
    lines = (first.stdout + first.stderr).splitlines()
    assert first.returncode == 0 and len(lines) == 1, lines
    assert lines[0].startswith(f"queued job {job.id} (p), not sent yet: the broker {down} ")
    assert "Connection refused" in lines[0]
    assert lines[0].endswith(
        f"the scheduler sends it when the broker answers; follow it: backup job {job.id} --wait"
    )
    assert (job.state, job.sent_at) == ("queued", None)

    # a retry records no second run, and says which one waits
    again = cluster.cli("run", "p")
    assert again.stdout.startswith(f"job {job.id} of p is already queued, not sent yet:")
    assert len(again.stdout.splitlines()) == 1 and again.stderr == ""
    as_json = json.loads(cluster.cli("run", "p", "--json").stdout)
    assert as_json["job"] == job.id and as_json["sent"] is False
    assert as_json["already_queued"] is True and "does not answer" in as_json["not_sent"]
    assert [j.id for j in store.jobs(kind="backup")] == [job.id]

    # `backup status` shows it waiting for the broker
    status = cluster.cli("status")
    assert "not sent to the broker yet" in status.stdout

    # the broker answers: the scheduler sends the run, a worker carries it out, once
    cluster.environ["BACKUP_BROKER_URL"] = real
    cluster.worker()
    cluster.scheduler()
    done = wait_for(
        lambda: (j := store.get(job.id)).state in ("done", "failed") and j, 60, "the run to end"
    )
    assert done.state == "done", done.error
    assert done.attempts == 1
    assert [j.id for j in store.jobs(kind="backup")] == [job.id]
    archives = Inventory(cluster.env.inventory_url).archives()
    assert [a.id for a in archives] == [done.archive_id]

    # a run asked for after that one ended is a run of its own, sent at once
    after = json.loads(cluster.cli("run", "p", "--json").stdout)
    assert after["job"] != job.id and after["sent"] is True and after["already_queued"] is False


def test_restore_while_the_broker_is_down_is_recorded_once_and_carried_out(
    cluster: Cluster,
) -> None:
    """A restore request made while the broker does not answer: one line says it is
    recorded and not sent yet, nothing else is printed, and once the broker answers the
    scheduler sends it and a worker restores the tree exactly."""
    from tests.conftest import snapshot_tree

    (cluster.env.source / "docs").mkdir()
    (cluster.env.source / "docs" / "a.txt").write_text("alpha\n")
    real = cluster.environ.pop("BACKUP_BROKER_URL")
    cluster.cli("run", "p")  # no broker: the backup runs in this command
    cluster.environ["BACKUP_BROKER_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    dest = cluster.env.tmp / "restored"

    r = cluster.cli("restore", "p", "--to", str(dest))
    store = cluster.store()
    [job] = store.jobs(kind="restore")
    lines = (r.stdout + r.stderr).splitlines()
    assert r.returncode == 0 and len(lines) == 1, lines
    assert lines[0].startswith(f"restore request {job.id} recorded (archive ")
    assert "not sent yet: the broker redis://127.0.0.1:" in lines[0]
    assert lines[0].endswith(f"follow it: backup job {job.id} --wait")
    assert (job.state, job.sent_at) == ("requested", None)
    as_json = json.loads(cluster.cli("restore", "p", "--to", str(dest), "--json").stdout)
    assert as_json["sent"] is False and "does not answer" in as_json["not_sent"]
    store.cas(as_json["job"], ["requested"], "failed", error="the test's second request")

    cluster.environ["BACKUP_BROKER_URL"] = real
    cluster.worker()
    cluster.scheduler()
    done = wait_for(
        lambda: (j := store.get(job.id)).state in ("done", "failed") and j, 90, "the restore"
    )
    assert done.state == "done", done.error
    assert snapshot_tree(dest) == snapshot_tree(cluster.env.source)
