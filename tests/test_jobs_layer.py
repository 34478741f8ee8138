"""The jobs layer's seams: states stored as the same strings, typed params and results that
read what older jobs recorded, the one dispatcher's routing and records, an engine that is
given its source, and import layers without cycles."""

from __future__ import annotations

import json
from typing import Any

import grimp
import pytest
from kombu.exceptions import OperationalError

from backup.engine import run_backup
from backup.errors import Error
from backup.inventory import Inventory
from backup.jobs import JobStore
from backup.jobs.dispatch import QUEUES, TASK_QUEUES, Dispatcher, task_queue
from backup.jobs.states import (
    ACTIVE,
    BACKUP_STATES,
    RESET_TO,
    RESTORE_STATES,
    BackupOutcome,
    BackupParams,
    JobState,
    RestoreOutcome,
    RestoreParams,
)
from backup.settings import Settings
from tests.conftest import Env


def test_states_are_the_strings_stored_before() -> None:
    assert BACKUP_STATES == (
        "queued", "packing", "uploading", "recorded", "done", "failed", "skipped"
    )  # fmt: skip
    assert RESTORE_STATES == ("requested", "retrieving", "ready", "extracting", "done", "failed")
    assert RESET_TO == {
        "packing": "queued", "uploading": "queued", "recorded": "queued", "extracting": "ready"
    }  # fmt: skip
    assert json.dumps({"state": JobState.DONE}) == '{"state": "done"}'
    assert f"{JobState.RETRIEVING}" == "retrieving"
    assert "packing" in ACTIVE and "done" not in ACTIVE


def test_results_keep_their_keys_and_order() -> None:
    plan = BackupOutcome(actions=["archive"])
    assert plan.to_json() == '{"actions": ["archive"]}'  # what the sweep reads mid-run
    done = BackupOutcome(actions=["archive"], archive_id="a", kind="full", seconds=1.5)
    assert list(json.loads(done.to_json())) == ["actions", "archive_id", "kind", "seconds"]
    older = '{"archive_id": "a", "surprise": 1}'  # a key this version does not know
    assert BackupOutcome.from_json(older).archive_id == "a"
    assert BackupOutcome.from_json(None) == BackupOutcome()
    bucket = RestoreOutcome(archive_id="a", files=2, unchanged=1, deleted=0, bytes=3)
    assert list(json.loads(bucket.to_json())) == [
        "archive_id", "files", "unchanged", "deleted", "bytes"
    ]  # fmt: skip
    assert BackupParams.from_json('{"full": true}').full is True
    assert BackupParams.from_json("{}").to_json() == '{"full": false}'
    p = RestoreParams.from_json('{"archive_id": "a", "to": "s3://b/x", "tier": "Bulk"}')
    assert (p.to_bucket, p.include, p.tier, p.in_place) == (True, [], "Bulk", None)


class FakeBroker:
    def __init__(self, fail: BaseException | None = None) -> None:
        self.sent: list[tuple[str, list[str], str]] = []
        self.fail = fail

    def send_task(self, name: str, args: Any = None, queue: Any = None, **_: Any) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append((name, args, queue))

    def connection_for_write(self) -> Any:
        raise OSError("no broker here")


def test_one_dispatcher_routes_and_records(env: Env) -> None:
    settings = Settings(config=env.config, inventory_url=env.inventory_url, queue_prefix="t-")
    inv = Inventory(env.inventory_url)
    store = JobStore(inv)
    policy = env.policy().model_copy(update={"queue": "nas"})
    broker = FakeBroker()
    d = Dispatcher(settings, store, broker, lambda: {"p": policy})
    job = store.create("backup", policy="p", state="queued")
    assert job is not None and job.sent_at is None
    d("backup.run", job.id)  # a Dispatch, looked up by the job's policy
    d.send("backup.notify", job.id)
    d.poll()
    assert broker.sent == [
        ("backup.run", [job.id], "t-pack-nas"),
        ("backup.notify", [job.id], "t-notify"),
        ("backup.poll", [""], "t-poll"),
    ]
    assert store.get(job.id).sent_at is not None
    assert d.waiting("t-pack") is None  # the broker cannot tell
    assert task_queue("backup.run") == "pack" and set(TASK_QUEUES.values()) <= set(QUEUES)
    inv.close()


def test_try_send_tells_why_or_fails_the_job(env: Env) -> None:
    settings = Settings(config=env.config, inventory_url=env.inventory_url)
    inv = Inventory(env.inventory_url)
    store = JobStore(inv)
    job = store.create("restore", policy="p", state="requested")
    assert job is not None
    down = Dispatcher(settings, store, FakeBroker(OperationalError("connection refused")))
    why = down.try_send(job, "backup.start_restore")
    assert why is not None and "does not answer (connection refused)" in why
    assert store.get(job.id).state == "requested" and store.get(job.id).sent_at is None
    bad = Dispatcher(settings, store, FakeBroker(ValueError("no transport")))
    with pytest.raises(Error, match="cannot send to the broker"):
        bad.try_send(job, "backup.start_restore")
    assert store.get(job.id).state == "failed"
    inv.close()


def test_the_engine_is_given_a_bucket_source(env: Env) -> None:
    inv = Inventory(env.inventory_url)
    policy = env.policy().model_copy(update={"source": "s3://bucket/photos"})
    with pytest.raises(ValueError, match=r"backup\.jobs\.backups\.back_up"):
        run_backup(policy, inv)
    assert inv.archives() == []  # nothing recorded, nothing stored
    assert not env.vault.exists() or not any(env.vault.rglob("*.age"))
    inv.close()


def strongly_connected(g: Any) -> list[set[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in g.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for m in sorted(g.modules):
        if m not in index:
            visit(m)
    return out


#: the one module of the front end that may import workers/ (to start the worker and
#: scheduler processes)
WORKER_COMMANDS = {"backup.cli.worker_cmd"}


def test_no_cycles_and_the_library_imports_no_workers() -> None:
    g = grimp.build_graph("backup", "workers", cache_dir=None)
    assert strongly_connected(g) == []
    into_workers = {
        m
        for m in g.modules
        if m.startswith("backup")
        for w in g.find_modules_directly_imported_by(m)
        if w.startswith("workers")
    }
    assert into_workers == WORKER_COMMANDS
