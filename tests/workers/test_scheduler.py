"""The scheduler's decisions, one tick at a time with a chosen clock, against a real Redis
broker and the test's inventory: catch-up, skipped overlaps, the lease, re-sending lost
jobs and re-queueing jobs whose worker died."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from backup.inventory import Archive, Inventory
from backup.settings import Settings
from tests.conftest import Env, write_policy
from tests.workers.conftest import REDIS_URL, redis_answers
from workers.app import make_app
from workers.scheduler import LEASE, Scheduler


@pytest.fixture
def settings(env: Env) -> Settings:
    if not redis_answers(REDIS_URL):
        pytest.fail(f"Redis does not answer at {REDIS_URL}: run ./scripts/test, which starts it")
    return Settings(
        config=env.config,
        inventory_url=env.inventory_url,
        broker_url=REDIS_URL,
        queue_prefix=f"t{secrets.token_hex(4)}-",
        stale_after_seconds=5,
        resend_after_seconds=5,
        lease_seconds=5,
        tick_seconds=1,
    )


@pytest.fixture
def sched(settings: Settings) -> Iterator[Scheduler]:
    s = Scheduler(settings, make_app(settings), name="s1")
    yield s
    s.inventory.close()
    r = redis.Redis.from_url(REDIS_URL)
    for q in ("pack", "restore", "poll", "notify", "default"):
        r.delete(f"{settings.queue_prefix}{q}")


def queued_messages(settings: Settings, queue: str = "pack") -> int:
    return int(redis.Redis.from_url(REDIS_URL).llen(f"{settings.queue_prefix}{queue}"))


def scheduled(env: Env, **fields: object) -> None:
    write_policy(
        env.config,
        name="p",
        sources=[str(env.source)],
        target=f"file://{env.vault}",
        recipients=[env.key.recipient],
        **fields,
    )


BERLIN_0700 = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)  # 07:00 in Berlin (UTC+1)
SLOT_0200 = datetime(2026, 11, 21, 1, 0, tzinfo=UTC)  # 02:00 in Berlin


def test_missed_run_is_caught_up_once_on_start(env: Env, sched: Scheduler) -> None:
    scheduled(env, schedule="0 2 * * *", timezone="Europe/Berlin", catch_up=True)
    assert sched.tick(BERLIN_0700)
    assert sched.tick(BERLIN_0700 + timedelta(minutes=5))
    jobs = sched.store.jobs(kind="backup")
    assert [(j.origin, j.scheduled_for, j.state) for j in jobs] == [
        ("catch-up", SLOT_0200, "queued")
    ]
    assert queued_messages(sched.settings) == 1


def test_missed_run_without_catch_up_waits_for_the_next_slot(env: Env, sched: Scheduler) -> None:
    scheduled(env, schedule="0 2 * * *", timezone="Europe/Berlin")
    sched.tick(BERLIN_0700)
    assert sched.store.jobs(kind="backup") == []
    next_slot = SLOT_0200 + timedelta(days=1)
    sched.tick(next_slot + timedelta(seconds=20))  # on time, give or take a tick
    jobs = sched.store.jobs(kind="backup")
    assert [(j.origin, j.scheduled_for) for j in jobs] == [("schedule", next_slot)]


def test_a_run_while_the_previous_one_is_running_is_recorded_skipped(
    env: Env, sched: Scheduler
) -> None:
    scheduled(env, schedule="*/5 * * * *")
    store = sched.store
    running = store.create("backup", policy="p", state="queued")
    assert running is not None
    assert store.claim(running.id, "queued", "packing", "elsewhere:1")
    now = datetime(2026, 11, 21, 10, 5, 10, tzinfo=UTC)
    sched.tick(now)
    skipped = [j for j in store.jobs(kind="backup") if j.id != running.id]
    assert len(skipped) == 1
    assert skipped[0].state == "skipped" and running.id in (skipped[0].error or "")
    assert queued_messages(sched.settings) == 0
    assert any("skipped" in e.message for e in sched.inventory.events())


def test_one_active_scheduler_and_takeover_when_its_lease_expires(
    settings: Settings, sched: Scheduler
) -> None:
    from sqlalchemy import update

    from backup.inventory.models import Lease

    other = Scheduler(settings, make_app(settings), name="s2")
    try:
        assert sched.tick() is True
        assert other.tick() is False
        assert sched.tick() is True  # renewing
        assert other.tick() is False
        holder = sched.store.lease_holder(LEASE)
        assert holder is not None and holder[0] == "s1"
        # s1 stops renewing (its host died) and its lease runs out
        with sched.inventory.engine.begin() as c:
            c.execute(update(Lease).values(expires=datetime.now(UTC) - timedelta(seconds=1)))
        assert other.tick() is True
        assert sched.tick() is False
        # a clean shutdown hands over at once
        other.store.release_lease(LEASE, "s2")
        assert sched.tick() is True
    finally:
        other.inventory.close()


def test_lost_jobs_are_sent_again_only_when_their_queue_is_empty(
    env: Env, sched: Scheduler
) -> None:
    scheduled(env)
    store = sched.store
    job = store.create("backup", policy="p", state="queued")
    assert job is not None
    long_ago = datetime.now(UTC) + timedelta(seconds=10)
    sched.tick(long_ago)  # never sent: it is sent now
    assert queued_messages(sched.settings) == 1
    sched.tick(long_ago + timedelta(seconds=30))  # its message still waits: not sent twice
    assert queued_messages(sched.settings) == 1
    redis.Redis.from_url(REDIS_URL).delete(f"{sched.settings.queue_prefix}pack")  # lost
    sched.tick(long_ago + timedelta(seconds=60))
    assert queued_messages(sched.settings) == 1


def test_job_of_a_dead_worker_is_cleaned_up_and_queued_again(
    env: Env, sched: Scheduler, tmp_path: Path
) -> None:
    scheduled(env)
    store = sched.store
    job = store.create("backup", policy="p", state="queued")
    assert job is not None
    assert store.claim(job.id, "queued", "packing", "deadhost:42")
    assert store.lock_policy("p", job.id) is None
    inv = Inventory(env.inventory_url)
    aid = "20261121T020000Z-deadbeef"
    inv.add_archive(
        Archive(
            id=aid,
            policy="p",
            target=f"file://{env.vault}",
            location=f"p/{aid}.tar.zst.age",
            manifest_location=f"p/{aid}.manifest.json.zst.age",
            kind="full",
            created=datetime.now(UTC),
            state="writing",
        )
    )
    store.update(job.id, archive_id=aid)
    from backup.targets import open_target

    w = open_target(f"file://{env.vault}").open_write(f"p/{aid}.tar.zst.age")
    w.write(b"half an archive")  # the dead worker's partial write
    later = datetime.now(UTC) + timedelta(seconds=30)
    # the sweep compares heartbeats with the clock; make this one old
    store.update(job.id, heartbeat=datetime.now(UTC) - timedelta(seconds=60))
    sched.tick(later)
    j = store.get(job.id)
    assert j.state == "queued" and j.worker is None
    assert inv.get(aid).state == "failed"
    assert list((env.vault / ".partial").iterdir()) == []
    assert queued_messages(sched.settings) == 1
    assert store.lock_policy("p", "another") is None  # the dead job's lock was released


def test_a_policy_with_its_own_queue_is_sent_there(env: Env, sched: Scheduler) -> None:
    scheduled(env, schedule="*/5 * * * *", queue="hosta")
    sched.tick(datetime(2026, 11, 21, 10, 5, 10, tzinfo=UTC))
    assert queued_messages(sched.settings, "pack") == 0
    assert queued_messages(sched.settings, "pack-hosta") == 1
    redis.Redis.from_url(REDIS_URL).delete(f"{sched.settings.queue_prefix}pack-hosta")


def test_a_broken_policy_does_not_stop_the_others(env: Env, sched: Scheduler) -> None:
    # p runs on its own queue; q has a mistake outside its schedule: p is queued and routed
    # as before, and q's run is queued to fail with the error, where `backup status` shows it
    scheduled(env, schedule="0 2 * * *", timezone="Europe/Berlin", queue="hosts")
    good = env.config.read_text()
    broken = good.replace('name = "p"', 'name = "q"').replace("age1", "age1broken", 1)
    env.config.write_text(good + "\n" + broken.replace('queue = "hosts"\n', ""))
    at = SLOT_0200 + timedelta(seconds=20)
    assert sched.tick(at)
    jobs = {j.policy: j for j in sched.store.jobs(kind="backup")}
    assert {p: (j.state, j.scheduled_for) for p, j in jobs.items()} == {
        "p": ("queued", SLOT_0200),
        "q": ("queued", SLOT_0200),
    }
    assert queued_messages(sched.settings, "pack-hosts") == 1
    redis.Redis.from_url(REDIS_URL).delete(f"{sched.settings.queue_prefix}pack-hosts")
    assert queued_messages(sched.settings) == 1
    assert sched.runner.run_backup(jobs["q"].id) == "failed"
    error = sched.store.get(jobs["q"].id).error or ""
    assert "policy 'q'" in error and "recipients:" in error
