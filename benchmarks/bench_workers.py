#!/usr/bin/env python3
"""Orchestration benchmark: what the workers add on top of the engine.

1. Latency: a tiny policy, one warm ``backup worker`` on Redis. Each repetition queues a run
   exactly as ``backup run POLICY`` does (a job row, then the task through the broker) and
   times until the archive is recorded complete in the inventory. Beside it, the same policy
   run in-process by the runner (the floor: the engine's own time), so the difference is
   the orchestration overhead. Target: <= 0.5 s median from queued to recorded.
2. Throughput: N tiny policies (200 by default) queued at once through 2 workers (each
   ``--concurrency 1``): jobs per second, and a check that every job ran exactly once
   (attempts == 1, one complete archive per policy, none lost).

    python3 benchmarks/bench_workers.py [--runs 20] [--policies 200]
                                        [--inventory sqlite|postgres] [--json out.json]

Needs Redis (``BACKUP_TEST_REDIS_URL`` or redis://127.0.0.1:6379/15) and, for
``--inventory postgres``, ``BACKUP_TEST_POSTGRES_URL``. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REDIS_URL = os.environ.get("BACKUP_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _policy(name: str, src: Path, vault: Path, recipient: str) -> str:
    return (
        f'[[policy]]\nname = "{name}"\nsources = ["{src}"]\n'
        f'target = "file://{vault}"\nrecipients = ["{recipient}"]\n'
    )


def _inventory_url(kind: str, tmp: Path) -> tuple[str, Any]:
    if kind == "sqlite":
        return f"sqlite:///{tmp / 'inventory.db'}", None
    import sqlalchemy as sa

    base = os.environ.get("BACKUP_TEST_POSTGRES_URL")
    if not base:
        sys.exit("--inventory postgres needs BACKUP_TEST_POSTGRES_URL")
    schema = f"bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(base)
    with admin.begin() as c:
        c.execute(sa.text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in base else "?"

    def drop() -> None:
        with admin.begin() as c:
            c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))

    return f"{base}{sep}options=-csearch_path%3D{schema}", drop


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(
        [sys.executable, "-m", "backup", "worker", "--concurrency", "1", "--loglevel", "warning"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return p


def _wait(pred: Any, timeout: float, what: str, every: float = 0.005) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--policies", type=int, default=200)
    ap.add_argument("--inventory", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from backup.cli.queueing import broker_dispatch
    from backup.crypto.age import X25519Identity
    from backup.errors import ArchiveNotFound
    from backup.inventory import Inventory
    from backup.jobs import JobStore
    from backup.jobs.runner import Runner
    from backup.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    procs: list[subprocess.Popen[bytes]] = []
    inv_url, drop = _inventory_url(args.inventory, tmp)
    try:
        ident = X25519Identity.generate()
        recipient = ident.recipient().to_string()
        vault = tmp / "vault"
        names = ["tiny"] + [f"p{i:03d}" for i in range(args.policies)]
        text = []
        for n in names:
            src = tmp / "src" / n
            src.mkdir(parents=True)
            (src / "a.txt").write_text(f"a tiny file of {n}\n")
            text.append(_policy(n, src, vault, recipient))
        config = tmp / "policies.toml"
        config.write_text("\n".join(text))
        prefix = f"bench{secrets.token_hex(3)}-"
        env = dict(
            os.environ,
            BACKUP_CONFIG=str(config),
            BACKUP_INVENTORY_URL=inv_url,
            BACKUP_BROKER_URL=REDIS_URL,
            BACKUP_QUEUE_PREFIX=prefix,
            XDG_DATA_HOME=str(tmp / "xdg"),
        )
        settings = Settings(
            config=config, inventory_url=inv_url, broker_url=REDIS_URL, queue_prefix=prefix
        )
        inv = Inventory(inv_url)
        store = JobStore(inv)
        dispatch = broker_dispatch(settings, store)

        # floor: the same tiny run in this process, no broker
        runner = Runner(inv, settings, lambda t, j: None, "bench:0")
        inproc = []
        for _ in range(args.runs):
            job = store.create("backup", policy="tiny", state="queued")
            assert job is not None
            t0 = time.perf_counter()
            runner.run_backup(job.id)
            inproc.append(time.perf_counter() - t0)

        w1 = _start_worker(env, tmp / "w1.log")
        procs.append(w1)
        # a warm worker: one run before measuring
        job = store.create("backup", policy="tiny", state="queued")
        assert job is not None
        dispatch("backup.run", job.id)
        _wait(lambda: store.get(job.id).state == "done", 120, "the warm-up run", every=0.1)

        queued_to_recorded = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            job = store.create("backup", policy="tiny", state="queued")
            assert job is not None
            dispatch("backup.run", job.id)

            def recorded(jid: str = job.id) -> bool:
                j = store.get(jid)
                if not j.archive_id:
                    return False
                try:  # the id is on the job a moment before the archive row exists
                    return inv.get(j.archive_id).state == "complete"
                except ArchiveNotFound:
                    return False

            _wait(recorded, 60, "a queued run")
            queued_to_recorded.append(time.perf_counter() - t0)
            _wait(lambda jid=job.id: store.get(jid).state == "done", 60, "job done")

        # throughput: N policies at once through 2 workers
        w2 = _start_worker(env, tmp / "w2.log")
        procs.append(w2)
        time.sleep(3)  # let the second worker connect
        batch = names[1:]
        t0 = time.perf_counter()
        ids = []
        for n in batch:
            job = store.create("backup", policy=n, state="queued")
            assert job is not None
            dispatch("backup.run", job.id)
            ids.append(job.id)
        idset = set(ids)

        def all_done() -> bool:
            done = store.jobs(kind="backup", states=["done"], limit=10**6)
            return sum(1 for j in done if j.id in idset) == len(ids)

        _wait(all_done, 600, "all queued policies", every=0.2)
        elapsed = time.perf_counter() - t0
        jobs = [store.get(i) for i in ids]
        archives = [a for a in inv.archives() if a.policy in set(batch)]
        checks = {
            "all_done": all(j.state == "done" for j in jobs),
            "each_once": all(j.attempts == 1 for j in jobs),
            "one_archive_per_policy": sorted(a.policy for a in archives) == sorted(batch),
            "workers_used": len({j.worker for j in jobs}),
        }
        res = {
            "inventory": args.inventory,
            "runs": args.runs,
            "in_process_median_s": round(statistics.median(inproc), 4),
            "queued_to_recorded_median_s": round(statistics.median(queued_to_recorded), 4),
            "queued_to_recorded_p90_s": round(
                sorted(queued_to_recorded)[int(0.9 * (len(queued_to_recorded) - 1))], 4
            ),
            "overhead_median_s": round(
                statistics.median(queued_to_recorded) - statistics.median(inproc), 4
            ),
            "target_s": 0.5,
            "policies": len(batch),
            "batch_seconds": round(elapsed, 2),
            "jobs_per_second": round(len(batch) / elapsed, 2),
            "checks": checks,
        }
        print(json.dumps(res, indent=2))
        if args.json:
            args.json.write_text(json.dumps(res, indent=2))
        ok = (
            res["queued_to_recorded_median_s"] <= 0.5
            and checks["all_done"]
            and checks["each_once"]
            and checks["one_archive_per_policy"]
        )
        return 0 if ok else 1
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        if drop:
            drop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
