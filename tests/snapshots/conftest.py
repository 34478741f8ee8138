"""Fixtures for snapshot-enabled buckets: unique buckets on the session's moto server, and a
way to set the times moto stamps on versions (its listings show whole seconds, like S3), so
point-in-time tests need no sleeping."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from backup.snapshots import VersionedProvider
from tests.conftest import MotoServer

from .fake_tigris import FakeTigris

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """Returns: T0 plus ``seconds``."""
    return T0 + timedelta(seconds=seconds)


def unique(prefix: str = "snap") -> str:
    return f"{prefix}-{secrets.token_hex(5)}"


@dataclass
class Writer:
    """Writes to a versioned bucket on moto, remembering the time each operation should
    carry; :meth:`stamp` then sets those times in moto's store."""

    client: Any
    bucket: str
    times: dict[str, list[datetime]] = field(default_factory=dict)

    def put(self, key: str, body: bytes, t: float) -> str:
        r = self.client.put_object(Bucket=self.bucket, Key=key, Body=body)
        self.times.setdefault(key, []).append(at(t))
        return str(r.get("VersionId", "null"))

    def delete(self, key: str, t: float) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)
        self.times.setdefault(key, []).append(at(t))

    def stamp(self) -> None:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        b = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].buckets[self.bucket]
        for key, times in self.times.items():
            versions = b.keys.getlist(key)
            assert len(versions) == len(times), (key, len(versions), len(times))
            for v, t in zip(versions, times, strict=True):
                v.last_modified = t.replace(tzinfo=None)


@pytest.fixture
def s3(aws_env: MotoServer) -> Any:
    return aws_env.client()


@pytest.fixture
def versioned_bucket(s3: Any) -> str:
    name = unique()
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


@pytest.fixture
def writer(s3: Any, versioned_bucket: str) -> Writer:
    return Writer(s3, versioned_bucket)


@pytest.fixture
def provider(s3: Any, versioned_bucket: str) -> Callable[..., VersionedProvider]:
    def make(**kw: Any) -> VersionedProvider:
        return VersionedProvider(versioned_bucket, kw.pop("prefix", ""), client=s3, **kw)

    return make


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTigris]:
    f = FakeTigris()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "tid_test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "tsec_test_secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "auto")
    monkeypatch.setenv("BACKUP_S3_ENDPOINT_URL", f.url)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)
    yield f
    f.close()
