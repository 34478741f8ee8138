#!/usr/bin/env python3
"""Snapshot-bucket benchmark: point-in-time listing and slices over a versioned bucket of
100,000 versions on moto's server mode, against the number of list requests they need, and
a portable fork of 1,000 objects.

The bucket is filled through moto's in-process store (the server runs in a thread of this
process), which takes seconds instead of the minutes 100,000 PUTs would; every measured
operation goes over HTTP through boto3 like a real run. Reports medians.

    python3 benchmarks/bench_snapshots.py [--versions 100000] [--keys 20000]
                                          [--page-sizes 1000,250] [--runs 3]
                                          [--fork-objects 1000] [--json out.json]

This is a benchmark, not a test: pytest does not collect it. moto's ListObjectVersions
deep-copies every version of the bucket (bodies included) on every request: 2.9 s per request
at 10,000 versions on the 2-core machine, so 100,000 versions would take most of an hour per
listing. By default the script replaces that copy with the list itself (``--moto-deepcopy``
keeps it); moto still sorts and walks the whole bucket per request, so the time per request
still grows with the bucket. The request counts are what carries over to a real store.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class _NoDeepcopy:
    """Stands in for the ``copy`` module inside moto.s3.models: the list is used as is (moto
    then sets ``is_latest`` on the stored versions, which it recomputes on every listing)."""

    @staticmethod
    def deepcopy(x: Any, memo: Any = None) -> Any:
        return x

    def __getattr__(self, name: str) -> Any:
        import copy

        return getattr(copy, name)


def _moto(fast: bool) -> tuple[Any, str]:
    from moto.server import ThreadedMotoServer

    if fast:
        import moto.s3.models

        moto.s3.models.copy = _NoDeepcopy()  # type: ignore[assignment,attr-defined]

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def _client(endpoint: str, pool: int = 16) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(max_pool_connections=pool),
    )


def fill(bucket: str, versions: int, keys: int) -> tuple[datetime, datetime]:
    """Write ``versions`` versions over ``keys`` keys straight into moto's store, one per
    second of simulated time; every 7th operation on a key after its first is a delete.

    Returns:
        (time a third of the way in, time two thirds of the way in): the slice's ends.
    """
    from moto.core import DEFAULT_ACCOUNT_ID  # type: ignore[attr-defined]
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    b = backend.buckets[bucket]
    for i in range(versions):
        k = f"data/{i % keys:06d}"
        t = T0 + timedelta(seconds=i)
        if i >= keys and i % 7 == 0:
            backend.delete_object(bucket, k)
        else:
            backend.put_object(bucket, k, f"v{i}".encode())
        b.keys.getlist(k)[-1].last_modified = t.replace(tzinfo=None)
    return T0 + timedelta(seconds=versions // 3), T0 + timedelta(seconds=2 * versions // 3)


def timed(fn: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    r = fn()
    return time.perf_counter() - t, r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", type=int, default=100_000)
    ap.add_argument("--keys", type=int, default=20_000)
    ap.add_argument("--page-sizes", default="1000,250")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--fork-objects", type=int, default=1000)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--moto-deepcopy", action="store_true", help="keep moto's per-request copy")
    a = ap.parse_args()

    from backup.snapshots import VersionedProvider

    server, endpoint = _moto(not a.moto_deepcopy)
    out: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "versions": a.versions,
        "keys": a.keys,
        "moto_deepcopy": a.moto_deepcopy,
        "rows": [],
    }
    try:
        c = _client(endpoint)
        c.create_bucket(Bucket="bench")
        c.put_bucket_versioning(Bucket="bench", VersioningConfiguration={"Status": "Enabled"})
        t_fill, (t1, t2) = timed(lambda: fill("bench", a.versions, a.keys))
        print(f"filled {a.versions} versions over {a.keys} keys in {t_fill:.1f} s", flush=True)
        for page in [int(x) for x in a.page_sizes.split(",")]:
            for op in ("at", "slice"):
                secs, reqs, result = [], 0, 0
                for _ in range(a.runs):
                    p = VersionedProvider("bench", client=c, page_size=page)
                    if op == "at":
                        s, r = timed(lambda p=p: sum(1 for _ in p.list_objects(t2)))
                        result = r
                    else:
                        s, sl = timed(lambda p=p: p.slice(t1, t2))
                        result = len(sl.created) + len(sl.changed) + len(sl.deleted)
                    secs.append(s)
                    reqs = p.list_requests
                row = {
                    "op": "point-in-time listing" if op == "at" else "slice (T1, T2]",
                    "page_size": page,
                    "list_requests": reqs,
                    "median_s": round(statistics.median(secs), 2),
                    "per_request_ms": round(1000 * statistics.median(secs) / reqs, 1),
                    "result": result,
                    "runs": [round(x, 2) for x in secs],
                }
                out["rows"].append(row)
                print(json.dumps(row), flush=True)

        # a fork of N objects (64 KiB each), server-side copies on 8 threads
        c.create_bucket(Bucket="forksrc")
        c.put_bucket_versioning(Bucket="forksrc", VersioningConfiguration={"Status": "Enabled"})
        body = os.urandom(64 << 10)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda i: c.put_object(Bucket="forksrc", Key=f"obj/{i:05d}", Body=body),
                    range(a.fork_objects),
                )
            )
        src = VersionedProvider("forksrc", client=c, workers=8)
        snap = src.take("bench")
        secs = []
        for run in range(a.runs):
            s, r = timed(lambda run=run: src.fork(f"fork-{run}", snap))
            assert r.copied == a.fork_objects, r
            secs.append(s)
        row = {
            "op": f"fork of {a.fork_objects} objects (64 KiB)",
            "workers": 8,
            "median_s": round(statistics.median(secs), 2),
            "objects_per_s": round(a.fork_objects / statistics.median(secs)),
            "runs": [round(x, 2) for x in secs],
        }
        out["rows"].append(row)
        print(json.dumps(row), flush=True)
    finally:
        server.stop()
    out["finished"] = datetime.now(UTC).isoformat()
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
