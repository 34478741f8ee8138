"""Forecasts of a policy's storage bill, and warnings for settings that fight a storage
class (``backup cost``, docs/cold-storage.md). The prices and the per-object arithmetic are
backup/pricing.py's; this module simulates runs, prunes and minimum durations over months.

Invariants: nothing here talks to a target or writes anything; ``backup cost`` costs nothing
to ask.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .coldplan import estimate_cost, expected_ready
from .inventory import Archive, Inventory
from .policy import Policy, PolicyCost, Retention
from .pricing import MONTH_DAYS, GiB, Prices, billable_bytes, class_of
from .retention import select_keep

__all__ = [
    "Forecast",
    "Scenario",
    "cold_costs",
    "forecast",
    "monthly_estimate",
    "policy_warnings",
    "run_interval",
    "simulate",
    "stored_sizes",
]


# -- forecast ------------------------------------------------------------------------------


@dataclass(slots=True)
class Scenario:
    """One configuration's steady-state bill."""

    storage_class: str
    full_every_days: float
    monthly_usd: float
    storage_usd: float
    overhead_usd: float
    requests_usd: float
    archives_billed: float
    fulls_billed: float
    gb_billed: float
    restore_hours: tuple[float, float]
    restore_usd: float

    def to_json(self) -> dict[str, Any]:
        return {
            "storage_class": self.storage_class,
            "full_every_days": self.full_every_days,
            "monthly_usd": round(self.monthly_usd, 4),
            "yearly_usd": round(self.monthly_usd * 12, 2),
            "breakdown": {
                "storage_usd": round(self.storage_usd, 4),
                "overhead_usd": round(self.overhead_usd, 4),
                "requests_usd": round(self.requests_usd, 4),
            },
            "archives_billed": round(self.archives_billed, 1),
            "fulls_billed": round(self.fulls_billed, 1),
            "gb_billed": round(self.gb_billed, 3),
            "restore_hours": list(self.restore_hours),
            "restore_usd": round(self.restore_usd, 4),
        }


@dataclass(slots=True)
class Forecast:
    """``backup cost``: the policy as configured, its inputs, and alternatives."""

    policy: str
    storage_class: str | None
    months: int
    run_every_days: float
    full_bytes: int
    incremental_bytes: int
    growth_per_month: float
    measured_from: int
    current: Scenario | None
    alternatives: list[Scenario] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        cur = self.current.to_json() if self.current else None
        return {
            "policy": self.policy,
            "storage_class": self.storage_class,
            "months": self.months,
            "monthly_usd": cur["monthly_usd"] if cur else 0.0,
            "yearly_usd": cur["yearly_usd"] if cur else 0.0,
            "breakdown": cur["breakdown"] if cur else {},
            "inputs": {
                "run_every_days": self.run_every_days,
                "full_bytes": self.full_bytes,
                "incremental_bytes": self.incremental_bytes,
                "growth_per_month": round(self.growth_per_month, 4),
                "archives_measured": self.measured_from,
            },
            "current": cur,
            "alternatives": [a.to_json() for a in self.alternatives],
        }


def _sizes(archives: Sequence[Archive]) -> tuple[int, int, float]:
    """(last full's stored size, median incremental's, monthly growth of fulls) measured."""
    fulls = sorted((a for a in archives if a.kind == "full"), key=lambda a: a.created)
    incs = [a.size_stored for a in archives if a.kind == "incremental"]
    full = fulls[-1].size_stored if fulls else 0
    inc = int(statistics.median(incs)) if incs else max(1, full // 100)
    growth = 0.0
    if len(fulls) >= 2 and fulls[0].size_stored > 0:
        months = (fulls[-1].created - fulls[0].created).total_seconds() / (86400 * MONTH_DAYS)
        if months > 0:
            growth = (fulls[-1].size_stored / fulls[0].size_stored) ** (1 / months) - 1
    return full, inc, growth


def simulate(
    storage_class: str,
    *,
    run_every: timedelta,
    full_every: timedelta,
    retention: Retention,
    full_bytes: int,
    incremental_bytes: int,
    growth_per_month: float,
    prices: Prices,
    months: int = 12,
    restore_tier: str = "Standard",
) -> Scenario:
    """The bill of ``months`` months after a warm-up long enough for retention and the
    class's minimum to reach steady state: runs every ``run_every``, a new full when the
    chain's full is ``full_every`` old, prune after each run keeping what the rules keep,
    every ancestor of a kept archive, and everything inside its minimum storage duration.
    Each archive is billed from its creation until max(its deletion, its minimum), with its
    object's overhead; its manifest is billed at STANDARD (kept hot); each run writes two
    objects (PUT requests)."""
    minimum = prices.minimum(storage_class)
    horizon = max(timedelta(days=400), minimum * 2, full_every * 3) + timedelta(
        days=MONTH_DAYS * months
    )
    start = datetime(2000, 1, 1, tzinfo=UTC)
    window_start = start + horizon - timedelta(days=MONTH_DAYS * months)
    steps = max(1, math.ceil(horizon / run_every))
    live: list[Archive] = []
    lifetimes: list[tuple[datetime, datetime, int, str]] = []  # created, billed until, size, kind
    chain_full: datetime | None = None
    parent: str | None = None
    per_month = growth_per_month
    for i in range(steps):
        now = start + run_every * i
        factor = (1 + per_month) ** ((now - window_start).total_seconds() / (86400 * MONTH_DAYS))
        if chain_full is None or now - chain_full >= full_every:
            kind, size, parent = "full", int(full_bytes * factor), None
            chain_full = now
        else:
            kind, size = "incremental", int(incremental_bytes * factor)
        a = Archive(id=f"{i:08d}", policy="p", kind=kind, parent_id=parent, created=now)
        a.size_stored = size
        live.append(a)
        parent = a.id
        keep = set(select_keep(live, retention))
        by_id = {x.id: x for x in live}
        for aid in list(keep):
            p = by_id[aid].parent_id
            while p is not None and p in by_id:
                keep.add(p)
                p = by_id[p].parent_id
        survivors = []
        for x in live:
            if x.id in keep or now < x.created + minimum:
                survivors.append(x)
            else:
                lifetimes.append((x.created, max(now, x.created + minimum), x.size_stored, x.kind))
        live = survivors
    end = start + run_every * steps
    for x in live:
        lifetimes.append((x.created, max(end, x.created + minimum), x.size_stored, x.kind))

    window_end = window_start + timedelta(days=MONTH_DAYS * months)
    storage = overhead = 0.0
    billed_archives = billed_fulls = gb_days = 0.0
    for created, until, size, kind in lifetimes:
        lo, hi = max(created, window_start), min(until, window_end)
        if hi <= lo:
            continue
        days = (hi - lo).total_seconds() / 86400
        months_billed = days / MONTH_DAYS
        at_class, at_standard = billable_bytes(storage_class, size)
        storage += size / GiB * prices.per_gb_month(storage_class) * months_billed
        overhead += (at_class - size) / GiB * prices.per_gb_month(storage_class) * months_billed
        overhead += at_standard / GiB * prices.per_gb_month("STANDARD") * months_billed
        billed_archives += days
        gb_days += at_class / GiB * days
        if kind == "full":
            billed_fulls += days
    window_days = MONTH_DAYS * months
    runs_per_month = timedelta(days=MONTH_DAYS) / run_every
    requests = (
        runs_per_month
        * (prices.put.get(storage_class, 0.0) + prices.put.get("STANDARD", 0.0))
        / 1000
    )
    monthly_storage = storage / months
    monthly_overhead = overhead / months
    # a restore of the newest state: the last full and the incrementals since it
    chain_len = max(1.0, (full_every / run_every) / 2)
    restore_bytes = int(full_bytes + incremental_bytes * (chain_len - 1))
    early, late = expected_ready(storage_class, restore_tier)
    return Scenario(
        storage_class=storage_class,
        full_every_days=full_every.total_seconds() / 86400,
        monthly_usd=monthly_storage + monthly_overhead + requests,
        storage_usd=monthly_storage,
        overhead_usd=monthly_overhead,
        requests_usd=requests,
        archives_billed=billed_archives / window_days,
        fulls_billed=billed_fulls / window_days,
        gb_billed=gb_days / window_days,
        restore_hours=(early.total_seconds() / 3600, late.total_seconds() / 3600),
        restore_usd=estimate_cost(
            storage_class,
            restore_tier,
            restore_bytes,
            requests=int(chain_len) * 2,
            prices=prices.retrieval,
            transfer_out_per_gb=prices.transfer_out_per_gb,
        ),
    )


def run_interval(policy: Policy | PolicyCost, now: datetime | None = None) -> timedelta:
    """Returns: the time between the policy's scheduled runs (a day without a schedule)."""
    from .cron import parse_cron

    if not policy.schedule:
        return timedelta(days=1)
    t = parse_cron(policy.schedule).next_runs(now or datetime.now(UTC), policy.timezone, 2)
    return t[1] - t[0] if len(t) == 2 else timedelta(days=1)


def forecast(
    policy: Policy,
    archives: Sequence[Archive],
    prices: Prices,
    *,
    months: int = 12,
    alternatives: bool = True,
) -> Forecast:
    """The policy's bill as configured, from the sizes and growth its archives measure, and
    (``alternatives``) the same data at other ``full_every`` and classes."""
    cls = class_of(policy.target)
    full, inc, growth = _sizes([a for a in archives if a.state == "complete"])
    every = run_interval(policy)
    f = Forecast(
        policy.name,
        cls,
        months,
        every.total_seconds() / 86400,
        full,
        inc,
        growth,
        len(archives),
        None,
    )
    if cls is None:
        return f
    common: dict[str, Any] = dict(
        run_every=every,
        retention=policy.retention,
        full_bytes=full,
        incremental_bytes=inc,
        growth_per_month=growth,
        prices=prices,
        months=months,
        restore_tier=policy.restore_tier,
    )
    f.current = simulate(cls, full_every=policy.full_every, **common)
    if alternatives:
        classes = [cls] + [c for c in ("GLACIER", "DEEP_ARCHIVE") if c != cls and cls != "VAULT"]
        for c in classes:
            for days in (7, 30, 90):
                fe = timedelta(days=days)
                if c == cls and fe == policy.full_every:
                    continue
                f.alternatives.append(simulate(c, full_every=fe, **common))
    return f


# -- warnings when a policy is loaded --------------------------------------------------------


def retention_days(retention: Retention, run_every: timedelta) -> float:
    """Returns: about how long the rules keep an archive (days), the longest rule winning."""
    spans = [
        retention.keep_last * run_every.total_seconds() / 86400,
        retention.keep_daily * 1.0,
        retention.keep_weekly * 7.0,
        retention.keep_monthly * 30.0,
        retention.keep_yearly * 365.0,
    ]
    return max(spans)


def policy_warnings(policy: Policy | PolicyCost, prices: Prices) -> list[str]:
    """Returns: one line for each setting that fights the policy's storage class: a
    retention shorter than the class's minimum storage duration (every archive is billed
    for the minimum anyway), and a ``full_every`` so short that many more fulls are billed
    than the retention keeps."""
    cls = class_of(policy.target)
    if cls is None or policy.retention.is_empty():
        return []
    minimum = prices.minimum(cls).days
    if minimum <= 0:
        return []
    out: list[str] = []
    every = run_interval(policy)
    kept = retention_days(policy.retention, every)
    if kept < minimum:
        out.append(
            f"policy {policy.name!r}: retention keeps archives about {kept:.0f} days, but "
            f"{cls} bills each for at least {minimum} days: every archive costs "
            f"{minimum / max(kept, 1):.1f}x what the retention keeps it for "
            "(`backup cost` shows the bill; prune keeps them until then)"
        )
    full_days = policy.full_every.total_seconds() / 86400
    fulls_billed = (max(kept, minimum) + full_days) / full_days
    fulls_needed = (kept + full_days) / full_days
    if full_days < minimum and fulls_billed >= 2 * fulls_needed and fulls_billed > 4:
        out.append(
            f"policy {policy.name!r}: full_every {full_days:.0f}d on {cls} keeps about "
            f"{fulls_billed:.0f} fulls billed at any time ({minimum} days each), "
            f"{fulls_needed:.0f} needed by the retention: a longer full_every costs less"
        )
    return out


# -- the quick estimate that schedule and status carry -----------------------------------------


def monthly_estimate(
    policy: Policy | PolicyCost, full_bytes: int, incremental_bytes: int, prices: Prices
) -> float | None:
    """The steady-state monthly storage bill in closed form (what ``backup schedule`` and
    ``backup status --json`` show; ``backup cost`` simulates it run by run): every archive
    billed for max(what the retention keeps it, the class's minimum), a full every
    ``full_every``, overhead and requests included. None for a target nobody bills."""
    cls = class_of(policy.target)
    if cls is None:
        return None
    interval = run_interval(policy)
    every = interval.total_seconds() / 86400
    full_days = policy.full_every.total_seconds() / 86400
    kept = retention_days(policy.retention, interval)
    if policy.retention.is_empty():
        kept = 365.0  # nothing is pruned: a year's worth, and growing
    life = max(kept, prices.minimum(cls).days, every)
    fulls = (life + full_days) / full_days
    archives = life / every + 1
    incs = max(0.0, archives - fulls)
    runs_per_month = MONTH_DAYS / every
    requests = runs_per_month * (prices.put.get(cls, 0.0) + prices.put.get("STANDARD", 0.0)) / 1000
    from .pricing import monthly_storage_usd

    # each size priced once, times its count: a list of every archive (~180 a policy on
    # DEEP_ARCHIVE) made `status` and `schedule` with 1,000 cold policies 1.7x as slow as
    # with one
    storage = round(fulls) * monthly_storage_usd(cls, [full_bytes], prices)
    storage += round(incs) * monthly_storage_usd(cls, [incremental_bytes], prices)
    return storage + requests


def stored_sizes(inventory: Inventory, policies: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Returns: per policy, (its newest complete full's stored size, its incrementals' median
    stored size), in one query over four columns (no ORM object per archive)."""
    from sqlalchemy import select

    rows: dict[str, list[tuple[str, datetime, int]]] = {}
    with inventory.session() as s:
        q = (
            select(Archive.policy, Archive.kind, Archive.created, Archive.size_stored)
            .where(Archive.state == "complete", Archive.policy.in_(list(policies)))
            .order_by(Archive.created)
        )
        for policy, kind, created, size in s.execute(q):
            rows.setdefault(policy, []).append((kind, created, int(size or 0)))
    out: dict[str, tuple[int, int]] = {}
    for name, rs in rows.items():
        fulls = [size for kind, _c, size in rs if kind == "full"]
        incs = [size for kind, _c, size in rs if kind == "incremental"]
        full = fulls[-1] if fulls else 0
        out[name] = (full, int(statistics.median(incs)) if incs else max(1, full // 100))
    return out


def cold_costs(
    policies: Sequence[Policy | PolicyCost],
    sizes: Mapping[str, tuple[int, int]],
    prices: Prices,
) -> dict[str, tuple[str, float]]:
    """Returns: per cold policy (GLACIER, DEEP_ARCHIVE, a vault), its class and the estimated
    monthly storage bill (:func:`monthly_estimate`) from its measured ``sizes``."""
    from .coldplan import COLD_CLASSES

    out: dict[str, tuple[str, float]] = {}
    for p in policies:
        cls = class_of(p.target)
        if cls not in COLD_CLASSES:
            continue
        full, inc = sizes.get(p.name, (0, 0))
        usd = monthly_estimate(p, full, inc, prices)
        if cls is not None and usd is not None:
            out[p.name] = (cls, usd)
    return out
