"""Native Tigris snapshots, forks, rename and bundle.

Tigris extends the S3 API with request headers, which must be signed (SigV4 covers every
``x-*`` header sent), so they are added in botocore's ``before-sign`` event. Unlike
``tigris-boto3-ext``, which registers handlers client-wide while a context manager is open
(so a thread reading snapshot A can send its request with thread B's snapshot B header),
headers here travel **with each call**: the caller passes ``TigrisHeaders={...}`` to a
client method, a ``provide-client-params`` handler moves them out of the parameters into
that one request's context, and the ``before-sign`` handler adds them to that request only.
One client is shared safely by any number of threads reading different snapshots.

Headers used (docs: https://www.tigrisdata.com/docs/buckets/snapshots-and-forks):

==================================================  =========================================
``X-Tigris-Enable-Snapshot: true``                  CreateBucket: keep history (creation only)
``X-Tigris-Snapshot: true[; name=NAME]``            CreateBucket on an existing bucket: take
                                                    a snapshot; ``x-tigris-snapshot-version``
                                                    comes back
``X-Tigris-Snapshot: BUCKET``                       ListBuckets: list BUCKET's snapshots as
                                                    ``VERSION`` or ``VERSION; name=NAME``
``X-Tigris-Snapshot-Version: V``                    GetObject, HeadObject, ListObjectsV2,
                                                    CopyObject: read as of V (any nanosecond
                                                    time); DeleteBucket: delete snapshot V
``X-Tigris-Fork-Source-Bucket[-Snapshot]``          CreateBucket: fork, copy-on-write
``X-Tigris-Rename: true``                           CopyObject: rename in place
==================================================  =========================================
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from botocore.exceptions import ClientError

from ..errors import SnapshotError
from ..targets.awserrors import error_code, is_missing
from .base import (
    ForkResult,
    Lineage,
    SnapshotInfo,
    SnapshotProvider,
    at_ns,
    check_name,
    from_ns,
)
from .s3listing import S3Listing
from .versioned import diff_states

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from .base import At, ObjectState, Slice

__all__ = ["HEADERS_PARAM", "BundleStream", "TigrisProvider", "install_header_hooks"]

#: the extra keyword argument a hooked client accepts: headers for this one request
HEADERS_PARAM = "TigrisHeaders"
_CTX = "backup_tigris_headers"
_BUNDLE_ERRORS = "__bundle_errors.json"


def _move_headers_to_context(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    headers = params.pop(HEADERS_PARAM, None)
    if headers:
        context[_CTX] = dict(headers)


def _add_headers(request: Any, **_: Any) -> None:
    headers = getattr(request, "context", {}).get(_CTX)
    if not headers:
        return
    for k, v in headers.items():
        if k in request.headers:
            del request.headers[k]  # a retried request is signed again
        request.headers[k] = v


def install_header_hooks(client: Any) -> Any:
    """Let ``client`` take ``TigrisHeaders={...}`` on any S3 call (idempotent).

    Args:
        client: a boto3 S3 client.

    Returns:
        The same client.
    """
    ev = client.meta.events
    ev.register(
        "provide-client-params.s3.*", _move_headers_to_context, unique_id="backup-tigris-params"
    )
    ev.register("before-sign.s3.*", _add_headers, unique_id="backup-tigris-sign")
    return client


def _headers(resp: dict[str, Any]) -> dict[str, str]:
    return cast(dict[str, str], resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}))


def parse_snapshot_name(bucket: str, raw: str, created: Any) -> SnapshotInfo | None:
    """Parse one ListBuckets entry of a snapshot listing.

    Args:
        bucket: the bucket listed.
        raw: ``VERSION`` or ``VERSION; name=NAME``.
        created: its CreationDate.

    Returns:
        The snapshot, or None for an entry that is not one.
    """
    version, _, rest = raw.partition(";")
    version = version.strip()
    if not version.isdigit():
        return None
    name = None
    rest = rest.strip()
    if rest.startswith("name="):
        name = rest[len("name=") :].strip() or None
    return SnapshotInfo(bucket, version, name, created or from_ns(int(version)))


class BundleStream:
    """A bundle response: iterate for (key, bytes); ``errors`` then holds the parsed
    ``__bundle_errors.json`` (skip mode), or None when every object came.

    Args:
        body: the streamed tar body.
    """

    def __init__(self, body: BinaryIO) -> None:
        self.body = body
        self.errors: Any = None

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        with tarfile.open(fileobj=self.body, mode="r|") as tar:
            for member in tar:
                f = tar.extractfile(member)
                if f is None:
                    continue
                data = f.read()
                if member.name == _BUNDLE_ERRORS:
                    self.errors = json.loads(data)
                    continue
                yield member.name, data

    def close(self) -> None:
        """Release the connection."""
        self.body.close()


class TigrisProvider(S3Listing, SnapshotProvider):
    """A Tigris bucket with snapshots enabled.

    Args:
        bucket: the bucket.
        prefix: keys outside it are ignored.
        client: an S3 client pointed at Tigris (default: the shared factory's); its events
            get the per-call header hooks.

    Attributes:
        list_requests: list requests sent so far.
    """

    kind = "tigris"

    def __init__(self, bucket: str, prefix: str = "", *, client: S3Client | None = None) -> None:
        super().__init__(bucket, prefix)
        if client is None:
            from ..targets.s3client import s3_client

            client = s3_client()
        # Any: the typed client does not know the TigrisHeaders keyword the hooks add
        self.client: Any = install_header_hooks(client)
        self.list_requests = 0

    @staticmethod
    def _version(at: At) -> str:
        return at.version if isinstance(at, SnapshotInfo) else str(at_ns(at))

    def enable(self) -> None:
        """Create the bucket with snapshots enabled (Tigris cannot enable them later).

        Raises:
            SnapshotError: the bucket exists without snapshots.
        """
        try:
            self.client.create_bucket(
                Bucket=self.bucket, TigrisHeaders={"X-Tigris-Enable-Snapshot": "true"}
            )
            return
        except ClientError as e:
            if error_code(e, or_status=True) not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise self._fail(e, "creating the bucket with snapshots") from None
        if not self.lineage().snapshots_enabled:
            raise SnapshotError(
                self.bucket,
                "exists without snapshots; Tigris enables them only when a bucket is "
                "created (create a new bucket, or fork this one into a new snapshot bucket)",
            )

    def take(self, name: str | None = None) -> SnapshotInfo:
        """Take a snapshot (CreateBucket with ``X-Tigris-Snapshot``) and return it."""
        value = "true" if name is None else f"true; name={check_name(name)}"
        try:
            resp = self.client.create_bucket(
                Bucket=self.bucket, TigrisHeaders={"X-Tigris-Snapshot": value}
            )
        except ClientError as e:
            raise self._fail(e, "taking a snapshot") from None
        version = _headers(resp).get("x-tigris-snapshot-version", "")
        if not version.isdigit():
            raise SnapshotError(
                self.bucket,
                "the store returned no x-tigris-snapshot-version; are snapshots enabled?",
            )
        return SnapshotInfo(self.bucket, version, name, from_ns(int(version)))

    def list(self) -> Sequence[SnapshotInfo]:
        """Returns: the bucket's snapshots (ListBuckets with ``X-Tigris-Snapshot``), oldest first."""
        try:
            resp = self.client.list_buckets(TigrisHeaders={"X-Tigris-Snapshot": self.bucket})
        except ClientError as e:
            raise self._fail(e, "listing snapshots") from None
        out = [
            s
            for b in resp.get("Buckets", [])
            if (s := parse_snapshot_name(self.bucket, b.get("Name", ""), b.get("CreationDate")))
        ]
        return sorted(out, key=lambda s: int(s.version))

    def list_objects(self, at: At | None = None) -> Iterator[ObjectState]:
        """List objects under the prefix at ``at`` (ListObjectsV2 with the version header)."""
        kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        if at is not None:
            kw[HEADERS_PARAM] = {"X-Tigris-Snapshot-Version": self._version(at)}
        yield from self._objects(**kw)

    def read(self, key: str, at: At | None = None) -> BinaryIO:
        """Open ``key`` as of ``at`` (GetObject with the version header).

        Raises:
            SnapshotError: it did not exist then.
        """
        kw: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if at is not None:
            kw[HEADERS_PARAM] = {"X-Tigris-Snapshot-Version": self._version(at)}
        try:
            return cast(BinaryIO, self.client.get_object(**kw)["Body"])
        except ClientError as e:
            if is_missing(e, "NoSuchKey", "404"):
                when = "now" if at is None else self._version(at)
                raise SnapshotError(self.bucket, f"no object {key!r} at {when}") from None
            raise self._fail(e, f"reading {key!r}") from None

    def head(self, key: str, at: At | None = None) -> dict[str, Any]:
        """Returns: HeadObject of ``key`` as of ``at``."""
        kw: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if at is not None:
            kw[HEADERS_PARAM] = {"X-Tigris-Snapshot-Version": self._version(at)}
        try:
            return cast(dict[str, Any], self.client.head_object(**kw))
        except ClientError as e:
            raise self._fail(e, f"HeadObject {key!r}") from None

    def slice(self, t1: At, t2: At) -> Slice:
        """Compare two listings as of t1 and t2 (nanosecond-exact on Tigris); an object
        counts as changed when its ETag, size or modification time differ."""
        s1 = {o.key: o for o in self.list_objects(t1)}
        s2 = {o.key: o for o in self.list_objects(t2)}
        return diff_states(
            s1,
            s2,
            set(),
            same=lambda a, b: (a.etag, a.size, a.modified) == (b.etag, b.size, b.modified),
        )

    def fork(self, new_bucket: str, snapshot: SnapshotInfo | None = None) -> ForkResult:
        """Fork instantly, copy-on-write (CreateBucket with ``X-Tigris-Fork-Source-Bucket``)."""
        h = {"X-Tigris-Fork-Source-Bucket": self.bucket}
        if snapshot is not None:
            h["X-Tigris-Fork-Source-Bucket-Snapshot"] = snapshot.version
        try:
            self.client.create_bucket(Bucket=new_bucket, TigrisHeaders=h)
        except ClientError as e:
            raise self._fail(e, f"forking into {new_bucket}") from None
        return ForkResult(new_bucket, self.bucket, snapshot.version if snapshot else None)

    def lineage(self) -> Lineage:
        """Read the ``x-tigris-*`` headers of HeadBucket."""
        try:
            h = _headers(self.client.head_bucket(Bucket=self.bucket))
        except ClientError as e:
            raise self._fail(e, "HeadBucket") from None
        return Lineage(
            self.bucket,
            h.get("x-tigris-enable-snapshot", "").lower() == "true",
            h.get("x-tigris-fork-source-bucket") or None,
            h.get("x-tigris-fork-source-bucket-snapshot") or None,
        )

    def delete(self, snapshot: SnapshotInfo) -> None:
        """Delete one snapshot (DeleteBucket with ``X-Tigris-Snapshot-Version``).

        The header rides on this one request; without it the request would ask to delete
        the bucket, so the version is checked to be a snapshot version first.
        """
        if not snapshot.version.isdigit() or len(snapshot.version) != 19:
            raise SnapshotError(self.bucket, f"{snapshot.version!r} is not a snapshot version")
        try:
            self.client.delete_bucket(
                Bucket=self.bucket, TigrisHeaders={"X-Tigris-Snapshot-Version": snapshot.version}
            )
        except ClientError as e:
            raise self._fail(e, f"deleting snapshot {snapshot.version}") from None

    def rename(self, old_key: str, new_key: str) -> None:
        """Rename an object in place (CopyObject with ``X-Tigris-Rename: true``): no data copied."""
        try:
            self.client.copy_object(
                Bucket=self.bucket,
                Key=new_key,
                CopySource={"Bucket": self.bucket, "Key": old_key},
                TigrisHeaders={"X-Tigris-Rename": "true"},
            )
        except ClientError as e:
            raise self._fail(e, f"renaming {old_key!r} to {new_key!r}") from None

    def bundle(self, keys: Sequence[str], *, on_error: str = "skip") -> BundleStream:
        """Fetch many objects in one request (POST ``?bundle``) as a tar stream.

        Args:
            keys: the object keys (at most 5,000).
            on_error: ``"skip"`` (missing objects are listed in ``__bundle_errors.json``)
                or ``"fail"``.

        Returns:
            A stream of (key, bytes).

        Raises:
            SnapshotError: the request failed.
        """
        import hashlib

        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        if not keys:
            raise SnapshotError(self.bucket, "a bundle needs at least one key")
        if len(keys) > 5000:
            raise SnapshotError(self.bucket, f"a bundle takes at most 5000 keys, not {len(keys)}")
        body = json.dumps({"keys": list(keys)}).encode()
        url = f"{self.client.meta.endpoint_url.rstrip('/')}/{self.bucket}?bundle"
        req = AWSRequest(
            method="POST",
            url=url,
            data=body,
            headers={
                "Content-Type": "application/json",
                "X-Tigris-Bundle-Format": "tar",
                "X-Tigris-Bundle-Compression": "none",
                "X-Tigris-Bundle-On-Error": on_error,
                "X-Amz-Content-Sha256": hashlib.sha256(body).hexdigest(),
            },
        )
        creds = self.client._request_signer._credentials  # the client's own credential chain
        if creds is None:
            raise SnapshotError(self.bucket, "no credentials for the bundle request")
        SigV4Auth(
            creds.get_frozen_credentials(), "s3", self.client.meta.region_name or "auto"
        ).add_auth(req)
        prepared = req.prepare()
        resp = _pool().urlopen(
            "POST",
            prepared.url,
            body=prepared.body,
            headers=dict(prepared.headers),
            preload_content=False,
        )
        if resp.status >= 400:
            detail = resp.read(2000).decode("utf-8", "replace")
            resp.release_conn()
            code = detail.split("<Code>")[1].split("</Code>")[0] if "<Code>" in detail else ""
            raise SnapshotError(self.bucket, f"bundle failed: HTTP {resp.status} {code}".strip())
        return BundleStream(cast(BinaryIO, resp))


_POOL: Any = None


def _pool() -> Any:
    global _POOL
    if _POOL is None:
        import urllib3

        _POOL = urllib3.PoolManager(maxsize=8)
    return _POOL
