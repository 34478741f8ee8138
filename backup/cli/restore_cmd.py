"""``backup restore``: a policy's tree (or one archive file) back into a directory or a
bucket, carried out here or requested of the workers.

The command is a dispatcher over its modes, decided in this order (the first that applies):

- into a bucket, here: ``--to s3://...`` with no broker and no ``--notify``
  (:func:`_into_bucket`);
- plan: ``--dry-run``, what the restore would retrieve and cost (:func:`_plan`);
- a job: a broker is configured or ``--notify`` is given (not with ``--file``): recorded as
  a restore request, then either queued to the workers (:func:`_queued`) or, without a
  broker, carried out here and followed by its notification (:func:`_job_here`);
- one archive file: ``--file`` (:func:`_from_file`);
- local: the policy's archive chain from the inventory into a directory (:func:`_local`).

Invariants: a bad ``--at`` is reported before anything is opened or requested; a queued
request never carries an identity (the restore workers decrypt with their own); the options
and what each mode prints are those of the single command this replaced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import Error
from ..policy import Policy
from . import queueing
from .context import Ctx, identity_option, json_option
from .output import dump, err, handled, new_table, parse_time, printable, progress, size, table

if TYPE_CHECKING:
    from ..inventory import Archive
    from ..inventory.models import Job
    from ..restore import RestoreResult

__all__ = ["register"]


@dataclass(frozen=True, slots=True)
class RestoreOptions:
    """The options of one ``backup restore`` (their help is on the command)."""

    policy: str | None
    to: str
    in_place: bool
    at: str | None
    archive_id: str | None
    file: Path | None
    include: tuple[str, ...]
    identity: Path | None
    force: bool
    allow_external_symlinks: bool
    notify: tuple[str, ...]
    tier: str | None
    wait: bool
    dry_run: bool
    as_json: bool

    @property
    def into_bucket(self) -> bool:
        return self.to.startswith("s3://")

    def destination(self) -> Any:
        """Returns: the bucket URL, or the directory as an absolute path."""
        return self.to if self.into_bucket else Path(self.to).absolute()


@click.command()
@click.argument("policy", required=False)
@click.option(
    "--to",
    "to",
    required=True,
    type=click.Path(),
    help="Destination directory, or s3://bucket/prefix for a bucket source.",
)
@click.option(
    "--in-place",
    is_flag=True,
    help="Bucket source: restore into the source itself (new versions and delete markers only).",
)
@click.option("--at", "at", help="Newest archive at or before this ISO 8601 time.")
@click.option("--archive", "archive_id", help="Restore this archive (id or unique prefix).")
@click.option(
    "--file",
    "file",
    type=click.Path(path_type=Path),
    help="Restore a .tar.zst.age file not in the inventory.",
)
@click.option(
    "--include", multiple=True, help="Restore only paths matching this glob (repeatable)."
)
@identity_option()
@click.option("--force", is_flag=True, help="Restore into a non-empty destination.")
@click.option(
    "--allow-external-symlinks",
    is_flag=True,
    help="Restore symlinks pointing outside the destination.",
)
@click.option(
    "--notify",
    "notify",
    multiple=True,
    metavar="URL|NAME",
    help="Told when the restore ends (repeatable): an Apprise URL without credentials, or "
    "the NAME of a target defined as BACKUP_NOTIFY_<NAME>=URL.",
)
@click.option(
    "--tier",
    type=click.Choice(["Expedited", "Standard", "Bulk"]),
    help="Retrieval tier for archives in cold storage (default: the policy's).",
)
@click.option(
    "--wait", is_flag=True, help="With a broker: follow the queued request until it ends."
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Show what the restore would retrieve (objects, bytes, class, tier, time, cost).",
)
@json_option("Print the result as JSON.")
@click.pass_obj
@handled
def restore(obj: Ctx, /, **options: Any) -> None:
    """Restore POLICY's tree as it was at --at (default: the newest archive) into --to.

    With BACKUP_BROKER_URL set, the restore is a request the workers carry out (cold
    archives are retrieved first, which can take hours): the command prints its id and
    returns; --notify URLs are told when it ends. --to is then a path on the restore worker.
    """
    o = RestoreOptions(**options)
    parse_time(o.at)  # a bad --at is reported before anything is opened or requested
    as_job = bool(obj.settings.broker_url or o.notify)
    if o.into_bucket and not o.dry_run and not as_job:
        return _into_bucket(obj, o)
    if o.in_place and not o.into_bucket:
        raise Error("--in-place restores into a bucket source (--to s3://...) only")
    if o.dry_run:
        return _plan(obj, o)
    if o.file is None and as_job:
        req = _job_params(obj, o)
        job = _queued(obj, o, req) if obj.settings.broker_url else _job_here(obj, o, req)
        if job is not None:
            _print_job_result(job, o.as_json)
        return None
    if o.file is not None:
        return _from_file(obj, o)
    return _local(obj, o)


# here, into a directory -----------------------------------------------------------------------


def _local(obj: Ctx, o: RestoreOptions) -> None:
    """The policy's archive at ``--at`` (with its chain) from the inventory into a directory."""
    from .. import restore as r

    identities = r.identities_from(o.identity or obj.settings.identity)
    if o.policy is None:
        raise Error("name the POLICY to restore (or --file for an archive file)")
    res = r.restore(
        o.policy,
        obj.inventory,
        o.destination(),
        identities,
        at=parse_time(o.at),
        archive_id=o.archive_id,
        **_extract_options(o),
    )
    _print_result(res, o.as_json)


def _from_file(obj: Ctx, o: RestoreOptions) -> None:
    """One ``.tar.zst.age`` file, not in the inventory, into a directory."""
    from .. import restore as r

    assert o.file is not None
    identities = r.identities_from(o.identity or obj.settings.identity)
    if o.policy or o.at is not None or o.archive_id:
        raise Error("--file restores one file; it takes no POLICY, --at or --archive")
    res = r.restore_file(o.file, o.destination(), identities, **_extract_options(o))
    _print_result(res, o.as_json)


def _extract_options(o: RestoreOptions) -> dict[str, Any]:
    """Returns: the keyword arguments of a restore into a directory, from the options."""
    return {
        "include": o.include,
        "force": o.force,
        "allow_external_symlinks": o.allow_external_symlinks,
        "progress": progress(o.as_json),
    }


def _print_result(res: RestoreResult, as_json: bool) -> None:
    if as_json:
        dump(
            {
                "destination": str(res.destination),
                "archives": res.archives,
                "files": res.files,
                "bytes": res.bytes,
                "seconds": round(res.seconds, 3),
            }
        )
    else:
        click.echo(
            f"restored {res.files} files ({size(res.bytes)}) from {len(res.archives)} archive(s) into {res.destination} in {res.seconds:.1f} s"
        )


# here, into a bucket ----------------------------------------------------------------------------


def _source_bucket_policy(obj: Ctx, policy: str) -> Policy:
    """Returns: the policy, which must back up a bucket for a restore into one."""
    pol = obj.policy(policy)
    if pol.source is None:
        raise Error(f"policy {policy!r} backs up local paths; restore it --to a directory")
    return pol


def _into_bucket(obj: Ctx, o: RestoreOptions) -> None:
    """``backup restore POLICY --to s3://bucket/prefix [--in-place]``: a bucket source's
    archived state into a bucket (see :func:`backup.bucket_restore.restore_to_bucket`)."""
    from .. import restore as r
    from ..bucket_restore import restore_to_bucket

    if o.policy is None:
        raise Error("name the POLICY whose bucket source to restore")
    pol = _source_bucket_policy(obj, o.policy)
    res = restore_to_bucket(
        pol,
        obj.inventory,
        o.to,
        r.identities_from(o.identity or obj.settings.identity),
        at=parse_time(o.at),
        archive_id=o.archive_id,
        include=o.include,
        in_place=o.in_place,
        progress=progress(o.as_json),
    )
    if o.as_json:
        dump(
            {
                "destination": res.destination,
                "archives": res.archives,
                "uploaded": res.uploaded,
                "unchanged": res.unchanged,
                "deleted": res.deleted,
                "bytes": res.bytes,
            }
        )
    else:
        click.echo(
            f"restored into {res.destination}: {res.uploaded} objects written, "
            f"{res.unchanged} unchanged, {res.deleted} delete markers, "
            f"from {len(res.archives)} archive(s)"
        )


# plan -------------------------------------------------------------------------------------------


def _plan(obj: Ctx, o: RestoreOptions) -> None:
    """Print what a restore would retrieve, before anything is requested."""
    from datetime import timedelta

    from ..coldplan import archives_for_restore, plan_restore
    from ..restore import resolve_archive

    if o.policy is None or o.file is not None:
        raise Error("--dry-run plans the restore of a POLICY (not of --file)")
    policy = o.policy
    head = resolve_archive(obj.inventory, policy, at=parse_time(o.at), archive_id=o.archive_id)
    archives = archives_for_restore(obj.inventory, archive_ids=[head.id])
    pol = obj.policy_if_any(policy)
    plan = plan_restore(
        archives,
        tier=o.tier or (pol.restore_tier if pol else "Standard"),
        prices=obj.settings.retrieval_prices or None,
        transfer_out_per_gb=obj.settings.transfer_out_per_gb,
    )
    if o.as_json:
        dump(plan.as_dict())
        return

    def span(w: tuple[timedelta, timedelta]) -> str:
        def h(t: timedelta) -> str:
            s = t.total_seconds()
            return f"{s / 3600:.0f} h" if s >= 3600 else f"{s / 60:.0f} min"

        return "now" if w[1] == timedelta(0) else f"{h(w[0])} to {h(w[1])}"

    t = new_table("archive", "object", "size", "class", "tier", "state", "ready in", "cost (USD)")
    for ob in plan.objects:
        t.add_row(
            ob.archive_id, ob.ref, size(ob.size), ob.storage_class, ob.tier, ob.state.value,
            span(ob.ready_in), f"{ob.cost:.4f}",
        )  # fmt: skip
    table(t)
    click.echo(
        f"{len(plan.objects)} object(s), {size(plan.total_bytes)} from {plan.target}, "
        f"tier {plan.tier}: ready in {span(plan.ready_in)}, "
        f"estimated cost {plan.total_cost:.4f} USD (manifests are kept hot and read directly)"
    )


# as a job: queued to the workers, or carried out here -----------------------------------------


@dataclass(frozen=True, slots=True)
class _JobParams:
    """A restore request as recorded: the archive it resolved to and the job's params."""

    archive: Archive
    dest: Any
    params: dict[str, Any]


def _job_params(obj: Ctx, o: RestoreOptions) -> _JobParams:
    """Check a restore request and resolve its archive. ``--to`` is a directory, or a bucket
    URL for a policy whose source is a bucket."""
    from ..notify import check_request_targets
    from ..restore import resolve_archive
    from ..settings import notify_target_variable

    # the targets are stored with the request: refused now if one holds a credential
    for name in check_request_targets(o.notify, here=not obj.settings.broker_url):
        click.echo(
            f"note: notification target {name} is not defined here "
            f"({notify_target_variable(name)}); the workers that send it must define it",
            err=True,
        )
    if o.policy is None:
        raise Error("name the POLICY to restore")
    if o.identity is not None and obj.settings.broker_url:
        raise Error(
            "--identity is not used by a queued restore: the restore workers decrypt with "
            "their own BACKUP_IDENTITY (secrets never travel through the broker); drop "
            "--identity, or unset BACKUP_BROKER_URL to run this restore here with it"
        )
    dest = o.destination()
    pol = obj.policy_if_any(o.policy)
    if str(dest).startswith("s3://") and (pol is None or pol.source is None):
        # a bucket destination needs the policy's source bucket (checked against it)
        pol = _source_bucket_policy(obj, o.policy)
    archive = resolve_archive(obj.inventory, o.policy, at=parse_time(o.at), archive_id=o.archive_id)
    params: dict[str, Any] = {
        "archive_id": archive.id,
        "to": str(dest),
        "include": list(o.include),
        "force": o.force,
        "allow_external_symlinks": o.allow_external_symlinks,
        "tier": o.tier or (pol.restore_tier if pol else "Standard"),
        "in_place": o.in_place,
    }
    return _JobParams(archive, dest, params)


def _queued(obj: Ctx, o: RestoreOptions, req: _JobParams) -> Job | None:
    """Hand the request to the workers.

    Returns:
        With ``--wait``, the job once it ended; without, None (its id was printed).
    """
    from ..jobs import JobStore

    assert o.policy is not None
    job, unsent = queueing.queue_restore(obj, req.params, o.policy, o.notify)
    said = f"restore request {job.id} recorded (archive {req.archive.id} into {req.dest})"
    if unsent:
        said += f", not sent yet: {unsent}; the scheduler sends it when the broker answers"
    said += f"; follow it: backup job {job.id} --wait"
    if not o.wait:
        if o.as_json:
            dump(
                {
                    "job": job.id,
                    "state": job.state,
                    "archive_id": req.archive.id,
                    "sent": unsent is None,
                    "not_sent": unsent,
                }
            )
        else:
            click.echo(said)
        return None
    if unsent and not o.as_json:
        err.print(printable(said), soft_wrap=True)
    report = None if o.as_json else (lambda line: err.print(printable(line), soft_wrap=True))
    store = JobStore(obj.inventory)
    return queueing.follow(store, job.id, progress(o.as_json), report=report)


def _job_here(obj: Ctx, o: RestoreOptions, req: _JobParams) -> Job | None:
    """Without a broker: record the request and carry it out in this process, its
    notification included.

    Returns:
        The job once it ended; None while its archives are being retrieved from cold
        storage (a message says how to finish it).
    """
    from ..jobs import JobStore

    store = JobStore(obj.inventory)
    if o.identity is not None:
        obj.settings.identity = o.identity
    created = store.create(
        "restore", policy=o.policy, state="requested", params=req.params, notify=o.notify
    )
    assert created is not None
    runner = queueing.inline_runner(obj)
    runner.start_restore(created.id)
    job = store.get(created.id)
    if job.state == "retrieving":
        click.echo(
            f"restore request {job.id}: archives are being retrieved from cold storage; "
            "run `backup serve` (or workers and a scheduler) to finish it"
        )
        return None
    return job


def _print_job_result(job: Job, as_json: bool) -> None:
    """Print how a restore job ended (its result), or fail with its error."""
    if job.state != "done":
        raise Error(f"restore {job.id} {job.state}: {job.error}")
    from ..jobs.states import RestoreOutcome

    if as_json:
        dump(dict(json.loads(job.result or "{}"), job=job.id))  # the record as it was written
        return
    r = RestoreOutcome.from_json(job.result)
    archives = len(r.archives or [])
    if r.unchanged is not None:  # into a bucket
        click.echo(
            f"restored into {r.destination}: {r.files} objects written, "
            f"{r.unchanged} unchanged, {r.deleted} delete markers, "
            f"{size(r.bytes or 0)} from {archives} archive(s)"
        )
    else:
        click.echo(
            f"restored {r.files} files ({size(r.bytes or 0)}) from {archives} archive(s) "
            f"into {r.destination} in {r.seconds or 0:.1f} s"
        )


def register(cli: click.Group) -> None:
    """Add ``restore`` to the ``backup`` group."""
    cli.add_command(restore)
