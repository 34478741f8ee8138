"""A ``backup run`` killed without a word (SIGKILL, the OOM killer, ``timeout -s KILL``)
must not lock its policy out: the next run sees that the holder of the lock is dead (its
process on this host is gone, or its heartbeat expired elsewhere), fails the dead job,
removes what its attempt left in the target (and nothing else), and runs. ``backup status``
says when a job's process is gone. Real ``backup`` processes, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup.engine import archive_keys
from backup.inventory import Archive, Inventory
from backup.jobs import JobStore, holder_gone, parse_worker, process_alive, process_name
from backup.targets import open_target
from tests.conftest import Env, require_tools, write_policy
from tests.test_interop import cli
from tests.workers.conftest import wait_for


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tools("age", "zstd", "tar")


def policy(env: Env, level: int) -> None:
    write_policy(
        env.config,
        name="p",
        sources=[str(env.source)],
        target=f"file://{env.vault}",
        recipients=[env.key.recipient],
        compression_level=level,
    )


def dead_cli_worker(env: Env) -> str:
    """The ``worker`` a ``backup run`` process records, of a process that has ended."""
    code = "from backup.jobs import process_name; print(process_name('cli'))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env.environ(), capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def partials(env: Env) -> list[Path]:
    d = env.vault / ".partial"
    return sorted(d.glob("*.partial")) if d.is_dir() else []


def test_a_run_killed_mid_pack_does_not_lock_the_next_run_out(env: Env) -> None:
    # incompressible data at zstd level 19 packs slowly: the run is killed while it packs
    for i in range(2):
        (env.source / f"blob{i}").write_bytes(os.urandom(4 << 20))
    (env.source / "note.txt").write_text("kept")
    policy(env, 19)
    first = subprocess.Popen(
        [sys.executable, "-m", "backup", "run", "p"],
        env=env.environ(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: any(p.stat().st_size > 0 for p in partials(env)), 60, "packing to write")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL  # killed mid-run, not finished before

    # what the killed run left: its job packing, the lock, a row writing, a partial file
    inv = Inventory(env.inventory_url)
    store = JobStore(inv)
    [dead] = store.jobs(kind="backup")
    assert dead.state == "packing" and dead.archive_id
    who = parse_worker(dead.worker)
    assert who is not None and (who.role, who.pid) == ("cli", first.pid)
    assert store.lock_policy("p", "someone-else") == dead.id
    assert inv.get(dead.archive_id).state == "writing"
    assert partials(env)

    # `backup status` says the job's process is gone, in the table and in JSON
    st = cli(env, "status", "--json")
    assert st.returncode == 0, st.stderr
    [running] = json.loads(st.stdout)["running"]
    assert running["id"] == dead.id
    assert running["process_gone"] == f"process {first.pid} on {who.host} is gone"
    table = cli(env, "status")
    assert "packing (process gone)" in table.stdout, table.stdout

    # the next run runs (a faster level: the killed one's setting is not under test)
    policy(env, 3)
    run = cli(env, "run", "p", "--json")
    assert run.returncode == 0, run.stderr
    archive = json.loads(run.stdout)
    assert archive["state"] == "complete"
    after = store.get(dead.id)
    assert after.state == "failed"
    assert after.error == f"interrupted in packing: process {first.pid} on {who.host} is gone"
    rows = {a.id: a.state for a in inv.archives(states=("complete", "failed", "writing"))}
    assert rows == {dead.archive_id: "failed", archive["id"]: "complete"}
    assert partials(env) == []
    assert sorted(p.name for p in (env.vault / "p").iterdir()) == sorted(
        Path(k).name for k in archive_keys("p", archive["id"])
    )
    assert store.lock_policy("p", "someone-else") is None  # the second run released it
    assert any(f"job {dead.id} failed" in e.message for e in inv.events())

    # and the archive is whole: it restores
    out = env.tmp / "out"
    res = cli(env, "restore", "p", "--to", str(out))
    assert res.returncode == 0, res.stderr
    assert (out / "note.txt").read_text() == "kept"
    assert (out / "blob1").read_bytes() == (env.source / "blob1").read_bytes()
    inv.close()


def test_an_archive_left_without_its_manifest_is_removed_and_only_it(env: Env) -> None:
    """Killed between the archive's commit and the manifest's: the archive object is whole
    but not an archive (no manifest, no record). The next run removes it; the complete
    archive of an earlier run stays."""
    (env.source / "a").write_text("one")
    assert cli(env, "run", "p").returncode == 0
    inv = Inventory(env.inventory_url)
    store = JobStore(inv)
    [earlier] = inv.archives()
    kept = sorted(p.name for p in (env.vault / "p").iterdir())
    assert len(kept) == 2

    job = store.create("backup", policy="p", state="queued")
    assert job is not None
    assert store.claim(job.id, "queued", "packing", dead_cli_worker(env))
    assert store.lock_policy("p", job.id) is None
    aid = "20261121T020000Z-0dead0ff"
    key, manifest_key = archive_keys("p", aid)
    inv.add_archive(
        Archive(
            id=aid,
            policy="p",
            target=f"file://{env.vault}",
            location=key,
            manifest_location=manifest_key,
            kind="incremental",
            parent_id=earlier.id,
            created=datetime.now(UTC),
            state="writing",
        )
    )
    store.update(job.id, archive_id=aid)
    w = open_target(f"file://{env.vault}").open_write(key)
    w.write(b"a whole archive, but its manifest never came")
    w.commit()
    assert (env.vault / key).exists()

    (env.source / "b").write_text("two")
    run = cli(env, "run", "p", "--json")
    assert run.returncode == 0, run.stderr
    new = json.loads(run.stdout)["id"]
    assert store.get(job.id).state == "failed"
    assert inv.get(aid).state == "failed"
    assert not (env.vault / key).exists()
    names = sorted(p.name for p in (env.vault / "p").iterdir())
    assert names == sorted(kept + [Path(k).name for k in archive_keys("p", new)])
    inv.close()


def test_status_says_nothing_is_gone_while_the_process_runs(env: Env) -> None:
    store = JobStore(Inventory(env.inventory_url))
    job = store.create("backup", policy="p", state="queued")
    assert job is not None
    assert store.claim(job.id, "queued", "packing", process_name("cli"))  # this process
    [running] = json.loads(cli(env, "status", "--json").stdout)["running"]
    assert running["id"] == job.id and running["process_gone"] is None


def test_a_reused_pid_is_not_the_holder() -> None:
    me = parse_worker(process_name())
    assert me is not None and me.start is not None
    assert process_alive(me) is True
    assert process_alive(me.__class__(me.role, me.host, me.pid, me.start + 1, me.machine)) is False
    # another host, or another PID namespace of this one: only the heartbeat can tell
    assert process_alive(me.__class__("", "elsewhere", me.pid, me.start, me.machine)) is None
    assert process_alive(me.__class__("", me.host, me.pid, me.start, "0" * 12)) is None
    assert parse_worker("w:1") is not None and parse_worker("not a worker") is None


def test_a_holder_elsewhere_is_dead_once_its_heartbeat_expired(inventory: Inventory) -> None:
    store = JobStore(inventory)
    job = store.create("backup", policy="p", state="queued")
    assert job is not None
    assert store.claim(job.id, "queued", "packing", "otherhost:7:123.abc")
    j = store.get(job.id)
    assert holder_gone(j, timedelta(seconds=60)) is None
    later = datetime.now(UTC) + timedelta(seconds=90)
    assert holder_gone(j, timedelta(seconds=60), later) == (
        "no heartbeat from otherhost:7:123.abc for 90 s"
    )


def test_a_run_stopped_by_timeout_cleans_up_at_once(env: Env) -> None:
    """``timeout`` sends SIGTERM: the run ends as on Ctrl-C, leaving nothing behind."""
    for i in range(2):
        (env.source / f"blob{i}").write_bytes(os.urandom(4 << 20))
    policy(env, 19)
    run = subprocess.Popen(
        [sys.executable, "-m", "backup", "run", "p"],
        env=env.environ(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: any(p.stat().st_size > 0 for p in partials(env)), 60, "packing to write")
    finally:
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
    assert run.returncode == 130 and err.strip() == "interrupted", err
    inv = Inventory(env.inventory_url)
    store = JobStore(inv)
    [job] = store.jobs(kind="backup")
    assert job.state == "failed" and job.error == "KeyboardInterrupt: stopped by SIGTERM"
    assert [a.state for a in inv.archives(states=("complete", "failed", "writing"))] == ["failed"]
    assert partials(env) == [] and not (env.vault / "p").exists()
    assert store.lock_policy("p", "next") is None
    inv.close()
