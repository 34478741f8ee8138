"""A cluster for end-to-end tests: real Redis, real ``backup worker`` and ``backup scheduler``
processes (not eager mode), an inventory on SQLite or PostgreSQL, and short intervals so a
dead worker is noticed in seconds. Each test gets its own queue prefix, so tests (and other
suites sharing the Redis database) never see each other's messages."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from backup.inventory import Inventory
from backup.jobs import JobStore
from backup.settings import Settings
from tests.conftest import POSTGRES_URL, Env, postgres_schema_url

REDIS_URL = os.environ.get("BACKUP_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=2).ping())
    except Exception:
        return False


def wait_for(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll ``pred`` until it returns something true; fail naming ``what`` on timeout."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (a worker and its pool processes)."""
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            return
        self.popen.wait(timeout=30)

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Cluster:
    """Processes of one test's cluster, and a job store on its inventory."""

    env: Env
    environ: dict[str, str]
    procs: list[Proc] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return Settings(
            **{
                k[len("BACKUP_") :].lower(): v
                for k, v in self.environ.items()
                if k.startswith("BACKUP_")
                and not k.startswith("BACKUP_TEST")
                and k[len("BACKUP_") :].lower() in Settings.model_fields
            }
        )

    def store(self) -> JobStore:
        return JobStore(Inventory(self.env.inventory_url))

    def start(self, *args: str, name: str | None = None, **extra_env: str) -> Proc:
        name = name or f"{args[0]}-{len(self.procs)}"
        log = self.env.tmp / f"{name}.log"
        environ = dict(self.environ, **extra_env)
        p = subprocess.Popen(
            [sys.executable, "-m", "backup", *args],
            env=environ,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc = Proc(name, p, log)
        self.procs.append(proc)
        return proc

    def worker(
        self, queues: str = "pack,restore,poll,notify,default", concurrency: int = 1, **kw: str
    ) -> Proc:
        p = self.start("worker", "--queues", queues, "--concurrency", str(concurrency), **kw)
        wait_for(lambda: " ready." in p.text() or p.popen.poll() is not None, 60, "worker start")
        assert p.popen.poll() is None, p.text()
        return p

    def scheduler(self, **kw: str) -> Proc:
        return self.start("scheduler", **kw)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [sys.executable, "-m", "backup", *args],
            env=self.environ,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"backup {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
            )
        return r

    def stop_all(self) -> None:
        for p in self.procs:
            p.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def inventory_url(tmp_path: Path) -> Iterator[str]:
    """One inventory per cluster test, not one per backend: PostgreSQL when configured (what
    a cluster uses), else SQLite. The inventory's own tests cover both backends."""
    if not POSTGRES_URL:
        yield f"sqlite:///{tmp_path / 'inventory.db'}"
        return
    yield from postgres_schema_url()


@pytest.fixture
def cluster(env: Env) -> Iterator[Cluster]:
    if not redis_answers(REDIS_URL):
        pytest.fail(f"Redis does not answer at {REDIS_URL}: run ./scripts/test, which starts it")
    environ = env.environ()
    environ.update(
        BACKUP_BROKER_URL=REDIS_URL,
        BACKUP_QUEUE_PREFIX=f"t{secrets.token_hex(4)}-",
        BACKUP_HEARTBEAT_SECONDS="0.5",
        BACKUP_STALE_AFTER_SECONDS="4",
        BACKUP_RESEND_AFTER_SECONDS="3",
        BACKUP_LEASE_SECONDS="3",
        BACKUP_TICK_SECONDS="0.5",
        BACKUP_POLL_SECONDS="1",
        PYTHONUNBUFFERED="1",
    )
    c = Cluster(env, environ)
    yield c
    c.stop_all()
    # leave the shared test database as it was: drop this test's queues
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter(match=f"{environ['BACKUP_QUEUE_PREFIX']}*"))
    if keys:
        r.delete(*keys)
