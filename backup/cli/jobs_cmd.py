"""``backup status``, ``backup job`` and ``backup schedule``: what the workers are doing,
one job in detail (``--wait`` follows it to its end), and when each policy runs next.

Times are ISO 8601 UTC, as everywhere in the CLI, except the schedule table's next runs,
shown in each policy's own time zone. ``job --wait`` exits 1 when the job failed.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import click

from ..errors import Error, OptionError
from .context import Ctx, json_option
from .output import dump, err, handled, iso, new_table, out, printable, progress, size, table
from .queueing import follow, job_json, retrieval_progress, retrieval_text

if TYPE_CHECKING:
    from ..inventory.models import Job

__all__ = ["register"]


@click.command()
@click.option("--count", type=click.IntRange(1, 100), default=3, show_default=True)
@click.option(
    "--check",
    is_flag=True,
    help="First validate every policy in full, as its run would, and fail on the first mistake.",
)
@json_option("Print as JSON.")
@click.pass_obj
@handled
def schedule(obj: Ctx, count: int, check: bool, as_json: bool) -> None:
    """List each policy's next run times."""
    from ..cron import get_zone
    from ..jobs.schedule import next_runs

    if check:
        obj.policies.validate_all()
    now = datetime.now(UTC)
    costs = _cold_costs(obj)
    # the schedule fields of every policy, not whole policies: a thousand policies must not
    # cost a thousand validations (recipients, target URLs); a mistake in another field is
    # reported by the commands that use that policy (docs/usage.md)
    scheduled = [(p, next_runs(p, now, count)) for p in obj.policies.schedules()]
    if as_json:
        dump(
            [
                {
                    "policy": p.name,
                    "schedule": p.schedule,
                    "timezone": p.timezone,
                    "catch_up": p.catch_up,
                    "next_runs": [iso(t) for t in times],
                }
                | (
                    {
                        "storage_class": costs[p.name][0],
                        "monthly_storage_usd": round(costs[p.name][1], 4),
                    }
                    if p.name in costs
                    else {}
                )
                for p, times in scheduled
            ]
        )
        return
    t = new_table(
        "policy", "schedule", "timezone", "catch up", "next runs (local time of the policy)",
        "storage $/month",
    )  # fmt: skip
    for p, times in scheduled:
        zone = get_zone(p.timezone)
        t.add_row(
            p.name,
            p.schedule or "-",
            p.timezone,
            "yes" if p.catch_up else "no",
            ", ".join(x.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z") for x in times) or "-",
            f"{costs[p.name][1]:.2f} ({costs[p.name][0]})" if p.name in costs else "-",
        )
    table(t)


@click.command()
@click.option("--since", default="24h", show_default=True, help="Finished jobs this recent.")
@json_option("Print as JSON.")
@click.pass_obj
@handled
def status(obj: Ctx, since: str, as_json: bool) -> None:
    """Running, queued, failed and recent jobs, pending restore requests with their phase,
    the active scheduler, and the next scheduled runs."""
    from ..jobs import ACTIVE, RUNNING, TERMINAL, JobStore, holder_gone
    from ..jobs.schedule import LEASE, next_runs
    from ..jobs.states import BackupOutcome, RestoreOutcome
    from ..policy import parse_duration

    try:
        window = parse_duration(since)
    except ValueError as e:
        raise OptionError("--since", str(e)) from None
    store = JobStore(obj.inventory)
    now = datetime.now(UTC)
    stale_after = obj.settings.stale_after_seconds
    active = store.jobs(states=ACTIVE, limit=1000)
    ended = store.jobs(states=TERMINAL, since=now - window, limit=1000)
    holder = store.lease_holder(LEASE)
    try:
        scheduled = obj.policies.schedules()
    except Error:  # status still shows the jobs when the policy file is broken
        scheduled = []
    upcoming = sorted((t, p.name) for p in scheduled for t in next_runs(p, now, 1))
    data = {
        "scheduler": {"active": holder[0], "lease_expires": iso(holder[1])} if holder else None,
        "running": [job_json(j, stale_after) for j in active if j.state in RUNNING],
        "queued": [job_json(j) for j in active if j.kind == "backup" and j.state == "queued"],
        "restores": [
            dict(job_json(j), retrieval=retrieval_progress(store, j, now))
            for j in active
            if j.kind == "restore" and j.state not in RUNNING
        ],
        "failed": [job_json(j) for j in ended if j.state == "failed"],
        "recent": [job_json(j) for j in ended if j.state != "failed"],
        "next_runs": [{"policy": n, "at": iso(t)} for t, n in upcoming],
        "storage_costs": [
            {"policy": n, "storage_class": c, "monthly_usd": round(usd, 4)}
            for n, (c, usd) in sorted(_cold_costs(obj).items())
        ],
    }
    if as_json:
        dump(data)
        return
    out.print(
        f"scheduler: {holder[0]} (lease until {iso(holder[1])})"
        if holder
        else "scheduler: none active"
    )

    def jobs_table(title: str, jobs: list[Job], extra: str) -> None:
        if not jobs:
            out.print(f"{title}: none")
            return
        t = new_table(
            "job", "kind", "policy", "state", "created", extra, title=title, title_justify="left"
        )
        for j in jobs:
            state = j.state
            if extra == "progress":
                ex = size(j.bytes_done) + (f" / {size(j.bytes_total)}" if j.bytes_total else "")
                ex += f" on {j.worker}"
                gone = holder_gone(j, timedelta(seconds=stale_after))
                if gone:
                    state += " (process gone)"
                    ex += f": {gone}; the next run of the policy or the sweep fails it"
            elif extra == "error":
                ex = j.error or ""
            elif extra == "retrieval":
                rp = retrieval_progress(store, j, now)
                ex = retrieval_text(rp) if rp else "-"
            else:
                if j.kind == "backup":
                    ex = BackupOutcome.from_json(j.result).archive_id or ""
                else:
                    r = RestoreOutcome.from_json(j.result)
                    ex = r.archive_id or r.destination or ""
                ex = ex or j.error or ""
                if j.state == "queued" and j.sent_at is None:
                    ex = ex or "not sent to the broker yet"
            t.add_row(j.id, j.kind, j.policy or "-", state, iso(j.created) or "", ex)
        table(t)

    jobs_table("running", [j for j in active if j.state in RUNNING], "progress")
    jobs_table(
        "queued", [j for j in active if j.kind == "backup" and j.state == "queued"], "detail"
    )
    jobs_table(
        "restore requests",
        [j for j in active if j.kind == "restore" and j.state not in RUNNING],
        "retrieval",
    )
    jobs_table("failed", [j for j in ended if j.state == "failed"], "error")
    jobs_table(f"finished in the last {since}", [j for j in ended if j.state != "failed"], "detail")
    if upcoming:
        out.print("next runs: " + ", ".join(f"{n} at {iso(t)}" for t, n in upcoming))


@click.command("job")
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Follow the job until it ends.")
@json_option("Print as JSON.")
@click.pass_obj
@handled
def job_(obj: Ctx, job_id: str, wait: bool, as_json: bool) -> None:
    """Show one job (a backup run or a restore request)."""
    from ..jobs import JobStore

    store = JobStore(obj.inventory)
    j = store.get(job_id)
    if wait:
        report = None if as_json else (lambda line: err.print(printable(line), soft_wrap=True))
        j = follow(store, j.id, progress(as_json), report=report)
    d = job_json(j, obj.settings.stale_after_seconds)
    if j.kind == "restore":
        d["retrieval"] = retrieval_progress(store, j)
    if as_json:
        dump(d)
    else:
        for k, v in d.items():
            if k == "retrieval" and v:
                v = retrieval_text(v)
            if v not in (None, {}, []):
                shown = v if not isinstance(v, dict | list) else json.dumps(v)
                out.print(printable(f"{k:>14}: {shown}"))
    if wait and j.state == "failed":
        sys.exit(1)


def _cold_costs(obj: Ctx) -> dict[str, tuple[str, float]]:
    """Each cold policy's class and estimated monthly storage bill (backup/economics.py);
    the inventory is read only when there is a cold policy."""
    from ..coldplan import COLD_CLASSES
    from ..pricing import Prices, class_of

    # the cost fields of the cold policies only: no recipients checked, no target built
    cold = obj.policies.costed(lambda t: class_of(t) in COLD_CLASSES)
    if not cold:
        return {}
    from ..economics import cold_costs, stored_sizes

    sizes = stored_sizes(obj.inventory, [p.name for p in cold])
    return cold_costs(cold, sizes, Prices.from_settings(obj.settings))


def register(cli: click.Group) -> None:
    """Add ``status``, ``job`` and ``schedule`` to the ``backup`` group."""
    cli.add_command(status)
    cli.add_command(job_)
    cli.add_command(schedule)
