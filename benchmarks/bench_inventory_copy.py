#!/usr/bin/env python3
"""What the copy of the inventory made after each run costs (backup/inventory_copy.py).

Builds an inventory the way backups do: a full backup of FILES files, then INCREMENTALS
incrementals each changing CHANGE files, into a file target; then JOBS finished jobs and
EVENTS events more (a year of daily runs leaves about that many). Then times an export (the
median of --runs), its size, and an import into an empty SQLite inventory. With
``--unpacked`` every archive's file index is unpacked first, as restores leave it (the
largest form the index takes).

    python3 benchmarks/bench_inventory_copy.py [--files 20000] [--incrementals 365]
        [--change 100] [--events 5000] [--runs 3] [--unpacked] [--inventory-url URL]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backup.crypto.age import X25519Identity
from backup.engine import run_backup
from backup.inventory import Inventory
from backup.inventory.models import Event
from backup.inventory_copy import export_inventory, import_inventory
from backup.jobs import JobStore
from backup.policy import Policy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--incrementals", type=int, default=365)
    ap.add_argument("--change", type=int, default=100)
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--unpacked", action="store_true")
    ap.add_argument("--inventory-url")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-invcopy-") as tmp:
        root = Path(tmp)
        src = root / "src"
        for i in range(a.files):
            d = src / f"d{i // 500:03}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"f{i:06}.txt").write_bytes(os.urandom(64))
        ident = X25519Identity.generate()
        rcpt = ident.recipient().to_string()
        target = f"file://{root / 'vault'}"
        policy = Policy(name="p", sources=[src], target=target, recipients=[rcpt])
        inv = Inventory(a.inventory_url or f"sqlite:///{root / 'inv.db'}")
        t0 = datetime(2025, 1, 1, tzinfo=UTC)
        run_backup(policy, inv, now=t0)
        for n in range(a.incrementals):
            for j in range(a.change):
                k = (n * a.change + j) % a.files
                (src / f"d{k // 500:03}" / f"f{k:06}.txt").write_bytes(os.urandom(64))
            run_backup(policy, inv, now=t0 + timedelta(days=n + 1))
        store = JobStore(inv)
        for _ in range(a.incrementals + 1):
            store.create("backup", policy="p", state="done", params={"full": False})
        with inv.session() as s:
            for n in range(a.events):
                s.add(Event(time=t0, level="info", kind="bench", message=f"event {n} " * 4))
        archives = inv.archives("p")
        if a.unpacked:
            inv.unpack_file_records([x.id for x in archives])
        times, size = [], 0
        for _ in range(a.runs):
            t = time.perf_counter()
            info, _ = export_inventory(inv, target, [rcpt], keep=a.runs + 1)
            times.append(time.perf_counter() - t)
            size = info.size
        fresh = Inventory(f"sqlite:///{root / 'fresh.db'}")
        t = time.perf_counter()
        res = import_inventory(fresh, target, [ident])
        t_import = time.perf_counter() - t
        print(
            f"{len(archives)} archives, {a.files} files, "
            f"{'unpacked' if a.unpacked else 'packed'} file index, {a.events} events: "
            f"export median {statistics.median(times):.2f} s (runs {[round(x, 2) for x in times]}), "
            f"{size / 1e6:.1f} MB stored; import {t_import:.2f} s "
            f"({sum(res.added.values())} rows)"
        )


if __name__ == "__main__":
    main()
