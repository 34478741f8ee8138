"""Integration tests against real Tigris: run when BACKUP_TEST_TIGRIS_URL (the endpoint, e.g.
https://t3.storage.dev) and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are set, skipped
otherwise. Every bucket is created with a unique name and removed at the end."""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from backup.snapshots import TigrisProvider, open_provider

TIGRIS_URL = os.environ.get("BACKUP_TEST_TIGRIS_URL")
HAVE_KEYS = bool(os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"))

pytestmark = pytest.mark.skipif(
    not (TIGRIS_URL and HAVE_KEYS),
    reason="BACKUP_TEST_TIGRIS_URL and AWS credentials not set (real Tigris tests)",
)


def _drop(client: Any, bucket: str) -> None:
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for o in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=o["Key"])
        client.delete_bucket(Bucket=bucket)
    except Exception:
        pass  # best effort: a leftover test bucket is named backup-test-*


@pytest.fixture
def live(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TigrisProvider, list[str]]]:
    assert TIGRIS_URL
    monkeypatch.setenv("BACKUP_S3_ENDPOINT_URL", TIGRIS_URL)
    name = f"backup-test-{secrets.token_hex(6)}"
    p = TigrisProvider(name)
    p.enable()
    made = [name]
    yield p, made
    for b in reversed(made):
        _drop(p.client, b)


def test_live_snapshot_read_fork(live: tuple[TigrisProvider, list[str]]) -> None:
    p, made = live
    assert open_provider(f"s3://{p.bucket}").kind == "tigris"
    p.client.put_object(Bucket=p.bucket, Key="k", Body=b"one")
    snap = p.take("live-1")
    p.client.put_object(Bucket=p.bucket, Key="k", Body=b"two")
    assert p.read("k", snap).read() == b"one"
    assert p.read("k").read() == b"two"
    assert p.find("live-1").version == snap.version
    s = p.slice(snap, time.time_ns())
    assert [o.key for o in s.changed] == ["k"]
    fork = f"{p.bucket}-f"
    made.append(fork)
    p.fork(fork, snap)
    lin = open_provider(f"s3://{fork}?snapshots=tigris").lineage()
    assert lin.source_bucket == p.bucket and lin.source_snapshot == snap.version

    results: list[bytes] = []

    def read(at: Any) -> None:
        results.append(p.read("k", at).read())

    ts = [threading.Thread(target=read, args=(snap if i % 2 else None,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(results) == [b"one"] * 4 + [b"two"] * 4
