"""Restoring a bucket source's archived state into a bucket.

Invariants:

- Nothing is destroyed: every write is a new version, every delete a delete marker (on a
  versioned bucket); out of place by default, the destination never overlaps the source.
- The destination is checked (:func:`check_bucket_destination`)
  before anything is read or retrieved.
- Each object carries its source time (the archived LastModified) in
  ``x-amz-meta-backup-source-time``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from .crypto.age import Identity
from .errors import SnapshotError
from .inventory import Inventory
from .policy import Policy
from .progress import Progress
from .restore import restore
from .snapshots import parse_bucket_url
from .snapshots.source import SOURCE_TIME_META
from .targets.awserrors import error_code, http_status
from .targets.s3client import s3_client

__all__ = ["BucketRestoreResult", "check_bucket_destination", "restore_to_bucket"]


@dataclass(slots=True)
class BucketRestoreResult:
    """What a restore into a bucket wrote.

    Attributes:
        destination: ``s3://bucket/prefix``.
        archives: the archives read.
        uploaded: objects written (new versions).
        unchanged: objects already holding the same bytes, left alone (in place).
        deleted: keys given a delete marker (in place: absent at the restored time).
        bytes: bytes uploaded.
    """

    destination: str
    archives: list[str]
    uploaded: int = 0
    unchanged: int = 0
    deleted: int = 0
    bytes: int = 0


def check_bucket_destination(
    policy: Policy, dest_url: str, *, in_place: bool = False, client: Any = None
) -> tuple[str, str]:
    """Check where a bucket restore would write, before anything is read or retrieved: out
    of place, the destination must not overlap the source; in place, it must be the source;
    and the bucket must exist and answer.

    Args:
        policy: a policy whose ``source`` is a bucket.
        dest_url: ``s3://bucket[/prefix]``.
        in_place: the restore writes into the source itself.
        client: an S3 client (default: the shared factory's).

    Returns:
        (bucket, prefix ending in "/" or empty).

    Raises:
        SnapshotError: one line naming what is wrong.
    """
    if policy.source is None:
        raise SnapshotError(policy.name, "the policy has no bucket source")
    dbucket, dprefix, _ = parse_bucket_url(dest_url)
    sbucket, sprefix, _ = parse_bucket_url(policy.source)
    if dprefix and not dprefix.endswith("/"):
        dprefix += "/"
    overlaps = dbucket == sbucket and (dprefix.startswith(sprefix) or sprefix.startswith(dprefix))
    if overlaps and not in_place:
        raise SnapshotError(
            dbucket,
            f"s3://{dbucket}/{dprefix} overlaps the source {policy.source}; restores are out "
            "of place by default (give --in-place to write new versions into the source)",
        )
    if in_place and (dbucket, dprefix.rstrip("/")) != (sbucket, sprefix.rstrip("/")):
        raise SnapshotError(dbucket, f"--in-place restores into the source {policy.source} only")
    if client is None:
        client = s3_client()
    try:
        client.head_bucket(Bucket=dbucket)
    except ClientError as e:
        status, code = http_status(e), error_code(e)
        if status == 404 or code in ("404", "NoSuchBucket"):
            raise SnapshotError(dbucket, "the destination bucket does not exist") from None
        if status == 403 or code in ("403", "AccessDenied"):
            raise SnapshotError(dbucket, "access to the destination bucket is denied") from None
        raise SnapshotError(dbucket, f"the destination bucket does not answer ({code})") from None
    except BotoCoreError as e:
        raise SnapshotError(dbucket, f"the destination bucket does not answer: {e}") from None
    return dbucket, dprefix


def restore_to_bucket(
    policy: Policy,
    inventory: Inventory,
    dest_url: str,
    identities: Sequence[Identity],
    *,
    at: datetime | None = None,
    archive_id: str | None = None,
    include: Sequence[str] = (),
    in_place: bool = False,
    client: Any = None,
    progress: Progress | None = None,
) -> BucketRestoreResult:
    """Restore a bucket source's archived state into a bucket.

    Out of place by default: ``dest_url`` must not overlap the policy's source, and only new
    objects are written. ``in_place`` allows the source itself and then also gives a delete
    marker to every key under the prefix that was absent at the restored time. Either way
    nothing is destroyed: every write is a new version, every delete a delete marker (on a
    versioned bucket). Each object carries its source time (the archived LastModified) in
    ``x-amz-meta-backup-source-time``.

    The archive chain is extracted through the ordinary restore into a temporary directory
    next to the system's temp dir first (it needs the restored bytes' room on disk), then
    uploaded.

    Args:
        policy: a policy whose ``source`` is a bucket.
        inventory: where the chain is recorded.
        dest_url: ``s3://bucket[/prefix]``.
        identities: secret keys.
        at: the newest archive at or before this time.
        archive_id: this archive instead.
        include: only paths matching these globs.
        in_place: allow restoring into the source and writing delete markers.
        client: an S3 client (default: the shared factory's).
        progress: told of bytes read.

    Returns:
        What was written.

    Raises:
        SnapshotError: the destination overlaps the source without ``in_place``, or is
            missing (:func:`check_bucket_destination`).
    """
    if client is None:
        client = s3_client()
    dbucket, dprefix = check_bucket_destination(policy, dest_url, in_place=in_place, client=client)
    with tempfile.TemporaryDirectory(prefix="backup-bucket-restore-") as tmp:
        staged = Path(tmp) / "tree"
        rr = restore(
            policy.name,
            inventory,
            staged,
            identities,
            at=at,
            archive_id=archive_id,
            include=include,
            progress=progress,
        )
        out = BucketRestoreResult(f"s3://{dbucket}/{dprefix}", list(rr.archives))
        current: dict[str, str] = {}
        if in_place:
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=dbucket, Prefix=dprefix
            ):
                for o in page.get("Contents", []):
                    current[o["Key"]] = o.get("ETag", "").strip('"')
        wanted: set[str] = set()
        for dirpath, _dirs, files in os.walk(staged):
            for name in sorted(files):
                fp = Path(dirpath) / name
                rel = fp.relative_to(staged).as_posix()
                key = dprefix + rel
                wanted.add(key)
                st = fp.stat()
                data_md5 = _md5(fp)
                if in_place and current.get(key) == data_md5:
                    out.unchanged += 1
                    continue
                source_time = datetime.fromtimestamp(st.st_mtime_ns / 1e9, UTC)
                try:
                    with open(fp, "rb") as f:
                        client.put_object(
                            Bucket=dbucket,
                            Key=key,
                            Body=f,
                            Metadata={
                                SOURCE_TIME_META: source_time.isoformat().replace("+00:00", "Z"),
                                "backup-archive": rr.archives[-1] if rr.archives else "",
                            },
                        )
                except ClientError as e:
                    raise SnapshotError(dbucket, f"writing {key!r} failed: {e}") from None
                out.uploaded += 1
                out.bytes += st.st_size
        if in_place and not include:
            for key in sorted(set(current) - wanted):
                if key.startswith(".backup-snapshots/"):
                    continue
                try:
                    client.delete_object(Bucket=dbucket, Key=key)  # a delete marker, no VersionId
                except ClientError as e:
                    raise SnapshotError(dbucket, f"deleting {key!r} failed: {e}") from None
                out.deleted += 1
    return out


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
