"""Snapshot-enabled buckets: snapshots, time travel (a bucket as it was at T), slices (what
changed in (T1, T2]) and forks, natively on Tigris and portably on any versioned S3 bucket.

Buckets are written as URLs, ``s3://bucket[/prefix][?snapshots=tigris|versioned]``; the
implementation is chosen by probing the bucket (Tigris answers HeadBucket with
``x-tigris-*`` headers) unless the query forces one. See ``docs/snapshots.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlparse

from botocore.exceptions import ClientError

from ..errors import SnapshotError
from .base import (
    At,
    ForkResult,
    Lineage,
    ObjectState,
    Slice,
    SnapshotInfo,
    SnapshotProvider,
    from_ns,
    parse_at,
    to_ns,
)
from .tigris import TigrisProvider
from .versioned import VersionedProvider

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "At",
    "ForkResult",
    "Lineage",
    "ObjectState",
    "Slice",
    "SnapshotInfo",
    "SnapshotProvider",
    "TigrisProvider",
    "VersionedProvider",
    "from_ns",
    "open_provider",
    "parse_at",
    "parse_bucket_url",
    "probe",
    "to_ns",
]

_MODES = ("tigris", "versioned")


def parse_bucket_url(url: str) -> tuple[str, str, str | None]:
    """Split a bucket URL.

    Args:
        url: ``s3://bucket[/prefix][?snapshots=tigris|versioned]``.

    Returns:
        (bucket, prefix, forced implementation or None).

    Raises:
        SnapshotError: for another scheme, no bucket, or an unknown ``snapshots`` value.
    """
    p = urlparse(url)
    if p.scheme != "s3" or not p.netloc:
        raise SnapshotError(url, "not a bucket URL; write s3://BUCKET or s3://BUCKET/PREFIX")
    q = parse_qs(p.query)
    unknown = set(q) - {"snapshots"}
    if unknown:
        raise SnapshotError(p.netloc, f"unknown URL parameter(s) {', '.join(sorted(unknown))}")
    mode = q.get("snapshots", [None])[-1]
    if mode is not None and mode not in _MODES:
        raise SnapshotError(p.netloc, f"snapshots={mode!r}: use 'tigris' or 'versioned'")
    return p.netloc, p.path.lstrip("/"), mode


def probe(client: Any, bucket: str) -> str:
    """Tell which implementation a bucket needs.

    Args:
        client: an S3 client.
        bucket: the bucket.

    Returns:
        ``"tigris"`` when HeadBucket (or its error) carries ``x-tigris-*`` headers, else
        ``"versioned"``.

    Raises:
        SnapshotError: when the bucket cannot be read (403 and the like); a missing bucket
            probes as ``versioned`` unless the endpoint shows itself to be Tigris.
    """
    try:
        resp = client.head_bucket(Bucket=bucket)
        headers = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    except ClientError as e:
        headers = e.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if status != 404:
            code = e.response.get("Error", {}).get("Code", "") or status
            raise SnapshotError(bucket, f"HeadBucket failed: {code}") from None
    return "tigris" if any(k.lower().startswith("x-tigris-") for k in headers) else "versioned"


def open_provider(url: str, *, client: S3Client | None = None) -> SnapshotProvider:
    """Open the snapshot implementation a bucket URL names.

    Args:
        url: ``s3://bucket[/prefix][?snapshots=tigris|versioned]``.
        client: an S3 client (default: :func:`backup.targets.s3client.s3_client`).

    Returns:
        A :class:`TigrisProvider` or a :class:`VersionedProvider`.
    """
    bucket, prefix, mode = parse_bucket_url(url)
    if client is None:
        from ..targets.s3client import s3_client

        client = s3_client()
    if mode is None:
        mode = probe(client, bucket)
    if mode == "tigris":
        return TigrisProvider(bucket, prefix, client=client)
    return VersionedProvider(bucket, prefix, client=client)
