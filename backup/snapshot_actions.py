"""Policy actions on snapshot buckets: take and prune a source bucket's snapshots, protect
each archive landed in a target bucket with a snapshot named after it, and restore drills
(fork the latest snapshot, run a check against the fork, record the result, remove the fork
later).

Every snapshot taken here is recorded in the inventory's ``snapshots`` table; every drill is
an inventory event (kind ``drill``), and so is its removal (``drill-removed``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlparse

from botocore.exceptions import ClientError

from .errors import Error, SnapshotError
from .inventory import Event, Inventory, Snapshot
from .policy import Retention
from .retention import select_keep
from .snapshots import VersionedProvider, check_bucket_name, open_provider, parse_bucket_url
from .snapshots.base import SnapshotInfo

__all__ = [
    "DrillFailed",
    "DrillResult",
    "SnapshotRun",
    "expire_drills",
    "forget_snapshot",
    "fork_drill",
    "protect_archive",
    "record_snapshot",
    "remove_bucket",
    "snapshot_source",
]


def record_snapshot(
    url: str,
    s: SnapshotInfo,
    *,
    policy: str | None = None,
    archive_id: str | None = None,
    inventory: Any = None,
) -> None:
    """Record a snapshot in the inventory's ``snapshots`` table.

    Args:
        url: the bucket URL it was taken of.
        s: the snapshot.
        policy: the policy that took it.
        archive_id: the archive it protects (a target bucket's snapshot).
        inventory: an open :class:`~backup.inventory.Inventory`.
    """

    with inventory.session() as db:
        db.add(
            Snapshot(
                bucket=url,
                name=s.name,
                version=s.version,
                created=s.created,
                policy=policy,
                archive_id=archive_id,
            )
        )


def forget_snapshot(bucket: str, version: str, *, inventory: Any) -> int:
    """Remove a deleted snapshot's rows from the inventory's ``snapshots`` table.

    Args:
        bucket: the bucket's name.
        version: the snapshot's version.
        inventory: an open :class:`~backup.inventory.Inventory`.

    Returns:
        How many rows were removed.
    """

    with inventory.session() as db:
        rows = db.query(Snapshot).filter(Snapshot.version == version).all()
        gone = 0
        for row in rows:
            if urlparse(row.bucket).netloc == bucket:
                db.delete(row)
                gone += 1
    return gone


@dataclass(slots=True)
class SnapshotRun:
    """The outcome of a ``snapshot`` action.

    Attributes:
        taken: the snapshot taken.
        deleted: snapshots of this policy that its retention no longer keeps, deleted.
    """

    taken: SnapshotInfo
    deleted: list[SnapshotInfo] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Dated:
    """A snapshot as retention's ``select_keep`` sees an archive."""

    id: str
    created: datetime


def snapshot_source(
    url: str,
    policy: str,
    retention: Retention,
    inventory: Inventory,
    *,
    now: datetime | None = None,
) -> SnapshotRun:
    """Take a snapshot of a source bucket named ``POLICY-YYYYmmddTHHMMSSZ`` and delete the
    policy's older snapshots its retention does not keep (others' snapshots are never
    touched; no rules keeps everything).

    Args:
        url: the bucket, ``s3://bucket[/prefix]``.
        policy: the policy's name.
        retention: the policy's retention rules, applied to its snapshots.
        inventory: where snapshots are recorded.
        now: the time (tests).

    Returns:
        The snapshot taken and those deleted.
    """

    now = now or datetime.now(UTC)
    p = open_provider(url)
    snap = p.take(f"{policy}-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}")
    record_snapshot(url, snap, policy=policy, inventory=inventory)
    # only this action's own snapshots: not the archive action's (``POLICY-archive-…``),
    # whose link to their archive must stay
    own = re.compile(rf"{re.escape(policy)}-\d{{8}}T\d{{6}}Z")
    mine = [s for s in p.list() if s.name and own.fullmatch(s.name)]
    keep = select_keep([_Dated(s.version, s.created) for s in mine], retention)  # type: ignore[misc]
    out = SnapshotRun(snap)
    for s in mine:
        if s.version not in keep and s.version != snap.version:
            p.delete(s)
            forget_snapshot(p.bucket, s.version, inventory=inventory)
            out.deleted.append(s)
    inventory.log(
        "snapshot",
        f"snapshot {snap.name} of {url}: {snap.version}; {len(out.deleted)} deleted by retention",
        policy=policy,
        bucket=url,
        version=snap.version,
        deleted=[s.version for s in out.deleted],
    )
    return out


def _target_bucket(target_url: str) -> tuple[str, str]:
    p = urlparse(target_url)
    if p.scheme != "s3" or not p.netloc:
        raise SnapshotError(target_url, "snapshots after each archive need an s3:// target")
    prefix = unquote(p.path).strip("/")
    return p.netloc, f"{prefix}/" if prefix else ""


def protect_archive(
    target_url: str,
    policy: str,
    archive_id: str,
    inventory: Inventory,
) -> SnapshotInfo:
    """Snapshot a target bucket after an archive landed in it, named ``archive-ID``, so a
    later overwrite or delete in the bucket cannot take the archive away; the snapshot
    version is recorded in the inventory with the archive id.

    Args:
        target_url: the policy's target, ``s3://bucket[/prefix][?...]``.
        policy: the policy.
        archive_id: the archive that landed.
        inventory: where the snapshot is recorded.

    Returns:
        The snapshot. On a portable (versioned) bucket it records just the archive's own
        objects (``PREFIX/POLICY/ARCHIVE_ID*``), not every key of the bucket; a Tigris
        snapshot is whole-bucket and O(1).
    """

    bucket, prefix = _target_bucket(target_url)
    p = open_provider(f"s3://{bucket}")
    if isinstance(p, VersionedProvider):
        p.prefix = f"{prefix}{policy}/{archive_id}"
    snap = p.take(f"archive-{archive_id}")
    record_snapshot(
        f"s3://{bucket}/{prefix}", snap, policy=policy, archive_id=archive_id, inventory=inventory
    )
    return snap


@dataclass(slots=True)
class DrillResult:
    """A restore drill.

    Attributes:
        bucket: the fork the check ran against.
        snapshot: the snapshot forked.
        ok: whether the check command exited 0.
        returncode: its exit code (-1: it timed out).
        output: the last 4 KiB of its output.
        seconds: how long fork and check took.
    """

    bucket: str
    snapshot: SnapshotInfo
    ok: bool
    returncode: int
    output: str
    seconds: float
    timeout: float = 0.0

    @property
    def verdict(self) -> str:
        """``passed``, or why the drill failed in one line (with the last line the check
        printed, where it printed one)."""
        if self.ok:
            return "passed"
        if self.returncode == -1:
            return f"the check timed out after {self.timeout:g} s"
        last = next((ln.strip() for ln in reversed(self.output.splitlines()) if ln.strip()), "")
        return f"the check exited {self.returncode}" + (f": {last[:200]}" if last else "")


class DrillFailed(Error):
    """Restore drill of {} in {} failed: {}"""


def _drill_name(pattern: str, policy: str, bucket: str, now: datetime) -> str:

    try:
        name = pattern.format(
            policy=policy,
            bucket=bucket,
            date=f"{now:%Y%m%d}",
            time=f"{now:%H%M%S}",
        ).lower()
    except (KeyError, IndexError, ValueError) as e:
        raise SnapshotError(bucket, f"drill bucket pattern {pattern!r}: {e}") from None
    try:
        return check_bucket_name(name, new=True)
    except SnapshotError as e:
        raise SnapshotError(
            bucket, f"drill bucket pattern {pattern!r} gives {e.args[0]}: {e.args[1]}"
        ) from None


def fork_drill(
    url: str,
    policy: str,
    inventory: Inventory,
    *,
    bucket_pattern: str,
    check_command: str,
    timeout: float = 3600.0,
    now: datetime | None = None,
) -> DrillResult:
    """Fork the source's latest snapshot into a new bucket and run a check against it.

    The check runs through the shell with ``BACKUP_DRILL_BUCKET`` (the fork),
    ``BACKUP_DRILL_URL`` (``s3://FORK/PREFIX``), ``BACKUP_DRILL_SOURCE`` (the source URL) and
    ``BACKUP_DRILL_SNAPSHOT`` (the version forked) set. The result is an inventory event;
    :func:`expire_drills` removes the fork later.

    Args:
        url: the source bucket.
        policy: the policy.
        inventory: where the drill is recorded.
        bucket_pattern: the fork's name, with ``{policy}``, ``{bucket}``, ``{date}`` and
            ``{time}`` filled in (lower-cased), e.g. ``"{bucket}-drill-{date}{time}"``.
        check_command: a shell command; exit 0 means the drill passed.
        timeout: seconds the check may run.
        now: the time (tests).

    Returns:
        The drill's result (a failed check is a result, not an exception).

    Raises:
        SnapshotError: the source has no snapshot, or the fork failed.
    """

    now = now or datetime.now(UTC)
    started = time.monotonic()
    p = open_provider(url)
    snap = p.latest()
    if snap is None:
        raise SnapshotError(p.bucket, "has no snapshot to drill on; take one first")
    name = _drill_name(bucket_pattern, policy, p.bucket, now)
    p.fork(name, snap)
    _, prefix, mode = parse_bucket_url(url)
    env = dict(os.environ)
    env.update(
        BACKUP_DRILL_BUCKET=name,
        BACKUP_DRILL_URL=f"s3://{name}/{prefix}" + (f"?snapshots={mode}" if mode else ""),
        BACKUP_DRILL_SOURCE=url,
        BACKUP_DRILL_SNAPSHOT=snap.version,
    )
    try:
        proc = subprocess.run(
            check_command,
            shell=True,
            env=env,
            capture_output=True,
            timeout=timeout,
        )
        code = proc.returncode
        output = (proc.stdout + proc.stderr).decode("utf-8", "replace")[-4096:]
    except subprocess.TimeoutExpired:
        code, output = -1, f"check timed out after {timeout:.0f} s"
    res = DrillResult(name, snap, code == 0, code, output, time.monotonic() - started, timeout)
    inventory.log(
        "drill",
        f"restore drill of {url} at {snap.name or snap.version} in {name}: "
        + ("passed" if res.ok else f"FAILED ({res.verdict})"),
        level="info" if res.ok else "error",
        policy=policy,
        source=url,
        bucket=name,
        snapshot=snap.version,
        ok=res.ok,
        returncode=code,
        output=output[-1024:],
        seconds=round(res.seconds, 3),
    )
    return res


def remove_bucket(client: Any, bucket: str) -> None:
    """Delete every version and delete marker of a bucket, then the bucket.

    Args:
        client: an S3 client.
        bucket: the bucket to remove.
    """
    kw: dict[str, Any] = {"Bucket": bucket}
    while True:
        page = client.list_object_versions(**kw)
        objs = [
            {"Key": v["Key"], "VersionId": v.get("VersionId") or "null"}
            for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
        ]
        if objs:
            client.delete_objects(Bucket=bucket, Delete={"Objects": objs, "Quiet": True})
        if not page.get("IsTruncated"):
            break
        kw["KeyMarker"] = page["NextKeyMarker"]
        if page.get("NextVersionIdMarker"):
            kw["VersionIdMarker"] = page["NextVersionIdMarker"]
    client.delete_bucket(Bucket=bucket)


def expire_drills(
    inventory: Inventory, keep_for: timedelta, *, now: datetime | None = None
) -> list[str]:
    """Remove drill forks older than ``keep_for`` (only buckets a drill recorded creating,
    and only after checking that the bucket's lineage names the drilled source).

    Args:
        inventory: where drills are recorded.
        keep_for: how long a fork is kept after its drill.
        now: the time (tests).

    Returns:
        The buckets removed.
    """

    now = now or datetime.now(UTC)
    with inventory.session() as db:
        events = db.query(Event).filter(Event.kind.in_(("drill", "drill-removed"))).all()
    removed = {json.loads(e.data).get("bucket") for e in events if e.kind == "drill-removed"}
    removed_now: list[str] = []
    for e in events:
        data = json.loads(e.data)
        name = data.get("bucket")
        if e.kind != "drill" or not name or name in removed or e.time > now - keep_for:
            continue
        source_bucket, _, mode = parse_bucket_url(data["source"])
        fork_url = f"s3://{name}" + (f"?snapshots={mode}" if mode else "")
        try:
            p = open_provider(fork_url)
            if p.lineage().source_bucket != source_bucket:
                inventory.log(
                    "drill-removed",
                    f"not removing {name}: its lineage does not name {source_bucket}",
                    level="error",
                    policy=e.policy,
                    bucket=name,
                    removed=False,
                )
                removed.add(name)
                continue
            remove_bucket(p.client, name)
        except (ClientError, Error) as err:
            inventory.log(
                "drill",
                f"could not remove drill bucket {name}: {err}",
                level="warning",
                policy=e.policy,
            )
            continue
        removed.add(name)
        removed_now.append(name)
        inventory.log(
            "drill-removed",
            f"removed drill bucket {name}",
            policy=e.policy,
            bucket=name,
            removed=True,
        )
    return removed_now
