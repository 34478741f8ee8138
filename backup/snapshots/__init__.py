"""Snapshot-enabled buckets: snapshots, time travel (a bucket as it was at T), slices (what
changed in (T1, T2]) and forks, natively on Tigris and portably on any versioned S3 bucket.

Buckets are written as URLs, ``s3://bucket[/prefix][?snapshots=tigris|versioned]``; the
implementation is chosen by probing the bucket (Tigris answers HeadBucket with
``x-tigris-*`` headers) unless the query forces one. See ``docs/snapshots.md``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlparse

from botocore.exceptions import ClientError

from ..errors import SnapshotError
from ..targets.awserrors import error_code, http_status, response_headers
from . import base
from .base import *  # noqa: F403  (the package is the contract's public face)
from .base import SnapshotProvider
from .tigris import TigrisProvider
from .versioned import VersionedProvider

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "TigrisProvider",
    "VersionedProvider",
    "bucket_url",
    "check_bucket_name",
    "open_provider",
    "parse_bucket_url",
    "probe",
    *base.__all__,
]

_MODES = ("tigris", "versioned")

# S3's rules for a bucket created today; an existing bucket may carry a name that us-east-1
# accepted before 2018 (capitals, '_', up to 255 characters), which boto3 still allows
_NEW_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_OLD_NAME = re.compile(r"[A-Za-z0-9._-]{3,255}")
_IP_LIKE = re.compile(r"\d+\.\d+\.\d+\.\d+")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def check_bucket_name(name: str, *, new: bool = False) -> str:
    """Check a bucket name against S3's naming rules.

    Args:
        name: the name.
        new: the bucket is to be created (a fork), so today's rules apply in full; an
            existing bucket may also have a legacy name (capitals, ``_``, up to 255
            characters).

    Returns:
        The name.

    Raises:
        SnapshotError: naming the rule the name breaks.
    """
    why = None
    if not (_NEW_NAME if new else _OLD_NAME).fullmatch(name):
        why = (
            "use 3 to 63 lowercase letters, digits, '.' and '-', beginning and ending with a "
            "letter or digit"
        )
    elif new and ".." in name:
        why = "two '.' in a row"
    elif new and _IP_LIKE.fullmatch(name):
        why = "it is written like an IP address"
    elif new and (name.startswith(_RESERVED_PREFIXES) or name.endswith(_RESERVED_SUFFIXES)):
        why = "S3 reserves its prefix or suffix"
    if why:
        raise SnapshotError(repr(name), f"not a valid bucket name: {why}")
    return name


def bucket_url(text: str) -> str:
    """Turn a bucket argument into a bucket URL: ``s3://bucket[/prefix][?snapshots=...]``
    or the same without ``s3://``.

    Returns:
        The ``s3://`` URL, its bucket name checked.

    Raises:
        SnapshotError: for another scheme or a bad bucket name.
    """
    url = text if "://" in text else f"s3://{text}"
    if not url.startswith("s3://") or url == "s3://":
        raise SnapshotError(repr(text), "not a bucket: write s3://BUCKET[/PREFIX] or BUCKET")
    parse_bucket_url(url)
    return url


def parse_bucket_url(url: str) -> tuple[str, str, str | None]:
    """Split a bucket URL.

    Args:
        url: ``s3://bucket[/prefix][?snapshots=tigris|versioned]``.

    Returns:
        (bucket, prefix, forced implementation or None).

    Raises:
        SnapshotError: for another scheme, no bucket, a name S3 does not allow, or an
            unknown ``snapshots`` value.
    """
    p = urlparse(url)
    if p.scheme != "s3" or not p.netloc:
        raise SnapshotError(url, "not a bucket URL; write s3://BUCKET or s3://BUCKET/PREFIX")
    check_bucket_name(p.netloc)
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
        headers = response_headers(e)
        if http_status(e) != 404:
            raise SnapshotError(
                bucket, f"HeadBucket failed: {error_code(e, or_status=True)}"
            ) from None
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
