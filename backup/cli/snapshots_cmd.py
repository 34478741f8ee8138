"""``backup snapshot`` and ``backup bucket``: snapshots, forks, time travel and slices of a
bucket written as ``s3://bucket[/prefix][?snapshots=tigris|versioned]``.

Follows the conventions of the whole CLI: one message and exit code 1 on an error, a table
by default and ``--json`` on every listing (times ISO 8601 UTC). Snapshots taken or deleted
here are recorded in the inventory's ``snapshots`` table.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from ..errors import SnapshotError
from ..snapshots.base import ObjectState, SnapshotInfo, SnapshotProvider, from_ns, parse_at
from .context import Ctx, json_option
from .output import dump, handled, iso, new_table, table

__all__ = ["register", "resolve_point"]


def _rows(*columns: str, rows: list[list[str]]) -> None:
    t = new_table(*columns, box=None)
    for r in rows:
        t.add_row(*r)
    table(t)


def _bucket(text: str) -> str:
    """The one reading of a BUCKET argument: ``s3://bucket[/prefix][?snapshots=...]`` or the
    same without ``s3://``; a name S3 does not allow is one clear error, not a traceback."""
    from ..snapshots import bucket_url

    return bucket_url(text)


def _open(text: str) -> SnapshotProvider:
    from ..snapshots import open_provider

    return open_provider(_bucket(text))


def _new_bucket(text: str, source: SnapshotProvider) -> str:
    """A fork's NEW_BUCKET: a bucket name (``s3://`` optional) valid for a bucket created
    today, not the source itself."""
    from ..snapshots import check_bucket_name, parse_bucket_url

    name, prefix, mode = parse_bucket_url(_bucket(text))
    if prefix.strip("/") or mode:
        raise SnapshotError(
            repr(text), "a fork is a whole bucket: give NEW_BUCKET as s3://NAME or NAME"
        )
    check_bucket_name(name, new=True)
    if name == source.bucket:
        raise SnapshotError(name, "is the bucket being forked: fork into a new bucket")
    return name


def _snap_json(s: SnapshotInfo) -> dict[str, Any]:
    return {"bucket": s.bucket, "version": s.version, "name": s.name, "created": iso(s.created)}


def _obj_json(o: ObjectState) -> dict[str, Any]:
    return {
        "key": o.key,
        "size": o.size,
        "etag": o.etag,
        "modified": iso(o.modified),
        "version_id": o.version_id,
    }


def _point_json(point: SnapshotInfo | int) -> Any:
    if isinstance(point, SnapshotInfo):
        return {"snapshot": _snap_json(point)}
    return {"time": iso(from_ns(point)), "ns": str(point)}


def resolve_point(p: SnapshotProvider, text: str) -> SnapshotInfo | int:
    """Turn a command-line point in time into a snapshot or a time.

    Args:
        p: the bucket.
        text: a snapshot name, a 19-digit version (a snapshot's when one has it, else a
            nanosecond time), or an ISO 8601 time.

    Returns:
        The snapshot, or the time in nanoseconds.

    Raises:
        click.BadParameter: for text that is none of these.
    """
    digits = text.isdigit() and len(text) == 19
    try:
        t = parse_at(text)
    except ValueError:
        t = None
    if t is None or digits:
        for s in p.list():
            if text in (s.name, s.version):
                return s
    if t is None:
        raise click.BadParameter(
            f"{text!r} is neither a snapshot of {p.bucket} nor a time "
            "(ISO 8601 such as 2026-11-21T02:00:00Z, or a 19-digit version)"
        )
    return t


def _inventory() -> Any:
    """The inventory of the ``backup`` command running, if it has one (the groups are plain
    click groups: a test or a library user may run them without the root's context)."""
    obj = click.get_current_context().find_root().obj
    return getattr(obj, "inventory", None)


# snapshot -----------------------------------------------------------------------------------


@click.group()
def snapshot() -> None:
    """Take, list, fork and delete bucket snapshots (s3://bucket[/prefix])."""


@snapshot.command("take")
@click.argument("bucket_url", metavar="BUCKET")
@click.option("--name", help="Name the snapshot (letters, digits, '.', '_', '-').")
@json_option()
@handled
def take(bucket_url: str, name: str | None, as_json: bool) -> None:
    """Take a snapshot of BUCKET now."""
    url = _bucket(bucket_url)
    p = _open(url)
    try:
        s = p.take(name)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--name") from None
    inv = _inventory()
    if inv is not None:
        from ..snapshot_actions import record_snapshot

        record_snapshot(url, s, inventory=inv)
    if as_json:
        dump(_snap_json(s) | {"kind": p.kind})
    else:
        click.echo(f"snapshot {s.version}{f' ({s.name})' if s.name else ''} of {p.bucket}")


@snapshot.command("list")
@click.argument("bucket_url", metavar="BUCKET")
@json_option()
@handled
def list_(bucket_url: str, as_json: bool) -> None:
    """List BUCKET's snapshots, oldest first."""
    snaps = list(_open(bucket_url).list())
    if as_json:
        dump([_snap_json(s) for s in snaps])
        return
    _rows(
        "version",
        "name",
        "created",
        rows=[[s.version, s.name or "-", iso(s.created) or ""] for s in snaps],
    )


@snapshot.command("fork")
@click.argument("bucket_url", metavar="BUCKET")
@click.argument("new_bucket")
@click.option("--snapshot", "which", help="Snapshot name or version (default: now).")
@json_option()
@handled
def fork(bucket_url: str, new_bucket: str, which: str | None, as_json: bool) -> None:
    """Fork BUCKET into NEW_BUCKET as of a snapshot (default: as it is now)."""
    p = _open(bucket_url)
    dest = _new_bucket(new_bucket, p)
    snap = p.find(which) if which else None
    r = p.fork(dest, snap)
    if as_json:
        dump(
            {
                "bucket": r.bucket,
                "source_bucket": r.source_bucket,
                "source_snapshot": r.source_snapshot,
                "copied": r.copied,
                "skipped": r.skipped,
                "bytes_copied": r.bytes_copied,
                "kind": p.kind,
            }
        )
    else:
        how = "copy-on-write" if p.kind == "tigris" else f"{r.copied} objects copied"
        click.echo(
            f"forked {r.source_bucket} at {r.source_snapshot or 'now'} into {r.bucket} ({how})"
        )


@snapshot.command("delete")
@click.argument("bucket_url", metavar="BUCKET")
@click.argument("name_or_version")
@json_option()
@handled
def delete(bucket_url: str, name_or_version: str, as_json: bool) -> None:
    """Delete one snapshot of BUCKET (the objects' history stays)."""
    p = _open(bucket_url)
    s = p.find(name_or_version)
    p.delete(s)
    inv = _inventory()
    if inv is not None:
        from ..snapshot_actions import forget_snapshot

        forget_snapshot(p.bucket, s.version, inventory=inv)
    if as_json:
        dump({"deleted": _snap_json(s)})
    else:
        click.echo(f"deleted snapshot {s.version}{f' ({s.name})' if s.name else ''}")


@snapshot.command("run")
@click.argument("policy")
@json_option()
@click.pass_obj
@handled
def snapshot_run(obj: Ctx, policy: str, as_json: bool) -> None:
    """The snapshot action of POLICY: snapshot its source bucket, prune by its retention."""
    from ..snapshot_actions import snapshot_source

    pol = obj.bucket_policy(policy)
    assert pol.source is not None
    r = snapshot_source(pol.source, pol.name, pol.retention, obj.inventory)
    if as_json:
        dump({"taken": _snap_json(r.taken), "deleted": [_snap_json(s) for s in r.deleted]})
    else:
        click.echo(
            f"snapshot {r.taken.version} ({r.taken.name}) of {pol.source}; "
            f"{len(r.deleted)} deleted by retention"
        )


@snapshot.command("drill")
@click.argument("policy")
@click.option("--expire-only", is_flag=True, help="Only remove forks older than keep_for.")
@json_option()
@click.pass_obj
@handled
def snapshot_drill(obj: Ctx, policy: str, expire_only: bool, as_json: bool) -> None:
    """The fork action of POLICY: a restore drill (fork the latest snapshot, run the check,
    record the result), then remove drill forks older than the policy's keep_for. Exit code
    1 when the check fails."""
    from ..snapshot_actions import expire_drills, fork_drill

    pol = obj.bucket_policy(policy)
    assert pol.source is not None
    inv = obj.inventory
    if pol.drill is None:
        raise click.UsageError(f"policy {policy!r} has no [policy.drill] table")
    res = None
    if not expire_only:
        res = fork_drill(
            pol.source,
            pol.name,
            inv,
            bucket_pattern=pol.drill.bucket,
            check_command=pol.drill.check,
            timeout=pol.drill.timeout.total_seconds(),
        )
    removed = expire_drills(inv, pol.drill.keep_for)
    if as_json:
        dump(
            {
                "drill": None
                if res is None
                else {
                    "bucket": res.bucket,
                    "snapshot": _snap_json(res.snapshot),
                    "ok": res.ok,
                    "returncode": res.returncode,
                    "seconds": round(res.seconds, 3),
                    "output": res.output,
                },
                "removed": removed,
            }
        )
    else:
        if res is not None:
            verdict = "passed" if res.ok else f"FAILED ({res.verdict})"
            click.echo(
                f"drill in {res.bucket} at {res.snapshot.name or res.snapshot.version}: {verdict}"
            )
        for b in removed:
            click.echo(f"removed drill bucket {b}")
    if res is not None and not res.ok:
        sys.exit(1)


# bucket -------------------------------------------------------------------------------------


@click.group()
def bucket() -> None:
    """Time travel in a bucket: what it held at T, what changed between T1 and T2."""


@bucket.command("at")
@click.argument("bucket_url", metavar="BUCKET")
@click.argument("when", metavar="TIME")
@json_option()
@handled
def bucket_at(bucket_url: str, when: str, as_json: bool) -> None:
    """List what BUCKET held at TIME (ISO 8601, a 19-digit version, or a snapshot name)."""
    p = _open(bucket_url)
    point = resolve_point(p, when)
    objs = list(p.list_objects(point))
    if as_json:
        dump(
            {
                "bucket": p.bucket,
                "prefix": p.prefix,
                "at": _point_json(point),
                "objects": [_obj_json(o) for o in objs],
            }
        )
        return
    _rows(
        "key",
        "size",
        "modified",
        "version",
        rows=[[o.key, str(o.size), iso(o.modified) or "", o.version_id or "-"] for o in objs],
    )


@bucket.command("slice")
@click.argument("bucket_url", metavar="BUCKET")
@click.argument("t1")
@click.argument("t2")
@json_option()
@handled
def bucket_slice(bucket_url: str, t1: str, t2: str, as_json: bool) -> None:
    """List what was created, changed and deleted in BUCKET in (T1, T2]."""
    p = _open(bucket_url)
    a, b = resolve_point(p, t1), resolve_point(p, t2)
    s = p.slice(a, b)
    if as_json:
        dump(
            {
                "bucket": p.bucket,
                "prefix": p.prefix,
                "from": _point_json(a),
                "to": _point_json(b),
                "created": [_obj_json(o) for o in s.created],
                "changed": [_obj_json(o) for o in s.changed],
                "deleted": [_obj_json(o) for o in s.deleted],
                "uncertain": s.uncertain,
            }
        )
        return
    rows = [
        [change, o.key, str(o.size), iso(o.modified) or "", o.version_id or "-"]
        for change, objs in (("created", s.created), ("changed", s.changed), ("deleted", s.deleted))
        for o in objs
    ]
    _rows("change", "key", "size", "modified", "version", rows=sorted(rows, key=lambda r: r[1]))
    if s.uncertain:
        click.echo(
            f"warning: {len(s.uncertain)} key(s) changed within a second of T1 or T2, or by a "
            f"recent multipart upload, so the listing cannot place them exactly: "
            f"{', '.join(s.uncertain[:10])}{' ...' if len(s.uncertain) > 10 else ''}",
            err=True,
        )


def register(cli: click.Group) -> None:
    """Add ``snapshot`` and ``bucket`` to the ``backup`` group."""
    cli.add_command(snapshot)
    cli.add_command(bucket)
