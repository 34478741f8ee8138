"""A no-change incremental reads the inventory in work independent of how many archives it
holds: counted as SQLite virtual-machine steps and statements, not timed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from backup.engine import run_backup
from backup.inventory import Archive, Inventory
from tests.conftest import Env, require_tools


@contextmanager
def counted(inv: Inventory) -> Iterator[dict[str, int]]:
    """Count the SQLite VM steps and statements of every connection."""
    n = {"steps": 0, "statements": 0}

    def step() -> int:
        n["steps"] += 1
        return 0

    def statement(_sql: str) -> None:
        n["statements"] += 1

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.set_progress_handler(step, 1)
        dbapi_conn.set_trace_callback(statement)

    event.listen(inv.engine, "connect", on_connect)
    inv.engine.dispose()  # pooled connections predate the listener
    try:
        yield n
    finally:
        event.remove(inv.engine, "connect", on_connect)
        inv.engine.dispose()


def pile_up(inv: Inventory, before: datetime, count: int) -> None:
    """``count`` older archives of the same policy and target (complete, failed and deleted
    chains) and of other policies."""
    with inv.session() as s:
        parent: str | None = None
        for i in range(count):
            aid = f"old{i:05d}"
            kind = "full" if i % 20 == 0 else "incremental"
            s.add(
                Archive(
                    id=aid,
                    policy="p" if i % 4 else "other",
                    target=inv_target(s),
                    location=f"{aid}.tar.zst.age",
                    manifest_location=f"{aid}.manifest.age",
                    kind=kind,
                    parent_id=None if kind == "full" else parent,
                    created=before - timedelta(hours=count - i),
                    state=("complete", "failed", "deleted")[i % 3],
                )
            )
            s.flush()
            parent = aid


def inv_target(s: Any) -> str:
    target: str = s.query(Archive.target).limit(1).scalar()
    return target


def test_a_no_change_incremental_reads_flat_in_the_number_of_archives(
    env: Env, inventory: Inventory
) -> None:
    require_tools("age", "zstd", "tar")
    if inventory.engine.dialect.name != "sqlite":
        pytest.skip("counts SQLite's VM steps")
    for i in range(30):
        (env.source / f"f{i}").write_text(str(i))
    t0 = datetime.now(UTC)
    full = run_backup(env.policy(), inventory, now=t0).archive
    with counted(inventory) as few:
        inc = run_backup(env.policy(), inventory, now=t0 + timedelta(hours=1)).archive
    assert inc.kind == "incremental" and inc.entries == 0
    pile_up(inventory, full.created, 3000)
    with counted(inventory) as many:
        inc2 = run_backup(env.policy(), inventory, now=t0 + timedelta(hours=2)).archive
    assert inc2.parent_id == inc.id and inc2.entries == 0
    assert many["statements"] <= few["statements"] + 2, (few, many)
    # 3,000 more archives, ~1,500 of them older ones of this policy in this target: a query
    # that visits each adds tens of thousands of steps (dropping the older cached trees did:
    # 673 against 30,008). The second incremental's longer chain costs ~90 steps of its own,
    # with or without the pile.
    assert many["steps"] <= few["steps"] * 1.25, (few, many)
