"""boto3 clients for the S3, Glacier and SQS APIs, built one way for every module.

Endpoints come from ``BACKUP_S3_ENDPOINT_URL`` / ``BACKUP_GLACIER_ENDPOINT_URL`` /
``BACKUP_SQS_ENDPOINT_URL`` when set (S3-compatible stores, moto on loopback in the tests),
else from the usual boto3 configuration (``AWS_ENDPOINT_URL``, profiles, the region's AWS
endpoint). Credentials always come from boto3's own chain and are never read, logged or put
into an error message here.

The environment is read when a client is built, not cached at import, so a process (or a
test) that changes it gets clients that follow. boto3 is imported then too: a command that
only reads policies naming S3 targets never pays for it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from botocore.config import Config
    from mypy_boto3_glacier import GlacierClient
    from mypy_boto3_s3 import S3Client

__all__ = [
    "ENDPOINT_ENV",
    "client_config",
    "endpoint_url",
    "glacier_client",
    "s3_client",
    "sqs_client",
]

#: the environment variable naming each service's endpoint override
ENDPOINT_ENV = {
    "s3": "BACKUP_S3_ENDPOINT_URL",
    "glacier": "BACKUP_GLACIER_ENDPOINT_URL",
    "sqs": "BACKUP_SQS_ENDPOINT_URL",
}


def endpoint_url(service: str) -> str | None:
    """The endpoint override for a service.

    Args:
        service: ``"s3"``, ``"glacier"`` or ``"sqs"``.

    Returns:
        The URL from the service's ``BACKUP_*_ENDPOINT_URL`` variable; for SQS, falling back
        to the S3 one (an S3-compatible test server usually serves both); ``None`` to let
        boto3 decide.
    """
    url = os.environ.get(ENDPOINT_ENV[service]) or None
    if url is None and service == "sqs":
        url = os.environ.get(ENDPOINT_ENV["s3"]) or None
    return url


def client_config(max_pool_connections: int = 16) -> Config:
    """The botocore configuration every client shares.

    Args:
        max_pool_connections: HTTP connections per client (concurrent part uploads need
            one each).

    Returns:
        Standard-mode retries (5 attempts with backoff; throttling and 5xx retried),
        connect and read timeouts, and the pool size.
    """
    from botocore.config import Config

    return Config(
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=max_pool_connections,
    )


def _client(service: str, region: str | None, max_pool_connections: int) -> Any:
    import boto3

    # a session per client: boto3 sessions are not thread-safe, clients are
    session = boto3.session.Session()
    return session.client(
        service,  # type: ignore[call-overload]
        endpoint_url=endpoint_url(service),
        region_name=region,
        config=client_config(max_pool_connections),
    )


def s3_client(region: str | None = None, *, max_pool_connections: int = 16) -> S3Client:
    """An S3 client (thread-safe: share it between the threads of one target).

    Args:
        region: the bucket's region; ``None`` for boto3's configured one.
        max_pool_connections: HTTP connections in the client's pool.

    Returns:
        The client, pointed at ``BACKUP_S3_ENDPOINT_URL`` when that is set.
    """
    client: S3Client = _client("s3", region, max_pool_connections)
    return client


def glacier_client(region: str | None = None) -> GlacierClient:
    """A Glacier (vault API) client.

    Args:
        region: the vault's region; ``None`` for boto3's configured one.

    Returns:
        The client, pointed at ``BACKUP_GLACIER_ENDPOINT_URL`` when that is set.
    """
    client: GlacierClient = _client("glacier", region, 16)
    return client


def sqs_client(region: str | None = None) -> Any:
    """An SQS client (for S3 restore-completed event notifications).

    Args:
        region: the queue's region; ``None`` for boto3's configured one.

    Returns:
        The client, pointed at ``BACKUP_SQS_ENDPOINT_URL`` (else ``BACKUP_S3_ENDPOINT_URL``)
        when set.
    """
    return _client("sqs", region, 4)
