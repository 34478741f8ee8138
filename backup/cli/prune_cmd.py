"""``backup prune`` and ``backup hold``: deleting what a policy's retention does not keep,
and the Object Lock legal hold that keeps an archive from any deletion.

Invariants: prune never deletes an archive a kept archive needs (its chain), nor one under
Object Lock, nor (without ``--allow-early-delete``) one inside its storage class's minimum
storage duration, which would be billed for the rest of it anyway; without the policy's rules (no policy file, a policy since removed) it keeps
everything and says why.
"""

from __future__ import annotations

import click

from ..policy import Retention
from .context import Ctx, json_option
from .output import dump, handled, iso

__all__ = ["register"]


@click.command()
@click.argument("policy")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted; delete nothing.")
@click.option(
    "--allow-early-delete",
    is_flag=True,
    help="Also delete archives inside their class's minimum storage duration (GLACIER 90 "
    "days, DEEP_ARCHIVE 180), paying the early-deletion fee shown for each.",
)
@json_option()
@click.pass_obj
@handled
def prune(obj: Ctx, policy: str, dry_run: bool, allow_early_delete: bool, as_json: bool) -> None:
    """Delete POLICY's archives that its retention does not keep (never one a kept archive needs)."""
    from ..retention import apply_prune, plan_prune

    # without its policy (a bare machine, a policy since removed) there are no rules to
    # apply: everything is kept, and the output says why
    pol = obj.policy_if_any(policy)
    if pol is None and not obj.inventory.archives(policy, states=()):
        pol = obj.policy(policy)  # a name the inventory does not know either: a typo, say so
    retention = pol.retention if pol is not None else Retention()
    from ..pricing import Prices

    plan = plan_prune(
        obj.inventory,
        policy,
        retention,
        allow_early_delete=allow_early_delete,
        prices=Prices.from_settings(obj.settings),
    )
    deleted = [] if dry_run else apply_prune(obj.inventory, plan)
    fees = {aid: fee for aid, fee in plan.fees.items() if dry_run or aid in deleted}
    held = {a.id: free_at for a, free_at in plan.held}
    if as_json:
        dump(
            {
                "policy": policy,
                "dry_run": dry_run,
                "keep": [
                    {"id": a.id, "created": iso(a.created), "reason": why}
                    | ({"free_to_delete_at": iso(held[a.id])} if a.id in held else {})
                    for a, why in plan.keep
                ],
                "delete": [
                    {"id": a.id, "created": iso(a.created)}
                    | ({"early_delete_fee_usd": round(fees[a.id], 10)} if a.id in fees else {})
                    for a in plan.delete
                ],
                "early_delete_fee_usd": round(sum(fees.values()), 10),
                "deleted": deleted,
                "locked": [{"id": a.id, "reason": why} for a, why in plan.locked],
                "skipped": [{"id": a.id, "reason": why} for a, why in plan.skipped],
            }
        )
        return
    for a, why in plan.keep:
        click.echo(f"keep    {a.id}  {a.kind:<11}  {why}")
    skipped = dict((a.id, why) for a, why in plan.skipped)
    for a in plan.delete:
        if a.id in skipped:
            click.echo(f"kept    {a.id}  {a.kind:<11}  {skipped[a.id]}")
        else:
            fee = f"  early-deletion fee ${fees[a.id]:.4f}" if fees.get(a.id) else ""
            click.echo(f"{'would delete' if dry_run else 'deleted'} {a.id}  {a.kind}{fee}")
    if fees:
        click.echo(f"early-deletion fees: ${sum(fees.values()):.4f} in all")
    if plan.held:
        click.echo(
            f"{len(plan.held)} archive(s) kept inside their minimum storage duration "
            "(--allow-early-delete deletes them and pays the rest of it)"
        )
    if plan.locked:
        click.echo(f"{len(plan.locked)} archive(s) kept by Object Lock (retention or legal hold)")
    if pol is None:
        click.echo(
            f"policy {policy!r} is not in a policy file ({obj.settings.config}): no retention "
            "rules, keeping everything"
        )
    elif retention.is_empty():
        click.echo(f"policy {policy!r} has no retention rules: keeping everything")


@click.command()
@click.argument("archive_id")
@click.argument("state", type=click.Choice(["on", "off"]), required=False)
@json_option()
@click.pass_obj
@handled
def hold(obj: Ctx, archive_id: str, state: str | None, as_json: bool) -> None:
    """Put a legal hold on an archive and its manifest (on), take it off (off), or show its
    Object Lock state. A held archive cannot be deleted, by prune or anyone, until released."""
    from ..targets import open_target

    a = obj.inventory.get(archive_id)
    target = open_target(a.target)
    refs = {"archive": a.location, "manifest": a.manifest_location}
    if state is not None:
        for ref in refs.values():
            target.set_legal_hold(ref, state == "on")
        obj.inventory.log(
            "hold", f"legal hold {state} for {a.id}", policy=a.policy, archive_id=a.id
        )
    locks = {name: target.object_lock(ref) for name, ref in refs.items()}
    if as_json:
        dump(
            {
                "id": a.id,
                **{
                    name: {
                        "legal_hold": lk.legal_hold,
                        "mode": lk.mode,
                        "retain_until": iso(lk.retain_until),
                    }
                    for name, lk in locks.items()
                },
            }
        )
        return
    for name, lk in locks.items():
        until = f"{lk.mode} until {iso(lk.retain_until)}" if lk.mode else "no retention"
        click.echo(f"{a.id} {name}: legal hold {'on' if lk.legal_hold else 'off'}, {until}")


def register(cli: click.Group) -> None:
    """Add ``prune`` and ``hold`` to the ``backup`` group."""
    cli.add_command(prune)
    cli.add_command(hold)
