"""Monitoring: dead-man pings heard by a real HTTP server while real `backup run` processes
succeed, end partial and fail; the metrics those runs leave; the alert rules under promtool.
(The scheduler serving /metrics over HTTP is tests/workers/test_metrics.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from backup.jobs.pings import Outcome, ping, ping_url_for
from tests.conftest import Env, write_policy

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "docs" / "monitoring"
TOKEN = "5f1d2c3e-1234-4a5b-9c8d-abcdef012345"


class Pings:
    """A local HTTP server that records every request path (healthchecks.io's side)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.paths.append(self.path)
                self.send_response(outer.status)
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pings() -> Iterator[Pings]:
    p = Pings()
    yield p
    p.close()


def _policy(env: Env, ping_url: str, target: str | None = None) -> None:
    write_policy(
        env.config,
        name="p",
        sources=[str(env.source)],
        target=target or f"file://{env.vault}",
        recipients=[env.key.recipient],
        schedule="0 2 * * *",
    )
    with open(env.config, "a") as f:
        f.write(f'[policy.monitor]\nping_url = "{ping_url}"\n')


def _run(env: Env, *args: str, caps_dropped: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "backup", "run", "p", *args]
    if caps_dropped and os.geteuid() == 0:  # so that chmod 000 binds for root too
        cmd = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    return subprocess.run(cmd, env=env.environ(), capture_output=True, text=True, check=False)


def _metrics(env: Env) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = subprocess.run(
        [sys.executable, "-m", "backup", "metrics", "--json"],
        env=env.environ(),
        capture_output=True,
        text=True,
        check=True,
    )
    return {
        (s["name"], tuple(sorted(s["labels"].items()))): s["value"] for s in json.loads(out.stdout)
    }


def test_healthchecks_pings_at_start_success_partial_and_failure(env: Env, pings: Pings) -> None:
    (env.source / "a.txt").write_text("a")
    _policy(env, f"{pings.url}/ping/{TOKEN}")

    r = _run(env)
    assert r.returncode == 0, r.stderr
    assert pings.paths == [f"/ping/{TOKEN}/start", f"/ping/{TOKEN}"]

    (env.source / "secret.txt").write_text("s")
    (env.source / "secret.txt").chmod(0)
    r = _run(env, caps_dropped=True)
    assert r.returncode == 3, r.stderr
    assert pings.paths[2:] == [f"/ping/{TOKEN}/start", f"/ping/{TOKEN}/3"]
    (env.source / "secret.txt").unlink()

    _policy(env, f"{pings.url}/ping/{TOKEN}", target="file:///dev/null/vault")
    r = _run(env)
    assert r.returncode == 1
    assert pings.paths[4:] == [f"/ping/{TOKEN}/start", f"/ping/{TOKEN}/fail"]

    # the inventory says the same: one success, one partial, one failure
    m = _metrics(env)
    runs = {k[1]: v for k, v in m.items() if k[0] == "backup_runs_total"}
    assert runs[(("policy", "p"), ("result", "success"))] == 1
    assert runs[(("policy", "p"), ("result", "partial"))] == 1
    assert runs[(("policy", "p"), ("result", "failure"))] == 1
    assert m[("backup_expected_interval_seconds", (("policy", "p"),))] == 86400
    # the partial run was a success as far as "when did it last back up" goes
    last = m[("backup_last_success_timestamp_seconds", (("policy", "p"),))]
    partial = m[("backup_last_run_timestamp_seconds", (("policy", "p"), ("result", "partial")))]
    assert last == partial
    assert not any(TOKEN in str(k) for k in m)


def test_uptime_kuma_push_says_up_and_down(env: Env, pings: Pings) -> None:
    (env.source / "a.txt").write_text("a")
    _policy(env, f"{pings.url}/api/push/{TOKEN}?msg=x")
    assert _run(env).returncode == 0
    _policy(env, f"{pings.url}/api/push/{TOKEN}", target="file:///dev/null/vault")
    assert _run(env).returncode == 1
    assert len(pings.paths) == 2  # a push monitor has no start
    assert pings.paths[0].startswith(f"/api/push/{TOKEN}?") and "status=up" in pings.paths[0]
    assert "status=down" in pings.paths[1] and "Not+a+directory" in pings.paths[1]


def test_a_ping_that_fails_never_fails_the_backup_and_is_logged_redacted(
    env: Env, pings: Pings
) -> None:
    (env.source / "a.txt").write_text("a")
    pings.status = 500
    _policy(env, f"{pings.url}/ping/{TOKEN}")
    r = _run(env, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == "complete"
    assert pings.paths.count(f"/ping/{TOKEN}/start") == 3  # retried
    assert pings.paths.count(f"/ping/{TOKEN}") == 3
    assert TOKEN not in r.stdout + r.stderr
    from backup.inventory import Inventory

    events = [e for e in Inventory(env.inventory_url).events() if e.kind == "monitor"]
    assert len(events) == 2 and all("failed" in e.message for e in events)
    assert not any(TOKEN in e.message or TOKEN in e.data for e in events)


def test_ping_urls_per_protocol() -> None:
    hc = f"https://hc-ping.com/{TOKEN}"
    assert ping_url_for(hc, Outcome.START) == f"{hc}/start"
    assert ping_url_for(hc, Outcome.SUCCESS) == hc
    assert ping_url_for(hc + "/", Outcome.PARTIAL) == f"{hc}/3"
    assert ping_url_for(hc, Outcome.FAILURE) == f"{hc}/fail"
    kuma = "https://kuma.example.com/api/push/AbC?ping="
    assert ping_url_for(kuma, Outcome.START) is None
    assert ping_url_for(kuma, Outcome.SUCCESS, "ok") == f"{kuma}&status=up&msg=ok"
    assert "status=down" in (ping_url_for(kuma, Outcome.PARTIAL) or "")


def test_a_refused_connection_returns_false_without_raising() -> None:
    waits: list[float] = []
    logged: list[tuple[str, str]] = []
    ok = ping(
        f"http://127.0.0.1:9/{TOKEN}",
        Outcome.SUCCESS,
        log_event=lambda level, text: logged.append((level, text)),
        sleep=waits.append,
    )
    assert ok is False and waits == [0.5, 1.0]
    assert len(logged) == 1 and TOKEN not in logged[0][1]


def test_a_policy_ping_url_must_be_http(env: Env) -> None:
    _policy(env, "ftp://example.com/x")
    r = _run(env)
    assert r.returncode != 0
    assert "ping_url" in r.stderr and "http://" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def _promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail(
            "promtool is missing: run ./scripts/test, which installs it (Debian package prometheus)"
        )
    return exe


def test_alert_rules_pass_promtool_check() -> None:
    r = subprocess.run(
        [_promtool(), "check", "rules", str(RULES / "alerts.yaml")], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 8 rules found" in r.stdout


def test_alert_rules_unit_tests_pass() -> None:
    r = subprocess.run(
        [_promtool(), "test", "rules", "tests.yaml"],
        capture_output=True,
        text=True,
        cwd=RULES,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_prometheus_scrapes_the_scheduler_and_workers_with_the_rules(
    tmp_path: Path,
) -> None:
    import yaml

    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    prom = compose["services"]["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"]}
    assert mounts["/etc/prometheus/alerts.yaml"] == "./docs/monitoring/alerts.yaml"
    assert mounts["/etc/prometheus/prometheus.yml"] == "./docs/monitoring/prometheus.yml"
    assert compose["x-backup"]["environment"]["BACKUP_METRICS_PORT"] == "9464"
    config = yaml.safe_load((RULES / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yaml"]
    scraped = {
        name
        for job in config["scrape_configs"]
        for sd in job["dns_sd_configs"]
        for name in sd["names"]
        if sd["port"] == 9464
    }
    assert scraped == {"scheduler", "worker", "poller"}
    # promtool checks the configuration with the rule file where the container has it
    shutil.copy(RULES / "alerts.yaml", tmp_path / "alerts.yaml")
    (tmp_path / "prometheus.yml").write_text(
        (RULES / "prometheus.yml")
        .read_text()
        .replace("/etc/prometheus/alerts.yaml", str(tmp_path / "alerts.yaml"))
    )
    r = subprocess.run(
        [_promtool(), "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_restore_retrieval_drill_and_snapshot_series_from_inventory_rows(tmp_path: Path) -> None:
    """The series that follow restores and cold storage, computed from rows as the runner
    writes them, against hand-computed values."""
    from datetime import UTC, datetime, timedelta

    from prometheus_client.core import Metric

    from backup.coldplan import estimate_cost
    from backup.inventory import Inventory
    from backup.inventory.models import Event, Job, RetrievalJob, Snapshot
    from backup.jobs.metrics import InventoryCollector

    now = datetime(2026, 12, 3, 12, tzinfo=UTC)
    inv = Inventory(f"sqlite:///{tmp_path / 'inv.db'}")
    with inv.session() as s:
        for i, state in enumerate(["done", "done", "failed", "extracting"]):
            s.add(Job(id=f"r{i}", kind="restore", state=state, created=now, updated=now))
        for i, (cls, tier, hours, size) in enumerate(
            [("DEEP_ARCHIVE", "Bulk", 50, 10 * 2**30), ("GLACIER", "Standard", 1, 2**30)]
        ):
            s.add(
                RetrievalJob(
                    job_id="r3",
                    target="s3://b/p",
                    ref=f"k{i}",
                    tier=tier,
                    state="pending",
                    requested=now - timedelta(hours=hours),
                    storage_class=cls,
                    size=size,
                )
            )
        s.add(RetrievalJob(target="s3://b/p", ref="done", state="ready", requested=now, size=1))
        for v in ("v1", "v2"):
            s.add(Snapshot(bucket="photos", version=v, created=now))
        passed, failed = now - timedelta(days=3), now - timedelta(hours=1)
        s.add(Event(time=passed, level="info", kind="drill", policy="photos", message="passed"))
        s.add(Event(time=failed, level="error", kind="drill", policy="photos", message="FAILED"))

    got: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    fam: Metric
    for fam in InventoryCollector(inv, dict, now=lambda: now).collect():
        for sm in fam.samples:
            got[(sm.name, tuple(sorted(sm.labels.items())))] = sm.value
    assert got[("backup_restores_total", (("result", "success"),))] == 2
    assert got[("backup_restores_total", (("result", "failure"),))] == 1
    assert got[("backup_jobs", (("state", "extracting"),))] == 1
    pending = (("storage_class", "DEEP_ARCHIVE"), ("tier", "Bulk"))
    assert got[("backup_retrievals_pending", pending)] == 1
    assert (
        got[("backup_retrievals_pending", (("storage_class", "GLACIER"), ("tier", "Standard")))]
        == 1
    )
    assert got[("backup_retrieval_oldest_pending_seconds", ())] == 50 * 3600
    # DEEP_ARCHIVE Bulk takes up to 48 h: 2 h overdue; the GLACIER one is within its 5 h
    assert got[("backup_retrieval_overdue_seconds", ())] == 2 * 3600
    cost = estimate_cost("DEEP_ARCHIVE", "Bulk", 10 * 2**30) + estimate_cost(
        "GLACIER", "Standard", 2**30
    )
    assert got[("backup_retrieval_pending_cost_usd", ())] == pytest.approx(cost)
    assert cost > 0
    assert got[("backup_snapshots", (("bucket", "photos"),))] == 2
    # the last drill that passed, not the later one that failed
    assert got[("backup_drill_last_success_timestamp_seconds", (("policy", "photos"),))] == (
        passed.timestamp()
    )
