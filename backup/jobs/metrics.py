"""Prometheus metrics, computed from the inventory at each scrape.

The inventory is the source of truth, so every host that reads it reports the same numbers
for the inventory-wide series; in a cluster they come from the active scheduler only (the
holder of the ``scheduler`` lease), so nothing is counted twice: a scheduler that is not
active, and a worker, serve only this process's own series (``process_*``, ``python_*``).

Invariants:
- A scrape only reads: it never writes the inventory and never talks to a target.
- No secret in any label or value: policy names, bucket names, storage classes, tiers,
  job states and worker host names only (never a URL).
- Counters are counts of recorded jobs, so they are the same on every host and survive a
  restart; a reset (a job history pruned or rebuilt) reads as a counter reset.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import func, select

from ..coldplan import estimate_cost, expected_ready
from ..inventory import Inventory
from ..inventory.models import Archive, Event, Job, RetrievalJob, Snapshot
from ..policy import read_policies
from ..settings import Settings
from .process import parse_worker
from .schedule import LEASE, Scheduled, next_runs
from .states import BackupOutcome, JobState
from .store import JobStore

__all__ = [
    "DURATION_BUCKETS",
    "InventoryCollector",
    "holds_lease",
    "policies_of",
    "registry_for",
    "render",
    "serve",
]

#: run-duration histogram buckets (seconds): a minute to a day, and below a minute for the
#: small policies (and tests)
DURATION_BUCKETS = (
    1.0,
    5.0,
    15.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    43200.0,
    86400.0,
)

_PENDING = ("pending",)

log = logging.getLogger("backup.metrics")


def _ts(t: datetime | None) -> float | None:
    if t is None:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def run_result(job: Job) -> str:
    """Returns: how a finished backup job counts: ``success``, ``partial`` (exit 3: files
    that could not be read), ``failure`` or ``skipped``."""
    if job.state == JobState.SKIPPED:
        return "skipped"
    if job.state == JobState.FAILED:
        return "failure"
    return "partial" if BackupOutcome.from_json(job.result).unreadable else "success"


class InventoryCollector(Collector):
    """The inventory-wide series (docs/monitoring.md lists them).

    Args:
        inventory: the inventory to read.
        policies: the policies as the policy file says now (for expected intervals).
        active: asked at each scrape whether this process should report (the active
            scheduler); None: always.
        now: the clock (tests).
    """

    def __init__(
        self,
        inventory: Inventory,
        policies: Callable[[], Mapping[str, Scheduled]],
        *,
        active: Callable[[], bool] | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.inventory = inventory
        self.policies = policies
        self.active = active
        self.now = now
        self._lock = threading.Lock()  # one scrape at a time reads the inventory

    def describe(self) -> Iterable[Metric]:
        return []  # computed at scrape time; no registration-time read of the inventory

    def collect(self) -> Iterator[Metric]:
        if self.active is not None and not self.active():
            return
        with self._lock:
            yield from self._collect()

    def _collect(self) -> Iterator[Metric]:
        now = self.now()
        policies = dict(self.policies())
        with self.inventory.session() as s:
            backups = (
                s.execute(
                    select(Job).where(
                        Job.kind == "backup",
                        Job.state.in_([JobState.DONE, JobState.FAILED, JobState.SKIPPED]),
                    )
                )
                .scalars()
                .all()
            )
            restores = s.execute(
                select(Job.state, func.count())
                .where(Job.kind == "restore", Job.state.in_([JobState.DONE, JobState.FAILED]))
                .group_by(Job.state)
            ).all()
            job_states = s.execute(select(Job.state, func.count()).group_by(Job.state)).all()
            archive_success = s.execute(
                select(Archive.policy, func.max(Archive.finished))
                .where(Archive.state == "complete")
                .group_by(Archive.policy)
            ).all()
            complete = s.execute(
                select(
                    Archive.policy,
                    Archive.kind,
                    Archive.created,
                    Archive.size_stored,
                    Archive.size_in,
                )
                .where(Archive.state == "complete")
                .order_by(Archive.created)
            ).all()
            pending = (
                s.execute(select(RetrievalJob).where(RetrievalJob.state.in_(_PENDING)))
                .scalars()
                .all()
            )
            workers = s.execute(
                select(Job.worker, func.max(Job.heartbeat))
                .where(Job.worker.is_not(None), Job.heartbeat.is_not(None))
                .group_by(Job.worker)
            ).all()
            drills = s.execute(
                select(Event.policy, func.max(Event.time))
                .where(Event.kind == "drill", Event.level == "info")
                .group_by(Event.policy)
            ).all()
            snapshots = s.execute(
                select(Snapshot.bucket, func.count()).group_by(Snapshot.bucket)
            ).all()

        last_success = GaugeMetricFamily(
            "backup_last_success_timestamp_seconds",
            "When the policy's last successful run finished (Unix time).",
            labels=["policy"],
        )
        last_run = GaugeMetricFamily(
            "backup_last_run_timestamp_seconds",
            "When the policy's last run with this result finished (Unix time).",
            labels=["policy", "result"],
        )
        runs = CounterMetricFamily(
            "backup_runs", "Backup runs recorded, by result.", labels=["policy", "result"]
        )
        success_at: dict[str, float] = {}
        last_by: dict[tuple[str, str], float] = {}
        counts: dict[tuple[str, str], int] = defaultdict(int)
        durations: dict[str, list[float]] = defaultdict(list)
        for j in backups:
            policy = j.policy or ""
            result = run_result(j)
            counts[(policy, result)] += 1
            t = _ts(j.finished or j.updated)
            if t is not None:
                key = (policy, result)
                last_by[key] = max(last_by.get(key, t), t)
                if result in ("success", "partial"):
                    success_at[policy] = max(success_at.get(policy, t), t)
            if j.started and j.finished and result != "skipped":
                durations[policy].append((j.finished - j.started).total_seconds())
        for policy, finished in archive_success:  # archives recorded without a job (rebuilt)
            t = _ts(finished)
            if t is not None:
                success_at[policy] = max(success_at.get(policy, t), t)
        for policy, t in sorted(success_at.items()):
            last_success.add_metric([policy], t)
        for (policy, result), t in sorted(last_by.items()):
            last_run.add_metric([policy, result], t)
        for (policy, result), n in sorted(counts.items()):
            runs.add_metric([policy, result], n)
        yield last_success
        yield last_run
        yield runs

        interval = GaugeMetricFamily(
            "backup_expected_interval_seconds",
            "Seconds between the policy's scheduled runs (from its cron schedule).",
            labels=["policy"],
        )
        for name, p in sorted(policies.items()):
            times = next_runs(p, now, 2)
            if len(times) == 2:
                interval.add_metric([name], (times[1] - times[0]).total_seconds())
        yield interval

        hist = HistogramMetricFamily(
            "backup_run_duration_seconds",
            "How long the policy's backup runs took.",
            labels=["policy"],
        )
        for policy, ds in sorted(durations.items()):
            buckets = [(str(b), sum(1 for d in ds if d <= b)) for b in DURATION_BUCKETS]
            buckets.append(("+Inf", len(ds)))
            hist.add_metric([policy], buckets, sum(ds))
        yield hist

        archive_bytes = GaugeMetricFamily(
            "backup_archive_bytes",
            "Stored size of the policy's last complete archive of this kind.",
            labels=["policy", "kind"],
        )
        source_bytes = GaugeMetricFamily(
            "backup_source_bytes",
            "File content bytes of the policy's last full archive (the source's size then).",
            labels=["policy"],
        )
        last_kind: dict[tuple[str, str], int] = {}
        last_full: dict[str, int] = {}
        for policy, kind, _created, stored, size_in in complete:  # oldest first: last wins
            last_kind[(policy, kind)] = int(stored or 0)
            if kind == "full":
                last_full[policy] = int(size_in or 0)
        for (policy, kind), n in sorted(last_kind.items()):
            archive_bytes.add_metric([policy, kind], n)
        for policy, n in sorted(last_full.items()):
            source_bytes.add_metric([policy], n)
        yield archive_bytes
        yield source_bytes

        rest = CounterMetricFamily(
            "backup_restores", "Restore requests finished, by result.", labels=["result"]
        )
        by_result = {("success" if st == JobState.DONE else "failure"): n for st, n in restores}
        for result in ("success", "failure"):
            rest.add_metric([result], by_result.get(result, 0))
        yield rest

        pend = GaugeMetricFamily(
            "backup_retrievals_pending",
            "Retrievals from cold storage requested and not yet readable.",
            labels=["storage_class", "tier"],
        )
        oldest = GaugeMetricFamily(
            "backup_retrieval_oldest_pending_seconds",
            "Age of the oldest pending retrieval (0 when none is pending).",
        )
        overdue = GaugeMetricFamily(
            "backup_retrieval_overdue_seconds",
            "How far the oldest pending retrieval is past the latest time its class and tier "
            "should take (0 when none is overdue).",
        )
        cost = GaugeMetricFamily(
            "backup_retrieval_pending_cost_usd",
            "Estimated cost of the pending retrievals (list prices, see docs/cold-storage.md).",
        )
        groups: dict[tuple[str, str], int] = defaultdict(int)
        age = 0.0
        late = 0.0
        usd = 0.0
        for r in pending:
            cls, tier = r.storage_class or "UNKNOWN", r.tier or "Standard"
            groups[(cls, tier)] += 1
            waited = now - (r.requested if r.requested.tzinfo else r.requested.replace(tzinfo=UTC))
            age = max(age, waited.total_seconds())
            latest = expected_ready(cls, tier)[1]
            if latest > timedelta(0):
                late = max(late, (waited - latest).total_seconds())
            usd += estimate_cost(cls, tier, int(r.size or 0))
        for (cls, tier), n in sorted(groups.items()):
            pend.add_metric([cls, tier], n)
        oldest.add_metric([], age)
        overdue.add_metric([], max(0.0, late))
        cost.add_metric([], round(usd, 6))
        yield pend
        yield oldest
        yield overdue
        yield cost

        jobs = GaugeMetricFamily(
            "backup_jobs", "Jobs in the inventory, by state.", labels=["state"]
        )
        have = dict(job_states)
        for st in JobState:
            jobs.add_metric([st.value], have.get(st.value, 0))
        yield jobs

        seen = GaugeMetricFamily(
            "backup_worker_last_seen_timestamp_seconds",
            "The last heartbeat a worker host recorded on a job (Unix time).",
            labels=["worker"],
        )
        by_host: dict[str, float] = {}
        for worker, beat in workers:
            w = parse_worker(worker)
            if w is not None and w.role == "cli":
                continue  # a command that ran a job in-process is not a worker
            host = w.host if w is not None else str(worker)
            name = f"{w.role}@{host}" if w is not None and w.role else host
            beat_at = _ts(beat)
            if beat_at is not None:
                by_host[name] = max(by_host.get(name, beat_at), beat_at)
        for name, last in sorted(by_host.items()):
            seen.add_metric([name], last)
        yield seen

        drill = GaugeMetricFamily(
            "backup_drill_last_success_timestamp_seconds",
            "When the policy's last restore drill passed (Unix time).",
            labels=["policy"],
        )
        for drill_policy, passed in drills:
            passed_at = _ts(passed)
            if passed_at is not None:
                drill.add_metric([drill_policy or ""], passed_at)
        yield drill

        snaps = GaugeMetricFamily(
            "backup_snapshots", "Bucket snapshots recorded, by bucket.", labels=["bucket"]
        )
        for bucket, n in sorted(snapshots):
            snaps.add_metric([bucket], n)
        yield snaps


def registry_for(
    inventory: Inventory,
    policies: Callable[[], Mapping[str, Scheduled]],
    *,
    active: Callable[[], bool] | None = None,
    process: bool = True,
) -> CollectorRegistry:
    """Returns: a registry with the inventory's series (and this process's, with ``process``)."""
    from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR

    reg = CollectorRegistry(auto_describe=False)
    reg.register(InventoryCollector(inventory, policies, active=active))
    if process:
        for c in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            reg.register(c)
    return reg


def policies_of(settings: Settings) -> Callable[[], Mapping[str, Scheduled]]:
    """Returns: reads the policy file as it is now, at each scrape; a missing or broken file
    gives no policies (the expected-interval series go missing, which an alert on
    ``absent(backup_expected_interval_seconds)`` catches), never a failed scrape."""
    path = Path(settings.config)

    def read() -> Mapping[str, Scheduled]:
        try:
            return {p.name: p for p in read_policies(path).schedules()}
        except Exception as e:
            log.warning("metrics: the policy file cannot be read: %s", e)
            return {}

    return read


def holds_lease(inventory: Inventory, name: str) -> Callable[[], bool]:
    """Returns: asks, at each scrape, whether ``name`` (a scheduler) is the active one."""
    store = JobStore(inventory)

    def active() -> bool:
        held = store.lease_holder(LEASE)
        return held is not None and held[0] == name

    return active


def render(registry: CollectorRegistry) -> bytes:
    """Returns: the registry in Prometheus' text format."""
    from prometheus_client import generate_latest

    return generate_latest(registry)


def serve(port: int, registry: CollectorRegistry, addr: str = "0.0.0.0") -> Any:
    """Serve ``/metrics`` on ``port`` in a daemon thread; returns the server."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server
