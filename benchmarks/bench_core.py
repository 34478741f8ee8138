#!/usr/bin/env python3
"""Core benchmark: `backup` against `tar | zstd | age` and restic, side by side.

Measures, on one generated tree (../shared/bench/make_dataset.py), alternating the tools
within every repetition and reporting the median of each metric:

    full backup, no-change incremental, 1%-changed incremental, restore of the latest state

for `backup` (this project), the plain shell pipeline `tar -c | zstd -3 -T0 | age` (backup
and restore only; its full includes a `sync` of the output, like our fsync, and is also
reported without it) and restic (if installed). For every measurement: wall time, CPU time
(user+sys of the child and all its descendants, from wait4), peak RSS (the largest single
process of the child's tree, from wait4's ru_maxrss) and output size. Then it checks the
performance targets (PASS/FAIL) and that every restored tree equals the dataset.

    python3 benchmarks/bench_core.py [--size-mb 1024] [--runs 3] [--workdir /tmp/backup-bench]
                                     [--json out.json] [--keep] [--quiet-wait 30]
                                     [--retries 2] [--restore-root DIR]

This is a benchmark, not a test: it takes about 10 minutes at 1 GiB and needs ~6 GB of free
disk. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import stat
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
MAKE_DATASET = REPO_ROOT.parent / "shared" / "bench" / "make_dataset.py"
SEED = 1
POLICY = "bench"
RESTIC_PASSWORD = "bench-not-secret"

# operations, in table order
FULL, NOCHANGE, INCR, RESTORE = "full backup", "no-change incremental", "1% incremental", "restore"
OPERATIONS = (FULL, NOCHANGE, INCR, RESTORE)
# the pipeline's full is reported with and without the final `sync OUT`; its restore has none
OURS, PIPE_SYNC, PIPE_NOSYNC, PIPE, RESTIC = (
    "backup",
    "pipeline +sync",
    "pipeline no sync",
    "pipeline",
    "restic",
)
TOOLS = (OURS, PIPE_SYNC, PIPE_NOSYNC, PIPE, RESTIC)

# targets (see the brief in docs/performance.md)
TARGET_FULL_VS_RESTIC = 0.6
TARGET_FULL_VS_PIPE = 1.3
TARGET_NOCHANGE_VS_RESTIC = 0.25
TARGET_RESTORE_VS_RESTIC = 0.9
TARGET_RSS_MIB = 200
TARGET_SIZE_VS_TARZSTD = 1.05


class BenchError(RuntimeError):
    """A command failed or a restored tree differs from the dataset."""


@dataclass(slots=True)
class Measurement:
    """One timed command (or sum of commands) of one tool in one repetition."""

    operation: str
    tool: str
    rep: int
    wall_s: float
    user_s: float
    sys_s: float
    max_rss_kib: int
    output_bytes: int | None = None
    other_cpu_s: float = 0.0  # CPU used meanwhile by everything else (processes, kernel threads)
    steal_s: float = 0.0  # CPU time the hypervisor took meanwhile
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    def plus(self, other: Measurement) -> Measurement:
        """Two commands run one after the other, as one measurement (times add, RSS maxes)."""
        return Measurement(
            self.operation,
            self.tool,
            self.rep,
            self.wall_s + other.wall_s,
            self.user_s + other.user_s,
            self.sys_s + other.sys_s,
            max(self.max_rss_kib, other.max_rss_kib),
            self.output_bytes,
            self.other_cpu_s + other.other_cpu_s,
            self.steal_s + other.steal_s,
            {**self.detail, **other.detail},
        )


@dataclass(slots=True)
class Timed:
    """The raw result of one command."""

    wall_s: float
    user_s: float
    sys_s: float
    max_rss_kib: int
    stdout: str
    other_cpu_s: float
    steal_s: float
    waited_s: float  # waited for the machine to be quiet before starting


def cpu_ticks() -> tuple[int, int]:
    """Machine-wide (busy, steal) clock ticks from /proc/stat, (0, 0) if unavailable."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    # user nice system idle iowait irq softirq steal ...; guest time is inside user
    return v[0] + v[1] + v[2] + v[5] + v[6], v[7] if len(v) > 7 else 0


CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
QUIET_BUSY = 0.15  # the machine counts as quiet below this share of all CPUs busy
QUIET_WAIT = {"max_s": 0.0}  # set from --quiet-wait
DISTURBED_PCT = 20.0  # a measurement during which others used more of the CPUs is repeated


def wait_quiet() -> float:
    """Wait (up to --quiet-wait seconds) until the machine is idle over half a second.

    Other jobs on a 2-core box (test suites, builds) would otherwise land inside a
    measurement. Returns the seconds waited.
    """
    t0 = time.perf_counter()
    while True:
        b0, _ = cpu_ticks()
        time.sleep(0.5)
        b1, _ = cpu_ticks()
        busy = (b1 - b0) / CLK_TCK / (0.5 * NCPU)
        waited = time.perf_counter() - t0
        if busy < QUIET_BUSY or waited >= QUIET_WAIT["max_s"]:
            return waited


# --------------------------------------------------------------------------------------
# running and measuring commands


def run_timed(
    argv: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    ok_codes: Iterable[int] = (0,),
    settle: bool = True,
) -> Timed:
    """Run a command and measure it with wait4.

    wait4's rusage covers the child and every descendant it waited for (a `sh -c` pipeline
    waits for all its stages): utime/stime are summed, ru_maxrss is the largest single
    process. stdout is captured to a file (never a terminal, so no progress rendering);
    stderr likewise, shown if the command fails.

    The machine's busy time meanwhile (from /proc/stat) minus the child's own CPU time is
    recorded as other_cpu_s: other processes (concurrent jobs) and kernel threads (page
    writeback, also the tool's own) competing for the two cores. /proc/stat counts in
    1/CLK_TCK ticks, so it is coarse for sub-second commands. Unless settle is False, it
    first syncs all filesystems and waits for the machine to be quiet (--quiet-wait).
    """
    args = [str(a) for a in argv]
    rss_file = None
    if _GNU_TIME:
        # wait4's ru_maxrss of a child this process forked starts from this process's own
        # peak (Linux carries the forked memory's high-water mark over the exec), so every
        # tool smaller than the benchmark itself read as its size; GNU time forks from a
        # small process and reports the command's own peak
        rss_file = tempfile.NamedTemporaryFile(prefix="bench-rss-")  # noqa: SIM115
        args = [_GNU_TIME, "-f", "%M", "-o", rss_file.name, *args]
    waited = 0.0
    if settle:
        # no dirty pages of an earlier step (a restored tree, a deleted repository) get
        # written back inside this measurement
        os.sync()
        if QUIET_WAIT["max_s"] > 0:
            waited = wait_quiet()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        busy0, steal0 = cpu_ticks()
        t0 = time.perf_counter()
        p = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=cwd,
            start_new_session=True,  # its own process group, so a whole pipeline can be killed
        )
        try:
            _, status, ru = os.wait4(p.pid, 0)
        except BaseException:  # interrupted (Ctrl-C, SIGTERM): leave nothing running
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            raise
        wall = time.perf_counter() - t0
        busy1, steal1 = cpu_ticks()
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        if p.returncode not in tuple(ok_codes):
            stderr = err.read().decode(errors="replace")
            raise BenchError(
                f"command failed with exit code {p.returncode}: {' '.join(map(str, argv))}\n"
                f"--- stdout ---\n{stdout[-3000:]}\n--- stderr ---\n{stderr[-3000:]}"
            )
    own = ru.ru_utime + ru.ru_stime
    other = max(0.0, (busy1 - busy0) / CLK_TCK - own)
    steal = (steal1 - steal0) / CLK_TCK
    max_rss = ru.ru_maxrss
    if rss_file is not None:
        with rss_file:
            lines = rss_file.read().decode(errors="replace").split()
        max_rss = int(lines[-1]) if lines and lines[-1].isdigit() else max_rss
    return Timed(wall, ru.ru_utime, ru.ru_stime, max_rss, stdout, other, steal, waited)


def _gnu_time() -> str | None:
    """GNU time (Debian package ``time``), if installed: the measured command's own peak RSS."""
    exe = shutil.which("time", path="/usr/bin:/bin:/usr/local/bin")
    if exe is None:
        return None
    try:
        r = subprocess.run([exe, "-f", "%M", "true"], capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return exe if r.returncode == 0 and r.stderr.strip().isdigit() else None


_GNU_TIME = _gnu_time()


def run_quiet(argv: Sequence[str | Path], *, env: Mapping[str, str] | None = None) -> str:
    """Run an unmeasured helper command; returns its stdout."""
    r = subprocess.run([str(a) for a in argv], env=env, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise BenchError(f"command failed ({r.returncode}): {' '.join(map(str, argv))}\n{r.stderr}")
    return r.stdout


def measured(
    op: str, tool: str, rep: int, t: Timed, output: int | None = None, **detail: Any
) -> Measurement:
    return Measurement(
        op,
        tool,
        rep,
        t.wall_s,
        t.user_s,
        t.sys_s,
        t.max_rss_kib,
        output,
        t.other_cpu_s,
        t.steal_s,
        {"waited_for_quiet_s": round(t.waited_s, 1), **detail},
    )


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def q(p: str | Path) -> str:
    """Shell-quote a path."""
    return shlex.quote(str(p))


def tree_bytes(path: Path) -> int:
    """Sum of file sizes under path (`du -sb` without directory sizes), or one file's size."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


# --------------------------------------------------------------------------------------
# the dataset


@dataclass(slots=True)
class Dataset:
    root: Path
    marker: Path
    size_mb: float
    files: list[Path]  # regular files, sorted by relative path (bytes order)


def prepare_dataset(workdir: Path, size_mb: float) -> Dataset:
    """Build the tree, or reuse it when its marker says same size/seed and it is clean.

    The marker lives beside the tree, not in it, so no tool backs it up. It is set to
    "dirty" while the 1% change is applied, so an interrupted run rebuilds the tree.
    """
    root = workdir / "dataset" / "data"
    marker = workdir / "dataset" / "dataset.json"
    want = {"size_mb": size_mb, "seed": SEED, "generator": str(MAKE_DATASET), "state": "clean"}
    try:
        have = json.loads(marker.read_text())
    except (OSError, ValueError):
        have = None
    if have == want and root.is_dir():
        print(f"dataset: reusing {root} ({size_mb:g} MiB, seed {SEED})")
    else:
        if not MAKE_DATASET.is_file():
            raise BenchError(f"dataset generator not found: {MAKE_DATASET}")
        print(f"dataset: building {root} ({size_mb:g} MiB, seed {SEED}) ...", flush=True)
        shutil.rmtree(root, ignore_errors=True)
        marker.unlink(missing_ok=True)
        root.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        out = run_quiet(
            [sys.executable, MAKE_DATASET, root, "--size-mb", str(size_mb), "--seed", str(SEED)]
        )
        print(f"dataset: {out.strip()} in {time.perf_counter() - t0:.1f} s")
        marker.write_text(json.dumps(want))
    files = sorted(
        (Path(r) / f for r, _d, fs in os.walk(root) for f in fs),
        key=lambda p: os.fsencode(p.relative_to(root)),
    )
    return Dataset(root, marker, size_mb, files)


def set_marker_state(ds: Dataset, state: str) -> None:
    m = json.loads(ds.marker.read_text())
    m["state"] = state
    ds.marker.write_text(json.dumps(m))


@dataclass(slots=True)
class Change:
    """The 1% change: what was modified and how to undo it exactly."""

    appended: list[tuple[Path, int, int, int]]  # path, original size, atime_ns, mtime_ns
    touched: list[tuple[Path, int, int]]  # path, original atime_ns, mtime_ns

    @property
    def paths(self) -> list[Path]:
        return [p for p, *_ in self.appended] + [p for p, *_ in self.touched]


def apply_change(ds: Dataset, again: Change | None = None) -> Change:
    """Append a line to every 100th file (sorted order) and touch two of the logs.

    Deterministic: the same files change the same way in every repetition. With `again`
    (a measurement is being repeated), the same files change once more, so there is again
    a 1% change since the last backup; the originals recorded the first time are kept.
    """
    set_marker_state(ds, "dirty")
    appended, touched = [], []
    for p in ds.files[::100]:
        st = p.stat()
        appended.append((p, st.st_size, st.st_atime_ns, st.st_mtime_ns))
        with open(p, "ab") as f:
            f.write(b"# benchmark change: one appended line\n")
    now = time.time_ns()
    for p in sorted((ds.root / "logs").iterdir())[:2]:
        st = p.stat()
        touched.append((p, st.st_atime_ns, st.st_mtime_ns))
        os.utime(p, ns=(now, now))
    return again or Change(appended, touched)


def revert_change(ds: Dataset, ch: Change) -> None:
    """Put back the original content and times (ctime moves on; nothing here compares it)."""
    for p, size, at, mt in ch.appended:
        os.truncate(p, size)
        os.utime(p, ns=(at, mt))
    for p, at, mt in ch.touched:
        os.utime(p, ns=(at, mt))
    set_marker_state(ds, "clean")


def digest_tree(
    root: Path, only: Iterable[Path] | None = None, base: Path | None = None
) -> dict[str, tuple[Any, ...]]:
    """Hash walk: relative path -> (type, permissions, size, mtime seconds, SHA-1 / link).

    Directory mtimes are left out (a tool sets them while extracting); file mtimes are
    compared to the second (GNU tar's default format stores seconds).
    """
    out: dict[str, tuple[Any, ...]] = {}

    def one(p: Path, rel: str) -> None:
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode):
            with open(p, "rb") as f:
                h = hashlib.file_digest(f, "sha1").hexdigest()
            out[rel] = ("f", stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns // 10**9, h)
        elif stat.S_ISLNK(st.st_mode):
            out[rel] = ("l", os.readlink(p))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("d", stat.S_IMODE(st.st_mode))
        else:
            out[rel] = ("o", stat.S_IFMT(st.st_mode))

    base = base or root
    if only is not None:
        for p in only:
            one(p, str(p.relative_to(base)))
        return out
    for r, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(r) / name
            one(p, str(p.relative_to(root)))
    return out


def check_tree(label: str, restored: Path, want: dict[str, tuple[Any, ...]]) -> None:
    got = digest_tree(restored)
    if got == want:
        return
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    differ = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    lines = [f"RESTORE CHECK FAILED for {label}: {restored} differs from the dataset"]
    lines += [f"  missing: {k}" for k in missing[:10]]
    lines += [f"  extra:   {k}" for k in extra[:10]]
    lines += [f"  differs: {k}: want {want[k]} got {got[k]}" for k in differ[:10]]
    lines.append(f"  ({len(missing)} missing, {len(extra)} extra, {len(differ)} differ)")
    raise BenchError("\n".join(lines))


# --------------------------------------------------------------------------------------
# the tools


@dataclass(slots=True)
class Env:
    """Paths and settings shared by the tools in one repetition."""

    ds: Dataset
    scratch: Path  # emptied between repetitions
    restore_root: Path  # where restores go (default: scratch)
    key: Path
    recipient: str
    backup_cmd: list[str]
    restic: str | None

    @property
    def vault(self) -> Path:
        return self.scratch / "vault"

    @property
    def inventory(self) -> Path:
        return self.scratch / "inventory.db"

    @property
    def policy_file(self) -> Path:
        return self.scratch / "policy.toml"

    @property
    def pipe_out(self) -> Path:
        return self.scratch / "pipeline.tar.zst.age"

    @property
    def restic_repo(self) -> Path:
        return self.scratch / "restic-repo"

    @property
    def restic_cache(self) -> Path:
        return self.scratch / "restic-cache"

    def backup_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "BACKUP_CONFIG": str(self.policy_file),
            "BACKUP_INVENTORY_URL": f"sqlite:///{self.inventory}",
            "BACKUP_IDENTITY": str(self.key),
        }

    def restic_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RESTIC_PASSWORD": RESTIC_PASSWORD,
            "RESTIC_REPOSITORY": str(self.restic_repo),
        }


class Ours:
    """`backup run` / `backup restore`; every full starts from an empty vault and inventory."""

    def __init__(self, env: Env) -> None:
        self.e = env
        self.e.policy_file.write_text(
            "[[policy]]\n"
            f'name = "{POLICY}"\n'
            f"sources = [{json.dumps(str(self.e.ds.root))}]\n"
            f'target = "file://{self.e.vault}"\n'
            f'recipients = ["{self.e.recipient}"]\n'
            'full_every = "7d"\n'
        )

    def _run(self, op: str, rep: int, *flags: str) -> Measurement:
        before = tree_bytes(self.e.vault)
        code = code_hash()[:12]
        t = run_timed(
            [*self.e.backup_cmd, "run", POLICY, "--json", *flags], env=self.e.backup_env()
        )
        res = json.loads(t.stdout)
        if res.get("state") != "complete":
            raise BenchError(f"backup run did not complete: {res}")
        archive = self.e.vault / res["location"]
        return measured(
            op,
            OURS,
            rep,
            t,
            tree_bytes(self.e.vault) - before,
            archive_id=res["id"],
            kind=res["kind"],
            archive_bytes=archive.stat().st_size,
            entries=res["entries"],
            inventory_bytes=tree_bytes(self.e.inventory),
            code=code,
        )

    def full(self, rep: int) -> Measurement:
        shutil.rmtree(self.e.vault, ignore_errors=True)
        for p in self.e.scratch.glob(self.e.inventory.name + "*"):  # with -wal, -shm
            p.unlink()
        self.e.vault.mkdir()
        return self._run(FULL, rep, "--full")

    def incremental(self, op: str, rep: int) -> Measurement:
        m = self._run(op, rep)
        if m.detail["kind"] != "incremental":
            raise BenchError(f"expected an incremental, got {m.detail}")
        return m

    def restore(self, rep: int, dest: Path) -> Measurement:
        """Restores the latest state: the chain full + no-change + 1% incremental."""
        code = code_hash()[:12]
        t = run_timed(
            [
                *self.e.backup_cmd,
                "restore",
                POLICY,
                "--to",
                dest,
                "--identity",
                self.e.key,
                "--json",
            ],
            env=self.e.backup_env(),
        )
        res = json.loads(t.stdout)
        return measured(
            RESTORE, OURS, rep, t, tree_bytes(dest), archives=res.get("archives"), code=code
        )


class Pipeline:
    """The shell pipeline the format is built from: tar -c | zstd -3 -T0 | age."""

    def __init__(self, env: Env) -> None:
        self.e = env

    def full(self, rep: int) -> list[Measurement]:
        """Returns [with sync, without sync]; `sync FILE` fsyncs the output like ours does."""
        e = self.e
        e.pipe_out.unlink(missing_ok=True)
        t = run_timed(
            sh(
                f"tar -c -C {q(e.ds.root)} . | zstd -3 -T0 -q "
                f"| age -r {q(e.recipient)} > {q(e.pipe_out)}"
            )
        )
        size = e.pipe_out.stat().st_size
        nosync = measured(FULL, PIPE_NOSYNC, rep, t, size)
        # right after the pipeline, as backup's fsync is: no waiting in between
        s = run_timed(["sync", e.pipe_out], settle=False)
        with_sync = nosync.plus(measured(FULL, PIPE_SYNC, rep, s, size, sync_s=s.wall_s))
        with_sync.tool = PIPE_SYNC
        return [with_sync, nosync]

    def restore(self, rep: int, dest: Path) -> Measurement:
        t = run_timed(
            sh(f"age -d -i {q(self.e.key)} {q(self.e.pipe_out)} | zstd -d -q | tar -x -C {q(dest)}")
        )
        return measured(RESTORE, PIPE, rep, t, tree_bytes(dest))


class Restic:
    """restic, local repository format v2 (default compression); every full starts a new one."""

    def __init__(self, env: Env, exe: str) -> None:
        self.e = env
        self.exe = exe

    def _cmd(self, *args: str | Path) -> list[str | Path]:
        return [self.exe, "--cache-dir", self.e.restic_cache, *args]

    def full(self, rep: int) -> Measurement:
        shutil.rmtree(self.e.restic_repo, ignore_errors=True)
        shutil.rmtree(self.e.restic_cache, ignore_errors=True)
        run_quiet(self._cmd("init", "--repository-version", "2"), env=self.e.restic_env())
        return self.backup(FULL, rep)

    def backup(self, op: str, rep: int) -> Measurement:
        before = tree_bytes(self.e.restic_repo)
        t = run_timed(
            self._cmd("backup", "--quiet", "--json", self.e.ds.root), env=self.e.restic_env()
        )
        summary: dict[str, Any] = next(
            (json.loads(line) for line in t.stdout.splitlines() if '"summary"' in line), {}
        )
        return measured(
            op,
            RESTIC,
            rep,
            t,
            tree_bytes(self.e.restic_repo) - before,
            snapshot=summary.get("snapshot_id"),
            files_new=summary.get("files_new"),
            files_changed=summary.get("files_changed"),
            data_added=summary.get("data_added"),
        )

    def restore(self, rep: int, dest: Path) -> Measurement:
        """Restores `latest`; restic recreates the absolute source path under the target."""
        t = run_timed(
            self._cmd("restore", "latest", "--target", dest, "--quiet"), env=self.e.restic_env()
        )
        return measured(RESTORE, RESTIC, rep, t, tree_bytes(dest))

    def restored_root(self, dest: Path) -> Path:
        return dest / self.e.ds.root.relative_to("/")


# --------------------------------------------------------------------------------------
# one repetition


def rotate(seq: Sequence[Any], k: int) -> list[Any]:
    k %= len(seq)
    return list(seq[k:]) + list(seq[:k])


def disturbance_pct(m: Measurement) -> float:
    """Share of all CPUs that other processes and kernel threads used during m."""
    return 100 * m.other_cpu_s / (m.wall_s * NCPU) if m.wall_s > 0 else 0.0


@dataclass(slots=True)
class Recorder:
    """Keeps the measurements; repeats one that other load disturbed (--retries)."""

    log: Callable[[Measurement], None]
    discard: Callable[[Measurement], None]
    retries: int

    def measure(
        self,
        run: Callable[[], Measurement | list[Measurement]],
        before_retry: Callable[[], None] | None = None,
    ) -> list[Measurement]:
        """Run and record; if the first measurement was disturbed (other load above
        DISTURBED_PCT of the machine), discard it and run again, up to `retries` times.
        `run` must leave the same state however often it is called (fulls start afresh;
        `before_retry` re-creates what a repeat needs, e.g. a fresh 1% change)."""
        for attempt in range(self.retries + 1):
            got = run()
            ms = got if isinstance(got, list) else [got]
            for m in ms:
                m.detail["attempt"] = attempt + 1
            if disturbance_pct(ms[0]) <= DISTURBED_PCT or attempt == self.retries:
                for m in ms:
                    self.log(m)
                return ms
            for m in ms:
                self.discard(m)
            if before_retry is not None:
                before_retry()
        raise AssertionError("unreachable")


def one_rep(rep: int, env: Env, want_orig: dict[str, tuple[Any, ...]], rec: Recorder) -> None:
    """full -> no-change -> 1% change -> incremental -> (revert) -> restore, per tool.

    Within each operation the tools run one after the other, in an order rotated every
    repetition, so drift and noise hit all of them alike.
    """
    shutil.rmtree(env.scratch, ignore_errors=True)
    env.scratch.mkdir(parents=True)
    env.restore_root.mkdir(parents=True, exist_ok=True)
    ours, pipe = Ours(env), Pipeline(env)
    restic = Restic(env, env.restic) if env.restic else None

    def each(*steps: Callable[[], Any] | None) -> None:
        for step in rotate([s for s in steps if s is not None], rep):
            step()

    each(
        lambda: rec.measure(lambda: ours.full(rep)),
        lambda: rec.measure(lambda: pipe.full(rep)),
        (lambda: rec.measure(lambda: restic.full(rep))) if restic else None,
    )
    each(
        lambda: rec.measure(lambda: ours.incremental(NOCHANGE, rep)),
        (lambda: rec.measure(lambda: restic.backup(NOCHANGE, rep))) if restic else None,
    )

    # what each tool's latest backup holds, for the restore check
    want: dict[str, dict[str, tuple[Any, ...]]] = {PIPE: want_orig}
    change = apply_change(env.ds)
    try:
        now = {**want_orig, **digest_tree(env.ds.root, only=change.paths)}

        def change_again() -> None:
            nonlocal now
            apply_change(env.ds, again=change)
            now = {**want_orig, **digest_tree(env.ds.root, only=change.paths)}

        def incremental(tool: str, run: Callable[[], Measurement]) -> None:
            rec.measure(run, change_again)
            want[tool] = now

        each(
            lambda: incremental(OURS, lambda: ours.incremental(INCR, rep)),
            (lambda: incremental(RESTIC, lambda: restic.backup(INCR, rep))) if restic else None,
        )
    finally:
        revert_change(env.ds, change)

    # Restored trees are deleted only after the last restore of the repetition: on ext4,
    # creating files right after deleting a large tree costs markedly more system time
    # (measured: 16.7 -> 19.4 -> 21.4 s for three `tar -x` each following an `rm -rf`, against
    # 12.8 -> 8.1 -> 7.1 s into new directories), which would penalise every restore but the
    # first by what the previous tool left behind.
    restored: list[Path] = []

    def restore(
        tool: str, run: Callable[[Path], Measurement], root: Callable[[Path], Path]
    ) -> None:
        dest = env.restore_root / f"restore-{tool}"

        def once() -> Measurement:
            nonlocal dest
            dest = env.restore_root / f"restore-{tool}-{len(restored)}"
            dest.mkdir()
            restored.append(dest)
            return run(dest)

        rec.measure(once)
        check_tree(tool, root(dest), want[tool])

    each(
        lambda: restore(OURS, lambda d: ours.restore(rep, d), lambda d: d),
        lambda: restore(PIPE, lambda d: pipe.restore(rep, d), lambda d: d),
        (lambda: restore(RESTIC, lambda d: restic.restore(rep, d), restic.restored_root))
        if restic
        else None,
    )
    for d in restored:
        shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(env.scratch, ignore_errors=True)


# --------------------------------------------------------------------------------------
# machine, report


def version_of(argv: Sequence[str]) -> str:
    try:
        r = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    text = (r.stdout or r.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def backup_package_dir() -> Path:
    """Where the measured `backup` package is imported from (this repository's backup/ for
    an editable install; a snapshot when PYTHONPATH points at one)."""
    out = subprocess.run(
        [sys.executable, "-c", "import backup, os; print(os.path.dirname(backup.__file__))"],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",  # not the repository: `python -c` would import ./backup from the cwd
    ).stdout.strip()
    return Path(out) if out else REPO_ROOT / "backup"


PACKAGE_DIR = {"path": REPO_ROOT / "backup"}  # set in main()


def code_hash() -> str:
    """SHA-256 over backup/**/*.py (names and contents): which code a measurement ran."""
    root = PACKAGE_DIR["path"]
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def source_state() -> dict[str, Any]:
    """Which code is measured: the commit, uncommitted changes, and a hash of backup/*.py.

    The tree is edited concurrently; comparing the hash at the start and the end of a run
    tells whether `backup` changed under the benchmark. Read-only git commands only.
    """

    def git(*args: str) -> str:
        try:
            r = subprocess.run(
                ["git", "--no-optional-locks", "-C", str(REPO_ROOT), *args],
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return r.stdout.strip() if r.returncode == 0 else ""

    return {
        "package_dir": str(PACKAGE_DIR["path"]),
        "commit": git("rev-parse", "HEAD"),
        "uncommitted": git("status", "--porcelain", "--", "backup", "pyproject.toml").splitlines(),
        "backup_sources_sha256": code_hash(),
    }


def machine_info(backup_cmd: Sequence[str], restic: str | None) -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    try:
        import zstandard

        pyzstd = f"{zstandard.__version__} (libzstd {'.'.join(map(str, zstandard.ZSTD_VERSION))})"
    except ImportError:
        pyzstd = "not installed"
    return {
        "host": socket.gethostname(),
        "nproc": version_of(["nproc"]),
        "cpu_model": model,
        "mem_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": {
            "backup": version_of([*backup_cmd, "--version"]),
            "python-zstandard": pyzstd,
            "restic": version_of([restic, "version"]) if restic else "not installed",
            "zstd": version_of(["zstd", "--version"]),
            "age": version_of(["age", "--version"]),
            "tar": version_of(["tar", "--version"]),
        },
    }


@dataclass(slots=True)
class Row:
    operation: str
    tool: str
    runs: int
    wall_s: float
    cpu_s: float
    max_rss_mib: float
    max_rss_mib_worst: float
    output_bytes: int | None
    others_pct: float  # median share of the 2 cores used by everything else meanwhile
    wall_s_min: float
    wall_s_max: float


def medians(ms: Sequence[Measurement]) -> list[Row]:
    rows = []
    for op in OPERATIONS:
        for tool in TOOLS:
            sel = [m for m in ms if m.operation == op and m.tool == tool]
            if not sel:
                continue
            outs = [m.output_bytes for m in sel if m.output_bytes is not None]
            rows.append(
                Row(
                    op,
                    tool,
                    len(sel),
                    statistics.median(m.wall_s for m in sel),
                    statistics.median(m.cpu_s for m in sel),
                    statistics.median(m.max_rss_kib for m in sel) / 1024,
                    max(m.max_rss_kib for m in sel) / 1024,
                    int(statistics.median(outs)) if outs else None,
                    statistics.median(disturbance_pct(m) for m in sel),
                    min(m.wall_s for m in sel),
                    max(m.wall_s for m in sel),
                )
            )
    return rows


@dataclass(slots=True)
class Check:
    name: str
    value: float | None
    limit: float
    ok: bool | None  # None: could not be evaluated (tool missing)
    note: str = ""


def checks(rows: Sequence[Row], ms: Sequence[Measurement], tarzstd_bytes: int) -> list[Check]:
    def get(op: str, tool: str) -> Row | None:
        return next((r for r in rows if r.operation == op and r.tool == tool), None)

    def ratio(name: str, op: str, other: str, limit: float) -> Check:
        a, b = get(op, OURS), get(op, other)
        if a is None or b is None:
            return Check(name, None, limit, None, f"{other} not measured")
        v = a.wall_s / b.wall_s
        return Check(name, v, limit, v <= limit, f"{a.wall_s:.2f} s / {b.wall_s:.2f} s")

    out = [
        ratio("full backup wall: backup / restic", FULL, RESTIC, TARGET_FULL_VS_RESTIC),
        ratio("full backup wall: backup / pipeline +sync", FULL, PIPE_SYNC, TARGET_FULL_VS_PIPE),
        ratio(
            "no-change incremental wall: backup / restic",
            NOCHANGE,
            RESTIC,
            TARGET_NOCHANGE_VS_RESTIC,
        ),
        ratio("restore wall: backup / restic", RESTORE, RESTIC, TARGET_RESTORE_VS_RESTIC),
    ]
    for op in OPERATIONS:
        r = get(op, OURS)
        if r is not None:
            out.append(
                Check(
                    f"peak RSS of backup, {op} (MiB)",
                    r.max_rss_mib,
                    TARGET_RSS_MIB,
                    r.max_rss_mib <= TARGET_RSS_MIB,
                    f"median; worst run {r.max_rss_mib_worst:.1f} MiB",
                )
            )
    fulls = [m.detail["archive_bytes"] for m in ms if m.operation == FULL and m.tool == OURS]
    archive = statistics.median(fulls)
    v = archive / tarzstd_bytes
    out.append(
        Check(
            "full archive size: backup / plain tar-zstd -3",
            v,
            TARGET_SIZE_VS_TARZSTD,
            v <= TARGET_SIZE_VS_TARZSTD,
            f"{int(archive):,} B / {tarzstd_bytes:,} B",
        )
    )
    return out


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 2**20:
        return f"{n / 2**10:.1f} KiB"
    return f"{n / 2**20:.1f} MiB"


def render(rows: Sequence[Row], cks: Sequence[Check], tarzstd_bytes: int) -> str:
    head = (
        "operation",
        "tool",
        "wall s",
        "CPU s",
        "peak RSS MiB",
        "output",
        "wall min-max",
        "others %",
    )
    body = [
        (
            r.operation,
            r.tool,
            f"{r.wall_s:.2f}",
            f"{r.cpu_s:.2f}",
            f"{r.max_rss_mib:.1f}",
            fmt_bytes(r.output_bytes),
            f"{r.wall_s_min:.2f}-{r.wall_s_max:.2f}",
            f"{r.others_pct:.0f}",
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) + " |" for b in body
    ]
    lines.append("")
    lines.append(
        f"reference: tar -c | zstd -3 -T0 (no encryption) = {tarzstd_bytes:,} B ({fmt_bytes(tarzstd_bytes)})"
    )
    lines.append("")
    lines.append("| target | value | limit | result | |")
    lines.append("|---|---|---|---|---|")
    for c in cks:
        val = "-" if c.value is None else f"{c.value:.3f}" if c.limit < 10 else f"{c.value:.1f}"
        res = "n/a" if c.ok is None else "PASS" if c.ok else "FAIL"
        lim = f"≤ {c.limit:g}" + ("×" if c.limit < 10 else "")
        lines.append(f"| {c.name} | {val} | {lim} | {res} | {c.note} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------


LOCK_PATH = Path(tempfile.gettempdir()) / "backup-bench-core.lock"


def take_machine_lock() -> Any:
    """One benchmark at a time on this machine: two would share two cores (and, with the same
    workdir, delete each other's files). Returns the open lock file; keep it open."""
    f = open(LOCK_PATH, "a+")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        raise BenchError(
            f"another bench_core.py run holds {LOCK_PATH} ({f.read().strip() or 'pid unknown'})"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}, started {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}\n")
    f.flush()
    return f


def find_backup_cmd() -> list[str]:
    """The installed console script of this interpreter (skips pyenv's shim), else PATH.

    The package's bytecode is compiled first, as an installed wheel's is: an editable
    install under PYTHONDONTWRITEBYTECODE=1 would otherwise compile every module at every
    run (~0.5 s of each command's start-up, measured on a no-change run of 100k files)."""
    import compileall

    import backup

    compileall.compile_dir(str(Path(backup.__file__).parent), quiet=1)
    script = Path(sysconfig.get_path("scripts")) / "backup"
    if script.is_file():
        return [str(script)]
    found = shutil.which("backup")
    if found:
        return [found]
    return [sys.executable, "-m", "backup"]


def warm_cache(root: Path) -> float:
    """Read every file once so all tools start from a warm page cache.

    (`tar -c DATA > /dev/null` would not do: GNU tar skips reading file data when the
    archive is /dev/null.)
    """
    t0 = time.perf_counter()
    run_quiet(sh(f"tar -c -C {q(root)} . | cat > /dev/null"))
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-mb", type=float, default=1024, help="dataset size (MiB), default 1024")
    ap.add_argument(
        "--runs", type=int, default=3, help="repetitions; medians are reported (default 3)"
    )
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/backup-bench"))
    ap.add_argument(
        "--json", type=Path, help="write every measurement, the medians and the checks here"
    )
    ap.add_argument(
        "--keep", action="store_true", help="keep the scratch files (the dataset is always kept)"
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=30,
        metavar="SECONDS",
        help="before each measurement wait up to this long for the other CPU load to drop "
        f"below {QUIET_BUSY * 100:.0f}%% (default 30; 0: do not wait)",
    )
    ap.add_argument(
        "--retries",
        type=int,
        default=2,
        help="repeat a measurement during which other processes used more than "
        f"{DISTURBED_PCT:.0f}%% of the CPUs, up to this many times (default 2)",
    )
    ap.add_argument(
        "--restore-root",
        type=Path,
        help="restore into a directory here (e.g. /dev/shm) instead of the workdir",
    )
    a = ap.parse_args()
    if a.runs < 1:
        ap.error("--runs must be at least 1")
    QUIET_WAIT["max_s"] = a.quiet_wait
    # SIGTERM runs the `finally` blocks too: the dataset's 1% change is undone, scratch removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    lock = take_machine_lock()  # noqa: F841 - released when the process exits

    for tool in ("tar", "zstd", "age", "sync"):
        if shutil.which(tool) is None:
            print(f"error: {tool} is not on PATH", file=sys.stderr)
            return 2
    workdir: Path = a.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    backup_cmd = find_backup_cmd()
    restic = shutil.which("restic")
    info = machine_info(backup_cmd, restic)
    print(
        f"machine: {info['nproc']} CPUs ({info['cpu_model']}), {info['mem_gib']} GiB RAM, Linux {info['kernel']}"
    )
    for k, v in info["versions"].items():
        print(f"  {k}: {v}")
    print(f"  backup command: {' '.join(backup_cmd)}")
    if restic is None:
        print("restic: not on PATH, skipping its measurements")

    PACKAGE_DIR["path"] = backup_package_dir()
    src_before = source_state()
    if PACKAGE_DIR["path"] != REPO_ROOT / "backup":
        print(f"code: backup is imported from {PACKAGE_DIR['path']}, not this repository")
    print(
        f"code: commit {src_before['commit'][:12] or '?'}, "
        f"uncommitted in backup/: {len(src_before['uncommitted'])} file(s), "
        f"backup/*.py sha256 {src_before['backup_sources_sha256'][:12]}"
    )
    ds = prepare_dataset(workdir, a.size_mb)
    data_bytes = tree_bytes(ds.root)
    print(f"dataset: {len(ds.files)} files, {data_bytes:,} B")
    t0 = time.perf_counter()
    want_orig = digest_tree(ds.root)
    print(f"dataset digest: {len(want_orig)} entries in {time.perf_counter() - t0:.1f} s")

    scratch = workdir / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    keydir = workdir / "keys"
    shutil.rmtree(keydir, ignore_errors=True)
    keydir.mkdir()
    key = keydir / "key.txt"
    printed = run_quiet([*backup_cmd, "keys", "generate", "--out", key]).split()
    recipient = next((w for w in printed if w.startswith("age1")), "")
    if not recipient.startswith("age1"):
        raise BenchError(f"unexpected output of backup keys generate: {recipient!r}")
    restore_root = a.restore_root.resolve() / "backup-bench-restores" if a.restore_root else scratch
    env = Env(ds, scratch, restore_root, key, recipient, backup_cmd, restic)

    print(
        f"warm-up: read the whole dataset once in {warm_cache(ds.root):.1f} s (all tools see a warm page cache)"
    )
    t0 = time.perf_counter()
    tz = run_timed(sh(f"tar -c -C {q(ds.root)} . | zstd -3 -T0 -q | wc -c"))
    tarzstd_bytes = int(tz.stdout.strip())
    print(f"reference: tar | zstd -3 -T0 = {tarzstd_bytes:,} B in {tz.wall_s:.2f} s")

    ms: list[Measurement] = []
    discarded: list[Measurement] = []

    def show(m: Measurement, note: str = "") -> None:
        print(
            f"  rep {m.rep + 1} {m.operation:<22} {m.tool:<17} wall {m.wall_s:6.2f} s  "
            f"cpu {m.cpu_s:6.2f} s  rss {m.max_rss_kib / 1024:6.1f} MiB  "
            f"out {fmt_bytes(m.output_bytes):>10}  others {disturbance_pct(m):3.0f}%{note}",
            flush=True,
        )

    def log(m: Measurement) -> None:
        ms.append(m)
        show(m)

    def discard(m: Measurement) -> None:
        discarded.append(m)
        show(m, "  -> disturbed, discarded and repeated")

    rec = Recorder(log, discard, a.retries)

    started = datetime.now(UTC)
    try:
        for rep in range(a.runs):
            print(
                f"repetition {rep + 1}/{a.runs} (load average {os.getloadavg()[0]:.2f})", flush=True
            )
            one_rep(rep, env, want_orig, rec)
    finally:
        if not a.keep:
            shutil.rmtree(scratch, ignore_errors=True)
            shutil.rmtree(restore_root, ignore_errors=True)
            shutil.rmtree(keydir, ignore_errors=True)

    src_after = source_state()
    seen = sorted({m.detail["code"] for m in ms if "code" in m.detail})
    if len(seen) > 1 or src_after["backup_sources_sha256"] != src_before["backup_sources_sha256"]:
        print(
            "warning: backup/*.py changed while the benchmark ran (concurrent edits); "
            f"measurements of backup ran {len(seen)} versions of it (detail.code in the JSON)"
        )
    rows = medians(ms)
    cks = checks(rows, ms, tarzstd_bytes)
    print()
    print(
        f"medians of {a.runs} runs, {a.size_mb:g} MiB dataset ({len(ds.files)} files), warm page cache; "
        f"pipeline = `tar -c | zstd -3 -T0 | age` (restore: `age -d | zstd -d | tar -x`); "
        f"'pipeline +sync' includes `sync OUT` (backup fsyncs its archive), "
        f"'pipeline no sync' is the same without it; restore = latest state "
        f"(backup: chain full + no-change + 1% incremental; restic: latest snapshot; pipeline: its one archive)"
    )
    print(render(rows, cks, tarzstd_bytes))
    if discarded:
        print(
            f"{len(discarded)} measurement(s) disturbed by other load (> {DISTURBED_PCT:.0f}% of "
            "the CPUs) were discarded and repeated (listed in the JSON)"
        )
    noisy = [
        f"{r.operation}/{r.tool} {r.others_pct:.0f}%" for r in rows if r.others_pct > DISTURBED_PCT
    ]
    if noisy:
        print(
            "warning: other processes or kernel threads used a notable share of the CPUs during: "
            + ", ".join(noisy)
        )
    print(
        "restored trees of backup, pipeline and restic: equal to the dataset (hash walk) in every run"
    )

    if a.json:
        doc = {
            "date": started.isoformat(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "config": {
                "size_mb": a.size_mb,
                "seed": SEED,
                "runs": a.runs,
                "workdir": str(workdir),
                "restore_root": str(restore_root),
                "quiet_wait_s": a.quiet_wait,
                "retries": a.retries,
                "disturbed_pct": DISTURBED_PCT,
                "backup_command": backup_cmd,
            },
            "machine": info,
            "code": {"before": src_before, "after": src_after},
            "dataset": {"files": len(ds.files), "bytes": data_bytes, "path": str(ds.root)},
            "tar_zstd3_bytes": tarzstd_bytes,
            "measurements": [{**asdict(m), "cpu_s": m.cpu_s} for m in ms],
            "discarded_as_disturbed": [{**asdict(m), "cpu_s": m.cpu_s} for m in discarded],
            "medians": [asdict(r) for r in rows],
            "checks": [asdict(c) for c in cks],
        }
        a.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"wrote {a.json}")
    return 0 if all(c.ok is not False for c in cks) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"\nBENCHMARK ERROR: {e}", file=sys.stderr)
        sys.exit(2)
