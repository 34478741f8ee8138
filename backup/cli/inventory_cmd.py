"""``backup inventory``: the local inventory and the targets' own records: compare with a
vault (``sync``), rebuild from a target's manifests (``rebuild``, a bucket's or a vault's),
and copy the inventory into a target and back (``export``, ``exports``, ``import``).

Invariants: a rebuild records only what a manifest proves (a damaged manifest, a chain
whose parent is missing, or a known archive whose record differs is reported and exits 3,
never recorded); nothing cold is retrieved unless ``--retrieve-manifests`` asks for it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..errors import Error, OptionError
from .context import Ctx, identity_option, json_option
from .output import (
    dump,
    err,
    handled,
    iso,
    print_rebuild_report,
    print_snapshot_records,
    progress,
)

if TYPE_CHECKING:
    from ..inventory import Archive

__all__ = ["register"]

F = TypeVar("F", bound=Callable[..., Any])


@click.group("inventory")
def inventory_group() -> None:
    """The local inventory and the targets' own records."""


@inventory_group.command("sync")
@click.argument("target_url")
@click.option(
    "--wait/--no-wait",
    default=True,
    help="Wait for the vault's inventory job (hours on AWS), or return if it is running.",
)
@click.option(
    "--poll", "poll_seconds", default=60.0, show_default=True, help="Seconds between checks."
)
@click.option("--timeout", type=float, help="Give up waiting after this many seconds.")
@json_option()
@click.pass_obj
@handled
def inventory_sync(
    obj: Ctx,
    target_url: str,
    wait: bool,
    poll_seconds: float,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Compare a Glacier vault (glacier://vault) with the inventory: archives the vault has
    that the inventory lacks, and the reverse. Runs (or reuses) an inventory-retrieval job."""
    from ..errors import TargetError
    from ..inventory.sync import sync_vault
    from ..targets import open_target
    from ..targets.glacier import GlacierTarget

    target = open_target(target_url)
    if not isinstance(target, GlacierTarget):
        raise TargetError(target_url, "inventory sync reads Glacier vaults (glacier://vault)")
    result = sync_vault(
        target,
        obj.inventory,
        wait=wait,
        poll_seconds=poll_seconds,
        timeout=timeout,
        progress=None if as_json else (lambda msg: err.print(msg)),
    )
    if isinstance(result, str):
        if as_json:
            dump({"target": target_url, "job_id": result, "state": "running"})
        else:
            click.echo(f"inventory job {result} is running; run again later (it is reused)")
        return
    if as_json:
        dump(result.as_dict())
        return
    click.echo(f"{target_url}: vault inventory of {iso(result.inventory_date)}")
    click.echo(f"  {result.matched} object(s) in both")
    for aid, key, _ref in result.repaired:
        click.echo(f"  archive id recorded:   {aid}  {key}")
    for v in result.only_in_vault:
        click.echo(f"  only in the vault:     {v.key}  ({v.size} bytes, id {v.archive_id})")
    for aid, ref in result.only_in_inventory:
        click.echo(f"  only in the inventory: {aid}  {ref.split('#')[0]}")
    for aid, ref in result.too_new:
        click.echo(f"  too new to tell:       {aid}  {ref.split('#')[0]}")
    if result.foreign:
        click.echo(f"  {len(result.foreign)} archive(s) not written by backup")


# rebuild ------------------------------------------------------------------------------------


def _vault_rebuild_options(f: F) -> F:
    """The options only a vault's rebuild takes (backup/rebuild_vault.py)."""
    for option in (
        click.option("--timeout", type=float, help="Give up waiting after this many seconds."),
        click.option(
            "--poll",
            "poll_seconds",
            default=60.0,
            show_default=True,
            help="glacier:// only: seconds between looks at the vault's jobs.",
        ),
        click.option(
            "--wait/--no-wait",
            default=True,
            help="glacier:// only: wait for the vault's jobs, or return (run again to resume).",
        ),
        click.option("--tier", help="glacier:// only: the retrieval tier (default the vault's)."),
        click.option(
            "--retrieve-manifests",
            is_flag=True,
            help="glacier:// only: start retrieval jobs for the manifests the inventory lacks "
            "(paid: run without it first to see the cost).",
        ),
    ):
        f = option(f)
    return f


@inventory_group.command("rebuild")
@click.argument("target_url")
@identity_option("age identity file to decrypt the manifests (default: $BACKUP_IDENTITY).")
@click.option("--policy", "policy", help="Only this policy's archives.")
@click.option("--dry-run", is_flag=True, help="Read and compare; record nothing.")
@json_option("Print the report as JSON.")
@_vault_rebuild_options
@click.pass_obj
@handled
def inventory_rebuild(
    obj: Ctx, target_url: str, identity: Path | None, policy: str | None, dry_run: bool,
    as_json: bool, retrieve_manifests: bool, tier: str | None, wait: bool,
    poll_seconds: float, timeout: float | None,
) -> None:  # fmt: skip
    """Record every archive of TARGET_URL the inventory lacks, from the manifests beside
    them (no policy file needed; nothing cold is retrieved). Exit 3 when a manifest was
    damaged, a chain's parent is missing, or a known archive's record differs."""
    from ..errors import IdentityError
    from ..inventory.rebuild import rebuild
    from ..restore import identities_from
    from ..targets import open_target

    path = identity or obj.settings.identity
    if path is None:
        raise IdentityError(
            "the manifests are encrypted: pass --identity FILE or set BACKUP_IDENTITY"
        )
    identities = identities_from(path)
    target = open_target(target_url)
    if target_url.startswith("glacier://"):
        return _rebuild_vault(
            obj, target, identities, policy, dry_run, as_json,
            retrieve_manifests=retrieve_manifests, tier=tier, wait=wait,
            poll_seconds=poll_seconds, timeout=timeout,
        )  # fmt: skip
    if retrieve_manifests or tier:
        # other targets keep their manifests hot: nothing to retrieve, no tier to pick
        raise OptionError(
            "--retrieve-manifests" if retrieve_manifests else "--tier",
            "only a glacier:// vault's rebuild retrieves manifests",
        )
    report = rebuild(
        obj.inventory,
        target,
        identities,
        policy=policy,
        dry_run=dry_run,
        progress=progress(as_json),
        listing=_rebuild_listing(target, policy),
    )
    snaps = _rebuild_snapshots(obj, target, identities, dry_run)
    if as_json:
        dump(report.to_json() | {"snapshots": snaps.to_json()})
    else:
        would = "would add" if dry_run else "added"
        click.echo(
            f"{target_url}: {len(report.added)} archive(s) {would}, {len(report.known)} already "
            f"known, {report.manifests_read} manifest(s) read"
        )
        print_rebuild_report(
            report, added=f"  {would}:  ", differs_in="the target", foreign="object(s)"
        )
        if report.copies:
            click.echo(
                f"  {len(report.copies)} copy(ies) of an inventory, newest {max(report.copies)}: "
                f"`backup inventory import {target_url}` brings back the job history too"
            )
        print_snapshot_records(snaps, dry_run)
    if report.exit_code:
        sys.exit(report.exit_code)


def _rebuild_listing(target: Any, policy: str | None) -> list[Any] | None:
    """A bucket's objects without the snapshot manifests a versioned bucket keeps under
    ``.backup-snapshots/`` (the product's own, not foreign objects); None for other targets."""
    from ..snapshots.versioned import RESERVED
    from ..targets.s3 import S3Target

    if not isinstance(target, S3Target):
        return None
    return [
        o for o in target.list(f"{policy}/" if policy else "") if not o.key.startswith(RESERVED)
    ]


def _rebuild_snapshots(obj: Ctx, target: Any, identities: Any, dry_run: bool) -> Any:
    """The ``snapshots`` rows of the rebuilt archives (docs/snapshots.md)."""
    from ..crypto.age import decrypt_bytes
    from ..snapshot_records import rebuild_snapshot_records

    def read(a: Archive) -> bytes | None:
        if target.reads_need_retrieval:
            return None  # cold: a retrieval, which this never requests
        with target.open_read(a.manifest_location) as f:
            return decrypt_bytes(f.read(), identities, name=f"manifest of {a.id}")

    return rebuild_snapshot_records(obj.inventory, target.url, dry_run=dry_run, read_manifest=read)


def _rebuild_vault(
    obj: Ctx,
    target: Any,
    identities: Any,
    policy: str | None,
    dry_run: bool,
    as_json: bool,
    *,
    retrieve_manifests: bool,
    tier: str | None,
    wait: bool,
    poll_seconds: float,
    timeout: float | None,
) -> None:
    """``inventory rebuild glacier://VAULT`` (backup/rebuild_vault.py)."""
    from ..rebuild_vault import rebuild_vault

    out = rebuild_vault(
        obj.inventory,
        target,
        identities,
        policy=policy,
        dry_run=dry_run,
        retrieve_manifests=retrieve_manifests,
        tier=tier,
        wait=wait,
        poll_seconds=poll_seconds,
        timeout=timeout,
        prices=obj.settings.retrieval_prices,
        progress=None if as_json else (lambda msg: err.print(msg)),
    )
    snaps = _rebuild_snapshots(obj, target, identities, dry_run)
    if as_json:
        dump(out.as_dict() | {"snapshots": snaps.to_json()})
        sys.exit(out.exit_code)
    url, r = target.url, out.report
    if out.state == "inventory-pending":
        click.echo(f"{url}: inventory job {out.inventory_job} is running; run again later")
        return
    click.echo(
        f"{url}: vault inventory of {iso(out.inventory_date)}: {len(out.found)} archive(s) "
        f"with their manifests; {len(r.added)} added, {len(r.known)} already known"
    )
    print_rebuild_report(r, added="  added:    ", differs_in="the vault", foreign="archive(s)")
    for note in out.notes:
        click.echo(f"  note: {note}")
    print_snapshot_records(snaps, dry_run)
    if out.pending:
        click.echo(
            f"  {len(out.pending)} manifest retrieval(s) running; run again later "
            "(the jobs are reused)"
        )
    if out.unrecorded and out.plan is not None:
        p = out.plan
        first, last = (int(t.total_seconds()) for t in p.ready_in)
        for u in out.unrecorded:
            click.echo(
                f"  not recorded: {u.policy}/{u.archive_id} (manifest {u.manifest.size} bytes)"
            )
        click.echo(
            f"  retrieving their {p.objects} manifest(s) ({p.bytes} bytes, tier {p.tier}) costs "
            f"about ${p.cost:.4f} and takes {first // 60}-{last // 60} min; to do it: "
            f"backup inventory rebuild {url} --retrieve-manifests"
        )
    if out.exit_code:
        sys.exit(out.exit_code)


# export / import ----------------------------------------------------------------------------


@inventory_group.command("export")
@click.argument("target_url", required=False)
@click.option("--policy", "policy_name", help="Copy into this policy's target, to its recipients.")
@click.option(
    "--recipient",
    "recipients",
    multiple=True,
    help="Encrypt to this recipient (age1... or age1pq1...).",
)
@click.option("--armor", is_flag=True, help="Write the copy ASCII-armored (text), as age -a.")
@json_option()
@click.pass_obj
@handled
def inventory_export(
    obj: Ctx,
    target_url: str | None,
    policy_name: str | None,
    recipients: tuple[str, ...],
    armor: bool,
    as_json: bool,
) -> None:
    """Copy the inventory (jobs and events too) into a target, encrypted to the recipients of
    the policies that use it, keeping this host's newest $BACKUP_INVENTORY_EXPORT_KEEP."""
    from ..inventory_copy import export_inventory

    if (target_url is None) == (policy_name is None):
        raise Error("inventory export takes a TARGET_URL or --policy NAME (one of them)")
    if policy_name is not None:
        pol = obj.policy(policy_name)
        target_url, found = pol.target, list(pol.recipients)
    else:
        assert target_url is not None
        found = sorted({r for p in obj.policies.values() if p.target == target_url for r in p.recipients}) if not recipients else []  # fmt: skip
    chosen = list(recipients) or found
    if not recipients and len({r.startswith("age1pq1") for r in found}) > 1:
        # one file cannot carry both kinds (age refuses it): say which choice is the user's
        raise Error(
            f"the policies using {target_url} mix post-quantum (age1pq1...) and classic"
            " (age1...) recipients: give --policy NAME or --recipient"
        )
    if not chosen:
        raise Error(
            f"no policy uses target {target_url}: give --recipient age1... (or --policy NAME)"
        )
    info, deleted = export_inventory(
        obj.inventory, target_url, chosen, keep=obj.settings.inventory_export_keep, armor=armor
    )
    obj.inventory.log(
        "inventory-export",
        f"inventory copied to {target_url} as {info.key} ({info.size} bytes)",
        target=target_url, key=info.key, size=info.size, deleted=len(deleted),
    )  # fmt: skip
    if as_json:
        dump({"target": target_url, **info.as_dict(), "deleted": deleted})
        return
    click.echo(f"{target_url}: {info.key} ({info.size} bytes)")
    for k in deleted:
        click.echo(f"  deleted older copy {k}")


@inventory_group.command("exports")
@click.argument("target_url")
@json_option()
@click.pass_obj
@handled
def inventory_exports(obj: Ctx, target_url: str, as_json: bool) -> None:
    """List the copies of inventories in a target, oldest first."""
    from ..inventory_copy import list_exports
    from ..targets import open_target

    found = list_exports(open_target(target_url))
    if as_json:
        dump([e.as_dict() for e in found])
        return
    if not found:
        click.echo(f"{target_url}: no inventory copies")
    for e in found:
        cls = f"  {e.storage_class}" if e.storage_class else ""
        click.echo(f"{e.key}  {iso(e.created)}  {e.host}  {e.size} bytes{cls}")


@inventory_group.command("import")
@click.argument("target_url")
@identity_option()
@click.option("--from", "key", help="The copy to import (a key from 'inventory exports').")
@click.option("--latest", is_flag=True, help="Import the newest copy (the default).")
@json_option()
@click.pass_obj
@handled
def inventory_import(
    obj: Ctx, target_url: str, identity: Path | None, key: str | None, latest: bool, as_json: bool
) -> None:
    """Merge a copy of an inventory from a target into this one, in one transaction: rows it
    has are kept (differences reported), jobs, events, snapshots and retrievals come back."""
    from ..inventory_copy import import_inventory
    from ..restore import identities_from

    if key is not None and latest:
        raise Error("--from and --latest exclude each other")
    identities = identities_from(identity or obj.settings.identity)
    res = import_inventory(obj.inventory, target_url, identities, key=key)
    if as_json:
        dump({"target": target_url, **res.as_dict()})
        return
    click.echo(f"{target_url}: imported {res.key}")
    for name in res.added:
        click.echo(f"  {name}: {res.added[name]} added, {res.present[name]} already present")
    for c in res.conflicts:
        click.echo(f"  conflict: {c}")


def register(cli: click.Group) -> None:
    """Add ``inventory`` to the ``backup`` group."""
    cli.add_command(inventory_group)
