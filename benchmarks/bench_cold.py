#!/usr/bin/env python3
"""Cold-storage benchmark (issue 4).

1. Upload throughput to an S3 endpoint on loopback (moto's server, started as its own
   process so neither client shares an interpreter with it): our ``S3Target`` (streamed
   multipart, 8 MiB parts, 4 threads, SHA-256 part checksums) against ``aws s3 cp`` of the
   same file (awscli's defaults: 8 MiB parts, 10 threads, CRC32 checksums). The two
   alternate within every repetition; the table shows medians.
2. Status requests per pending object per hour for each storage class and tier, from the
   poll schedule (``backup.coldplan.next_check``): when the restore finishes at the earliest
   expected time, in the middle of the window, and at the latest.

    python3 benchmarks/bench_cold.py [--size-mb 256] [--runs 5]
                                     [--aws /tmp/awscli-venv/bin/aws] [--json out.json]

awscli is installed in a venv of its own, so its botocore does not replace the project's:

    python3 -m venv /tmp/awscli-venv && /tmp/awscli-venv/bin/pip install awscli

moto is a Python server: both clients are bounded by it, so the figures compare the clients
on one endpoint; they are not what either reaches against AWS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from backup.coldplan import EXPECTED_READY, poll_times  # noqa: E402

MiB = 1024 * 1024
ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto server did not start")


def upload_ours(endpoint: str, bucket: str, path: Path, key: str) -> float:
    os.environ.update(ENV, BACKUP_S3_ENDPOINT_URL=endpoint)
    from backup.targets.s3 import S3Target

    t = S3Target(f"s3://{bucket}")
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f, t.open_write(key) as w:
        while chunk := f.read(MiB):  # as the packing pipeline hands over its 1 MiB blocks
            w.write(chunk)
        w.commit()
    return time.perf_counter() - start


def upload_awscli(aws: str, endpoint: str, bucket: str, path: Path, key: str) -> float:
    env = {**os.environ, **ENV}
    env.pop("BACKUP_S3_ENDPOINT_URL", None)
    start = time.perf_counter()
    subprocess.run(
        [aws, "s3", "cp", str(path), f"s3://{bucket}/{key}", "--endpoint-url", endpoint, "--quiet"],
        check=True,
        env=env,
    )
    return time.perf_counter() - start


def poll_table() -> list[dict[str, Any]]:
    rows = []
    for (cls, tier), (earliest, latest) in EXPECTED_READY.items():
        row: dict[str, Any] = {"class": cls, "tier": tier, "window": [str(earliest), str(latest)]}
        for label, ready in (
            ("earliest", earliest),
            ("middle", (earliest + latest) / 2),
            ("latest", latest),
            ("late_by_half", latest + (latest - earliest) / 2),
        ):
            times = poll_times(cls, tier, ready)
            hours = times[-1] / timedelta(hours=1)
            row[label] = {"requests": len(times), "per_hour": round(len(times) / hours, 3)}
        rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--aws", default=shutil.which("aws") or "/tmp/awscli-venv/bin/aws")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    result: dict[str, Any] = {"size_mb": args.size_mb, "runs": args.runs}
    proc, endpoint = start_moto()
    try:
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            **{  # type: ignore[call-overload]
                "aws_access_key_id": "bench",
                "aws_secret_access_key": "bench",
                "region_name": "us-east-1",
            },
        )
        bucket = "bench-cold"
        s3.create_bucket(Bucket=bucket)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "payload"
            with open(path, "wb") as f:
                for _ in range(args.size_mb):
                    f.write(os.urandom(MiB))
            ours, cli = [], []
            have_cli = Path(args.aws).exists()
            for i in range(args.runs):
                ours.append(upload_ours(endpoint, bucket, path, f"ours-{i}"))
                s3.delete_object(Bucket=bucket, Key=f"ours-{i}")
                if have_cli:
                    cli.append(upload_awscli(args.aws, endpoint, bucket, path, f"cli-{i}"))
                    s3.delete_object(Bucket=bucket, Key=f"cli-{i}")
        size = args.size_mb * MiB
        med_ours = statistics.median(ours)
        result["upload"] = {
            "ours_seconds": ours,
            "ours_median_mib_s": round(size / MiB / med_ours, 1),
        }
        print(f"upload of {args.size_mb} MiB to moto on loopback, median of {args.runs}:")
        print(f"  S3Target:    {med_ours:6.2f} s  {size / MiB / med_ours:7.1f} MiB/s")
        if cli:
            med_cli = statistics.median(cli)
            result["upload"].update(
                awscli_seconds=cli,
                awscli_median_mib_s=round(size / MiB / med_cli, 1),
                ratio_ours_over_awscli=round(med_cli / med_ours, 2),
            )
            print(f"  aws s3 cp:   {med_cli:6.2f} s  {size / MiB / med_cli:7.1f} MiB/s")
            print(f"  ours / awscli throughput: {med_cli / med_ours:.2f}x")
        else:
            print(f"  aws s3 cp: not found at {args.aws} (see the docstring)")
    finally:
        proc.terminate()
        proc.wait(10)

    result["polling"] = poll_table()
    print("\nstatus requests per pending object (and per hour) until found ready:")
    print(f"  {'class/tier':<24}{'ready at earliest':>20}{'middle':>16}{'latest':>16}{'late':>16}")
    for r in result["polling"]:
        cells = [
            f"{r[k]['requests']} ({r[k]['per_hour']}/h)"
            for k in ("earliest", "middle", "latest", "late_by_half")
        ]
        print(f"  {r['class'] + '/' + r['tier']:<24}" + "".join(f"{c:>16}" for c in cells))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
