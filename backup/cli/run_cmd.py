"""``backup run``: one backup of a policy, queued to the workers when a broker is
configured, else carried out in this process.

Exit codes: 0 done; 1 failed (the job's error); 3 the archive was written but some files
could not be read (listed on stderr, recorded with the archive).
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from ..errors import Error
from . import queueing
from .context import Ctx, json_option
from .output import archive_json, dump, handled, printable, progress, size

if TYPE_CHECKING:
    from ..inventory.models import Job

__all__ = ["register"]


@click.command()
@click.argument("policy")
@click.option("--full", is_flag=True, help="Start a new chain with a full archive.")
@click.option("--wait", is_flag=True, help="With a broker: follow the queued run until it ends.")
@json_option("Print the result as JSON.")
@click.pass_obj
@handled
def run(obj: Ctx, policy: str, full: bool, wait: bool, as_json: bool) -> None:
    """Back up POLICY now: queued to the workers when BACKUP_BROKER_URL is set, else run in
    this process."""
    pol = obj.policy(policy)
    if not obj.settings.broker_url and pol.source is None and "archive" in pol.actions:
        # the walk starts now, outside the GIL, and overlaps importing and opening the
        # inventory (SQLAlchemy), so nothing that imports it may come before this
        from ..archive.scan import prefetch

        prefetch(pol.name, pol.source_names(), pol.exclude)
    from ..jobs import JobStore

    store = JobStore(obj.inventory)
    if obj.settings.broker_url:
        queued = queueing.queue_backup(obj, pol.name, full)
        job = queued.job
        if not wait:
            if as_json:
                dump(
                    {"job": job.id, "state": job.state, "policy": pol.name}
                    | {"sent": queued.unsent is None, "already_queued": queued.again}
                    | ({"not_sent": queued.unsent} if queued.unsent else {})
                )
            else:
                click.echo(queued.message())
            return
        if queued.unsent:
            click.echo(queued.message(), err=True)
        job = queueing.follow(store, job.id, progress(as_json))
    else:
        created = store.create("backup", policy=pol.name, state="queued", params={"full": full})
        assert created is not None
        import signal

        def stop(signum: int, _frame: object) -> None:
            # `timeout` and service managers stop with SIGTERM: end as Ctrl-C does, so the
            # run removes what it wrote, records why it failed and releases its lock
            raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

        signal.signal(signal.SIGTERM, stop)
        queueing.inline_runner(obj).run_backup(created.id, progress=progress(as_json))
        job = store.get(created.id)
    _finish(obj, job, as_json)


def _finish(obj: Ctx, job: Job, as_json: bool) -> None:
    """Print how a backup job ended and exit with the run's code."""
    if job.state != "done":
        if as_json:
            dump(queueing.job_json(job))
        raise Error(f"job {job.id} {job.state}: {job.error}")
    if job.archive_id is None:  # a bucket policy's snapshot or drill only
        result = json.loads(job.result or "{}")
        if as_json:
            dump(dict(result, job=job.id))
        else:
            if "snapshot" in result:
                t = result["snapshot"]["taken"]
                click.echo(
                    f"snapshot {t['version']} ({t['name']}); "
                    f"{len(result['snapshot']['deleted'])} deleted by retention"
                )
            if "drill" in result:
                d = result["drill"]
                click.echo(f"drill in {d['bucket']} at {d['snapshot']}: passed")
        sys.exit(0)
    a = obj.inventory.get(job.archive_id)
    if as_json:
        d = archive_json(a)
        d["job"] = job.id
        d["deleted_paths"] = a.deleted_paths
        d["unreadable"] = json.loads(a.unreadable)
        d["changed_while_reading"] = json.loads(a.changed)
        dump(d)
    else:
        click.echo(
            f"{a.kind} archive {a.id}: {a.entries} entries, {size(a.size_in)} read, "
            f"{size(a.size_stored)} stored, {a.deleted_paths} deleted paths"
        )
        for p in json.loads(a.changed):
            click.echo(printable(f"warning: changed while being read: {p}"), err=True)
        for u in json.loads(a.unreadable):
            click.echo(printable(f"warning: could not read {u['path']}: {u['error']}"), err=True)
    sys.exit(3 if json.loads(a.unreadable) else 0)


def register(cli: click.Group) -> None:
    """Add ``run`` to the ``backup`` group."""
    cli.add_command(run)
