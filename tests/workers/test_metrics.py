"""/metrics served by real scheduler and worker processes, scraped over HTTP while real
runs succeed and fail: the values move with the inventory, and only the active scheduler
reports the inventory-wide series (two schedulers never count anything twice)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import write_policy

from .conftest import Cluster, free_port, wait_for


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def runs(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], result: str) -> float:
    return m.get(("backup_runs_total", (("policy", "p"), ("result", result))), 0.0)


def test_active_scheduler_serves_inventory_metrics_that_move_with_runs(cluster: Cluster) -> None:
    env = cluster.env
    (env.source / "a.txt").write_text("a")
    write_policy(
        env.config,
        name="p",
        sources=[str(env.source)],
        target=f"file://{env.vault}",
        recipients=[env.key.recipient],
        schedule="0 3 * * *",
    )
    active_port, standby_port, worker_port = free_port(), free_port(), free_port()
    first = cluster.start("scheduler", "--metrics-port", str(active_port), name="sched-a")
    wait_for(
        lambda: (m := scrape(active_port)) and ("backup_jobs", (("state", "done"),)) in m,
        30,
        "the active scheduler's metrics",
    )
    second = cluster.start("scheduler", "--metrics-port", str(standby_port), name="sched-b")
    w = cluster.start(
        "worker",
        "--queues",
        "pack",
        "--concurrency",
        "1",
        "--metrics-port",
        str(worker_port),
        name="w",
    )

    m = wait_for(lambda: scrape(active_port), 30, "a scrape")
    assert runs(m, "success") == 0
    assert m[("backup_expected_interval_seconds", (("policy", "p"),))] == 86400

    cluster.cli("run", "p")  # queued: the worker runs it
    m = wait_for(
        lambda: (m := scrape(active_port)) and runs(m, "success") == 1 and m,
        30,
        "a success counted",
    )
    last = m[("backup_last_success_timestamp_seconds", (("policy", "p"),))]
    assert m[("backup_archive_bytes", (("kind", "full"), ("policy", "p")))] > 0

    write_policy(
        env.config,
        name="p",
        sources=[str(env.source)],
        target="file:///dev/null/vault",
        recipients=[env.key.recipient],
        schedule="0 3 * * *",
    )
    cluster.cli("run", "p")  # queued: the worker runs it, and it fails
    m = wait_for(
        lambda: (m := scrape(active_port)) and runs(m, "failure") == 1 and m,
        30,
        "a failure counted",
    )
    assert runs(m, "success") == 1
    assert m[("backup_last_success_timestamp_seconds", (("policy", "p"),))] == last
    assert m[("backup_run_duration_seconds_count", (("policy", "p"),))] == 2

    # the standby scheduler and the worker serve their process only: nothing counted twice
    standby = wait_for(lambda: scrape(standby_port), 30, "the standby scheduler's metrics")
    assert not any(name.startswith("backup_") for name, _ in standby)
    assert any(name.startswith("process_") for name, _ in standby)
    worker = wait_for(lambda: scrape(worker_port), 60, "the worker's metrics")
    assert not any(name.startswith("backup_") for name, _ in worker)

    # the active one stops: the standby takes the lease and reports the same numbers
    first.kill()
    m2 = wait_for(
        lambda: (m := scrape(standby_port)) and runs(m, "failure") == 1 and m,
        30,
        "the standby taking over the metrics",
    )
    assert runs(m2, "success") == 1
    assert second.popen.poll() is None and w.popen.poll() is None
