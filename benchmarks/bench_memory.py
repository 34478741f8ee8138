#!/usr/bin/env python3
"""Memory benchmark (issue 15): peak RSS, wall and CPU of ``backup run`` (full, then no-change
incremental) for two trees of this code side by side, alternating within each repetition.

    python benchmarks/bench_memory.py --base /tmp/base-checkout --runs 3 DATA [DATA ...]

``--base`` is a checkout (``git archive REV | tar -x``, its C extensions copied or built in
place); the other side is this working tree. Each is run as ``python -m backup`` with
``PYTHONPATH`` naming its tree. Peak RSS is wait4's ru_maxrss of the ``backup`` process.
A tree of small files: ``bench_scale.make_tree``. This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def run(
    py: str, env: dict[str, str], flags: list[str], cwd: Path
) -> tuple[float, float, float, str]:
    t0 = time.perf_counter()
    p = subprocess.Popen(
        [py, "-m", "backup", "run", "p", "--json", *flags],
        env=env,
        # not the checkout's directory: `python -m` puts the working directory first on
        # sys.path, ahead of PYTHONPATH, and the base side would import this tree
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert p.stdout is not None
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"backup run failed: {out[:500]!r}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, json.loads(out)["kind"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="+", type=Path)
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from backup.crypto.age import X25519Identity

    recipient = X25519Identity.generate().recipient().to_string()
    trees = {"base": str(args.base), "new": str(HERE)}
    res: dict[tuple[str, str, str], list[tuple[float, float, float]]] = {}
    scratch = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        for data in args.data:
            for rep in range(args.runs):
                for side, pp in trees.items():
                    w = scratch / side
                    shutil.rmtree(w, ignore_errors=True)
                    (w / "vault").mkdir(parents=True)
                    (w / "p.toml").write_text(
                        f'[[policy]]\nname = "p"\nsources = [{json.dumps(str(data))}]\n'
                        f'target = "file://{w}/vault"\nrecipients = ["{recipient}"]\n'
                        'full_every = "7d"\n'
                    )
                    env = {
                        **os.environ,
                        "PYTHONPATH": pp,
                        "BACKUP_CONFIG": str(w / "p.toml"),
                        "BACKUP_INVENTORY_URL": f"sqlite:///{w}/inv.db",
                    }
                    for op, flags in (("full", ["--full"]), ("no-change", [])):
                        wall, cpu, rss, kind = run(sys.executable, env, flags, w)
                        assert kind == ("full" if op == "full" else "incremental"), kind
                        res.setdefault((data.name, op, side), []).append((wall, cpu, rss))
                        print(
                            f"{data.name} {rep} {side} {op}: wall {wall:.2f} s, "
                            f"CPU {cpu:.2f} s, peak RSS {rss:.0f} MB",
                            flush=True,
                        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    def med(xs: list[tuple[float, float, float]], i: int) -> float:
        return statistics.median(x[i] for x in xs)

    print(
        "\n| tree | run | wall base | wall new | new/base | CPU base | CPU new | RSS base | RSS new |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for data in args.data:
        for op in ("full", "no-change"):
            b, n = res[(data.name, op, "base")], res[(data.name, op, "new")]
            print(
                f"| {data.name} | {op} | {med(b, 0):.2f} s | {med(n, 0):.2f} s | "
                f"{med(n, 0) / med(b, 0):.2f} | {med(b, 1):.2f} s | {med(n, 1):.2f} s | "
                f"{med(b, 2):.0f} MB | {med(n, 2):.0f} MB |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
