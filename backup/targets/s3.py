"""The S3 target, ``s3://bucket/prefix?storage_class=DEEP_ARCHIVE``.

Query parameters (all optional):

- ``storage_class``: the class archives are stored in: ``STANDARD`` (default),
  ``STANDARD_IA``, ``ONEZONE_IA``, ``INTELLIGENT_TIERING``, ``GLACIER_IR``, ``GLACIER``
  (Flexible Retrieval) or ``DEEP_ARCHIVE``. Objects written with ``WriteOptions(hot=True)``
  (manifests) are always ``STANDARD``, so planning a restore never waits for a thaw.
- ``region``: the bucket's region (else boto3's configuration).
- ``checksum``: the flexible checksum sent with every part, ``SHA256`` (default), ``CRC32``,
  ``SHA1`` or ``CRC32C`` (CRC32C needs ``awscrt``).
- ``restore_days``: how many days a restored copy of a cold object stays readable (default 7).
- ``tier``: the default retrieval tier, ``Standard`` (default), ``Bulk`` or ``Expedited``.

The endpoint is ``BACKUP_S3_ENDPOINT_URL`` when set (S3-compatible stores), else boto3's.

Writes are streamed multipart uploads, invisible until completed: parts are filled from the
packing pipeline, checksummed, and uploaded by a small thread pool while the next part fills.
The bytes buffered (parts waiting or being uploaded) are bounded by ``buffer_bytes`` (plus the
part being filled), so memory does not grow with the object. The part size starts at
``part_size`` (default 8 MiB) and doubles every 1,000 parts, so a stream of unknown length
stays within S3's 10,000 parts up to about 8 TiB (S3's own limit is 5 TiB). Any failure aborts
the upload; uploads left by a killed process are aborted by :meth:`S3Target.abandon_partial`
(by key) and :meth:`S3Target.sweep_partial` (by age, under the target's prefix).
"""

from __future__ import annotations

import contextlib
import email.utils
import io
import logging
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import parse_qs, quote, unquote, urlencode, urlparse

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import ObjectNotFound, TargetError
from ..threads import leave_signals_to_main
from .awserrors import error_code, error_line, http_status, is_missing
from .base import (
    ObjectInfo,
    ObjectLock,
    Readiness,
    RetrievalStatus,
    Target,
    WriteOptions,
    check_key,
)
from .s3client import s3_client
from .streams import BodyReader, PartWriter

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from .base import RestoreNotice

__all__ = [
    "COLD_CLASSES",
    "MAX_PARTS",
    "MIN_PART",
    "STORAGE_CLASSES",
    "TIERS",
    "S3Target",
    "S3Writer",
    "parse_restore_header",
    "part_size_for",
    "status_from_head",
]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
#: S3's smallest part (all but the last), largest part, and most parts of one upload
MIN_PART = 5 * MiB
MAX_PART = 5 * 1024 * MiB
MAX_PARTS = 10_000
#: classes an object can be stored in
STORAGE_CLASSES = (
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "GLACIER",
    "DEEP_ARCHIVE",
)
#: classes that must be restored before they can be read
COLD_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
#: retrieval tiers, fastest first
TIERS = ("Expedited", "Standard", "Bulk")
_CHECKSUMS = ("SHA256", "CRC32", "CRC32C", "SHA1")
_ONGOING = re.compile(r'ongoing-request\s*=\s*"(true|false)"')
_EXPIRY = re.compile(r'expiry-date\s*=\s*"([^"]+)"')


def part_size_for(part_number: int, base: int, max_parts: int = MAX_PARTS) -> int:
    """The size of part ``part_number`` of a stream whose length is not known in advance.

    Parts keep ``base`` bytes for the first tenth of ``max_parts``, then double every tenth,
    so ``max_parts`` parts hold ``base * max_parts / 10 * 1023`` bytes (about 8 TiB for 8 MiB
    parts and S3's 10,000), while small objects keep small parts.

    Args:
        part_number: 1-based.
        base: the first parts' size (at least 5 MiB for S3, except in tests of this function).
        max_parts: the most parts allowed.

    Returns:
        The part's size in bytes, at most 5 GiB.
    """
    step = max(1, max_parts // 10)
    return min(base << ((part_number - 1) // step), MAX_PART)


def parse_restore_header(value: str | None) -> tuple[bool | None, datetime | None]:
    """Parse ``head_object``'s ``Restore`` (``x-amz-restore``) value.

    Args:
        value: e.g. ``ongoing-request="false", expiry-date="Fri, 21 Dec 2012 00:00:00 GMT"``.

    Returns:
        (ongoing: True while the restore runs, False when done, None when no restore was
        requested; the restored copy's expiry, if given).
    """
    if not value:
        return None, None
    m = _ONGOING.search(value)
    ongoing = None if m is None else m.group(1) == "true"
    e = _EXPIRY.search(value)
    expires = None
    if e is not None:
        try:
            expires = email.utils.parsedate_to_datetime(e.group(1)).astimezone(UTC)
        except (TypeError, ValueError):
            expires = None
    return ongoing, expires


def status_from_head(head: Mapping[str, Any], now: datetime) -> RetrievalStatus:
    """Tell an object's readiness from its ``head_object`` response.

    Args:
        head: the response (``StorageClass``, ``ArchiveStatus``, ``Restore``).
        now: the current time (aware).

    Returns:
        READY for classes read directly and for a restored copy that has not expired (with
        ``expires``); PENDING while a restore runs; NOT_REQUESTED for a cold object with no
        restore, or whose restored copy expired before it was read.
    """
    cls = head.get("StorageClass") or "STANDARD"
    cold = cls in COLD_CLASSES or head.get("ArchiveStatus") in (
        "ARCHIVE_ACCESS",
        "DEEP_ARCHIVE_ACCESS",
    )
    if not cold:
        return RetrievalStatus(Readiness.READY, storage_class=cls)
    ongoing, expires = parse_restore_header(head.get("Restore"))
    if ongoing:
        return RetrievalStatus(Readiness.PENDING, storage_class=cls)
    if ongoing is False and (expires is None or expires > now):
        return RetrievalStatus(Readiness.READY, storage_class=cls, expires=expires)
    return RetrievalStatus(Readiness.NOT_REQUESTED, storage_class=cls, expires=expires)


class _Reader(BodyReader):
    """A GET body that resumes (``Range`` from where it stopped, pinned by ``If-Match`` to
    the same ETag) when the connection breaks mid-stream, which botocore does not retry."""

    def __init__(self, target: S3Target, key: str, first: dict[str, Any]) -> None:
        super().__init__(first["Body"])
        self._t = target
        self._key = key
        self._etag = first.get("ETag")
        self._pos = 0
        self._retries = 5

    def _read(self, n: int) -> bytes:
        while True:
            try:
                return bytes(self._body.read(n))
            except (BotoCoreError, OSError) as e:
                if self._retries <= 0:
                    raise TargetError(self._t.url, f"reading {self._key!r}: {error_line(e)}") from e
                self._retries -= 1
                self._body.close()
                extra = {"IfMatch": self._etag} if self._etag else {}
                try:
                    resp = self._t.client.get_object(
                        Bucket=self._t.bucket,
                        Key=self._t.object_key(self._key),
                        Range=f"bytes={self._pos}-",
                        **extra,
                    )
                except ClientError as ce:
                    raise TargetError(
                        self._t.url, f"reading {self._key!r}: {error_line(ce)}"
                    ) from ce
                self._body = resp["Body"]

    def _seen(self, data: bytes) -> None:
        self._pos += len(data)


class S3Writer(PartWriter):
    """A streamed multipart upload of one object (see the module's description).

    Attributes:
        peak_buffered: the most bytes held in parts waiting for or under upload (tests).
        peak_uploading: the most parts uploaded at once (tests).
        parts: how many parts were sent.
    """

    def __init__(self, target: S3Target, key: str, options: WriteOptions) -> None:
        super().__init__(target.url, key)
        self._t = target
        self._okey = target.object_key(key)
        self._opts = options
        self._buf = bytearray()
        self._size = 0
        self.parts = 0
        self._done_parts: dict[int, dict[str, Any]] = {}
        self._futures: list[Future[None]] = []
        self._buffered = 0
        self._uploading = 0
        self.peak_buffered = 0
        self.peak_uploading = 0
        self._pool = ThreadPoolExecutor(
            target.workers, thread_name_prefix="s3-part", initializer=leave_signals_to_main
        )
        args = self._object_args()
        try:
            resp = target.client.create_multipart_upload(**args)
        except (ClientError, BotoCoreError) as e:
            self._pool.shutdown(wait=False)
            raise TargetError(target.url, f"cannot start upload of {key!r}: {error_line(e)}") from e
        self._upload_id = resp["UploadId"]

    def _object_args(self) -> dict[str, Any]:
        t, o = self._t, self._opts
        args: dict[str, Any] = {
            "Bucket": t.bucket,
            "Key": self._okey,
            "StorageClass": "STANDARD" if o.hot else t.storage_class,
            "ChecksumAlgorithm": t.checksum,
        }
        if o.tags:
            args["Tagging"] = urlencode(dict(o.tags), quote_via=quote)
        if o.lock_mode is not None and o.retain_until is not None:
            args["ObjectLockMode"] = o.lock_mode
            args["ObjectLockRetainUntilDate"] = o.retain_until
        return args

    def _part_size(self) -> int:
        return part_size_for(self.parts + 1, self._t.part_size, self._t.max_parts)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._check()
        view = memoryview(data).cast("B")
        pos, n = 0, len(view)
        while pos < n:
            if self.parts >= self._t.max_parts:
                self._too_large()
            size = self._part_size()
            take = min(size - len(self._buf), n - pos)
            self._buf += view[pos : pos + take]
            pos += take
            if len(self._buf) >= size:
                self._send_part()
        self._size += n
        return n

    def _too_large(self) -> None:
        self.abort()
        raise TargetError(
            self._t.url,
            f"cannot store {self._key!r}: larger than {self._t.max_parts} parts allow",
        )

    def _send_part(self) -> None:
        if self.parts >= self._t.max_parts:
            self._too_large()
        self.parts += 1
        number, buf = self.parts, self._buf
        self._buf = bytearray()
        size = len(buf)
        with self._cond:
            # the bound on memory: wait while the parts in flight fill the budget
            while (
                self._buffered > 0
                and self._buffered + size > self._t.buffer_bytes
                and self._error is None
            ):
                self._cond.wait()
            self._buffered += size
            self.peak_buffered = max(self.peak_buffered, self._buffered)
        self._futures.append(self._pool.submit(self._upload, number, buf))
        self._check()

    def _upload(self, number: int, buf: bytearray) -> None:
        size = len(buf)
        try:
            if self._error is not None:
                return
            with self._cond:
                self._uploading += 1
                self.peak_uploading = max(self.peak_uploading, self._uploading)
            body = bytes(buf)
            del buf
            resp = self._t.client.upload_part(
                Bucket=self._t.bucket,
                Key=self._okey,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=body,
                ChecksumAlgorithm=self._t.checksum,  # type: ignore[arg-type]
            )
            part: dict[str, Any] = {"PartNumber": number, "ETag": resp["ETag"]}
            ck = f"Checksum{self._t.checksum}"
            if ck in resp:
                part[ck] = resp[ck]  # type: ignore[literal-required]
            self._done_parts[number] = part
        except BaseException as e:
            self._keep(e)
        finally:
            with self._cond:
                self._uploading = max(0, self._uploading - 1)
                self._buffered -= size
                self._cond.notify_all()

    def commit(self) -> str:
        self._check()
        t = self._t
        if self._size == 0:
            # S3 has no empty multipart object: store the empty object in one request
            self.abort()
            args = self._object_args()
            try:
                t.client.put_object(Body=b"", **args)
            except (ClientError, BotoCoreError) as e:
                raise TargetError(t.url, f"cannot store {self._key!r}: {error_line(e)}") from e
            return self._key
        if self._buf or self.parts == 0:
            self._send_part()
        for f in self._futures:
            f.result()
        self._check()
        parts = [self._done_parts[n] for n in sorted(self._done_parts)]
        try:
            done = t.client.complete_multipart_upload(
                Bucket=t.bucket,
                Key=self._okey,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
            )
        except (ClientError, BotoCoreError) as e:
            self.abort()
            raise TargetError(t.url, f"cannot store {self._key!r}: {error_line(e)}") from e
        self._finished = True
        o = self._opts
        if o.lock_mode is not None and o.retain_until is not None:
            # AWS applies the lock given to CreateMultipartUpload; some S3-compatible stores
            # (and moto) drop it, so set it again on the version just written (idempotent)
            lock_args: dict[str, Any] = {
                "Bucket": t.bucket,
                "Key": self._okey,
                "Retention": {"Mode": o.lock_mode, "RetainUntilDate": o.retain_until},
            }
            if done.get("VersionId"):
                lock_args["VersionId"] = done["VersionId"]
            try:
                t.client.put_object_retention(**lock_args)
            except (ClientError, BotoCoreError) as e:
                # an unlocked archive is not what the policy asked for: remove it
                with contextlib.suppress(TargetError):
                    t.delete(self._key)
                raise TargetError(t.url, f"cannot lock {self._key!r}: {error_line(e)}") from e
        self._pool.shutdown(wait=False)
        return self._key

    def abort(self) -> None:
        if not self._end():
            return
        # parts still uploading finish first, or an abort could leave them stored
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._buf = bytearray()
        try:
            self._t.client.abort_multipart_upload(
                Bucket=self._t.bucket, Key=self._okey, UploadId=self._upload_id
            )
        except (ClientError, BotoCoreError) as e:
            if not (isinstance(e, ClientError) and error_code(e) == "NoSuchUpload"):
                self._abort_failed(e)


class S3Target(Target):
    """A bucket (and a key prefix in it) on S3 or an S3-compatible store.

    Args:
        url: ``s3://bucket[/prefix][?storage_class=...&region=...&checksum=...]``.
        client: a boto3 S3 client to use instead of building one (tests, benchmarks).
        part_size: the first parts' size (at least 5 MiB; grows for long streams).
        buffer_bytes: the most bytes held in parts waiting for or under upload.
        workers: parts uploaded at once.
        max_parts: the most parts of one upload (S3: 10,000; lower only in tests).

    Raises:
        TargetError: for a malformed URL or an unknown parameter or value.
    """

    supports_object_lock = True

    def __init__(
        self,
        url: str,
        *,
        client: S3Client | None = None,
        part_size: int = 8 * MiB,
        buffer_bytes: int = 32 * MiB,
        workers: int = 4,
        max_parts: int = MAX_PARTS,
    ) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise TargetError(url, "an S3 target is written s3://bucket/prefix")
        self.url = url
        self.bucket = parsed.netloc
        prefix = unquote(parsed.path).strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        q = {k: v[-1] for k, v in parse_qs(parsed.query, keep_blank_values=True).items()}
        unknown = set(q) - {"storage_class", "region", "checksum", "restore_days", "tier"}
        if unknown:
            raise TargetError(
                url,
                f"unknown parameter(s) {', '.join(sorted(unknown))}; known: "
                "storage_class, region, checksum, restore_days, tier",
            )
        self.storage_class = q.get("storage_class", "STANDARD").upper()
        if self.storage_class not in STORAGE_CLASSES:
            raise TargetError(
                url,
                f"storage_class {self.storage_class!r} is not one of {', '.join(STORAGE_CLASSES)}",
            )
        self.checksum = q.get("checksum", "SHA256").upper()
        if self.checksum not in _CHECKSUMS:
            raise TargetError(
                url, f"checksum {self.checksum!r} is not one of {', '.join(_CHECKSUMS)}"
            )
        try:
            self.restore_days = int(q.get("restore_days", "7"))
        except ValueError:
            self.restore_days = 0
        if not 1 <= self.restore_days <= 30:
            raise TargetError(url, "restore_days must be a whole number of days from 1 to 30")
        self.tier = q.get("tier", "Standard").capitalize()
        if self.tier not in TIERS:
            raise TargetError(url, f"tier {self.tier!r} is not one of {', '.join(TIERS)}")
        self.region = q.get("region") or None
        if part_size < MIN_PART and max_parts == MAX_PARTS:
            raise TargetError(url, f"part size {part_size} is below S3's minimum of 5 MiB")
        self.part_size = part_size
        self.buffer_bytes = max(buffer_bytes, part_size)
        self.workers = max(1, workers)
        self.max_parts = max_parts
        self._client: S3Client | None = client
        self._client_lock = threading.Lock()

    @property
    def client(self) -> S3Client:
        """The boto3 client, built on first use: reading a policy file opens every policy's
        target, and a client costs about 0.2 s and 3 MB to build (100 policies: 20 s)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = s3_client(
                        self.region, max_pool_connections=max(10, self.workers + 2)
                    )
        return self._client

    # keys ------------------------------------------------------------------------------

    def restored_refs(self, notices: Iterable[RestoreNotice]) -> set[str]:
        """The references (keys without this target's prefix) of the objects in this bucket
        whose restores the notices say completed."""
        p = self.prefix
        return {
            n.key[len(p) :]
            for n in notices
            if n.archive_id is None and n.bucket == self.bucket and n.key.startswith(p)
        }

    def object_key(self, key: str) -> str:
        """Args:
            key: a target key (``policy/id.tar.zst.age``).

        Returns:
            The bucket key: the target's prefix plus ``key``.

        Raises:
            TargetError: for an invalid key.
        """
        check_key(self.url, key)
        return self.prefix + key

    def _fail(self, ref: str, what: str, e: BaseException) -> TargetError:
        if isinstance(e, ClientError) and is_missing(e):
            return ObjectNotFound(self.url, ref)
        return TargetError(self.url, f"{what} {ref!r}: {error_line(e)}")

    def _head(self, ref: str) -> dict[str, Any]:
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=self.object_key(ref)))
        except (ClientError, BotoCoreError) as e:
            raise self._fail(ref, "cannot read", e) from e

    # the contract ----------------------------------------------------------------------

    def open_write(self, key: str, options: WriteOptions | None = None) -> S3Writer:
        self.object_key(key)
        return S3Writer(self, key, options or WriteOptions())

    def request_retrieval(self, ref: str, *, tier: str | None = None) -> RetrievalStatus:
        """Ask S3 to restore a cold object for ``restore_days`` days.

        202 (started) and 409 ``RestoreAlreadyInProgress`` read as PENDING (a request with a
        faster tier than the running one upgrades it; S3 decides); 200 (a restored copy
        exists) and ``InvalidObjectState`` (the object is not in a cold class) are answered
        with the object's actual status.

        Args:
            ref: the object's reference.
            tier: ``Expedited``, ``Standard`` or ``Bulk``; default the URL's ``tier``.

        Returns:
            The status (PENDING, or READY with the copy's expiry).

        Raises:
            ObjectNotFound: the object is absent.
            TargetError: S3 refused, e.g. Expedited capacity unavailable (503).
        """
        tier = (tier or self.tier).capitalize()
        if tier not in TIERS:
            raise TargetError(self.url, f"tier {tier!r} is not one of {', '.join(TIERS)}")
        try:
            resp = self.client.restore_object(
                Bucket=self.bucket,
                Key=self.object_key(ref),
                RestoreRequest={
                    "Days": self.restore_days,
                    "GlacierJobParameters": {"Tier": tier},  # type: ignore[typeddict-item]
                },
            )
        except ClientError as e:
            code = error_code(e)
            if code == "RestoreAlreadyInProgress" or http_status(e) == 409:
                return RetrievalStatus(Readiness.PENDING, tier=tier)
            if code == "InvalidObjectState":
                return self.retrieval_status(ref)
            raise self._fail(ref, f"cannot restore ({tier})", e) from e
        except BotoCoreError as e:
            raise self._fail(ref, f"cannot restore ({tier})", e) from e
        if resp.get("ResponseMetadata", {}).get("HTTPStatusCode") == 202:
            return RetrievalStatus(Readiness.PENDING, tier=tier)
        # 200: a restored copy exists (or, on some stores, the request was merged)
        status = self.retrieval_status(ref)
        return RetrievalStatus(
            status.state,
            ready_by=status.ready_by,
            storage_class=status.storage_class,
            expires=status.expires,
            tier=tier,
        )

    def retrieval_status(self, ref: str) -> RetrievalStatus:
        """Read the object's class and ``Restore`` header (one HEAD request).

        Returns:
            READY for classes read directly and for a restored copy that has not expired
            (with ``expires``); PENDING while a restore runs; NOT_REQUESTED for a cold object
            with no restore, or whose restored copy expired.
        """
        return status_from_head(self._head(ref), datetime.now(UTC))

    def open_read(self, ref: str) -> BinaryIO:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self.object_key(ref))
        except ClientError as e:
            if error_code(e) == "InvalidObjectState":
                raise TargetError(
                    self.url,
                    f"{ref!r} is in a cold storage class: request a retrieval and wait for it",
                ) from e
            raise self._fail(ref, "cannot read", e) from e
        except BotoCoreError as e:
            raise self._fail(ref, "cannot read", e) from e
        return io.BufferedReader(_Reader(self, ref, dict(resp)), 1024 * 1024)

    def delete(self, ref: str) -> None:
        """Remove every version of the object (so storage is really freed on a versioned
        bucket, and Object Lock is really honoured: a locked version refuses).

        Raises:
            TargetError: a version is under retention or a legal hold, or S3 refused.
        """
        okey = self.object_key(ref)
        try:
            versions: list[tuple[str, str | None]] = []
            pages = self.client.get_paginator("list_object_versions").paginate(
                Bucket=self.bucket, Prefix=okey
            )
            for page in pages:
                for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                    if v.get("Key") == okey:
                        versions.append((okey, v.get("VersionId")))
        except ClientError as e:
            if error_code(e) not in ("AccessDenied", "NotImplemented"):
                raise self._fail(ref, "cannot delete", e) from e
            versions = [(okey, None)]  # no permission to list versions: a plain delete
        except BotoCoreError as e:
            raise self._fail(ref, "cannot delete", e) from e
        for key, vid in versions:
            try:
                if vid is None or vid == "null":
                    self.client.delete_object(Bucket=self.bucket, Key=key)
                else:
                    self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=vid)
            except ClientError as e:
                if is_missing(e):
                    continue
                if error_code(e) == "AccessDenied":
                    raise TargetError(
                        self.url,
                        f"cannot delete {ref!r}: refused (Object Lock retention or a legal "
                        "hold, or no permission)",
                    ) from e
                raise self._fail(ref, "cannot delete", e) from e
            except BotoCoreError as e:
                raise self._fail(ref, "cannot delete", e) from e

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            found = [
                ObjectInfo(
                    o["Key"][len(self.prefix) :],
                    o["Size"],
                    o["LastModified"].astimezone(UTC),
                    o.get("StorageClass", "STANDARD"),
                )
                for page in pages
                for o in page.get("Contents", [])
            ]
        except (ClientError, BotoCoreError) as e:
            raise TargetError(self.url, f"cannot list {prefix!r}: {error_line(e)}") from e
        yield from sorted(found, key=lambda o: o.key)

    def exists(self, ref: str) -> bool:
        try:
            self._head(ref)
        except ObjectNotFound:
            return False
        return True

    def stat(self, ref: str) -> ObjectInfo:
        """One HEAD request: size, time and storage class."""
        head = self._head(ref)
        return ObjectInfo(
            ref,
            int(head["ContentLength"]),
            head["LastModified"].astimezone(UTC),
            head.get("StorageClass") or "STANDARD",
        )

    def describe(self, ref: str) -> tuple[ObjectInfo, RetrievalStatus]:
        """Size, class and retrieval status from one HEAD request."""
        head = self._head(ref)
        info = ObjectInfo(
            ref,
            int(head["ContentLength"]),
            head["LastModified"].astimezone(UTC),
            head.get("StorageClass") or "STANDARD",
        )
        return info, status_from_head(head, datetime.now(UTC))

    def _uploads(self, okey_prefix: str) -> Iterator[dict[str, Any]]:
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=okey_prefix
        )
        for page in pages:
            yield from (dict(u) for u in page.get("Uploads", []))

    def _abort(self, up: dict[str, Any]) -> bool:
        try:
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"]
            )
        except ClientError as e:
            if error_code(e) == "NoSuchUpload":
                return False
            raise TargetError(
                self.url, f"cannot abort upload of {up['Key']!r}: {error_line(e)}"
            ) from e
        return True

    def partial_uploads(self, prefix: str = "") -> tuple[str, ...]:
        """The keys of multipart uploads under ``prefix`` that were never completed."""
        try:
            keys = sorted(u["Key"][len(self.prefix) :] for u in self._uploads(self.prefix + prefix))
        except (ClientError, BotoCoreError) as e:
            raise TargetError(self.url, f"cannot list uploads: {error_line(e)}") from e
        return tuple(keys)

    def abandon_partial(self, key: str) -> int:
        """Abort the multipart uploads of ``key`` (a dead writer's; not a live one's).

        Args:
            key: the object key the dead writer was writing.

        Returns:
            How many uploads were aborted.
        """
        okey = self.object_key(key)
        try:
            return sum(self._abort(u) for u in list(self._uploads(okey)) if u["Key"] == okey)
        except (ClientError, BotoCoreError) as e:
            raise TargetError(self.url, f"cannot list uploads of {key!r}: {error_line(e)}") from e

    def sweep_partial(self, older_than: timedelta = timedelta(hours=24)) -> int:
        """Abort multipart uploads under the target's prefix started more than
        ``older_than`` ago (left by crashed or killed backups).

        Args:
            older_than: leave younger uploads alone; a backup may be writing them.

        Returns:
            How many were aborted.
        """
        cutoff = datetime.now(UTC) - older_than
        try:
            stale = [u for u in self._uploads(self.prefix) if u["Initiated"] < cutoff]
            return sum(self._abort(u) for u in stale)
        except (ClientError, BotoCoreError) as e:
            raise TargetError(self.url, f"cannot list uploads: {error_line(e)}") from e

    # Object Lock -----------------------------------------------------------------------

    def set_legal_hold(self, ref: str, on: bool) -> None:
        """Put a legal hold on the object (``on``) or take it off.

        Raises:
            ObjectNotFound: the object is absent.
            TargetError: the bucket has no Object Lock, or S3 refused.
        """
        try:
            self.client.put_object_legal_hold(
                Bucket=self.bucket,
                Key=self.object_key(ref),
                LegalHold={"Status": "ON" if on else "OFF"},
            )
        except (ClientError, BotoCoreError) as e:
            raise self._fail(ref, "cannot set the legal hold of", e) from e

    def object_lock(self, ref: str) -> ObjectLock:
        """One HEAD request: the object's retention mode and date and its legal hold."""
        head = self._head(ref)
        until = head.get("ObjectLockRetainUntilDate")
        return ObjectLock(
            mode=head.get("ObjectLockMode"),
            retain_until=until.astimezone(UTC) if isinstance(until, datetime) else None,
            legal_hold=head.get("ObjectLockLegalHoldStatus") == "ON",
        )
