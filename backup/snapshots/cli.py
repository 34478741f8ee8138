"""``backup snapshot`` and ``backup bucket``: snapshots, forks, time travel and slices of a
bucket written as ``s3://bucket[/prefix][?snapshots=tigris|versioned]``.

Follows the conventions of :mod:`backup.cli`: one message and exit code 1 on an error, a
table by default and ``--json`` on every listing (times ISO 8601 UTC). Snapshots taken or
deleted here are recorded in the inventory's ``snapshots`` table.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..snapshot_actions import record_snapshot
from .base import ObjectState, SnapshotInfo, SnapshotProvider, from_ns, parse_at

__all__ = ["bucket", "record_snapshot", "resolve_point", "snapshot"]

F = TypeVar("F", bound=Callable[..., Any])


def _handled(f: F) -> F:
    @functools.wraps(f)
    def wrapper(*a: Any, **kw: Any) -> Any:
        from ..cli import _errors

        with _errors():
            return f(*a, **kw)

    return wrapper  # type: ignore[return-value]


def _iso(t: Any) -> str | None:
    from ..cli import _iso as iso

    return iso(t)


def _dump(obj: Any) -> None:
    from ..cli import _dump as dump

    dump(obj)


def _table(*columns: str, rows: list[list[str]]) -> None:
    from rich.table import Table

    from ..cli import _table as show

    t = Table(*columns, box=None)
    for r in rows:
        t.add_row(*r)
    show(t)


def _bucket(text: str) -> str:
    """The one reading of a BUCKET argument: ``s3://bucket[/prefix][?snapshots=...]`` or the
    same without ``s3://``; a name S3 does not allow is one clear error, not a traceback."""
    from . import bucket_url

    return bucket_url(text)


def _open(text: str) -> SnapshotProvider:
    from . import open_provider

    return open_provider(_bucket(text))


def _new_bucket(text: str, source: SnapshotProvider) -> str:
    """A fork's NEW_BUCKET: a bucket name (``s3://`` optional) valid for a bucket created
    today, not the source itself."""
    from ..errors import SnapshotError
    from . import check_bucket_name, parse_bucket_url

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
    return {"bucket": s.bucket, "version": s.version, "name": s.name, "created": _iso(s.created)}


def _obj_json(o: ObjectState) -> dict[str, Any]:
    return {
        "key": o.key,
        "size": o.size,
        "etag": o.etag,
        "modified": _iso(o.modified),
        "version_id": o.version_id,
    }


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
    ctx = click.get_current_context()
    obj = ctx.find_root().obj
    return getattr(obj, "inventory", None)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group()
def snapshot() -> None:
    """Take, list, fork and delete bucket snapshots (s3://bucket[/prefix])."""


@snapshot.command("take")
@click.argument("bucket_url", metavar="BUCKET")
@click.option("--name", help="Name the snapshot (letters, digits, '.', '_', '-').")
@json_option
@_handled
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
        record_snapshot(url, s, inventory=inv)
    if as_json:
        _dump(_snap_json(s) | {"kind": p.kind})
    else:
        click.echo(f"snapshot {s.version}{f' ({s.name})' if s.name else ''} of {p.bucket}")


@snapshot.command("list")
@click.argument("bucket_url", metavar="BUCKET")
@json_option
@_handled
def list_(bucket_url: str, as_json: bool) -> None:
    """List BUCKET's snapshots, oldest first."""
    snaps = list(_open(bucket_url).list())
    if as_json:
        _dump([_snap_json(s) for s in snaps])
        return
    _table(
        "version",
        "name",
        "created",
        rows=[[s.version, s.name or "-", _iso(s.created) or ""] for s in snaps],
    )


@snapshot.command("fork")
@click.argument("bucket_url", metavar="BUCKET")
@click.argument("new_bucket")
@click.option("--snapshot", "which", help="Snapshot name or version (default: now).")
@json_option
@_handled
def fork(bucket_url: str, new_bucket: str, which: str | None, as_json: bool) -> None:
    """Fork BUCKET into NEW_BUCKET as of a snapshot (default: as it is now)."""
    p = _open(bucket_url)
    dest = _new_bucket(new_bucket, p)
    snap = p.find(which) if which else None
    r = p.fork(dest, snap)
    if as_json:
        _dump(
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
@json_option
@_handled
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
        _dump({"deleted": _snap_json(s)})
    else:
        click.echo(f"deleted snapshot {s.version}{f' ({s.name})' if s.name else ''}")


@click.group()
def bucket() -> None:
    """Time travel in a bucket: what it held at T, what changed between T1 and T2."""


@bucket.command("at")
@click.argument("bucket_url", metavar="BUCKET")
@click.argument("when", metavar="TIME")
@json_option
@_handled
def bucket_at(bucket_url: str, when: str, as_json: bool) -> None:
    """List what BUCKET held at TIME (ISO 8601, a 19-digit version, or a snapshot name)."""
    p = _open(bucket_url)
    point = resolve_point(p, when)
    objs = list(p.list_objects(point))
    if as_json:
        _dump(
            {
                "bucket": p.bucket,
                "prefix": p.prefix,
                "at": _point_json(point),
                "objects": [_obj_json(o) for o in objs],
            }
        )
        return
    _table(
        "key",
        "size",
        "modified",
        "version",
        rows=[[o.key, str(o.size), _iso(o.modified) or "", o.version_id or "-"] for o in objs],
    )


def _point_json(point: SnapshotInfo | int) -> Any:
    if isinstance(point, SnapshotInfo):
        return {"snapshot": _snap_json(point)}
    return {"time": _iso(from_ns(point)), "ns": str(point)}


@bucket.command("slice")
@click.argument("bucket_url", metavar="BUCKET")
@click.argument("t1")
@click.argument("t2")
@json_option
@_handled
def bucket_slice(bucket_url: str, t1: str, t2: str, as_json: bool) -> None:
    """List what was created, changed and deleted in BUCKET in (T1, T2]."""
    p = _open(bucket_url)
    a, b = resolve_point(p, t1), resolve_point(p, t2)
    s = p.slice(a, b)
    if as_json:
        _dump(
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
        [change, o.key, str(o.size), _iso(o.modified) or "", o.version_id or "-"]
        for change, objs in (("created", s.created), ("changed", s.changed), ("deleted", s.deleted))
        for o in objs
    ]
    _table("change", "key", "size", "modified", "version", rows=sorted(rows, key=lambda r: r[1]))
    if s.uncertain:
        click.echo(
            f"warning: {len(s.uncertain)} key(s) changed within a second of T1 or T2, or by a "
            f"recent multipart upload, so the listing cannot place them exactly: "
            f"{', '.join(s.uncertain[:10])}{' ...' if len(s.uncertain) > 10 else ''}",
            err=True,
        )


def _bucket_policy(name: str) -> Any:
    obj = click.get_current_context().find_root().obj
    pol = obj.policy(name)
    if pol.source is None:
        from ..errors import PolicyError

        raise PolicyError(
            str(obj.settings.config), f"policy {name!r} has no bucket source (source = s3://...)"
        )
    return pol, obj.inventory


@snapshot.command("run")
@click.argument("policy")
@json_option
@_handled
def snapshot_run(policy: str, as_json: bool) -> None:
    """The snapshot action of POLICY: snapshot its source bucket, prune by its retention."""
    from ..snapshot_actions import snapshot_source

    pol, inv = _bucket_policy(policy)
    r = snapshot_source(pol.source, pol.name, pol.retention, inv)
    if as_json:
        _dump({"taken": _snap_json(r.taken), "deleted": [_snap_json(s) for s in r.deleted]})
    else:
        click.echo(
            f"snapshot {r.taken.version} ({r.taken.name}) of {pol.source}; "
            f"{len(r.deleted)} deleted by retention"
        )


@snapshot.command("drill")
@click.argument("policy")
@click.option("--expire-only", is_flag=True, help="Only remove forks older than keep_for.")
@json_option
@_handled
def snapshot_drill(policy: str, expire_only: bool, as_json: bool) -> None:
    """The fork action of POLICY: a restore drill (fork the latest snapshot, run the check,
    record the result), then remove drill forks older than the policy's keep_for. Exit code
    1 when the check fails."""
    import sys

    from ..snapshot_actions import expire_drills, fork_drill

    pol, inv = _bucket_policy(policy)
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
        _dump(
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


def restore_into_bucket(
    obj: Any,
    policy: str | None,
    dest_url: str,
    at: str | None,
    archive_id: str | None,
    include: tuple[str, ...],
    identity: Any,
    in_place: bool,
    as_json: bool,
) -> None:
    """``backup restore POLICY --to s3://bucket/prefix [--in-place]``: restore a bucket
    source's archived state into a bucket (see :func:`.source.restore_to_bucket`).

    Args:
        obj: the CLI context (settings, policies, inventory).
        policy: the policy, whose ``source`` must be a bucket.
        dest_url: the destination bucket URL.
        at: ISO 8601 time of the state to restore.
        archive_id: an archive instead of a time.
        include: globs of paths to restore.
        identity: the identity file (default: the settings').
        in_place: restore into the source itself (new versions and delete markers only).
        as_json: print JSON.
    """
    from .. import restore as r
    from ..bucket_restore import restore_to_bucket
    from ..cli import _progress, parse_time
    from ..errors import Error

    if policy is None:
        raise Error("name the POLICY whose bucket source to restore")
    pol = obj.policy(policy)
    if pol.source is None:
        raise Error(f"policy {policy!r} backs up local paths; restore it --to a directory")
    res = restore_to_bucket(
        pol,
        obj.inventory,
        dest_url,
        r.identities_from(identity or obj.settings.identity),
        at=parse_time(at),
        archive_id=archive_id,
        include=include,
        in_place=in_place,
        progress=_progress(as_json),
    )
    if as_json:
        _dump(
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
