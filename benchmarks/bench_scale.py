#!/usr/bin/env python3
"""Scale benchmark: many small files, many policies, a large inventory (issue 15).

Three parts, each side by side in one run, reporting medians and ratios:

1. ``files``: deterministic trees of small text files (default 100k and 300k files, ~4 KiB
   each; 1M with ``--files 1000000``). For each tree, alternating the tools within every
   repetition: full backup, no-change incremental, 1%-changed incremental and restore of the
   latest state, for ``backup``, restic and borg (Debian packages ``restic``,
   ``borgbackup``; a tool that is not installed is left out and said so). Wall, CPU, peak
   RSS (the largest single process, wait4's ru_maxrss) and stored size. Every restored tree
   is compared with the dataset (type, mode, size, mtime, SHA-1).
2. ``policies``: ``backup list``, ``status``, ``schedule`` and ``run P`` with 1 and with N
   (default 1,000) S3 policies in the policy file, against moto's server on loopback.
3. ``inventory``: ``backup list``, ``backup show ID`` (a page, and a page after a cursor) and
   ``backup status`` against an inventory holding A archives (default 10,000) and R
   file-index rows (default 10,000,000; use ``--inventory-rows`` to scale it down on a small
   disk), on SQLite and, when ``BACKUP_TEST_POSTGRES_URL`` names one, on PostgreSQL (filled
   once: a marker in the work directory says so); ``--version`` beside them is the start-up
   every command pays. Then, in-process, the first page of an archive whose index is still
   packed (``--inventory-packed`` entries: that first read unpacks it) and the page after.

    python3 benchmarks/bench_scale.py [--parts files,policies,inventory] [--files 100000,300000]
        [--runs 3] [--workdir /tmp/backup-scale] [--json out.json] [--plot docs/scale.png]

This is a benchmark, not a test. At the defaults it needs ~8 GB of free disk and takes about
an hour on two cores; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import (
    QUIET_WAIT,
    RESTIC_PASSWORD,
    BenchError,
    Measurement,
    check_tree,
    digest_tree,
    find_backup_cmd,
    measured,
    run_quiet,
    run_timed,
    tree_bytes,
)

FULL, NOCHANGE, INCR, RESTORE = "full", "no-change", "1% changed", "restore"
OPERATIONS = (FULL, NOCHANGE, INCR, RESTORE)
OURS, RESTIC, BORG = "backup", "restic", "borg"
POLICY = "scale"
BORG_PASSPHRASE = "bench-not-secret"

# the targets, as ratios to restic and as peak RSS
TARGETS = {FULL: 0.6, NOCHANGE: 0.25, RESTORE: 0.8}
TARGET_RSS_MIB = 200
TARGET_POLICY_RATIO = 1.5
TARGET_INVENTORY_S = 1.0

WORDS = [
    "backup",
    "archive",
    "restore",
    "glacier",
    "policy",
    "snapshot",
    "bucket",
    "retention",
    "vault",
    "chain",
    "manifest",
    "inventory",
    "worker",
    "scheduler",
    "retrieval",
    "object",
    "lock",
    "tier",
    "recipient",
    "identity",
    "stream",
    "index",
    "cluster",
    "notify",
    "drill",
    "export",
    "import",
    "rebuild",
    "prune",
    "verify",
    "schedule",
    "incremental",
    "full",
]


# --------------------------------------------------------------------------------------
# the small-file tree


def make_tree(root: Path, files: int, mean_bytes: int, seed: int = 1) -> None:
    """``files`` text files in directories of 500, 100 directories to a parent; each file's
    size is drawn around ``mean_bytes`` and its words from a small vocabulary (it compresses
    like source code or logs). Deterministic for a seed; mtimes fixed so reruns agree."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    for i in range(files):
        d = root / f"d{i // 50_000:03d}" / f"s{(i // 500) % 100:03d}"
        if i % 500 == 0:
            d.mkdir(parents=True, exist_ok=True)
        n = max(1, int(rng.expovariate(1 / mean_bytes)))
        words: list[str] = []
        size = 0
        while size < n:
            w = WORDS[rng.randrange(len(WORDS))]
            words.append(w)
            size += len(w) + 1
        p = d / f"f{i:07d}.txt"
        p.write_text(" ".join(words)[:n] + "\n")
        os.utime(p, (1_700_000_000 + i, 1_700_000_000 + i))


def make_tiny_tree(root: Path, files: int, seed: int = 1, *, resume: bool = False) -> None:
    """``files`` small text files (16 to 200 bytes) in directories of 500, for the
    memory-only run at 10M files, where ``make_tree``'s 4 KiB files would take 40 GB and an
    hour to write: bodies drawn from a pool of 1,024, written with bare system calls."""
    rng = random.Random(seed)
    pool = []
    for _ in range(1024):
        n = rng.randrange(16, 200)
        words = " ".join(WORDS[rng.randrange(len(WORDS))] for _ in range(n))
        pool.append((words[:n] + "\n").encode())
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    root.mkdir(parents=True, exist_ok=resume)
    d = b""
    base = os.fsencode(root)
    for i in range(files):
        if i % 500 == 0:
            d = base + b"/d%04d/s%03d/" % (i // 50_000, (i // 500) % 100)
            os.makedirs(d, exist_ok=True)
        body = pool[rng.getrandbits(10)]
        try:
            fd = os.open(d + b"f%08d.txt" % i, flags, 0o644)
        except FileExistsError:
            if resume:  # completing a tree a run left unfinished: the same bytes
                continue
            raise
        os.write(fd, body)
        t = (1_700_000_000 + i) * 1_000_000_000
        os.utime(fd, ns=(t, t))
        os.close(fd)


def change_one_percent(root: Path, files: int, rep: int) -> list[Path]:
    """Rewrites 1% of the files (a different 1% each repetition); returns them."""
    rng = random.Random(1000 + rep)
    changed = []
    for i in rng.sample(range(files), max(1, files // 100)):
        p = root / f"d{i // 50_000:03d}" / f"s{(i // 500) % 100:03d}" / f"f{i:07d}.txt"
        with open(p, "a") as f:
            f.write(f"changed in repetition {rep}\n")
        changed.append(p)
    return changed


# --------------------------------------------------------------------------------------
# the tools: each full starts from an empty repository


@dataclass
class Work:
    data: Path
    scratch: Path
    key: Path
    recipient: str
    backup_cmd: list[str]


class Ours:
    def __init__(self, w: Work) -> None:
        self.w = w
        self.vault = w.scratch / "vault"
        self.inventory = w.scratch / "inventory.db"
        self.policy_file = w.scratch / "policy.toml"
        self.policy_file.write_text(
            "[[policy]]\n"
            f'name = "{POLICY}"\n'
            f"sources = [{json.dumps(str(w.data))}]\n"
            f'target = "file://{self.vault}"\n'
            f'recipients = ["{w.recipient}"]\n'
            'full_every = "7d"\n'
        )

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "BACKUP_CONFIG": str(self.policy_file),
            "BACKUP_INVENTORY_URL": f"sqlite:///{self.inventory}",
            "BACKUP_IDENTITY": str(self.w.key),
        }

    def backup(self, op: str, rep: int) -> Measurement:
        if op == FULL:
            shutil.rmtree(self.vault, ignore_errors=True)
            for p in self.w.scratch.glob(self.inventory.name + "*"):
                p.unlink()
            self.vault.mkdir()
        before = tree_bytes(self.vault)
        flags = ["--full"] if op == FULL else []
        t = run_timed([*self.w.backup_cmd, "run", POLICY, "--json", *flags], env=self.env())
        res = json.loads(t.stdout)
        if res.get("state") != "complete":
            raise BenchError(f"backup run did not complete: {res}")
        return measured(op, OURS, rep, t, tree_bytes(self.vault) - before, kind=res["kind"])

    def restore(self, rep: int, dest: Path) -> tuple[Measurement, Path]:
        t = run_timed(
            [*self.w.backup_cmd, "restore", POLICY, "--to", dest, "--json"], env=self.env()
        )
        return measured(RESTORE, OURS, rep, t, tree_bytes(dest)), dest

    def stored(self) -> int:
        return tree_bytes(self.vault)


class Restic:
    def __init__(self, w: Work, exe: str) -> None:
        self.w = w
        self.exe = exe
        self.repo = w.scratch / "restic-repo"
        self.cache = w.scratch / "restic-cache"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RESTIC_PASSWORD": RESTIC_PASSWORD,
            "RESTIC_REPOSITORY": str(self.repo),
        }

    def _cmd(self, *args: str | Path) -> list[str | Path]:
        return [self.exe, "--cache-dir", self.cache, *args]

    def backup(self, op: str, rep: int) -> Measurement:
        if op == FULL:
            shutil.rmtree(self.repo, ignore_errors=True)
            shutil.rmtree(self.cache, ignore_errors=True)
            run_quiet(self._cmd("init", "--repository-version", "2"), env=self.env())
        before = tree_bytes(self.repo)
        t = run_timed(self._cmd("backup", "--quiet", self.w.data), env=self.env())
        return measured(op, RESTIC, rep, t, tree_bytes(self.repo) - before)

    def restore(self, rep: int, dest: Path) -> tuple[Measurement, Path]:
        t = run_timed(self._cmd("restore", "latest", "--target", dest, "--quiet"), env=self.env())
        return measured(RESTORE, RESTIC, rep, t, tree_bytes(dest)), dest / self.w.data.relative_to(
            "/"
        )

    def stored(self) -> int:
        return tree_bytes(self.repo)


class Borg:
    def __init__(self, w: Work, exe: str) -> None:
        self.w = w
        self.exe = exe
        self.repo = w.scratch / "borg-repo"
        self.n = 0

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "BORG_PASSPHRASE": BORG_PASSPHRASE,
            "BORG_REPO": str(self.repo),
            "BORG_BASE_DIR": str(self.w.scratch / "borg-base"),
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        }

    def backup(self, op: str, rep: int) -> Measurement:
        if op == FULL:
            shutil.rmtree(self.repo, ignore_errors=True)
            shutil.rmtree(self.w.scratch / "borg-base", ignore_errors=True)
            run_quiet([self.exe, "init", "--encryption", "repokey-blake2"], env=self.env())
        before = tree_bytes(self.repo)
        self.n += 1
        # zstd,3 like ours; borg's default (lz4) would store more and run faster
        t = run_timed(
            [self.exe, "create", "--compression", "zstd,3", f"::a{self.n}", self.w.data],
            env=self.env(),
        )
        return measured(op, BORG, rep, t, tree_bytes(self.repo) - before)

    def restore(self, rep: int, dest: Path) -> tuple[Measurement, Path]:
        t = run_timed([self.exe, "extract", f"::a{self.n}"], env=self.env(), cwd=dest)
        return measured(RESTORE, BORG, rep, t, tree_bytes(dest)), dest / self.w.data.relative_to(
            "/"
        )

    def stored(self) -> int:
        return tree_bytes(self.repo)


def _said(m: Measurement) -> Measurement:
    """Each measurement as it is made: a median can hide one disturbed repetition."""
    print(
        f"    {m.tool} {m.operation}: {m.wall_s:.2f} s wall, "
        f"{m.user_s:.2f} + {m.sys_s:.2f} s CPU, {m.max_rss_kib / 1024:.0f} MiB "
        f"(others {m.other_cpu_s:.1f} s, steal {m.steal_s:.1f} s)",
        flush=True,
    )
    return m


def files_part(
    workdir: Path,
    counts: Sequence[int],
    mean_bytes: int,
    runs: int,
    backup_cmd: list[str],
    *,
    runs_at: dict[int, int] | None = None,
    peers: Sequence[str] = ("restic", "borg"),
    tiny: bool = False,
) -> list[dict[str, Any]]:
    """Each tree: full, no-change, 1%-changed and restore, per tool. ``tiny``: the trees of
    ``make_tiny_tree`` (the 10M-file memory run), full and no-change only (a restore of 10M
    files would need the tree's disk space again)."""
    key = workdir / "key.txt"
    if not key.exists():
        run_quiet(["age-keygen", "-o", key])
    recipient = run_quiet(["age-keygen", "-y", key]).strip()
    rows: list[dict[str, Any]] = []
    scratches: list[Path] = []
    for count in counts:
        name = f"tiny-{count}" if tiny else f"tree-{count}"
        data = workdir / name
        if not (workdir / f"{name}.done").exists():
            shutil.rmtree(data, ignore_errors=True)
            print(f"making {count:,} files under {data}", flush=True)
            if tiny:
                make_tiny_tree(data, count)
            else:
                make_tree(data, count, mean_bytes)
            (workdir / f"{name}.done").touch()
        scratch = workdir / f"scratch-{count}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        w = Work(data, scratch, key, recipient, backup_cmd)
        tools: list[Any] = [Ours(w)]
        for name, cls in (("restic", Restic), ("borg", Borg)):
            if name not in peers:
                continue
            exe = shutil.which(name)
            if exe:
                tools.append(cls(w, exe))
            else:
                print(f"{name} is not installed: left out (Debian package {name})", flush=True)
        ms: list[Measurement] = []
        stored: dict[str, list[int]] = {}
        reps = (runs_at or {}).get(count, runs)
        for rep in range(reps):
            if not tiny:
                want = digest_tree(data)
            for op in (FULL, NOCHANGE):
                for t in tools[rep % len(tools) :] + tools[: rep % len(tools)]:
                    ms.append(_said(t.backup(op, rep)))
            if tiny:
                for t in tools:
                    stored.setdefault(type(t).__name__, []).append(t.stored())
                print(f"  {count:,} tiny files, repetition {rep + 1}/{reps} done", flush=True)
                continue
            changed = change_one_percent(data, count, rep)
            want = digest_tree(data)
            for t in tools:
                ms.append(_said(t.backup(INCR, rep)))
                stored.setdefault(type(t).__name__, []).append(t.stored())
            for t in tools:
                # a new directory each time, none deleted until every count has run: on an
                # ext4 without a journal (this machine's root) the inode allocator passes over
                # inodes freed in the last 60 s (5 min while their table block is dirty),
                # scanning every one of them on every create, so a restore right after a
                # large tree was deleted measured that (see benchmarks/README.md)
                dest = scratch / "restored" / f"{type(t).__name__}-{rep}"
                dest.mkdir(parents=True)
                m, root = t.restore(rep, dest)
                check_tree(f"{m.tool} at {count} files", root, want)
                ms.append(_said(m))
            print(f"  {count:,} files, repetition {rep + 1}/{reps} done ({len(changed)} changed)")
        for op in OPERATIONS:
            for tool in (OURS, RESTIC, BORG):
                sel = [m for m in ms if m.operation == op and m.tool == tool]
                if not sel:
                    continue
                rows.append(
                    {
                        "files": count,
                        "operation": op,
                        "tool": tool,
                        "wall_s": statistics.median(m.wall_s for m in sel),
                        "cpu_s": statistics.median(m.cpu_s for m in sel),
                        "peak_rss_mib": statistics.median(m.max_rss_kib for m in sel) / 1024,
                        "runs": len(sel),
                        "tiny": tiny,
                    }
                )
        for t in tools:
            name = {"Ours": OURS, "Restic": RESTIC, "Borg": BORG}[type(t).__name__]
            rows.append(
                {
                    "files": count,
                    "tiny": tiny,
                    "operation": "stored",
                    "tool": name,
                    "bytes": statistics.median(stored[type(t).__name__]),
                }
            )
        scratches.append(scratch)
    for scratch in scratches:
        shutil.rmtree(scratch, ignore_errors=True)
    return rows


# --------------------------------------------------------------------------------------
# the policy count


@contextlib.contextmanager
def moto_server(workdir: Path) -> Any:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(workdir / "moto.log", "wb")  # noqa: SIM115 - closed below
    p = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.1)
        yield url
    finally:
        p.terminate()
        p.wait()
        log.close()


def policies_part(
    workdir: Path, many: int, runs: int, builds: dict[str, list[str]]
) -> list[dict[str, Any]]:
    """Each command with 1 and with ``many`` policies, for each build (label: command line),
    all alternating within every repetition so that a change of the machine's load during
    the run falls on every column alike; each build and policy count has its own inventory,
    which its ``run P`` fills (a full, then incrementals)."""
    import boto3

    part = workdir / "policies"
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    src = part / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}.txt").write_text(f"file {i}\n" * 100)
    key = part / "key.txt"
    run_quiet(["age-keygen", "-o", key])
    recipient = run_quiet(["age-keygen", "-y", key]).strip()
    rows: list[dict[str, Any]] = []
    with moto_server(part) as endpoint:
        creds = {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            "BACKUP_S3_ENDPOINT_URL": endpoint,
        }
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        s3.create_bucket(Bucket="scale")
        files: dict[int, Path] = {}
        for n in (1, many):
            pf = files[n] = part / f"policies-{n}.toml"
            with open(pf, "w") as f:
                for i in range(n):
                    f.write(
                        "[[policy]]\n"
                        f'name = "p{i:04d}"\n'
                        f"sources = [{json.dumps(str(src))}]\n"
                        f'target = "s3://scale/p{i:04d}?storage_class=DEEP_ARCHIVE"\n'
                        f'recipients = ["{recipient}"]\n'
                        'schedule = "0 2 * * *"\n\n'
                    )
        commands = {
            "list": ["list", "--json"],
            "status": ["status", "--json"],
            "schedule": ["schedule", "--json"],
            "run P": ["run", "p0000", "--json"],
        }
        for rep in range(runs):
            for name, args in commands.items():
                for n, pf in files.items():
                    for build, backup_cmd in builds.items():
                        env = {
                            **os.environ,
                            **creds,
                            "BACKUP_CONFIG": str(pf),
                            "BACKUP_INVENTORY_URL": f"sqlite:///{part / f'inv-{build}-{n}.db'}",
                        }
                        t = run_timed([*backup_cmd, *args], env=env)
                        rows.append(
                            {
                                "build": build,
                                "policies": n,
                                "command": name,
                                "rep": rep,
                                "wall_s": t.wall_s,
                                "cpu_s": t.user_s + t.sys_s,
                                "peak_rss_mib": t.max_rss_kib / 1024,
                            }
                        )
    return rows


# --------------------------------------------------------------------------------------
# the inventory size


def fill_inventory(url: str, archives: int, rows: int) -> str:
    """A policy's chain of ``archives`` archives (a full every 30), with ``rows`` file-index
    rows spread over them; returns the id of the newest archive.

    Written in bulk (one transaction for the archives, COPY on PostgreSQL, large
    transactions on SQLite): row by row, 10M rows took most of an hour."""
    from datetime import UTC, datetime, timedelta

    from backup.inventory import FILE_INDEX_COLUMNS, Archive, Inventory

    inv = Inventory(url)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    per = max(1, rows // archives)
    parent: str | None = None
    ids: list[str] = []
    with inv.session() as s:
        for a in range(archives):
            aid = f"{a:08d}" + "0" * 24
            kind = "full" if a % 30 == 0 else "incremental"
            s.add(
                Archive(
                    id=aid,
                    policy=f"p{a % 10}",
                    target="file:///nowhere",
                    location=f"{aid}.tar.zst.age",
                    manifest_location=f"{aid}.manifest.age",
                    kind=kind,
                    parent_id=None if kind == "full" else parent,
                    created=t0 + timedelta(minutes=a),
                    finished=t0 + timedelta(minutes=a, seconds=30),
                    state="complete",
                    host="bench",
                    entries=per,
                )
            )
            s.flush()  # the parent first
            parent = aid
            ids.append(aid)

    def gen(aid: str) -> Any:
        t = 1_700_000_000_000_000_000
        for i in range(per):
            path = f"d{i // 1000:04d}/f{i:07d}.txt".encode()
            yield (
                aid,
                path,
                "file",
                4096,
                0o100644,
                t + i,
                t + i,
                i,
                1000,
                1000,
                f"{i:064x}",
                None,
                i * 4608,
            )

    names = ", ".join(map(inv.engine.dialect.identifier_preparer.quote, FILE_INDEX_COLUMNS))
    raw = inv.engine.raw_connection()
    try:
        cur = raw.cursor()
        if inv.engine.dialect.name == "postgresql":
            with cur.copy(f"COPY file_index ({names}) FROM STDIN") as copy:
                for aid in ids:
                    for r in gen(aid):
                        copy.write_row(r)
        else:
            marks = ", ".join("?" * len(FILE_INDEX_COLUMNS))
            for n, aid in enumerate(ids):
                cur.executemany(f"INSERT INTO file_index ({names}) VALUES ({marks})", gen(aid))
                if n % 500 == 499:
                    raw.commit()
        raw.commit()
    finally:
        raw.close()
    inv.close()
    return ids[-1]


def first_show(url: str, entries: int, rep: int) -> dict[str, float]:
    """Time, in this process, the first page of an archive whose index is still packed (as a
    backup leaves it: the first reader unpacks it, in one transaction) and the page after."""
    from datetime import UTC, datetime

    from backup.archive.manifest import encode_manifest
    from backup.archive.pack import Record
    from backup.inventory import Archive, Inventory

    inv = Inventory(url)
    aid = f"packed{entries}-{rep}-{time.time_ns()}"
    inv.add_archive(
        Archive(
            id=aid, policy="packed", target="file:///nowhere", location=f"{aid}.tar.zst.age",
            manifest_location=f"{aid}.manifest.age", kind="full", created=datetime.now(UTC),
            state="complete", entries=entries,
        )
    )  # fmt: skip
    recs = (
        Record(f"d{i // 1000:04d}/f{i:07d}.txt".encode(), "file", 0o644, i, i, i, 0, 0, i * 4608)
        for i in range(entries)
    )
    inv.add_packed_file_records(
        aid, encode_manifest({"format": 1, "archive_id": aid, "kind": "full", "deleted": []}, recs)
    )
    t0 = time.perf_counter()
    page = inv.records(aid, limit=1000)
    t1 = time.perf_counter()
    inv.records(aid, after=page[-1].path, limit=1000)
    t2 = time.perf_counter()
    inv.close()
    return {"first_s": t1 - t0, "next_s": t2 - t1}


def inventory_part(
    workdir: Path, archives: int, rows: int, runs: int, backup_cmd: list[str], packed: int
) -> list[dict[str, Any]]:
    part = workdir / "inventory"
    part.mkdir(parents=True, exist_ok=True)
    urls = {"sqlite": f"sqlite:///{part / f'inv-{archives}-{rows}.db'}"}
    if os.environ.get("BACKUP_TEST_POSTGRES_URL"):
        urls["postgresql"] = os.environ["BACKUP_TEST_POSTGRES_URL"]
    # `status` reads the policy file (an empty one is an error): one local policy, named
    # apart from the filled archives' policies
    key_file = part / "key.txt"
    if not key_file.exists():
        run_quiet(["age-keygen", "-o", key_file])
    recipient = run_quiet(["age-keygen", "-y", key_file]).strip()
    pf = part / "policy.toml"
    pf.write_text(
        "[[policy]]\n"
        'name = "bench-inventory"\n'
        f"sources = [{json.dumps(str(part))}]\n"
        f'target = "file://{part / "vault"}"\n'
        f'recipients = ["{recipient}"]\n'
    )
    out: list[dict[str, Any]] = []
    for db, url in urls.items():
        # filled once: delete the marker (and the database) to fill again
        marker = part / f"{db}-{archives}-{rows}.done"
        if marker.exists():
            last = marker.read_text()
        else:
            t0 = time.perf_counter()
            print(f"filling the {db} inventory: {archives:,} archives, {rows:,} rows", flush=True)
            last = fill_inventory(url, archives, rows)
            marker.write_text(last)
            print(f"  filled in {time.perf_counter() - t0:.0f} s", flush=True)
        env = {**os.environ, "BACKUP_CONFIG": str(pf), "BACKUP_INVENTORY_URL": url}
        commands = (
            ("list", ["list"]),
            ("list --json", ["list", "--json"]),
            ("list --limit 0 --json", ["list", "--limit", "0", "--json"]),
            ("show", ["show", last]),
            ("show --json", ["show", last, "--json"]),
            ("show --after --json", ["show", last, "--after", "d0000/f0000499.txt", "--json"]),
            ("status --json", ["status", "--json"]),
            ("--version", ["--version"]),
        )
        for rep in range(runs):
            for name, args in commands:
                t = run_timed([*backup_cmd, *args], env=env)
                out.append(
                    {
                        "db": db,
                        "command": name,
                        "rep": rep,
                        "wall_s": t.wall_s,
                        "cpu_s": t.user_s + t.sys_s,
                        "others_cpu_s": t.other_cpu_s,
                    }
                )
            if packed:
                f = first_show(url, packed, rep)
                for name, key in (("first page, packed", "first_s"), ("next page", "next_s")):
                    row = {"db": db, "command": f"{name} ({packed:,})", "rep": rep}
                    out.append({**row, "wall_s": f[key], "cpu_s": None})
    return out


# --------------------------------------------------------------------------------------
# report


def render(
    files: list[dict[str, Any]], pol: list[dict[str, Any]], inv: list[dict[str, Any]]
) -> str:
    lines: list[str] = []
    if files:
        lines.append(
            "| files | operation | backup | restic | borg | backup/restic | peak RSS (backup, restic, borg) |"
        )
        lines.append("|---|---|---|---|---|---|---|")
        by = {(r["files"], r["operation"], r["tool"]): r for r in files}
        for count in sorted({r["files"] for r in files}):
            for op in OPERATIONS:
                ours = by.get((count, op, OURS))
                if not ours:
                    continue
                res = by.get((count, op, RESTIC))
                borg = by.get((count, op, BORG))
                ratio = f"{ours['wall_s'] / res['wall_s']:.2f}x" if res else "-"
                target = TARGETS.get(op)
                if res and target:
                    ratio += (
                        " PASS"
                        if ours["wall_s"] / res["wall_s"] <= target
                        else f" FAIL (target {target}x)"
                    )
                rss = ", ".join(f"{r['peak_rss_mib']:.0f}" if r else "-" for r in (ours, res, borg))
                cells = [f"{r['wall_s']:.1f} s" if r else "-" for r in (ours, res, borg)]
                label = f"{count:,}" + (" (tiny files)" if ours.get("tiny") else "")
                lines.append(f"| {label} | {op} | {' | '.join(cells)} | {ratio} | {rss} MiB |")
            st = {t: by.get((count, "stored", t)) for t in (OURS, RESTIC, BORG)}
            lines.append(
                f"| {count:,} | stored | "
                + " | ".join(
                    f"{row['bytes'] / 2**20:.0f} MiB" if (row := st[t]) else "-"
                    for t in (OURS, RESTIC, BORG)
                )
                + " | | |"
            )
    if pol:
        builds = list(dict.fromkeys(r.get("build", OURS) for r in pol))
        n = max(r["policies"] for r in pol)
        lines += [
            "",
            "| build | command | 1 policy | N policies | ratio | CPU 1 / N | CPU ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for build in builds:
            for cmd in ("list", "status", "schedule", "run P"):

                def med(count: int, key: str, build: str = build, cmd: str = cmd) -> float:
                    return float(
                        statistics.median(
                            r.get(key, 0.0)
                            for r in pol
                            if r.get("build", OURS) == build
                            and r["command"] == cmd
                            and r["policies"] == count
                        )
                    )

                one, many = med(1, "wall_s"), med(n, "wall_s")
                cpu1, cpun = med(1, "cpu_s"), med(n, "cpu_s")
                verdict = (
                    "PASS"
                    if many / one <= TARGET_POLICY_RATIO
                    else f"FAIL (target {TARGET_POLICY_RATIO}x)"
                )
                cpu = f"{cpu1:.2f} / {cpun:.2f} s | {cpun / cpu1:.2f}x" if cpu1 else "- | -"
                lines.append(
                    f"| {build} | {cmd} | {one:.2f} s | {many:.2f} s ({n:,}) "
                    f"| {many / one:.2f}x {verdict} | {cpu} |"
                )
    if inv:
        # CPU beside wall: on a loaded machine the wall time is mostly waiting for a core
        lines += ["", "| inventory | command | median wall | median CPU |", "|---|---|---|---|"]
        for db in sorted({r["db"] for r in inv}):
            for cmd in dict.fromkeys(r["command"] for r in inv if r["db"] == db):
                these = [r for r in inv if r["db"] == db and r["command"] == cmd]
                wall = statistics.median(r["wall_s"] for r in these)
                cpus = [r["cpu_s"] for r in these if r.get("cpu_s") is not None]
                cpu = f"{statistics.median(cpus):.2f} s" if cpus else "-"
                verdict = "PASS" if wall < TARGET_INVENTORY_S else "FAIL"
                lines.append(f"| {db} | {cmd} | {wall:.2f} s {verdict} | {cpu} |")
    return "\n".join(lines)


def plot(files: list[dict[str, Any]], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no plot", flush=True)
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for tool in (OURS, RESTIC, BORG):
        for op, style in ((FULL, "-"), (RESTORE, ":")):
            pts = sorted(
                (r["files"], r["wall_s"])
                for r in files
                if r["tool"] == tool and r["operation"] == op and not r.get("tiny")
            )
            if pts:
                ax1.plot(*zip(*pts, strict=True), style, marker="o", label=f"{tool} {op}")
        for op, style in ((FULL, "-"), (NOCHANGE, "--")):
            pts = sorted(
                (r["files"], r["peak_rss_mib"])
                for r in files
                if r["tool"] == tool and r["operation"] == op
            )
            if pts:
                ax2.plot(*zip(*pts, strict=True), style, marker="o", label=f"{tool} {op}")
    ax1.set(xlabel="files", ylabel="wall time (s, median)", title="time", xscale="log")
    ax2.set(
        xlabel="files (10M: tiny files, backup only)",
        ylabel="peak RSS (MiB)",
        title="memory",
        xscale="log",
    )
    ax2.axhline(200 * 1e6 / 2**20, color="grey", lw=0.8, ls=":")
    for ax in (ax1, ax2):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"plot written to {out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="files,policies,inventory")
    ap.add_argument("--files", default="100000,300000", help="file counts, comma-separated")
    ap.add_argument("--mean-bytes", type=int, default=4096)
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument(
        "--policies-vs",
        metavar="LABEL=COMMAND",
        action="append",
        default=[],
        help="policies part: also time another build of backup (e.g. main's checkout, "
        "'main=env PYTHONPATH=/src/main backup'), alternating with this one",
    )
    ap.add_argument("--inventory-archives", type=int, default=10_000)
    ap.add_argument("--inventory-rows", type=int, default=10_000_000)
    ap.add_argument(
        "--inventory-packed",
        type=int,
        default=1_000_000,
        help="entries of a packed archive whose first show unpacks it (0: none)",
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--runs-at",
        metavar="FILES=RUNS",
        action="append",
        default=[],
        help="files part: fewer repetitions for one tree (e.g. 1000000=1)",
    )
    ap.add_argument(
        "--peers",
        default="restic,borg",
        help="files part: the other tools to run ('' for backup alone, as at 10M files)",
    )
    ap.add_argument(
        "--tiny-files",
        default="",
        help="files part: also trees of 16-200 byte files (e.g. 10000000), backup's full and "
        "no-change only, for peak RSS",
    )
    ap.add_argument(
        "--from-json",
        type=Path,
        action="append",
        default=[],
        help="add the rows of an earlier run's --json to the report and the plot",
    )
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/backup-scale"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path)
    ap.add_argument(
        "--quiet-wait", type=float, default=0.0, help="wait up to S s for a quiet machine"
    )
    a = ap.parse_args()
    QUIET_WAIT["max_s"] = a.quiet_wait
    parts = set(a.parts.split(","))
    a.workdir.mkdir(parents=True, exist_ok=True)
    cmd = find_backup_cmd()
    runs_at = {int(k): int(v) for k, _, v in (x.partition("=") for x in a.runs_at)}
    files = (
        files_part(
            a.workdir,
            [int(x) for x in a.files.split(",")],
            a.mean_bytes,
            a.runs,
            cmd,
            runs_at=runs_at,
            peers=[p for p in a.peers.split(",") if p],
        )
        if "files" in parts and a.files
        else []
    )
    if "files" in parts and a.tiny_files:
        files += files_part(
            a.workdir,
            [int(x) for x in a.tiny_files.split(",")],
            a.mean_bytes,
            a.runs,
            cmd,
            runs_at=runs_at,
            peers=[p for p in a.peers.split(",") if p],
            tiny=True,
        )
    builds = {OURS: cmd}
    for spec in a.policies_vs:
        label, _, line = spec.partition("=")
        builds[label] = line.split()
    pol = policies_part(a.workdir, a.policies, a.runs, builds) if "policies" in parts else []
    inv = (
        inventory_part(
            a.workdir, a.inventory_archives, a.inventory_rows, a.runs, cmd, a.inventory_packed
        )
        if "inventory" in parts
        else []
    )
    for earlier in a.from_json:
        rows = json.loads(earlier.read_text())
        files += rows.get("files", [])
        pol += rows.get("policies", [])
        inv += rows.get("inventory", [])
    print(render(files, pol, inv))
    if a.json:
        a.json.write_text(json.dumps({"files": files, "policies": pol, "inventory": inv}, indent=2))
    if a.plot and files:
        plot(files, a.plot)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(e, file=sys.stderr)
        sys.exit(1)
