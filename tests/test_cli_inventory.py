"""The inventory as commands leave it, each command a subprocess: whole in its file after a
command ends with ``os._exit``, and holding no notification credential (restore ``--notify``
takes named targets); the broker is handed job ids only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from backup.inventory import Inventory
from backup.jobs import JobStore
from tests.conftest import Env, require_tools
from tests.test_interop import cli, make_tree


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tools("age", "zstd", "tar")


def test_inventory_file_alone_holds_what_a_command_recorded(env: Env, tmp_path: Path) -> None:
    """Commands end with os._exit, which closes no connection: the inventory is checkpointed
    first, so a user who copies inventory.db (not its -wal) gets every archive."""
    import shutil

    make_tree(env.source, big=False)
    db = tmp_path / "sqlite" / "inventory.db"
    url = f"sqlite:///{db}"
    proc = cli(env, "run", "p", "--json", extra_env={"BACKUP_INVENTORY_URL": url})
    assert proc.returncode == 0, proc.stderr
    archive_id = json.loads(proc.stdout)["id"]
    wal = db.with_name("inventory.db-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    shutil.copyfile(db, tmp_path / "copy.db")
    copy = Inventory(f"sqlite:///{tmp_path / 'copy.db'}")
    assert copy.get(archive_id).state == "complete"
    assert [a.id for a in copy.archives("p")] == [archive_id]
    copy.close()


def _everything_in(inventory: Inventory) -> str:
    """Every row of every table of the inventory, as text."""
    import sqlalchemy as sa

    from backup.inventory.models import Base

    with inventory.engine.connect() as c:
        return "\n".join(
            repr(tuple(row)) for t in Base.metadata.sorted_tables for row in c.execute(sa.select(t))
        )


def test_restore_notify_secrets_stay_out_of_the_inventory(
    env: Env, inventory: Inventory, receiver: Any
) -> None:
    """A URL with a password given to --notify would be stored with the request: it is
    refused in one line, and a named target, resolved where the notification is sent,
    takes its place."""
    import base64

    make_tree(env.source, big=False)
    assert cli(env, "run", "p").returncode == 0
    secret_url = f"json://hookuser:Pa55w0rdXYZ@127.0.0.1:{receiver.port}/hook"
    dest = env.tmp / "restored"
    proc = cli(env, "restore", "p", "--to", str(dest), "--notify", secret_url)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "BACKUP_NOTIFY_<NAME>=URL" in proc.stderr and "Pa55w0rdXYZ" not in proc.stderr
    assert not dest.exists() and "restore" not in {j.kind for j in JobStore(inventory).jobs()}

    proc = cli(
        env, "restore", "p", "--to", str(dest), "--notify", "hook", "--json",
        extra_env={"BACKUP_NOTIFY_HOOK": secret_url},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    job = JobStore(inventory).get(json.loads(proc.stdout)["job"])
    assert job.state == "done" and job.notify_state == "sent"
    assert json.loads(job.notify) == ["hook"]
    assert len(receiver.requests) == 1
    path, headers, payload = receiver.requests[0]
    assert path == "/hook" and str(dest) in payload["message"]
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"hookuser:Pa55w0rdXYZ").decode()
    assert "Pa55w0rdXYZ" not in _everything_in(inventory)


def test_restore_request_gives_the_broker_a_job_id_only(env: Env, inventory: Inventory) -> None:
    import base64
    import secrets

    import redis

    from tests.workers.conftest import REDIS_URL, redis_answers

    assert redis_answers(REDIS_URL), f"Redis does not answer at {REDIS_URL}"
    make_tree(env.source, big=False)
    assert cli(env, "run", "p").returncode == 0
    prefix = f"t{secrets.token_hex(4)}-"
    broker = {"BACKUP_BROKER_URL": REDIS_URL, "BACKUP_QUEUE_PREFIX": prefix}
    secret_url = "mailto://me:Pa55w0rdXYZ@smtp.example.com?to=ops@example.com"
    r = redis.Redis.from_url(REDIS_URL)
    try:
        proc = cli(
            env, "restore", "p", "--to", "/srv/restored", "--notify", "ops", "--json",
            extra_env={**broker, "BACKUP_NOTIFY_OPS": secret_url},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        job_id = json.loads(proc.stdout)["job"]
        queued = [m for k in r.scan_iter(match=f"{prefix}*") if r.type(k) == b"list"
                  for m in r.lrange(k, 0, -1)]  # fmt: skip
        assert len(queued) == 1
        message = json.loads(queued[0])
        body = json.loads(base64.b64decode(message["body"]))
        assert body[0] == [job_id]  # the task's arguments: the job's id, nothing else
        assert "Pa55w0rdXYZ" not in json.dumps(message) + json.dumps(body)
        assert "Pa55w0rdXYZ" not in _everything_in(inventory)
        assert json.loads(JobStore(inventory).get(job_id).notify) == ["ops"]

        # a name this host does not define is for the workers' environment: said in a note
        proc = cli(
            env, "restore", "p", "--to", "/srv/restored", "--notify", "oncall", extra_env=broker
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == (
            "note: notification target oncall is not defined here (BACKUP_NOTIFY_ONCALL); "
            "the workers that send it must define it\n"
        )
    finally:
        keys = list(r.scan_iter(match=f"{prefix}*"))
        if keys:
            r.delete(*keys)
