"""Retention: which archives prune keeps and which it deletes.

Rules work like restic's ``forget``: ``keep_last`` keeps the newest N archives;
``keep_daily``/``weekly``/``monthly``/``yearly`` keep the newest archive of each of the last N
days, ISO weeks, months and years that have one (periods are counted in UTC).

Invariants:

- An archive that a kept incremental depends on is kept, whatever the rules say: a chain is
  never cut.
- Deletion goes newest first, so a prune interrupted at any point leaves only whole chains.
- An empty policy (every rule 0) keeps everything: prune never deletes all archives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .inventory import Archive, Inventory
from .policy import Retention
from .targets import open_target

__all__ = ["PrunePlan", "apply_prune", "plan_prune", "select_keep"]

_PERIODS: list[tuple[str, Callable[[datetime], object]]] = [
    ("daily", lambda t: t.date()),
    ("weekly", lambda t: t.isocalendar()[:2]),
    ("monthly", lambda t: (t.year, t.month)),
    ("yearly", lambda t: t.year),
]


def select_keep(archives: Sequence[Archive], rules: Retention) -> dict[str, str]:
    """Apply the rules.

    Args:
        archives: complete archives of one policy.
        rules: the policy's retention.

    Returns:
        Kept archive ids, each with the reason it is kept.
    """
    newest = sorted(archives, key=lambda a: (a.created, a.id), reverse=True)
    keep: dict[str, str] = {}
    if rules.is_empty():
        return {a.id: "no retention rules" for a in newest}
    for a in newest[: rules.keep_last]:
        keep.setdefault(a.id, "last")
    for name, period in _PERIODS:
        n = getattr(rules, f"keep_{name}")
        seen: set[object] = set()
        for a in newest:
            if len(seen) >= n:
                break
            p = period(a.created.astimezone(UTC))
            if p not in seen:
                seen.add(p)
                keep.setdefault(a.id, name)
    return keep


@dataclass(slots=True)
class PrunePlan:
    """What prune will keep and delete, with reasons."""

    policy: str
    keep: list[tuple[Archive, str]] = field(default_factory=list)
    delete: list[Archive] = field(default_factory=list)


def plan_prune(inventory: Inventory, policy: str, rules: Retention) -> PrunePlan:
    """Plan a prune: the rules' choice plus every ancestor of a kept archive."""
    archives = inventory.archives(policy)
    by_id = {a.id: a for a in archives}
    keep = select_keep(archives, rules)
    for aid in list(keep):
        parent = by_id[aid].parent_id
        while parent is not None and parent in by_id:
            keep.setdefault(parent, f"parent of kept {aid}")
            parent = by_id[parent].parent_id
    plan = PrunePlan(policy)
    for a in sorted(archives, key=lambda a: (a.created, a.id), reverse=True):
        if a.id in keep:
            plan.keep.append((a, keep[a.id]))
        else:
            plan.delete.append(a)
    return plan


def apply_prune(inventory: Inventory, plan: PrunePlan) -> list[str]:
    """Delete the planned archives, newest first; rows stay, marked ``deleted``.

    Returns:
        Ids deleted.
    """
    done: list[str] = []
    for a in plan.delete:  # newest first: children go before their parents
        inventory.update_archive(a.id, state="deleting")
        target = open_target(a.target)
        target.delete(a.location)
        target.delete(a.manifest_location)
        inventory.update_archive(a.id, state="deleted", deleted_at=datetime.now(UTC))
        inventory.log("prune", f"deleted {a.id}", policy=a.policy, archive_id=a.id)
        done.append(a.id)
    return done
