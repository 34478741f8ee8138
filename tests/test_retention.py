from __future__ import annotations

from datetime import UTC, datetime, timedelta

from backup.inventory import Archive, Inventory
from backup.policy import Retention
from backup.retention import plan_prune, select_keep


def arch(aid: str, created: datetime, parent: str | None = None) -> Archive:
    return Archive(
        id=aid,
        policy="p",
        target="file:///v",
        location=f"p/{aid}",
        manifest_location=f"p/{aid}.m",
        kind="incremental" if parent else "full",
        parent_id=parent,
        created=created,
        state="complete",
    )


def test_keep_last_and_periods() -> None:
    t = datetime(2026, 11, 20, 23, 0, tzinfo=UTC)
    archives = [arch(f"a{i}", t - timedelta(hours=12 * i)) for i in range(30)]
    keep = select_keep(archives, Retention(keep_last=2))
    assert set(keep) == {"a0", "a1"}
    keep = select_keep(archives, Retention(keep_daily=3))
    # newest of each of the last three days: Nov 20 (a0), Nov 19 (a2), Nov 18 (a4)
    assert set(keep) == {"a0", "a2", "a4"}
    keep = select_keep(archives, Retention(keep_weekly=2, keep_monthly=2))
    # ISO weeks: Nov 16-20 (a0) and Nov 9-15 (newest: Nov 15 23:00, a10); one month only
    assert keep == {"a0": "weekly", "a10": "weekly"}


def test_no_rules_keeps_everything() -> None:
    t = datetime(2026, 11, 20, tzinfo=UTC)
    archives = [arch(f"a{i}", t - timedelta(days=i)) for i in range(5)]
    assert set(select_keep(archives, Retention())) == {a.id for a in archives}


def test_plan_keeps_every_ancestor_of_a_kept_archive(inventory: Inventory) -> None:
    t = datetime(2026, 11, 1, tzinfo=UTC)
    for a in [
        arch("f1", t),
        arch("i1", t + timedelta(days=1), "f1"),
        arch("f2", t + timedelta(days=7)),
        arch("i2", t + timedelta(days=8), "f2"),
        arch("i3", t + timedelta(days=9), "i2"),
    ]:
        inventory.add_archive(a)
    plan = plan_prune(inventory, "p", Retention(keep_last=1))
    assert [a.id for a, _ in plan.keep] == ["i3", "i2", "f2"]
    assert dict((a.id, why) for a, why in plan.keep)["f2"] == "parent of kept i3"
    # newest first: a child is always deleted before its parent
    assert [a.id for a in plan.delete] == ["i1", "f1"]
