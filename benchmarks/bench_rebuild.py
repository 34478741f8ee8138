#!/usr/bin/env python3
"""Disaster-recovery benchmark (issue 13): rebuilding the inventory from the target alone.

On moto's S3 server (its own process, on loopback), with 1,000 archives holding 100,000
file entries in total, it measures side by side, alternating the order per repetition and
reporting medians:

- ``backup inventory rebuild s3://BUCKET?storage_class=GLACIER --identity KEY --json`` into
  an empty SQLite inventory, with no policy file (a bare machine), and
- ``restic rebuild-index`` (0.14's name of ``restic repair index``, renamed in 0.16) with
  ``--no-cache`` on a restic repository holding the same trees as 1,000 snapshots, through
  restic's s3 backend on the same moto server: as the backups left the repository (its
  index files put back before each repetition), and with ``--read-all-packs`` (the index
  made from the pack files alone, as ours is made from the manifests alone).

For each: wall time, CPU time (wait4: the process and its children) and the HTTP requests
moto served meanwhile, counted from moto's access log (werkzeug's one line per request on
the server's stderr). It checks that the rebuilt inventory's archive list (ids, policies,
kinds, parents, creation times, sizes, SHA-256) equals the one recorded while the archives
were made, and that restic still lists every snapshot after its index rebuild.

    python3 benchmarks/bench_rebuild.py [--archives 1000] [--files 100000] [--policies 10]
                                        [--runs 3] [--workdir /tmp/backup-bench-rebuild]
                                        [--json out.json] [--no-restic]

The dataset is made once and kept in the workdir: ``--policies`` source trees, each backed
up by the product's engine in-process (``backup.engine.run_backup``, the code a ``backup
run`` executes) into an s3:// target on moto: a full and then incrementals, each changing
the same number of files, at creation times an hour apart (real archives and manifests,
encrypted to a generated key). After each backup, restic backs up the same tree
(``--time`` set to the archive's creation time). The bucket's objects (with their storage
class and tags) and the restic repository are saved in the workdir and put back into a new
moto server for every invocation. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

BUCKET = "bench-rebuild"
RESTIC_BUCKET = "bench-restic"
STORAGE_CLASS = "GLACIER"  # archives cold, manifests STANDARD: rebuilding must not thaw
TARGET = f"s3://{BUCKET}?storage_class={STORAGE_CLASS}"
RESTIC_PASSWORD = "bench-not-secret"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
AWS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}
OURS, RESTIC = "backup inventory rebuild", "restic rebuild-index"
RESTIC_ALL = "restic rebuild-index --read-all-packs"
# werkzeug's access line: ... "GET /bucket?list-type=2 HTTP/1.1" 200 -, in colours (ANSI
# escapes around the request) when the status is not 200: 206 for restic's ranged reads
ACCESS_LINE = re.compile(rb'"(GET|PUT|POST|HEAD|DELETE) \S+ HTTP/1\.[01]" \d{3} ')
ANSI = re.compile(rb"\x1b\[[0-9;]*m")


class BenchError(RuntimeError):
    """A command failed or a result differs from what was recorded."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Moto:
    """moto's S3 server as its own process, its access log in a file."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self._log = open(log, "wb")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=self._log,
        )
        self.endpoint = f"http://127.0.0.1:{self.port}"
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise BenchError("moto server did not start")

    def requests(self) -> int:
        """Requests served so far (access-log lines)."""
        with open(self.log, "rb") as f:
            return sum(1 for line in f if ACCESS_LINE.search(ANSI.sub(b"", line)))

    def requests_by_method(self, since_line: int) -> dict[str, int]:
        out: dict[str, int] = {}
        with open(self.log, "rb") as f:
            lines = [m for line in f if (m := ACCESS_LINE.search(ANSI.sub(b"", line)))]
        for m in lines[since_line:]:
            out[m.group(1).decode()] = out.get(m.group(1).decode(), 0) + 1
        return out

    def settled_requests(self) -> int:
        """The count once the log has stopped growing (a line is written after its response)."""
        last = -1
        while True:
            n = self.requests()
            if n == last:
                return n
            last = n
            time.sleep(0.3)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def run_timed(
    argv: Sequence[str | Path], env: Mapping[str, str], moto: Moto
) -> tuple[float, float, int, dict[str, int], str]:
    """Run a command; returns wall s, CPU s (wait4), requests served, by method, stdout."""
    before = moto.settled_requests()
    out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-rebuild-{os.getpid()}.out"
    err_path = out_path.with_suffix(".err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(a) for a in argv], env=dict(env), stdout=out, stderr=err)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout = out_path.read_text(errors="replace")
    stderr = err_path.read_text(errors="replace")
    out_path.unlink()
    err_path.unlink()
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(map(str, argv))} exited {proc.returncode}:\n{stderr[-3000:]}")
    requests = moto.settled_requests() - before
    return wall, ru.ru_utime + ru.ru_stime, requests, moto.requests_by_method(before), stdout


# --------------------------------------------------------------------------------------
# the dataset


def plan(archives: int, files: int, policies: int) -> tuple[int, int, int]:
    """Per policy: archives, files in the full, files changed by each incremental, so that
    all archives together hold ``files`` file entries."""
    per = archives // policies
    per_files = files // policies
    changed = per_files // (per + 10)  # the full a little larger than ten incrementals
    return per, per_files - (per - 1) * changed, changed


def write_file(path: Path, rng: random.Random) -> None:
    path.write_bytes(rng.randbytes(rng.randint(64, 2048)))


def make_dataset(args: argparse.Namespace, data: Path, restic: bool) -> dict[str, Any]:
    """Back up every policy's tree ``per`` times into the target on a moto server, restic
    beside it; then save the bucket's objects and the archive list in ``data``."""
    from backup.crypto.age import X25519Identity

    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    _, full_files, _ = plan(args.archives, args.files, args.policies)
    ident = X25519Identity.generate()
    (data / "key.txt").write_text(ident.to_string() + "\n")
    (data / "key.txt").chmod(0o600)
    recipient = ident.recipient().to_string()
    rng = random.Random(1)
    trees = data / "src"
    names = [f"p{i:02d}" for i in range(args.policies)]
    paths: dict[str, list[Path]] = {}
    for n in names:
        root = trees / n
        paths[n] = []
        for j in range(full_files):
            p = root / f"d{j % 10}" / f"f{j:05d}.bin"
            p.parent.mkdir(parents=True, exist_ok=True)
            write_file(p, rng)
            paths[n].append(p)
    moto = Moto(data / "moto-generate.log")
    try:
        return _generate(args, data, restic, moto, names, paths, recipient, rng)
    finally:
        moto.stop()


def _generate(
    args: argparse.Namespace,
    data: Path,
    restic: bool,
    moto: Moto,
    names: list[str],
    paths: dict[str, list[Path]],
    recipient: str,
    rng: random.Random,
) -> dict[str, Any]:
    from backup.engine import run_backup
    from backup.inventory import Inventory
    from backup.policy import Policy

    per, full_files, changed = plan(args.archives, args.files, args.policies)
    trees = data / "src"
    env_before = dict(os.environ)
    os.environ.update(AWS, BACKUP_S3_ENDPOINT_URL=moto.endpoint)
    s3 = moto.client()
    s3.create_bucket(Bucket=BUCKET)
    inv = Inventory(f"sqlite:///{data / 'generate-inventory.db'}")
    policies = {
        n: Policy(
            name=n,
            sources=[trees / n],
            target=TARGET,
            recipients=[recipient],
            full_every=timedelta(days=3650),
        )
        for n in names
    }
    renv = restic_env({}, str(data / "restic-repo"), data)
    pool = ThreadPoolExecutor(2)
    pending: dict[str, Future[None]] = {}
    if restic:
        subprocess.run(
            ["restic", "init", "--repository-version", "2"],
            env=renv,
            check=True,
            capture_output=True,
        )
    t = time.perf_counter()
    try:
        for i in range(per):
            for k, n in enumerate(names):
                if n in pending:
                    pending.pop(n).result()  # restic has read the previous state
                if i:
                    start = ((i - 1) * changed) % len(paths[n])
                    for p in (paths[n] + paths[n])[start : start + changed]:
                        write_file(p, rng)
                now = T0 + timedelta(hours=i, minutes=k)
                run_backup(policies[n], inv, full=i == 0, now=now)
                if restic:
                    pending[n] = pool.submit(restic_backup, renv, trees / n, n, now)
            if i % 10 == 9:
                print(f"  {(i + 1) * len(names)} archives, {time.perf_counter() - t:.0f} s")
        for f in pending.values():
            f.result()
    finally:
        pool.shutdown()
        os.environ.clear()
        os.environ.update(env_before)
    generated_s = time.perf_counter() - t
    archives = archive_list(inv)
    inv.close()
    (data / "archives.json").write_text(json.dumps(archives, indent=1))
    # the bucket as the engine left it: bodies, storage classes, tags
    objects = data / "objects"
    index = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for o in page.get("Contents", []):
            if o.get("StorageClass", "STANDARD") != "STANDARD":
                # moto completes a retrieval at once; only this copy-out reads archives
                s3.restore_object(Bucket=BUCKET, Key=o["Key"], RestoreRequest={"Days": 1})
            body = s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
            tags = s3.get_object_tagging(Bucket=BUCKET, Key=o["Key"])["TagSet"]
            dest = objects / o["Key"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(body)
            index.append(
                {
                    "key": o["Key"],
                    "storage_class": o.get("StorageClass", "STANDARD"),
                    "tags": {x["Key"]: x["Value"] for x in tags},
                }
            )
    (data / "objects.json").write_text(json.dumps(index))
    entries = sum(a["entries"] for a in archives)
    meta = {
        "archives": len(archives),
        "policies": args.policies,
        "per_policy": per,
        "full_files": full_files,
        "changed_per_incremental": changed,
        "file_entries": args.policies * (full_files + (per - 1) * changed),
        "entries_incl_dirs": entries,
        "objects": len(index),
        "object_bytes": sum((objects / o["key"]).stat().st_size for o in index),
        "restic": restic,
        "generated_s": round(generated_s, 1),
        "params": [args.archives, args.files, args.policies],
    }
    (data / "dataset.json").write_text(json.dumps(meta, indent=1))
    return meta


def restic_env(base: Mapping[str, str], repo: str, work: Path) -> dict[str, str]:
    return {
        **os.environ,
        **base,
        **AWS,
        "RESTIC_REPOSITORY": repo,
        "RESTIC_PASSWORD": RESTIC_PASSWORD,
        "RESTIC_CACHE_DIR": str(work / "restic-cache"),
    }


def restic_backup(env: Mapping[str, str], tree: Path, name: str, now: datetime) -> None:
    subprocess.run(
        ["restic", "backup", "--quiet", "--host", "bench", "--tag", name,
         "--time", now.strftime("%Y-%m-%d %H:%M:%S"), "."],
        cwd=tree, env=dict(env), check=True, capture_output=True,
    )  # fmt: skip


def archive_list(inv: Any) -> list[dict[str, Any]]:
    """What a rebuild must reproduce: each archive's identity, chain, time, sizes, hashes."""
    return [
        {
            "id": a.id,
            "policy": a.policy,
            "kind": a.kind,
            "parent": a.parent_id,
            "created": a.created.isoformat(),
            "size_stored": a.size_stored,
            "size_in": a.size_in,
            "sha256": a.sha256,
            "manifest_sha256": a.manifest_sha256,
            "entries": a.entries,
        }
        for a in inv.archives()
    ]


def load_into(moto: Moto, data: Path, restic: bool) -> None:
    """Put the saved bucket (and restic's repository) into a fresh moto server."""
    s3 = moto.client()
    s3.create_bucket(Bucket=BUCKET)
    for o in json.loads((data / "objects.json").read_text()):
        s3.put_object(
            Bucket=BUCKET,
            Key=o["key"],
            Body=(data / "objects" / o["key"]).read_bytes(),
            StorageClass=o["storage_class"],
            Tagging="&".join(f"{k}={v}" for k, v in o["tags"].items()),
        )
    if restic:
        s3.create_bucket(Bucket=RESTIC_BUCKET)
        repo = data / "restic-repo"
        for p in sorted(repo.rglob("*")):
            if p.is_file():
                s3.put_object(
                    Bucket=RESTIC_BUCKET, Key=str(p.relative_to(repo)), Body=p.read_bytes()
                )


# --------------------------------------------------------------------------------------
# measurements


def measure_ours(moto: Moto, data: Path, scratch: Path, rep: int) -> dict[str, Any]:
    db = scratch / f"inventory-{rep}.db"
    db.unlink(missing_ok=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BACKUP_", "AWS_"))},
        **AWS,
        "BACKUP_S3_ENDPOINT_URL": moto.endpoint,
        "BACKUP_INVENTORY_URL": f"sqlite:///{db}",
        "BACKUP_CONFIG": str(scratch / "no-policies.toml"),  # a bare machine: no policy file
        "XDG_CONFIG_HOME": str(scratch / "xdg-config"),
        "XDG_DATA_HOME": str(scratch / "xdg-data"),
    }
    backup = Path(sys.executable).with_name("backup")
    argv = [backup if backup.exists() else "backup", "inventory", "rebuild", TARGET,
            "--identity", data / "key.txt", "--json"]  # fmt: skip
    wall, cpu, requests, methods, stdout = run_timed(argv, env, moto)
    from backup.inventory import Inventory

    inv = Inventory(f"sqlite:///{db}")
    got = archive_list(inv)
    inv.close()
    want = json.loads((data / "archives.json").read_text())
    if got != want:
        diff = [(w, g) for w, g in zip(want, got, strict=False) if w != g][:3]
        raise BenchError(f"rebuilt archive list differs ({len(got)} vs {len(want)}): {diff}")
    # a second rebuild into the same inventory must change nothing
    wall2, _, requests2, _, _ = run_timed(argv, env, moto)
    inv = Inventory(f"sqlite:///{db}")
    if archive_list(inv) != want:
        raise BenchError("a second rebuild changed the inventory")
    inv.close()
    report: Any = None
    try:
        report = json.loads(stdout)
    except ValueError:
        report = stdout[-2000:]
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "requests": requests,
        "by_method": methods,
        "second_run_wall_s": wall2,
        "second_run_requests": requests2,
        "report": report,
    }


def reset_restic_index(moto: Moto, data: Path) -> None:
    """Put back the index files as the 1,000 backups left them (an index rebuild replaces
    them with one): each repetition starts from the same repository."""
    s3 = moto.client()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=RESTIC_BUCKET, Prefix="index/"):
        for o in page.get("Contents", []):
            s3.delete_object(Bucket=RESTIC_BUCKET, Key=o["Key"])
    repo = data / "restic-repo"
    for p in sorted((repo / "index").iterdir()):
        s3.put_object(Bucket=RESTIC_BUCKET, Key=f"index/{p.name}", Body=p.read_bytes())


def measure_restic(moto: Moto, data: Path, scratch: Path, read_all: bool) -> dict[str, Any]:
    repo = f"s3:{moto.endpoint}/{RESTIC_BUCKET}"
    env = restic_env({}, repo, scratch)
    has_repair = (
        subprocess.run(
            ["restic", "repair", "index", "--help"], env=env, capture_output=True
        ).returncode
        == 0
    )
    reset_restic_index(moto, data)
    argv = [
        "restic",
        "--no-cache",
        *(["repair", "index"] if has_repair else ["rebuild-index"]),
        *(["--read-all-packs"] if read_all else []),
    ]
    wall, cpu, requests, methods, _ = run_timed(argv, env, moto)
    listed = subprocess.run(
        ["restic", "--no-cache", "snapshots", "--json"], env=env, capture_output=True, check=True
    )
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "requests": requests,
        "by_method": methods,
        "command": " ".join(argv),
        "snapshots_after": len(json.loads(listed.stdout)),
    }


def git_state() -> dict[str, Any]:
    def git(*a: str) -> str:
        r = subprocess.run(["git", "-C", str(REPO_ROOT), *a], capture_output=True, text=True)
        return r.stdout.strip()

    h = hashlib.sha256()
    for p in sorted((REPO_ROOT / "backup").rglob("*.py")):
        h.update(p.read_bytes())
    return {"commit": git("rev-parse", "HEAD"), "backup_py_sha256": h.hexdigest()[:16]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archives", type=int, default=1000)
    ap.add_argument("--files", type=int, default=100_000, help="file entries in all archives")
    ap.add_argument("--policies", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/backup-bench-rebuild"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-restic", action="store_true")
    args = ap.parse_args()
    restic = not args.no_restic and shutil.which("restic") is not None
    if not args.no_restic and not restic:
        print("restic not found on PATH: its rows are skipped", file=sys.stderr)

    data = args.workdir / "dataset"
    meta_path = data / "dataset.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if meta.get("params") != [args.archives, args.files, args.policies] or (
        restic and not meta.get("restic")
    ):
        print(f"making the dataset in {data} (once; kept for later runs)")
        meta = make_dataset(args, data, restic)
    print(
        f"dataset: {meta['archives']} archives of {meta['policies']} policies, "
        f"{meta['file_entries']} file entries ({meta['entries_incl_dirs']} with directories), "
        f"{meta['objects']} objects, {meta['object_bytes'] / 1e6:.1f} MB"
    )
    scratch = args.workdir / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    moto = Moto(scratch / "moto.log")
    results: dict[str, list[dict[str, Any]]] = {OURS: [], RESTIC: [], RESTIC_ALL: []}
    try:
        load_into(moto, data, restic)
        tools = [OURS] + ([RESTIC, RESTIC_ALL] if restic else [])
        for rep in range(args.runs):
            order = tools if rep % 2 == 0 else tools[::-1]
            for tool in order:
                if tool == OURS:
                    r = measure_ours(moto, data, scratch, rep)
                else:
                    r = measure_restic(moto, data, scratch, tool == RESTIC_ALL)
                results[tool].append(r)
                print(f"  rep {rep + 1} {tool}: {r['wall_s']:.2f} s, {r['requests']} requests")
    finally:
        moto.stop()

    summary: dict[str, Any] = {}
    print(f"\nmedians of {args.runs}, on moto's S3 server on loopback:")
    print(f"  {'':<40}{'wall':>9}{'CPU':>9}{'requests':>10}")
    for tool, rs in results.items():
        if not rs:
            continue
        med = {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "cpu_s", "requests")}
        summary[tool] = {k: round(v, 3) for k, v in med.items()}
        print(f"  {tool:<40}{med['wall_s']:8.2f}s{med['cpu_s']:8.2f}s{med['requests']:10.0f}")
    if results[OURS]:
        o = results[OURS][0]
        print(
            f"  second rebuild (nothing to add): {o['second_run_wall_s']:.2f} s, "
            f"{o['second_run_requests']} requests"
        )
    for other in (RESTIC, RESTIC_ALL):
        if results[other] and results[OURS]:
            ratio = summary[OURS]["wall_s"] / summary[other]["wall_s"]
            summary[f"ours_over_{other}_wall"] = round(ratio, 2)
            print(f"  rebuild / {other} wall: {ratio:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "dataset": meta,
                    "runs": results,
                    "medians": summary,
                    "restic_version": (
                        subprocess.run(
                            ["restic", "version"], capture_output=True, text=True
                        ).stdout.strip()
                        if restic
                        else None
                    ),
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                    "code": git_state(),
                    "when": datetime.now(UTC).isoformat(),
                },
                indent=1,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"bench_rebuild: {e}", file=sys.stderr)
        sys.exit(2)
