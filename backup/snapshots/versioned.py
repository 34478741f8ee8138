"""Snapshots, time travel, slices and forks over any S3 bucket with versioning.

The state of a bucket at time T is, per key, the newest version or delete marker whose
``LastModified`` is at or before T. That is all S3's version listing offers, and it has
traps, each handled here:

- **Whole-second timestamps.** Listings stamp versions to the second, so anything written
  in T's own second counts as at or before T. A key whose answer depends on that second is
  reported as *uncertain* (``Slice.uncertain``, ``uncertain`` of :meth:`state_at`).
- **Versions and DeleteMarkers arrive in two arrays** that fall out of step across pages:
  one key's history can start on one page and end on the next, in either array. A key is
  decided only when a later page has moved past it (``NextKeyMarker``), and its two arrays
  are merged newest first by time, ``IsLatest`` first on a tie; a version and a delete
  marker of one key in the same second, neither the latest, cannot be ordered and make the
  key uncertain at that second.
- **A page holding only delete markers** has no ``Versions`` at all (the failure of
  s3-pit-restore); a missing array is an empty one here.
- **A multipart upload is stamped with its start**, not its completion: a multipart version
  (ETag ``…-N``) newer than ``multipart_grace`` before T may not yet have existed at T and
  makes the key uncertain.
- **``null`` version ids** (objects written before versioning was turned on) are ordinary
  ids: they read, copy and delete like any other.

A snapshot taken by the product does not depend on clocks at all: it records the exact
version id of every key under the prefix. Its manifest is a JSON object stored in the bucket
itself under the reserved prefix ``.backup-snapshots/`` (keys
``.backup-snapshots/VERSION[--NAME].json``, ``VERSION`` a 19-digit nanosecond time), so the
snapshot lives and dies with the bucket and is protected by the bucket's own versioning.
Listings, reads and slices never show the reserved prefix. The snapshot is consistent per
key; across keys it lies between the start and the end of the listing that made it.

A fork copies each key's recorded version server-side into the new bucket (multipart copy
above ``copy_threshold``, 5 GiB, the largest single copy S3 allows) on a small thread pool.
It is resumable: the new bucket holds ``.backup-snapshots/lineage.json`` naming the source
and the snapshot, marked complete only at the end; running the same fork again skips keys
already there with the right size and aborts multipart copies a crash left behind. A fork
"from now" first takes a snapshot named ``fork-NEW_BUCKET`` so that a resumed fork copies
exactly the same versions.
"""

from __future__ import annotations

import builtins
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from botocore.exceptions import ClientError

from ..errors import SnapshotError
from ..targets.awserrors import error_code, http_status, is_missing
from ..threads import leave_signals_to_main
from .base import (
    ForkResult,
    Lineage,
    ObjectState,
    Slice,
    SnapshotInfo,
    SnapshotProvider,
    at_ns,
    check_name,
    from_ns,
    to_ns,
)
from .s3listing import S3Listing

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from .base import At

__all__ = ["RESERVED", "VersionedProvider"]

#: the prefix holding snapshot manifests and fork lineage; hidden from every listing
RESERVED = ".backup-snapshots/"
_LINEAGE = RESERVED + "lineage.json"
_MANIFEST = re.compile(r"^\.backup-snapshots/(\d{19})(?:--([A-Za-z0-9][A-Za-z0-9_.-]*))?\.json$")
_SECOND = 1_000_000_000
_GiB = 1 << 30


@dataclass(slots=True)
class _Entry:
    """One version or delete marker as the listing gives it."""

    key: str
    version_id: str
    deleted: bool
    latest: bool
    ns: int  # LastModified, nanoseconds (whole seconds on S3)
    etag: str
    size: int

    def state(self) -> ObjectState:
        return ObjectState(self.key, self.size, self.etag, from_ns(self.ns), self.version_id)


def _entry(item: dict[str, Any], *, deleted: bool) -> _Entry:
    """One ``Versions`` or ``DeleteMarkers`` item of a version listing (a marker has no
    ETag nor size)."""
    return _Entry(
        item["Key"],
        item.get("VersionId") or "null",
        deleted,
        bool(item.get("IsLatest")),
        to_ns(item["LastModified"]),
        "" if deleted else item.get("ETag", "").strip('"'),
        0 if deleted else int(item.get("Size", 0)),
    )


@dataclass(slots=True)
class _History:
    """A key's versions and delete markers, newest first, and the seconds in which a
    version and a delete marker could not be ordered."""

    key: str
    entries: list[_Entry]
    ties: set[int]


def _merge(key: str, versions: list[_Entry], markers: list[_Entry]) -> _History:
    """Merge a key's two arrays (each newest first) into one history, newest first."""
    out: list[_Entry] = []
    ties: set[int] = set()
    i = j = 0
    while i < len(versions) and j < len(markers):
        a, b = versions[i], markers[j]
        if a.ns > b.ns or (a.ns == b.ns and a.latest):
            out.append(a)
            i += 1
        elif b.ns > a.ns or b.latest:
            out.append(b)
            j += 1
        else:  # same second, neither the latest: the listing does not say which came first
            ties.add(a.ns)
            out.append(a)
            i += 1
    out += versions[i:]
    out += markers[j:]
    return _History(key, out, ties)


class VersionedProvider(S3Listing, SnapshotProvider):
    """Snapshots over an S3 bucket with versioning (AWS, MinIO, Ceph, Tigris and others).

    Args:
        bucket: the bucket.
        prefix: keys outside it are ignored.
        client: an S3 client (default: :func:`backup.targets.s3client.s3_client`).
        page_size: keys per list request (S3's maximum is 1000).
        multipart_grace: how long a multipart upload may have run; a multipart version
            stamped less than this before T makes its key uncertain at T.
        copy_threshold: objects larger than this are forked by multipart copy.
        part_size: the part size of a multipart copy.
        workers: parallel copies in a fork.

    Attributes:
        list_requests: list requests sent so far (for the benchmark).
    """

    kind = "versioned"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: S3Client | None = None,
        page_size: int = 1000,
        multipart_grace: float = 3600.0,
        copy_threshold: int = 5 * _GiB,
        part_size: int = 512 << 20,
        workers: int = 8,
    ) -> None:
        super().__init__(bucket, prefix)
        if client is None:
            from ..targets.s3client import s3_client

            client = s3_client(max_pool_connections=max(16, workers))
        self.client = client
        self.page_size = page_size
        self.multipart_grace_ns = int(multipart_grace * _SECOND)
        self.copy_threshold = copy_threshold
        self.part_size = part_size
        self.workers = workers
        self.list_requests = 0
        self._manifests: dict[str, dict[str, Any]] = {}

    # history ------------------------------------------------------------------------------

    def histories(self, prefix: str | None = None) -> Iterator[_History]:
        """Walk every key's history under the prefix, in key order.

        Args:
            prefix: narrower prefix (default: the provider's).

        Returns:
            One history per key (reserved keys left out), each decided only once the
            listing has moved past the key, so histories that span pages are whole.
        """
        kw: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": self.prefix if prefix is None else prefix,
            "MaxKeys": self.page_size,
        }
        pending: dict[str, tuple[list[_Entry], list[_Entry]]] = {}
        for page in self._pages("list_object_versions", "listing versions", **kw):
            # a page holding only delete markers has no "Versions" at all, and vice versa
            for v in page.get("Versions", []):
                pending.setdefault(v["Key"], ([], []))[0].append(_entry(v, deleted=False))
            for m in page.get("DeleteMarkers", []):
                pending.setdefault(m["Key"], ([], []))[1].append(_entry(m, deleted=True))
            truncated = bool(page.get("IsTruncated"))
            boundary = page.get("NextKeyMarker", "") if truncated else None
            # the key at the page boundary may continue on the next page, in either array
            done = sorted(k for k in pending if boundary is None or k < boundary)
            for k in done:
                vs, ms = pending.pop(k)
                if not k.startswith(RESERVED):
                    yield _merge(k, vs, ms)

    def state_at(self, h: _History, t_ns: int) -> tuple[_Entry | None, bool]:
        """A key's state at a time.

        Args:
            h: the key's history.
            t_ns: the time.

        Returns:
            (its version at T, or None when it was absent or deleted; whether that answer is
            uncertain: decided within T's own second, by an unordered tie, or by a recent
            multipart upload).
        """
        for e in h.entries:
            if e.ns <= t_ns:
                uncertain = (
                    t_ns < e.ns + _SECOND
                    or e.ns in h.ties
                    or (not e.deleted and "-" in e.etag and t_ns - e.ns < self.multipart_grace_ns)
                )
                return (None if e.deleted else e), uncertain
        return None, False

    # snapshots ----------------------------------------------------------------------------

    def _versioning(self) -> str:
        try:
            return str(self.client.get_bucket_versioning(Bucket=self.bucket).get("Status", ""))
        except ClientError as e:
            raise self._fail(e, "reading the versioning status") from None

    def _require_versioning(self) -> None:
        status = self._versioning()
        if status != "Enabled":
            raise SnapshotError(
                self.bucket,
                f"versioning is {status or 'off'}; snapshots need it on (aws s3api "
                f"put-bucket-versioning --bucket {self.bucket} "
                "--versioning-configuration Status=Enabled, or in the store's console)",
            )

    def enable(self) -> None:
        """Create the bucket if it does not exist, and turn versioning on."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            if http_status(e) != 404:
                raise self._fail(e, "HeadBucket") from None
            region = self.client.meta.region_name
            try:
                if region and region != "us-east-1":
                    self.client.create_bucket(
                        Bucket=self.bucket,
                        CreateBucketConfiguration={"LocationConstraint": region},
                    )
                else:
                    self.client.create_bucket(Bucket=self.bucket)
            except ClientError as e2:
                raise self._fail(e2, "CreateBucket") from None
        try:
            self.client.put_bucket_versioning(
                Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"}
            )
        except ClientError as e:
            raise self._fail(e, "turning versioning on") from None

    def take(self, name: str | None = None) -> SnapshotInfo:
        """Record the exact version of every key under the prefix.

        Args:
            name: the snapshot's name (letters, digits, ``._-``).

        Returns:
            The snapshot; its version is the time its listing started, in nanoseconds.

        Raises:
            SnapshotError: versioning is off, or the store refused.
        """
        if name is not None:
            check_name(name)
        self._require_versioning()
        start = time.time_ns()
        objects: dict[str, list[Any]] = {}
        for h in self.histories():
            latest = h.entries[0] if h.entries else None
            if latest is not None and not latest.deleted:
                objects[h.key] = [latest.version_id, latest.etag, latest.size, latest.ns]
        version = str(start)
        manifest = {
            "format": 1,
            "bucket": self.bucket,
            "prefix": self.prefix,
            "version": version,
            "name": name,
            "taken": datetime.now(UTC).isoformat(),
            "fields": ["version_id", "etag", "size", "modified_ns"],
            "objects": objects,
        }
        key = f"{RESERVED}{version}{'--' + name if name else ''}.json"
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=json.dumps(manifest, separators=(",", ":")).encode(),
                ContentType="application/json",
            )
        except ClientError as e:
            raise self._fail(e, "storing the snapshot manifest") from None
        self._manifests[version] = manifest
        return SnapshotInfo(self.bucket, version, name, from_ns(start))

    def list(self) -> Sequence[SnapshotInfo]:
        """Returns: the snapshots whose manifests the bucket holds, oldest first."""
        out: list[SnapshotInfo] = []
        for page in self._pages(
            "list_objects_v2", "listing snapshots", Bucket=self.bucket, Prefix=RESERVED
        ):
            for o in page.get("Contents", []):
                m = _MANIFEST.match(o["Key"])
                if m:
                    v = m.group(1)
                    out.append(SnapshotInfo(self.bucket, v, m.group(2), from_ns(int(v))))
        return sorted(out, key=lambda s: s.version)

    def _manifest_key(self, snap: SnapshotInfo) -> str:
        return f"{RESERVED}{snap.version}{'--' + snap.name if snap.name else ''}.json"

    def manifest(self, snap: SnapshotInfo) -> dict[str, Any]:
        """Read a snapshot's manifest (cached: manifests never change).

        Args:
            snap: the snapshot.

        Returns:
            The manifest: ``objects`` maps key to [version id, etag, size, modified ns].

        Raises:
            SnapshotError: the manifest is missing or does not cover the provider's prefix.
        """
        m = self._manifests.get(snap.version)
        if m is None:
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=self._manifest_key(snap))
                m = cast(dict[str, Any], json.loads(body["Body"].read()))
            except ClientError as e:
                raise self._fail(e, f"reading snapshot {snap.name or snap.version}") from None
            self._manifests[snap.version] = m
        if not self.prefix.startswith(m.get("prefix", "")):
            raise SnapshotError(
                self.bucket,
                f"snapshot {snap.name or snap.version} covers only prefix {m['prefix']!r}",
            )
        return m

    def _snapshot_states(self, snap: SnapshotInfo) -> dict[str, ObjectState]:
        out: dict[str, ObjectState] = {}
        for key, (vid, etag, size, ns) in sorted(self.manifest(snap)["objects"].items()):
            if key.startswith(self.prefix):
                out[key] = ObjectState(key, size, etag, from_ns(ns), vid)
        return out

    # time travel --------------------------------------------------------------------------

    def states(
        self, points: Sequence[At]
    ) -> tuple[builtins.list[dict[str, ObjectState]], set[str]]:
        """The bucket under the prefix at several points, with one listing for all times.

        Args:
            points: snapshots (read from their manifests) and times.

        Returns:
            (per point, key to state; keys uncertain at any of the times).
        """
        results: builtins.list[dict[str, ObjectState]] = [{} for _ in points]
        times = [(i, at_ns(p)) for i, p in enumerate(points) if not isinstance(p, SnapshotInfo)]
        uncertain: set[str] = set()
        for i, p in enumerate(points):
            if isinstance(p, SnapshotInfo):
                results[i] = self._snapshot_states(p)
        if times:
            for h in self.histories():
                for i, t in times:
                    e, unc = self.state_at(h, t)
                    if unc:
                        uncertain.add(h.key)
                    if e is not None:
                        results[i][h.key] = e.state()
        return results, uncertain

    def list_objects(self, at: At | None = None) -> Iterator[ObjectState]:
        """List the objects under the prefix as they were at ``at`` (None: now), in key order."""
        if at is None:
            yield from self._objects(RESERVED, Bucket=self.bucket, Prefix=self.prefix)
            return
        if isinstance(at, SnapshotInfo):
            yield from self._snapshot_states(at).values()
            return
        t = at_ns(at)
        for h in self.histories():
            found, _ = self.state_at(h, t)
            if found is not None:
                yield found.state()

    def version_at(self, key: str, at: At) -> str | None:
        """Args: key: an object key; at: a point in time.

        Returns:
            The version id the key had then, or None when it was absent.
        """
        if isinstance(at, SnapshotInfo):
            rec = self.manifest(at)["objects"].get(key)
            return str(rec[0]) if rec else None
        t = at_ns(at)
        for h in self.histories(prefix=key):
            if h.key == key:
                e, _ = self.state_at(h, t)
                return e.version_id if e else None
        return None

    def read(self, key: str, at: At | None = None) -> BinaryIO:
        """Open object ``key`` as it was at ``at`` (None: now) for streamed reading.

        Raises:
            SnapshotError: the key did not exist then.
        """
        kw: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if at is not None:
            vid = self.version_at(key, at)
            if vid is None:
                raise SnapshotError(self.bucket, f"no object {key!r} at {_label(at)}")
            kw["VersionId"] = vid
        try:
            return cast(BinaryIO, self.client.get_object(**kw)["Body"])
        except ClientError as e:
            if is_missing(e, "NoSuchKey", "NoSuchVersion"):
                raise SnapshotError(self.bucket, f"no object {key!r} at {_label(at)}") from None
            raise self._fail(e, f"reading {key!r}") from None

    def slice(self, t1: At, t2: At) -> Slice:
        """Say which keys were created, changed (another version) and deleted in (t1, t2]."""
        (s1, s2), uncertain = self.states([t1, t2])
        return diff_states(s1, s2, uncertain, same=lambda a, b: a.version_id == b.version_id)

    # forks --------------------------------------------------------------------------------

    def lineage(self) -> Lineage:
        """Tell whether versioning is on and, from its lineage object, what it was forked from."""
        enabled = self._versioning() == "Enabled"
        try:
            data = json.loads(
                self.client.get_object(Bucket=self.bucket, Key=_LINEAGE)["Body"].read()
            )
        except ClientError as e:
            if is_missing(e, "NoSuchKey", "404"):
                return Lineage(self.bucket, enabled)
            raise self._fail(e, "reading the lineage") from None
        return Lineage(
            self.bucket,
            enabled,
            data.get("source_bucket"),
            data.get("source_snapshot"),
            bool(data.get("complete")),
        )

    def _put_lineage(self, dest: str, data: dict[str, Any]) -> None:
        self.client.put_object(
            Bucket=dest,
            Key=_LINEAGE,
            Body=json.dumps(data).encode(),
            ContentType="application/json",
        )

    def fork(
        self,
        new_bucket: str,
        snapshot: SnapshotInfo | None = None,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> ForkResult:
        """Copy the bucket as of ``snapshot`` into ``new_bucket``, server-side, resumably.

        Args:
            new_bucket: the fork; created with versioning on if it does not exist.
            snapshot: the snapshot to fork (None: take one named ``fork-NEW_BUCKET`` now).
            progress: told (objects done, objects in all) after each copy.

        Returns:
            How many objects were copied and skipped, and the bytes copied.

        Raises:
            SnapshotError: the new bucket exists and is not an unfinished fork of this
                snapshot, or a copy failed (run the fork again to resume).
        """
        dest = VersionedProvider(new_bucket, client=self.client)
        try:
            self.client.head_bucket(Bucket=new_bucket)
            exists = True
        except ClientError as e:
            if http_status(e) != 404:
                raise self._fail(e, f"HeadBucket {new_bucket}") from None
            exists = False
        done: dict[str, int] = {}
        if exists:
            lin = dest.lineage()
            if lin.source_bucket != self.bucket:
                if any(True for _ in dest.list_objects()):
                    raise SnapshotError(
                        new_bucket, "exists, is not empty and is not a fork of " + self.bucket
                    )
            elif lin.complete and (snapshot is None or lin.source_snapshot == snapshot.version):
                return ForkResult(new_bucket, self.bucket, lin.source_snapshot)
            elif snapshot is not None and lin.source_snapshot != snapshot.version:
                raise SnapshotError(
                    new_bucket,
                    f"is a fork of {self.bucket} at {lin.source_snapshot}, not {snapshot.version}",
                )
            elif snapshot is None and lin.source_snapshot:
                snapshot = self.find(lin.source_snapshot)
            done = {o.key: o.size for o in dest.list_objects()}
            self._abort_uploads(new_bucket)
        if snapshot is None:
            snapshot = self.take(f"fork-{new_bucket}"[:128])
        dest.enable()
        lineage = {
            "source_bucket": self.bucket,
            "source_prefix": self.prefix,
            "source_snapshot": snapshot.version,
            "source_snapshot_name": snapshot.name,
            "started": datetime.now(UTC).isoformat(),
            "complete": False,
        }
        self._put_lineage(new_bucket, lineage)
        todo = []
        skipped = 0
        for st in self._snapshot_states(snapshot).values():
            if done.get(st.key) == st.size:
                skipped += 1
            else:
                todo.append(st)
        copied = 0
        nbytes = 0
        total = len(todo)
        # a bounded window of copies in flight; the first failure cancels the rest
        pool = ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="fork", initializer=leave_signals_to_main
        )
        try:
            inflight: set[Future[ObjectState]] = set()
            it = iter(todo)
            while True:
                for st in it:
                    inflight.add(pool.submit(self._copy, st, new_bucket))
                    if len(inflight) >= 2 * self.workers:
                        break
                if not inflight:
                    break
                finished, inflight = wait(inflight, return_when=FIRST_COMPLETED)
                for f in finished:
                    nbytes += f.result().size
                    copied += 1
                    if progress:
                        progress(copied, total)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        lineage["complete"] = True
        lineage["finished"] = datetime.now(UTC).isoformat()
        self._put_lineage(new_bucket, lineage)
        return ForkResult(new_bucket, self.bucket, snapshot.version, copied, skipped, nbytes)

    def _abort_uploads(self, bucket: str) -> None:
        try:
            ups = self.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
            for u in ups:
                self.client.abort_multipart_upload(
                    Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]
                )
        except ClientError as e:
            raise self._fail(e, f"aborting unfinished copies in {bucket}") from None

    def _copy(self, st: ObjectState, dest: str) -> ObjectState:
        src: dict[str, str] = {"Bucket": self.bucket, "Key": st.key}
        if st.version_id:
            src["VersionId"] = st.version_id
        try:
            if st.size <= self.copy_threshold:
                self.client.copy_object(Bucket=dest, Key=st.key, CopySource=src)
            else:
                self._multipart_copy(st, src, dest)
        except ClientError as e:
            raise SnapshotError(
                self.bucket,
                f"copying {st.key!r} into {dest} failed: {error_code(e) or http_status(e)} "
                "(run the fork again to resume)",
            ) from None
        return st

    def _multipart_copy(self, st: ObjectState, src: dict[str, str], dest: str) -> None:
        hk: dict[str, Any] = {"Bucket": self.bucket, "Key": st.key}
        if "VersionId" in src:
            hk["VersionId"] = src["VersionId"]
        head = self.client.head_object(**hk)
        extra: dict[str, Any] = {"Metadata": head.get("Metadata", {})}
        for k in ("ContentType", "ContentEncoding", "ContentDisposition", "CacheControl"):
            if head.get(k):
                extra[k] = head[k]
        up = self.client.create_multipart_upload(Bucket=dest, Key=st.key, **extra)
        uid = up["UploadId"]
        try:
            parts = []
            for n, start in enumerate(range(0, st.size, self.part_size), 1):
                end = min(start + self.part_size, st.size) - 1
                r = self.client.upload_part_copy(
                    Bucket=dest,
                    Key=st.key,
                    UploadId=uid,
                    PartNumber=n,
                    CopySource=src,
                    CopySourceRange=f"bytes={start}-{end}",
                )
                parts.append({"ETag": r["CopyPartResult"]["ETag"], "PartNumber": n})
            self.client.complete_multipart_upload(
                Bucket=dest,
                Key=st.key,
                UploadId=uid,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            with suppress(ClientError):  # else a resumed fork aborts what is left
                self.client.abort_multipart_upload(Bucket=dest, Key=st.key, UploadId=uid)
            raise

    def delete(self, snapshot: SnapshotInfo) -> None:
        """Delete a snapshot's manifest, every version of it (the objects' history stays)."""
        key = self._manifest_key(snapshot)
        try:
            page = self.client.list_object_versions(Bucket=self.bucket, Prefix=key)
            objs = [
                {"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
                if v["Key"] == key
            ]
            if not objs:
                raise SnapshotError(self.bucket, f"no snapshot {snapshot.name or snapshot.version}")
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objs})
        except ClientError as e:
            raise self._fail(e, "deleting the snapshot") from None
        self._manifests.pop(snapshot.version, None)


def _label(at: At | None) -> str:
    if at is None:
        return "now"
    if isinstance(at, SnapshotInfo):
        return f"snapshot {at.name or at.version}"
    return from_ns(at_ns(at)).isoformat().replace("+00:00", "Z")


def diff_states(
    s1: dict[str, ObjectState],
    s2: dict[str, ObjectState],
    uncertain: set[str],
    *,
    same: Callable[[ObjectState, ObjectState], bool],
) -> Slice:
    """Compare two states of a bucket.

    Args:
        s1: key to state at T1.
        s2: key to state at T2.
        uncertain: keys to report as uncertain.
        same: whether two states of one key are the same object.

    Returns:
        The slice (T1, T2], each list in key order.
    """
    out = Slice(uncertain=sorted(uncertain))
    for k in sorted(s1.keys() | s2.keys()):
        a, b = s1.get(k), s2.get(k)
        if a is None and b is not None:
            out.created.append(b)
        elif a is not None and b is None:
            out.deleted.append(a)
        elif a is not None and b is not None and not same(a, b):
            out.changed.append(b)
    return out
