"""The ``backup`` command.

Exit codes: 0 success; 1 failure (one message naming what is wrong); 3 the backup finished
but some files could not be read (listed, and recorded with the archive). Progress bars go
to stderr on a terminal only; every listing has ``--json``, whose times are ISO 8601 UTC and
are accepted back by ``--at``.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress import Progress as RichBar
from rich.table import Table

from .errors import Error, OptionError
from .policy import Policy, Retention, get_policy, load_policies
from .progress import Progress
from .settings import Settings

if TYPE_CHECKING:
    # imported when first used: `backup run` starts its walk before paying for SQLAlchemy
    from .inventory import Archive, Inventory

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])
# a table piped to a file or `less` keeps whole ids and paths instead of folding at 80 columns
out = Console(highlight=False, width=None if sys.stdout.isatty() else 1000)
err = Console(stderr=True, highlight=False)


class _Bar(Progress):
    """A rich progress bar on stderr."""

    def __init__(self) -> None:
        self.bar = RichBar(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        )
        self.task: Any = None

    def start(self, description: str, total_bytes: int | None) -> None:
        self.bar.start()
        self.task = self.bar.add_task(description, total=total_bytes)

    def advance(self, nbytes: int) -> None:
        self.bar.advance(self.task, nbytes)

    def finish(self) -> None:
        self.bar.stop()


def _progress(quiet: bool = False) -> Progress:
    return _Bar() if sys.stderr.isatty() and not quiet else Progress()


def _iso(t: datetime | None) -> str | None:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z") if t else None


def parse_time(text: str | None, option: str = "--at") -> datetime | None:
    """Parse a time option such as ``--at``: ISO 8601; a time without a zone is local time.

    Returns:
        The time, or None when the option was not given.

    Raises:
        OptionError: naming the option, for any other text; an empty one too (it does not
            mean "the newest": that is leaving the option out).
    """
    if text is None:
        return None
    try:
        t = datetime.fromisoformat(text)
        return t.astimezone() if t.tzinfo is None else t
    except (ValueError, OverflowError):
        raise OptionError(
            option, f"{text!r} is not an ISO 8601 time such as 2026-11-21T02:00:00Z"
        ) from None


class Ctx:
    """Settings, policies and inventory, opened on first use."""

    #: set by main: this process is the command's own, not a test's or a library user's
    freeze_after_open = False

    def __init__(self, config: Path | None) -> None:
        self.settings = Settings()
        if config is not None:
            self.settings.config = config
        self._inv: Inventory | None = None
        self._policies: dict[str, Policy] | None = None

    @property
    def inventory(self) -> Inventory:
        if self._inv is None:
            from .inventory import Inventory

            self._inv = Inventory(self.settings.inventory_url)
            if self.freeze_after_open:
                # what the start built (modules, ORM mappers, pydantic models) lives as long
                # as the process: later collections need not walk it again (see main)
                gc.freeze()
        return self._inv

    @property
    def policies(self) -> dict[str, Policy]:
        if self._policies is None:
            self._policies = load_policies(self.settings.config)
        return self._policies

    def policy(self, name: str) -> Policy:
        return get_policy(self.policies, name, self.settings.config)

    def policy_if_any(self, name: str) -> Policy | None:
        """The named policy, or None when there is no policy file or it has no such policy:
        a bare machine, after ``backup inventory rebuild``, restores, lists and verifies
        from the inventory alone. A policy file that exists but is broken still fails."""
        if not self.settings.config.exists():
            return None
        return self.policies.get(name)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except Error as e:
        # the message is text, not markup: a path like "a[1]" must print as it is
        err.print(f"[red]error:[/red] {escape(e.get_message())}", markup=True, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:
        # The storage layer turns the answers it expects into its own errors; what the AWS
        # SDK raises beyond those is about the environment (no credentials, an endpoint that
        # does not answer, a denied call) and its message says which, without secrets.
        boto = sys.modules.get("botocore.exceptions")
        if boto is None or not isinstance(e, boto.BotoCoreError | boto.ClientError):
            raise
        text = " ".join(str(e).split()) or type(e).__name__
        err.print(f"[red]error:[/red] {escape(f'S3: {text}')}", markup=True, soft_wrap=True)
        sys.exit(1)


def _handled(f: F) -> F:
    import functools

    @functools.wraps(f)
    def wrapper(*a: Any, **kw: Any) -> Any:
        with _errors():
            return f(*a, **kw)

    return wrapper  # type: ignore[return-value]


def _table(t: Table) -> None:
    """Print a table at its natural width: ids and paths are copied from it, so folding or
    dropping columns to fit a narrow terminal would make it useless."""
    natural = out.measure(t, options=out.options.update(max_width=100_000)).maximum
    Console(highlight=False, width=max(out.width, natural), force_terminal=out.is_terminal).print(
        t, crop=False
    )


def _dump(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


NATIVE_MODULES = ("_fastwalk", "_speedups")


def native_status() -> str:
    """Which C parts this process really uses: an import that fails here fails for the scan
    and the encoders too, and they fall back to Python."""
    import importlib

    active = []
    for name in NATIVE_MODULES:
        try:
            importlib.import_module(f"backup.archive.{name}")
        except ImportError:
            continue
        active.append(name)
    return f"native: {', '.join(active)}" if active else "native: none; pure-Python fallback"


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import version

    click.echo(f"backup {version('backup')} ({native_status()})")
    ctx.exit()


@click.group()
@click.option(
    "--config", type=click.Path(path_type=Path), help="Policy file (default: $BACKUP_CONFIG)."
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and which native (C) parts are active, then exit.",
)
@click.pass_context
def cli(ctx: click.Context, config: Path | None) -> None:
    """Encrypted, compressed backups that restore with standard tools:
    age -d -i key.txt ARCHIVE | zstd -d | tar -x"""
    ctx.obj = Ctx(config)


# keys -------------------------------------------------------------------------------------


@cli.group()
def keys() -> None:
    """Create and inspect age keys."""


@keys.command("generate")
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Identity file to write (mode 0600).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@_handled
def keys_generate(out_path: Path, force: bool) -> None:
    """Write a new age identity to FILE and print its recipient (age1...)."""
    from .crypto.age import X25519Identity

    ident = X25519Identity.generate()
    rcpt = ident.recipient().to_string()
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(out_path, flags, 0o600)
    except FileExistsError:
        raise Error(f"{out_path} exists; use --force to overwrite it") from None
    except OSError as e:
        raise Error(f"cannot write {out_path}: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(
            f"# created: {_iso(datetime.now(UTC))}\n# public key: {rcpt}\n{ident.to_string()}\n"
        )
    click.echo(rcpt)


@keys.command("recipient")
@click.argument("identity_file", type=click.Path(path_type=Path))
@_handled
def keys_recipient(identity_file: Path) -> None:
    """Print the recipients (age1...) of an identity file."""
    from .crypto.age import X25519Identity
    from .restore import identities_from

    for ident in identities_from(identity_file):
        if isinstance(ident, X25519Identity):
            click.echo(ident.recipient().to_string())


# run --------------------------------------------------------------------------------------


@cli.command()
@click.argument("policy")
@click.option("--full", is_flag=True, help="Start a new chain with a full archive.")
@click.option("--wait", is_flag=True, help="With a broker: follow the queued run until it ends.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
@_handled
def run(obj: Ctx, policy: str, full: bool, wait: bool, as_json: bool) -> None:
    """Back up POLICY now: queued to the workers when BACKUP_BROKER_URL is set, else run in
    this process."""
    from . import cli_jobs

    pol = obj.policy(policy)
    if not obj.settings.broker_url and pol.source is None and "archive" in pol.actions:
        # the walk starts now, outside the GIL, and overlaps importing and opening the
        # inventory (SQLAlchemy), so nothing that imports it may come before this
        from .archive.scan import prefetch

        prefetch(pol.name, pol.source_names(), pol.exclude)
    from .jobs import JobStore

    store = JobStore(obj.inventory)
    if obj.settings.broker_url:
        queued = cli_jobs.queue_backup(obj, pol.name, full)
        job = queued.job
        if not wait:
            if as_json:
                _dump(
                    {"job": job.id, "state": job.state, "policy": pol.name}
                    | {"sent": queued.unsent is None, "already_queued": queued.again}
                    | ({"not_sent": queued.unsent} if queued.unsent else {})
                )
            else:
                click.echo(queued.message())
            return
        if queued.unsent:
            click.echo(queued.message(), err=True)
        job = cli_jobs.follow(store, job.id, _progress(as_json))
    else:
        created = store.create("backup", policy=pol.name, state="queued", params={"full": full})
        assert created is not None
        import signal

        def stop(signum: int, _frame: object) -> None:
            # `timeout` and service managers stop with SIGTERM: end as Ctrl-C does, so the
            # run removes what it wrote, records why it failed and releases its lock
            raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

        signal.signal(signal.SIGTERM, stop)
        cli_jobs.inline_runner(obj).run_backup(created.id, progress=_progress(as_json))
        job = store.get(created.id)
    cli_jobs.finish_run(obj, job, as_json)


# list / show ------------------------------------------------------------------------------


def _size(n: int) -> str:
    f = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if f < 1024 or unit == "TiB":
            return f"{f:.0f} {unit}" if unit == "B" else f"{f:.1f} {unit}"
        f /= 1024
    return str(n)


def _object_url(target: str, ref: str) -> str:
    """Returns: the URL of an object in a target: the target's URL with ``ref`` added to its
    path, and the target's query (``?storage_class=...``, how the object is stored) after the
    whole path instead of inside it."""
    from urllib.parse import urlsplit

    u = urlsplit(target)
    # a vault's reference is KEY#ARCHIVE_ID#TREE_HASH: what follows the key is a fragment,
    # which a URL puts after its query
    key, hash_, fragment = ref.partition("#")
    url = f"{u.scheme}://{u.netloc}{u.path.rstrip('/')}/{key}"
    return url + (f"?{u.query}" if u.query else "") + hash_ + fragment


def _archive_json(a: Archive) -> dict[str, Any]:
    return {
        "id": a.id,
        "policy": a.policy,
        "kind": a.kind,
        "parent": a.parent_id,
        "created": _iso(a.created),
        "state": a.state,
        "size": a.size_stored,
        "size_in": a.size_in,
        "entries": a.entries,
        "sha256": a.sha256,
        "target": a.target,
        "location": a.location,
        "url": _object_url(a.target, a.location),
        "manifest": a.manifest_location,
        "unreadable": len(json.loads(a.unreadable or "[]")),
    }


@cli.command("list")
@click.argument("policy", required=False)
@click.option("--all", "all_states", is_flag=True, help="Include failed and deleted archives.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@_handled
def list_(obj: Ctx, policy: str | None, all_states: bool, as_json: bool) -> None:
    """List archives, oldest first."""
    rows = obj.inventory.archives(policy, states=() if all_states else ("complete",))
    if as_json:
        _dump([_archive_json(a) for a in rows])
        return
    t = Table("id", "policy", "kind", "parent", "created", "size", "entries", "location", box=None)
    if all_states:
        t.add_column("state")
    for a in rows:
        cells = [
            a.id,
            a.policy,
            a.kind,
            a.parent_id or "-",
            _iso(a.created) or "",
            _size(a.size_stored),
            str(a.entries),
            _object_url(a.target, a.location),
        ]
        if all_states:
            cells.append(a.state)
        t.add_row(*cells)
    _table(t)


@cli.command()
@click.argument("archive_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@_handled
def show(obj: Ctx, archive_id: str, as_json: bool) -> None:
    """List the entries of an archive (from the inventory; no key needed)."""
    import stat as st

    a = obj.inventory.get(archive_id)
    recs = obj.inventory.records(a.id)
    if as_json:
        d = _archive_json(a)
        d["entries_list"] = [
            {
                "path": os.fsdecode(r.path),
                "type": r.type,
                "size": r.size,
                "mode": f"{r.mode:04o}",
                "mtime": _iso(datetime.fromtimestamp(r.mtime_ns / 1e9, UTC))
                if r.type != "deleted"
                else None,
                "mtime_ns": r.mtime_ns,
                "sha256": r.sha256,
                "link": os.fsdecode(r.link) if r.link else None,
                "offset": r.offset,
            }
            for r in recs
        ]
        _dump(d)
        return
    t = Table("type", "mode", "size", "mtime", "path", box=None)
    for r in recs:
        if r.type == "deleted":
            t.add_row("deleted", "", "", "", os.fsdecode(r.path))
            continue
        link = f" -> {os.fsdecode(r.link)}" if r.link else ""
        t.add_row(
            r.type,
            st.filemode(r.mode)[1:],
            str(r.size),
            _iso(datetime.fromtimestamp(r.mtime_ns / 1e9, UTC)) or "",
            os.fsdecode(r.path) + link,
        )
    _table(t)


# restore / verify -------------------------------------------------------------------------


@cli.command()
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
@click.option(
    "--identity",
    type=click.Path(path_type=Path),
    help="age identity file (default: $BACKUP_IDENTITY).",
)
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
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
@_handled
def restore(
    obj: Ctx,
    policy: str | None,
    to: str,
    in_place: bool,
    at: str | None,
    archive_id: str | None,
    file: Path | None,
    include: tuple[str, ...],
    identity: Path | None,
    force: bool,
    allow_external_symlinks: bool,
    notify: tuple[str, ...],
    tier: str | None,
    wait: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Restore POLICY's tree as it was at --at (default: the newest archive) into --to.

    With BACKUP_BROKER_URL set, the restore is a request the workers carry out (cold
    archives are retrieved first, which can take hours): the command prints its id and
    returns; --notify URLs are told when it ends. --to is then a path on the restore worker.
    """
    from . import restore as r

    parse_time(at)  # a bad --at is reported before anything is opened or requested
    into_bucket = to.startswith("s3://")
    if into_bucket and not dry_run and not (obj.settings.broker_url or notify):
        from .snapshots.cli import restore_into_bucket

        return restore_into_bucket(
            obj, policy, to, at, archive_id, include, identity, in_place, as_json
        )
    if in_place and not into_bucket:
        raise Error("--in-place restores into a bucket source (--to s3://...) only")
    dest: Any = to if into_bucket else Path(to).absolute()
    if dry_run:
        if policy is None or file is not None:
            raise Error("--dry-run plans the restore of a POLICY (not of --file)")
        return _restore_plan(obj, policy, at, archive_id, tier, as_json)
    if file is None and (obj.settings.broker_url or notify):
        return _restore_request(
            obj, policy, dest, at, archive_id, include, identity, force,
            allow_external_symlinks, notify, tier, wait, as_json, in_place,
        )  # fmt: skip
    identities = r.identities_from(identity or obj.settings.identity)
    if file is not None:
        if policy or at is not None or archive_id:
            raise Error("--file restores one file; it takes no POLICY, --at or --archive")
        res = r.restore_file(
            file,
            dest,
            identities,
            include=include,
            force=force,
            allow_external_symlinks=allow_external_symlinks,
            progress=_progress(as_json),
        )
    else:
        if policy is None:
            raise Error("name the POLICY to restore (or --file for an archive file)")
        res = r.restore(
            policy,
            obj.inventory,
            dest,
            identities,
            at=parse_time(at),
            archive_id=archive_id,
            include=include,
            force=force,
            allow_external_symlinks=allow_external_symlinks,
            progress=_progress(as_json),
        )
    if as_json:
        _dump(
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
            f"restored {res.files} files ({_size(res.bytes)}) from {len(res.archives)} archive(s) into {res.destination} in {res.seconds:.1f} s"
        )


def _restore_plan(
    obj: Ctx, policy: str, at: str | None, archive_id: str | None, tier: str | None, as_json: bool
) -> None:
    """Print what a restore would retrieve, before anything is requested."""
    from datetime import timedelta

    from .coldplan import archives_for_restore, plan_restore
    from .restore import resolve_archive

    head = resolve_archive(obj.inventory, policy, at=parse_time(at), archive_id=archive_id)
    archives = archives_for_restore(obj.inventory, archive_ids=[head.id])
    pol = obj.policy_if_any(policy)
    plan = plan_restore(
        archives,
        tier=tier or (pol.restore_tier if pol else "Standard"),
        prices=obj.settings.retrieval_prices or None,
        transfer_out_per_gb=obj.settings.transfer_out_per_gb,
    )
    if as_json:
        _dump(plan.as_dict())
        return

    def span(w: tuple[timedelta, timedelta]) -> str:
        def h(t: timedelta) -> str:
            s = t.total_seconds()
            return f"{s / 3600:.0f} h" if s >= 3600 else f"{s / 60:.0f} min"

        return "now" if w[1] == timedelta(0) else f"{h(w[0])} to {h(w[1])}"

    t = Table("archive", "object", "size", "class", "tier", "state", "ready in", "cost (USD)")
    for o in plan.objects:
        t.add_row(
            o.archive_id, o.ref, _size(o.size), o.storage_class, o.tier, o.state.value,
            span(o.ready_in), f"{o.cost:.4f}",
        )  # fmt: skip
    _table(t)
    click.echo(
        f"{len(plan.objects)} object(s), {_size(plan.total_bytes)} from {plan.target}, "
        f"tier {plan.tier}: ready in {span(plan.ready_in)}, "
        f"estimated cost {plan.total_cost:.4f} USD (manifests are kept hot and read directly)"
    )


def _restore_request(
    obj: Ctx,
    policy: str | None,
    to: Path,
    at: str | None,
    archive_id: str | None,
    include: tuple[str, ...],
    identity: Path | None,
    force: bool,
    allow_external_symlinks: bool,
    notify: tuple[str, ...],
    tier: str | None,
    wait: bool,
    as_json: bool,
    in_place: bool = False,
) -> None:
    """A restore as a job: queued to the workers, or carried out here (no broker) and
    followed by its notification. ``to`` is a directory, or a bucket URL for a policy whose
    source is a bucket."""
    from . import cli_jobs
    from .jobs import JobStore
    from .notify import check_request_targets
    from .restore import resolve_archive
    from .settings import notify_target_variable

    # the targets are stored with the request: refused now if one holds a credential
    for name in check_request_targets(notify, here=not obj.settings.broker_url):
        click.echo(
            f"note: notification target {name} is not defined here "
            f"({notify_target_variable(name)}); the workers that send it must define it",
            err=True,
        )
    if policy is None:
        raise Error("name the POLICY to restore")
    if identity is not None and obj.settings.broker_url:
        raise Error(
            "--identity is not used by a queued restore: the restore workers decrypt with "
            "their own BACKUP_IDENTITY (secrets never travel through the broker); drop "
            "--identity, or unset BACKUP_BROKER_URL to run this restore here with it"
        )
    pol = obj.policy_if_any(policy)
    if str(to).startswith("s3://") and (pol is None or pol.source is None):
        # a bucket destination needs the policy's source bucket (checked against it)
        pol = obj.policy(policy)
        if pol.source is None:
            raise Error(f"policy {policy!r} backs up local paths; restore it --to a directory")
    archive = resolve_archive(obj.inventory, policy, at=parse_time(at), archive_id=archive_id)
    params: dict[str, Any] = {
        "archive_id": archive.id,
        "to": str(to),
        "include": list(include),
        "force": force,
        "allow_external_symlinks": allow_external_symlinks,
        "tier": tier or (pol.restore_tier if pol else "Standard"),
        "in_place": in_place,
    }
    store = JobStore(obj.inventory)
    if obj.settings.broker_url:
        job, unsent = cli_jobs.queue_restore(obj, params, policy, notify)
        said = f"restore request {job.id} recorded (archive {archive.id} into {to})"
        if unsent:
            said += f", not sent yet: {unsent}; the scheduler sends it when the broker answers"
        said += f"; follow it: backup job {job.id} --wait"
        if not wait:
            if as_json:
                _dump(
                    {
                        "job": job.id,
                        "state": job.state,
                        "archive_id": archive.id,
                        "sent": unsent is None,
                        "not_sent": unsent,
                    }
                )
            else:
                click.echo(said)
            return
        if unsent and not as_json:
            err.print(said, soft_wrap=True, markup=False)
        report = None if as_json else (lambda line: err.print(line, soft_wrap=True, markup=False))
        job = cli_jobs.follow(store, job.id, _progress(as_json), report=report)
    else:
        if identity is not None:
            obj.settings.identity = identity
        created = store.create(
            "restore", policy=policy, state="requested", params=params, notify=notify
        )
        assert created is not None
        runner = cli_jobs.inline_runner(obj)
        runner.start_restore(created.id)
        job = store.get(created.id)
        if job.state == "retrieving":
            click.echo(
                f"restore request {job.id}: archives are being retrieved from cold storage; "
                "run `backup serve` (or workers and a scheduler) to finish it"
            )
            return
    if job.state != "done":
        raise Error(f"restore {job.id} {job.state}: {job.error}")
    res = json.loads(job.result)
    if as_json:
        res["job"] = job.id
        _dump(res)
    elif "unchanged" in res:  # into a bucket
        click.echo(
            f"restored into {res['destination']}: {res['files']} objects written, "
            f"{res['unchanged']} unchanged, {res['deleted']} delete markers, "
            f"{_size(res['bytes'])} from {len(res['archives'])} archive(s)"
        )
    else:
        click.echo(
            f"restored {res['files']} files ({_size(res['bytes'])}) from "
            f"{len(res['archives'])} archive(s) into {res['destination']} in "
            f"{res['seconds']:.1f} s"
        )


@cli.command()
@click.argument("archive_id")
@click.option(
    "--identity",
    type=click.Path(path_type=Path),
    help="age identity file (default: $BACKUP_IDENTITY).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
@_handled
def verify(obj: Ctx, archive_id: str, identity: Path | None, as_json: bool) -> None:
    """Read and authenticate a whole archive and check its manifest hashes; writes nothing."""
    from . import restore as r

    res = r.verify(
        archive_id,
        obj.inventory,
        r.identities_from(identity or obj.settings.identity),
        progress=_progress(as_json),
    )
    if as_json:
        _dump(
            {
                "archive": res.archive_id,
                "ok": True,
                "entries": res.entries,
                "files_checked": res.files_checked,
                "bytes": res.bytes,
            }
        )
    else:
        click.echo(
            f"archive {res.archive_id} OK: {res.entries} entries, {res.files_checked} files ({_size(res.bytes)}) match the manifest"
        )


# prune ------------------------------------------------------------------------------------


@cli.command()
@click.argument("policy")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@_handled
def prune(obj: Ctx, policy: str, dry_run: bool, as_json: bool) -> None:
    """Delete POLICY's archives that its retention does not keep (never one a kept archive needs)."""
    from .retention import apply_prune, plan_prune

    # without its policy (a bare machine, a policy since removed) there are no rules to
    # apply: everything is kept, and the output says why
    pol = obj.policy_if_any(policy)
    if pol is None and not obj.inventory.archives(policy, states=()):
        pol = obj.policy(policy)  # a name the inventory does not know either: a typo, say so
    retention = pol.retention if pol is not None else Retention()
    plan = plan_prune(obj.inventory, policy, retention)
    deleted = [] if dry_run else apply_prune(obj.inventory, plan)
    if as_json:
        _dump(
            {
                "policy": policy,
                "dry_run": dry_run,
                "keep": [
                    {"id": a.id, "created": _iso(a.created), "reason": why} for a, why in plan.keep
                ],
                "delete": [{"id": a.id, "created": _iso(a.created)} for a in plan.delete],
                "deleted": deleted,
                "locked": [{"id": a.id, "reason": why} for a, why in plan.locked],
                "skipped": [{"id": a.id, "reason": why} for a, why in plan.skipped],
            }
        )
        return
    for a, why in plan.keep:
        click.echo(f"keep    {a.id}  {a.kind:<11}  {why}")
    skipped = dict((a.id, why) for a, why in plan.skipped)
    for a in plan.delete:
        if a.id in skipped:
            click.echo(f"kept    {a.id}  {a.kind:<11}  {skipped[a.id]}")
        else:
            click.echo(f"{'would delete' if dry_run else 'deleted'} {a.id}  {a.kind}")
    if plan.locked:
        click.echo(f"{len(plan.locked)} archive(s) kept by Object Lock (retention or legal hold)")
    if pol is None:
        click.echo(
            f"policy {policy!r} is not in a policy file ({obj.settings.config}): no retention "
            "rules, keeping everything"
        )
    elif retention.is_empty():
        click.echo(f"policy {policy!r} has no retention rules: keeping everything")


@cli.command()
@click.argument("archive_id")
@click.argument("state", type=click.Choice(["on", "off"]), required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@_handled
def hold(obj: Ctx, archive_id: str, state: str | None, as_json: bool) -> None:
    """Put a legal hold on an archive and its manifest (on), take it off (off), or show its
    Object Lock state. A held archive cannot be deleted, by prune or anyone, until released."""
    from .targets import open_target

    a = obj.inventory.get(archive_id)
    target = open_target(a.target)
    refs = {"archive": a.location, "manifest": a.manifest_location}
    if state is not None:
        for ref in refs.values():
            target.set_legal_hold(ref, state == "on")
        obj.inventory.log(
            "hold", f"legal hold {state} for {a.id}", policy=a.policy, archive_id=a.id
        )
    locks = {name: target.object_lock(ref) for name, ref in refs.items()}
    if as_json:
        _dump(
            {
                "id": a.id,
                **{
                    name: {
                        "legal_hold": lk.legal_hold,
                        "mode": lk.mode,
                        "retain_until": _iso(lk.retain_until),
                    }
                    for name, lk in locks.items()
                },
            }
        )
        return
    for name, lk in locks.items():
        until = f"{lk.mode} until {_iso(lk.retain_until)}" if lk.mode else "no retention"
        click.echo(f"{a.id} {name}: legal hold {'on' if lk.legal_hold else 'off'}, {until}")


@cli.group("inventory")
def inventory_group() -> None:
    """The local inventory and the targets' own records."""


@inventory_group.command("sync")
@click.argument("target_url")
@click.option(
    "--wait/--no-wait",
    default=True,
    help="Wait for the vault's inventory job (hours on AWS), or return if it is running.",
)
@click.option(
    "--poll", "poll_seconds", default=60.0, show_default=True, help="Seconds between checks."
)
@click.option("--timeout", type=float, help="Give up waiting after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@_handled
def inventory_sync(
    obj: Ctx,
    target_url: str,
    wait: bool,
    poll_seconds: float,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Compare a Glacier vault (glacier://vault) with the inventory: archives the vault has
    that the inventory lacks, and the reverse. Runs (or reuses) an inventory-retrieval job."""
    from .errors import TargetError
    from .inventory.sync import sync_vault
    from .targets import open_target
    from .targets.glacier import GlacierTarget

    target = open_target(target_url)
    if not isinstance(target, GlacierTarget):
        raise TargetError(target_url, "inventory sync reads Glacier vaults (glacier://vault)")
    result = sync_vault(
        target,
        obj.inventory,
        wait=wait,
        poll_seconds=poll_seconds,
        timeout=timeout,
        progress=None if as_json else (lambda msg: err.print(msg)),
    )
    if isinstance(result, str):
        if as_json:
            _dump({"target": target_url, "job_id": result, "state": "running"})
        else:
            click.echo(f"inventory job {result} is running; run again later (it is reused)")
        return
    if as_json:
        _dump(result.as_dict())
        return
    click.echo(f"{target_url}: vault inventory of {_iso(result.inventory_date)}")
    click.echo(f"  {result.matched} object(s) in both")
    for aid, key, _ref in result.repaired:
        click.echo(f"  archive id recorded:   {aid}  {key}")
    for v in result.only_in_vault:
        click.echo(f"  only in the vault:     {v.key}  ({v.size} bytes, id {v.archive_id})")
    for aid, ref in result.only_in_inventory:
        click.echo(f"  only in the inventory: {aid}  {ref.split('#')[0]}")
    for aid, ref in result.too_new:
        click.echo(f"  too new to tell:       {aid}  {ref.split('#')[0]}")
    if result.foreign:
        click.echo(f"  {len(result.foreign)} archive(s) not written by backup")


def _vault_rebuild_options(f: F) -> F:
    """The options only a vault's rebuild takes (backup/rebuild_vault.py)."""
    for option in (
        click.option("--timeout", type=float, help="Give up waiting after this many seconds."),
        click.option(
            "--poll",
            "poll_seconds",
            default=60.0,
            show_default=True,
            help="glacier:// only: seconds between looks at the vault's jobs.",
        ),
        click.option(
            "--wait/--no-wait",
            default=True,
            help="glacier:// only: wait for the vault's jobs, or return (run again to resume).",
        ),
        click.option("--tier", help="glacier:// only: the retrieval tier (default the vault's)."),
        click.option(
            "--retrieve-manifests",
            is_flag=True,
            help="glacier:// only: start retrieval jobs for the manifests the inventory lacks "
            "(paid: run without it first to see the cost).",
        ),
    ):
        f = option(f)
    return f


@inventory_group.command("rebuild")
@click.argument("target_url")
@click.option(
    "--identity",
    type=click.Path(path_type=Path),
    help="age identity file to decrypt the manifests (default: $BACKUP_IDENTITY).",
)
@click.option("--policy", "policy", help="Only this policy's archives.")
@click.option("--dry-run", is_flag=True, help="Read and compare; record nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_vault_rebuild_options
@click.pass_obj
@_handled
def inventory_rebuild(
    obj: Ctx, target_url: str, identity: Path | None, policy: str | None, dry_run: bool,
    as_json: bool, retrieve_manifests: bool, tier: str | None, wait: bool,
    poll_seconds: float, timeout: float | None,
) -> None:  # fmt: skip
    """Record every archive of TARGET_URL the inventory lacks, from the manifests beside
    them (no policy file needed; nothing cold is retrieved). Exit 3 when a manifest was
    damaged, a chain's parent is missing, or a known archive's record differs."""
    from .errors import IdentityError
    from .inventory.rebuild import rebuild
    from .restore import identities_from
    from .targets import open_target

    path = identity or obj.settings.identity
    if path is None:
        raise IdentityError(
            "the manifests are encrypted: pass --identity FILE or set BACKUP_IDENTITY"
        )
    identities = identities_from(path)
    target = open_target(target_url)
    if target_url.startswith("glacier://"):
        return _rebuild_vault(
            obj, target, identities, policy, dry_run, as_json,
            retrieve_manifests=retrieve_manifests, tier=tier, wait=wait,
            poll_seconds=poll_seconds, timeout=timeout,
        )  # fmt: skip
    if retrieve_manifests or tier:
        # other targets keep their manifests hot: nothing to retrieve, no tier to pick
        raise OptionError(
            "--retrieve-manifests" if retrieve_manifests else "--tier",
            "only a glacier:// vault's rebuild retrieves manifests",
        )
    report = rebuild(
        obj.inventory,
        target,
        identities,
        policy=policy,
        dry_run=dry_run,
        progress=_progress(as_json),
        listing=_rebuild_listing(target, policy),
    )
    snaps = _rebuild_snapshots(obj, target, identities, dry_run)
    if as_json:
        _dump(report.to_json() | {"snapshots": snaps.to_json()})
    else:
        would = "would add" if dry_run else "added"
        click.echo(
            f"{target_url}: {len(report.added)} archive(s) {would}, {len(report.known)} already "
            f"known, {report.manifests_read} manifest(s) read"
        )
        for aid in report.added:
            click.echo(f"  {would}:  {aid}")
        for d in report.differing:
            fields = ", ".join(
                f"{k} {a!r} here, {b!r} in the target" for k, (a, b) in d.fields.items()
            )
            click.echo(f"  differs:  {d.archive_id}: {fields}")
        for o in report.orphans:
            click.echo(f"  orphan:   {o.archive_id}: parent {o.parent_id} is missing; not recorded")
        for x in report.damaged:
            click.echo(f"  damaged:  {x.key}: {x.reason}")
        for lo in report.leftovers:
            click.echo(f"  leftover: {lo.key}: {lo.reason}")
        if report.foreign:
            click.echo(
                f"  {len(report.foreign)} foreign object(s) ignored, e.g. {report.foreign[0]}"
            )
        if report.copies:
            click.echo(
                f"  {len(report.copies)} copy(ies) of an inventory, newest {max(report.copies)}: "
                f"`backup inventory import {target_url}` brings back the job history too"
            )
        _echo_snapshots(snaps, dry_run)
    if report.exit_code:
        sys.exit(report.exit_code)


@inventory_group.command("export")
@click.argument("target_url", required=False)
@click.option("--policy", "policy_name", help="Copy into this policy's target, to its recipients.")
@click.option(
    "--recipient", "recipients", multiple=True, help="Encrypt to this recipient (age1...)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@_handled
def inventory_export(
    obj: Ctx,
    target_url: str | None,
    policy_name: str | None,
    recipients: tuple[str, ...],
    as_json: bool,
) -> None:
    """Copy the inventory (jobs and events too) into a target, encrypted to the recipients of
    the policies that use it, keeping this host's newest $BACKUP_INVENTORY_EXPORT_KEEP."""
    from .inventory_copy import export_inventory

    if (target_url is None) == (policy_name is None):
        raise Error("inventory export takes a TARGET_URL or --policy NAME (one of them)")
    if policy_name is not None:
        pol = obj.policy(policy_name)
        target_url, found = pol.target, list(pol.recipients)
    else:
        assert target_url is not None
        found = sorted({r for p in obj.policies.values() if p.target == target_url for r in p.recipients}) if not recipients else []  # fmt: skip
    chosen = list(recipients) or found
    if not chosen:
        raise Error(
            f"no policy uses target {target_url}: give --recipient age1... (or --policy NAME)"
        )
    info, deleted = export_inventory(
        obj.inventory, target_url, chosen, keep=obj.settings.inventory_export_keep
    )
    obj.inventory.log(
        "inventory-export",
        f"inventory copied to {target_url} as {info.key} ({info.size} bytes)",
        target=target_url, key=info.key, size=info.size, deleted=len(deleted),
    )  # fmt: skip
    if as_json:
        _dump({"target": target_url, **info.as_dict(), "deleted": deleted})
        return
    click.echo(f"{target_url}: {info.key} ({info.size} bytes)")
    for k in deleted:
        click.echo(f"  deleted older copy {k}")


@inventory_group.command("exports")
@click.argument("target_url")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@_handled
def inventory_exports(obj: Ctx, target_url: str, as_json: bool) -> None:
    """List the copies of inventories in a target, oldest first."""
    from .inventory_copy import list_exports
    from .targets import open_target

    found = list_exports(open_target(target_url))
    if as_json:
        _dump([e.as_dict() for e in found])
        return
    if not found:
        click.echo(f"{target_url}: no inventory copies")
    for e in found:
        cls = f"  {e.storage_class}" if e.storage_class else ""
        click.echo(f"{e.key}  {_iso(e.created)}  {e.host}  {e.size} bytes{cls}")


@inventory_group.command("import")
@click.argument("target_url")
@click.option(
    "--identity",
    type=click.Path(path_type=Path),
    help="age identity file (default: $BACKUP_IDENTITY).",
)
@click.option("--from", "key", help="The copy to import (a key from 'inventory exports').")
@click.option("--latest", is_flag=True, help="Import the newest copy (the default).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@_handled
def inventory_import(
    obj: Ctx, target_url: str, identity: Path | None, key: str | None, latest: bool, as_json: bool
) -> None:
    """Merge a copy of an inventory from a target into this one, in one transaction: rows it
    has are kept (differences reported), jobs, events, snapshots and retrievals come back."""
    from .inventory_copy import import_inventory
    from .restore import identities_from

    if key is not None and latest:
        raise Error("--from and --latest exclude each other")
    identities = identities_from(identity or obj.settings.identity)
    res = import_inventory(obj.inventory, target_url, identities, key=key)
    if as_json:
        _dump({"target": target_url, **res.as_dict()})
        return
    click.echo(f"{target_url}: imported {res.key}")
    for name in res.added:
        click.echo(f"  {name}: {res.added[name]} added, {res.present[name]} already present")
    for c in res.conflicts:
        click.echo(f"  conflict: {c}")


def _rebuild_listing(target: Any, policy: str | None) -> list[Any] | None:
    """A bucket's objects without the snapshot manifests a versioned bucket keeps under
    ``.backup-snapshots/`` (the product's own, not foreign objects); None for other targets."""
    from .snapshots.versioned import RESERVED
    from .targets.s3 import S3Target

    if not isinstance(target, S3Target):
        return None
    return [
        o for o in target.list(f"{policy}/" if policy else "") if not o.key.startswith(RESERVED)
    ]


def _rebuild_snapshots(obj: Ctx, target: Any, identities: Any, dry_run: bool) -> Any:
    """The ``snapshots`` rows of the rebuilt archives (docs/snapshots.md)."""
    from .crypto.age import decrypt_bytes
    from .snapshot_records import rebuild_snapshot_records
    from .targets.glacier import GlacierTarget

    def read(a: Archive) -> bytes | None:
        if isinstance(target, GlacierTarget):
            return None  # cold: a retrieval, which this never requests
        with target.open_read(a.manifest_location) as f:
            return decrypt_bytes(f.read(), identities, name=f"manifest of {a.id}")

    return rebuild_snapshot_records(obj.inventory, target.url, dry_run=dry_run, read_manifest=read)


def _echo_snapshots(snaps: Any, dry_run: bool) -> None:
    for r in snaps.added:
        click.echo(
            f"  snapshot {'would add' if dry_run else 'added'}: {r['bucket']} {r['version']}"
            f" ({r['name'] or '-'}; policy {r['policy'] or '-'}, archive {r['archive_id'] or '-'})"
        )
    for u in snaps.unreadable:
        click.echo(f"  snapshots not read: {u}")


def _rebuild_vault(
    obj: Ctx,
    target: Any,
    identities: Any,
    policy: str | None,
    dry_run: bool,
    as_json: bool,
    *,
    retrieve_manifests: bool,
    tier: str | None,
    wait: bool,
    poll_seconds: float,
    timeout: float | None,
) -> None:
    """``inventory rebuild glacier://VAULT`` (backup/rebuild_vault.py)."""
    from .rebuild_vault import rebuild_vault

    out = rebuild_vault(
        obj.inventory,
        target,
        identities,
        policy=policy,
        dry_run=dry_run,
        retrieve_manifests=retrieve_manifests,
        tier=tier,
        wait=wait,
        poll_seconds=poll_seconds,
        timeout=timeout,
        prices=obj.settings.retrieval_prices,
        progress=None if as_json else (lambda msg: err.print(msg)),
    )
    snaps = _rebuild_snapshots(obj, target, identities, dry_run)
    if as_json:
        _dump(out.as_dict() | {"snapshots": snaps.to_json()})
        sys.exit(out.exit_code)
    url, r = target.url, out.report
    if out.state == "inventory-pending":
        click.echo(f"{url}: inventory job {out.inventory_job} is running; run again later")
        return
    click.echo(
        f"{url}: vault inventory of {_iso(out.inventory_date)}: {len(out.found)} archive(s) "
        f"with their manifests; {len(r.added)} added, {len(r.known)} already known"
    )
    for aid in r.added:
        click.echo(f"  added:    {aid}")
    for d in r.differing:
        fields = ", ".join(f"{k} {a!r} here, {b!r} in the vault" for k, (a, b) in d.fields.items())
        click.echo(f"  differs:  {d.archive_id}: {fields}")
    for o in r.orphans:
        click.echo(f"  orphan:   {o.archive_id}: parent {o.parent_id} is missing; not recorded")
    for x in r.damaged:
        click.echo(f"  damaged:  {x.key}: {x.reason}")
    for lo in r.leftovers:
        click.echo(f"  leftover: {lo.key}: {lo.reason}")
    if r.foreign:
        click.echo(f"  {len(r.foreign)} foreign archive(s) ignored, e.g. {r.foreign[0]}")
    for note in out.notes:
        click.echo(f"  note: {note}")
    _echo_snapshots(snaps, dry_run)
    if out.pending:
        click.echo(
            f"  {len(out.pending)} manifest retrieval(s) running; run again later "
            "(the jobs are reused)"
        )
    if out.unrecorded and out.plan is not None:
        p = out.plan
        first, last = (int(t.total_seconds()) for t in p.ready_in)
        for u in out.unrecorded:
            click.echo(
                f"  not recorded: {u.policy}/{u.archive_id} (manifest {u.manifest.size} bytes)"
            )
        click.echo(
            f"  retrieving their {p.objects} manifest(s) ({p.bytes} bytes, tier {p.tier}) costs "
            f"about ${p.cost:.4f} and takes {first // 60}-{last // 60} min; to do it: "
            f"backup inventory rebuild {url} --retrieve-manifests"
        )
    if out.exit_code:
        sys.exit(out.exit_code)


def _register() -> None:
    from . import cli_jobs
    from .snapshots import cli as snapshots_cli

    cli_jobs.register(cli)
    cli.add_command(snapshots_cli.snapshot)
    cli.add_command(snapshots_cli.bucket)


_register()


def main() -> None:
    """Entry point of the ``backup`` command."""
    # Starting a command allocates objects by the hundred thousand (importing SQLAlchemy and
    # pydantic, a walk's entries) and makes little cyclic garbage. At Python's default
    # thresholds (700, 10, 10) the collector ran about 190 times in a no-change backup and
    # 290 in a full one, 0.2-0.4 s of either. It still runs, in long-running commands too,
    # only less often.
    gc.set_threshold(50_000, 20, 10)
    Ctx.freeze_after_open = True
    try:
        cli(prog_name="backup")
    except SystemExit as e:
        _exit(e.code)
    _exit(0)


def _exit(code: object) -> None:
    """End the process without the interpreter's teardown, which after a large backup or
    restore spends 0.2 s freeing per-path tables one object at a time. Only when nothing
    teardown would finish is left: no other thread, no child process; output is flushed
    and logging shut down, and what must last (archives, the inventory) was committed
    before the command returned. Otherwise (or for a message as exit code) a normal exit."""
    import threading

    inventory = sys.modules.get("backup.inventory")
    if inventory is not None:
        # os._exit closes no connection, so SQLite would leave the command's writes in the
        # -wal file: a copy of inventory.db alone would miss them
        inventory.checkpoint_all()
    mp = sys.modules.get("multiprocessing")
    if (
        not (code is None or isinstance(code, int))
        or threading.active_count() > 1
        or (mp is not None and mp.active_children())
    ):
        raise SystemExit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        raise SystemExit(code) from None  # let the interpreter report it as usual
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    os._exit(code or 0)


if __name__ == "__main__":
    main()
