"""Retention: which archives prune keeps and which it deletes.

Rules work like restic's ``forget``: ``keep_last`` keeps the newest N archives;
``keep_daily``/``weekly``/``monthly``/``yearly`` keep the newest archive of each of the last N
days, ISO weeks, months and years that have one (periods are counted in UTC).

Invariants:

- An archive that a kept incremental depends on is kept, whatever the rules say: a chain is
  never cut.
- Deletion goes newest first, so a prune interrupted at any point leaves only whole chains.
- An empty policy (every rule 0) keeps everything: prune never deletes all archives.
- An archive under Object Lock retention or a legal hold is kept (and said to be), with
  every archive it depends on. If a deletion is refused anyway (a lock set since the plan,
  a missing permission), that archive and every ancestor still to be deleted are kept and
  reported, so no chain is left half-deleted.
- An archive inside its storage class's minimum storage duration (90 days for GLACIER, 180
  for DEEP_ARCHIVE: backup/pricing.py) is kept, with the date it becomes free to delete,
  unless early deletion is allowed; then its early-deletion fee is reported (in a dry run
  too). Either way its ancestors follow the chain rule above.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .errors import Error
from .inventory import Archive, Inventory
from .policy import Retention
from .pricing import Prices, class_of, early_delete_fee, free_to_delete_at
from .targets import Target, open_target

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
    #: archives the rules would delete but Object Lock keeps (also in ``keep``), with why
    locked: list[tuple[Archive, str]] = field(default_factory=list)
    #: archives apply_prune could not delete, or kept because a descendant could not be
    #: deleted, with why (filled by :func:`apply_prune`)
    skipped: list[tuple[Archive, str]] = field(default_factory=list)
    #: archives the rules would delete but their class's minimum storage duration keeps
    #: (also in ``keep``), with the time they become free to delete
    held: list[tuple[Archive, datetime]] = field(default_factory=list)
    #: USD billed for deleting an archive before its minimum (``allow_early_delete``), by id
    fees: dict[str, float] = field(default_factory=dict)

    @property
    def fee_total(self) -> float:
        return sum(self.fees.get(a.id, 0.0) for a in self.delete)


def _lock_reason(target: Target, a: Archive, now: datetime) -> str | None:
    """Why Object Lock keeps archive ``a`` now, or None."""
    if not target.supports_object_lock:
        return None
    for ref in (a.location, a.manifest_location):
        try:
            lock = target.object_lock(ref)
        except Error:
            continue  # absent or unreadable: the deletion itself will tell
        if lock.legal_hold:
            return "locked: legal hold"
        if lock.blocks_delete(now) and lock.retain_until is not None:
            return f"locked: {lock.mode} retention until {lock.retain_until:%Y-%m-%dT%H:%M:%SZ}"
    return None


def plan_prune(
    inventory: Inventory,
    policy: str,
    rules: Retention,
    *,
    check_locks: bool = True,
    now: datetime | None = None,
    allow_early_delete: bool = False,
    prices: Prices | None = None,
) -> PrunePlan:
    """Plan a prune: the rules' choice, archives under Object Lock retention or a legal
    hold, and every ancestor of a kept archive.

    Args:
        inventory: the inventory.
        policy: the policy's name.
        rules: its retention.
        check_locks: ask targets with Object Lock about each archive the rules would delete
            (two HEAD requests each).
        now: the time locks and minimum durations are judged at (tests); defaults to the
            clock.
        allow_early_delete: delete archives inside their class's minimum storage duration
            (each with its fee in ``plan.fees``) instead of keeping them.
        prices: the price table (default: the settings').

    Returns:
        The plan.
    """
    now = now or datetime.now(UTC)
    archives = inventory.archives(policy)
    by_id = {a.id: a for a in archives}
    keep = select_keep(archives, rules)
    locked: dict[str, str] = {}
    if check_locks:
        targets: dict[str, Target] = {}
        for a in archives:
            if a.id in keep:
                continue
            if a.target not in targets:
                targets[a.target] = open_target(a.target)
            why = _lock_reason(targets[a.target], a, now)
            if why is not None:
                locked[a.id] = why
                keep[a.id] = why
    prices = prices or Prices.from_settings()
    held: dict[str, datetime] = {}
    fees: dict[str, float] = {}
    for a in archives:
        cls = class_of(a.target)
        if a.id in keep or cls is None:
            continue
        free_at = free_to_delete_at(cls, a.created, prices)
        if now >= free_at:
            continue
        if allow_early_delete:
            fees[a.id] = early_delete_fee(cls, a.size_stored, a.created, now, prices)
        else:
            held[a.id] = free_at
            keep[a.id] = f"minimum storage duration of {cls}: free to delete {free_at:%Y-%m-%d}"
    for aid in list(keep):
        parent = by_id[aid].parent_id
        while parent is not None and parent in by_id:
            keep.setdefault(parent, f"parent of kept {aid}")
            parent = by_id[parent].parent_id
    plan = PrunePlan(policy)
    for a in sorted(archives, key=lambda a: (a.created, a.id), reverse=True):
        if a.id in keep:
            plan.keep.append((a, keep[a.id]))
            if a.id in locked:
                plan.locked.append((a, locked[a.id]))
            if a.id in held:
                plan.held.append((a, held[a.id]))
        else:
            plan.delete.append(a)
            if a.id in fees:
                plan.fees[a.id] = fees[a.id]
    return plan


def apply_prune(inventory: Inventory, plan: PrunePlan) -> list[str]:
    """Delete the planned archives, newest first; rows stay, marked ``deleted``.

    An archive whose deletion the target refuses (Object Lock, permissions) stays
    ``complete``, and so does every ancestor of it in the plan: both are added to
    ``plan.skipped`` with the reason, and the prune goes on with the other chains.

    Returns:
        Ids deleted.
    """
    done: list[str] = []
    must_keep: dict[str, str] = {}  # ancestors of an archive that could not be deleted
    for a in plan.delete:  # newest first: children go before their parents
        if a.id in must_keep:
            plan.skipped.append((a, must_keep[a.id]))
            _keep_ancestors(plan, a, must_keep)
            continue
        inventory.update_archive(a.id, state="deleting")
        target = open_target(a.target)
        try:
            target.delete(a.location)
        except Error as e:
            inventory.update_archive(a.id, state="complete")
            why = f"not deleted: {e.get_message()}"
            plan.skipped.append((a, why))
            inventory.log("prune", f"kept {a.id}: {why}", level="warning", policy=a.policy)
            _keep_ancestors(plan, a, must_keep)
            continue
        try:
            target.delete(a.manifest_location)
        except Error as e:  # the archive is gone; its manifest alone restores nothing
            inventory.log(
                "prune",
                f"deleted {a.id} but its manifest stays: {e.get_message()}",
                level="warning",
                policy=a.policy,
                archive_id=a.id,
            )
        inventory.update_archive(a.id, state="deleted", deleted_at=datetime.now(UTC))
        inventory.log("prune", f"deleted {a.id}", policy=a.policy, archive_id=a.id)
        done.append(a.id)
    return done


def _keep_ancestors(plan: PrunePlan, a: Archive, must_keep: dict[str, str]) -> None:
    parents = {x.id: x.parent_id for x in plan.delete} | {x.id: x.parent_id for x, _ in plan.keep}
    parent = a.parent_id
    while parent is not None:
        must_keep.setdefault(parent, f"parent of {a.id}, which could not be deleted")
        parent = parents.get(parent)
