"""Reconcile a Glacier vault with the local inventory (``backup inventory sync glacier://v``).

A vault cannot be listed at once: an ``inventory-retrieval`` job is started (or a running or
recently finished one reused), polled until it finishes (hours on AWS; seconds in moto), and
its output (the vault's archive list, as of the vault's last daily inventory) compared with
the inventory's archives in that target:

- in the vault, not in the inventory: archives this product wrote (recognised by their
  description) that the inventory does not know, and foreign archives, listed apart;
- in the inventory, not in the vault: archive or manifest objects the vault does not have,
  unless they were written after the vault's inventory date (too new to tell).

An inventory row that holds only an object's key (what was recorded for vault archives
before the vault's archive ids were kept) is matched by the key in the archive's
description, and the row is given the vault's reference, so the archive can be restored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import TargetError
from ..targets.glacier import (
    GlacierTarget,
    format_ref,
    parse_description,
    parse_ref,
    vault_error,
)
from ..times import parse_service_time
from . import Archive, Inventory

__all__ = [
    "SyncReport",
    "VaultArchive",
    "await_inventory_job",
    "fetch_inventory",
    "inventory_job_status",
    "poll_pause",
    "reconcile",
    "start_inventory_job",
    "sync_vault",
]


@dataclass(frozen=True, slots=True)
class VaultArchive:
    """One archive of a vault's inventory.

    Attributes:
        archive_id: the vault's id.
        key: the object key from its description, or None for an archive not written here.
        size: bytes.
        created: when the vault received it.
        tree_hash: its SHA-256 tree hash, hex.
        description: the raw description.
    """

    archive_id: str
    key: str | None
    size: int
    created: datetime | None
    tree_hash: str | None
    description: str


@dataclass(slots=True)
class SyncReport:
    """The comparison of a vault with the inventory.

    Attributes:
        target: the vault's URL.
        inventory_date: the date of the vault's inventory.
        matched: objects both sides have.
        only_in_vault: archives written by this product that the inventory lacks.
        foreign: archives in the vault not written by this product.
        only_in_inventory: (archive id, reference) the vault lacks.
        too_new: (archive id, reference) written after the vault's inventory date.
        repaired: (archive id, recorded key, the vault's reference) for rows that held only
            the key: matched by the archive's description.
    """

    target: str
    inventory_date: datetime | None
    matched: int = 0
    only_in_vault: list[VaultArchive] = field(default_factory=list)
    foreign: list[VaultArchive] = field(default_factory=list)
    only_in_inventory: list[tuple[str, str]] = field(default_factory=list)
    too_new: list[tuple[str, str]] = field(default_factory=list)
    repaired: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        """True when neither side has what the other lacks."""
        return not self.only_in_vault and not self.only_in_inventory

    def as_dict(self) -> dict[str, Any]:
        """Returns: the report as JSON-ready data."""

        def va(v: VaultArchive) -> dict[str, Any]:
            return {
                "archive_id": v.archive_id,
                "key": v.key,
                "size": v.size,
                "created": v.created.isoformat() if v.created else None,
                "tree_hash": v.tree_hash,
            }

        return {
            "target": self.target,
            "inventory_date": self.inventory_date.isoformat() if self.inventory_date else None,
            "consistent": self.consistent,
            "matched": self.matched,
            "only_in_vault": [va(v) for v in self.only_in_vault],
            "foreign": [va(v) for v in self.foreign],
            "only_in_inventory": [{"archive": a, "ref": r} for a, r in self.only_in_inventory],
            "too_new": [{"archive": a, "ref": r} for a, r in self.too_new],
            "repaired": [{"archive": a, "key": k, "ref": r} for a, k, r in self.repaired],
        }


def poll_pause(
    url: str,
    waiting: str,
    again: str,
    *,
    start: float,
    timeout: float | None,
    poll_seconds: float,
    progress: Callable[[str], None] | None,
) -> None:
    """One pause of a loop waiting for vault jobs: give up once ``timeout`` seconds have
    passed since ``start`` (``time.monotonic()``), else say so and sleep.

    Args:
        url: the vault's URL (for the error).
        waiting: what is waited for (``inventory job X``, ``3 manifest retrieval(s)``).
        again: how to carry on after giving up (the jobs keep running).

    Raises:
        TargetError: ``... still running after N s (again)``.
    """
    elapsed = time.monotonic() - start
    if timeout is not None and elapsed > timeout:
        raise TargetError(url, f"{waiting} still running after {timeout:.0f} s ({again})")
    if progress is not None:
        progress(f"waiting for {waiting} ({elapsed:.0f} s)")
    time.sleep(poll_seconds)


def start_inventory_job(target: GlacierTarget) -> str:
    """Start an inventory-retrieval job, or reuse one running or finished (output kept).

    Args:
        target: the vault.

    Returns:
        The job id.

    Raises:
        TargetError: the vault refused.
    """
    for job in target.jobs():
        if job.get("Action") == "InventoryRetrieval" and job.get("StatusCode") in (
            "InProgress",
            "Succeeded",
        ):
            return str(job["JobId"])
    try:
        resp = target.client.initiate_job(
            accountId=target.account,
            vaultName=target.vault,
            jobParameters={"Type": "inventory-retrieval", "Format": "JSON"},
        )
    except (ClientError, BotoCoreError) as e:
        raise TargetError(target.url, f"cannot start an inventory job: {vault_error(e)}") from e
    return resp["jobId"]


def inventory_job_status(target: GlacierTarget, job_id: str) -> str:
    """Returns: the job's status code: ``InProgress``, ``Succeeded`` or ``Failed``."""
    try:
        job = target.client.describe_job(
            accountId=target.account, vaultName=target.vault, jobId=job_id
        )
    except (ClientError, BotoCoreError) as e:
        raise TargetError(
            target.url, f"cannot describe inventory job {job_id}: {vault_error(e)}"
        ) from e
    return str(job.get("StatusCode", "InProgress"))


def fetch_inventory(
    target: GlacierTarget, job_id: str
) -> tuple[datetime | None, list[VaultArchive]]:
    """Download a finished inventory job's output.

    Returns:
        (the vault's inventory date, its archives).

    Raises:
        TargetError: the output cannot be read or parsed.
    """
    try:
        resp = target.client.get_job_output(
            accountId=target.account, vaultName=target.vault, jobId=job_id
        )
        doc = json.loads(resp["body"].read())
    except (ClientError, BotoCoreError, ValueError) as e:
        raise TargetError(
            target.url, f"cannot read inventory job {job_id}: {vault_error(e)}"
        ) from e
    out = []
    for a in doc.get("ArchiveList", []):
        desc = str(a.get("ArchiveDescription") or "")
        parsed = parse_description(desc)
        out.append(
            VaultArchive(
                archive_id=str(a["ArchiveId"]),
                key=parsed["key"] if parsed else None,
                size=int(a.get("Size", 0)),
                created=parse_service_time(a.get("CreationDate")),
                tree_hash=a.get("SHA256TreeHash"),
                description=desc,
            )
        )
    return parse_service_time(doc.get("InventoryDate")), out


def reconcile(
    inventory_archives: Sequence[Archive],
    target_url: str,
    inventory_date: datetime | None,
    vault: Sequence[VaultArchive],
) -> SyncReport:
    """Compare the inventory's archives in a vault with the vault's own inventory.

    Args:
        inventory_archives: archive rows (complete ones) of that target.
        target_url: the vault's URL.
        inventory_date: when the vault's inventory was taken.
        vault: the vault's archives.

    Returns:
        The report.
    """
    report = SyncReport(target_url, inventory_date)
    in_vault = {v.archive_id: v for v in vault}
    by_key: dict[str, list[VaultArchive]] = {}
    for v in vault:
        if v.key is not None:
            by_key.setdefault(v.key, []).append(v)
    known: set[str] = set()
    for a in inventory_archives:
        if a.target != target_url:
            continue
        for ref in (a.location, a.manifest_location):
            if "#" not in ref and ref in by_key:
                # only the key was recorded: the newest archive the vault holds under it
                v = max(by_key[ref], key=lambda v: v.created or datetime.min.replace(tzinfo=UTC))
                new = format_ref(ref, v.archive_id, v.tree_hash or "")
                report.repaired.append((a.id, ref, new))
                ref = new
            try:
                aid = parse_ref(target_url, ref)[1]
            except TargetError:  # a key the vault's inventory does not hold (yet)
                aid = ref
            known.add(aid)
            if aid in in_vault:
                report.matched += 1
            elif inventory_date is not None and (a.finished or a.created) > inventory_date:
                report.too_new.append((a.id, ref))
            else:
                report.only_in_inventory.append((a.id, ref))
    for v in vault:
        if v.archive_id in known:
            continue
        (report.only_in_vault if v.key is not None else report.foreign).append(v)
    return report


def await_inventory_job(
    target: GlacierTarget,
    *,
    wait: bool = True,
    poll_seconds: float = 60.0,
    timeout: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[str, bool]:
    """Start or reuse the vault's inventory job (:func:`start_inventory_job`) and wait for it:
    what ``inventory sync`` and a vault's ``inventory rebuild`` share, so either one reuses
    the job the other started.

    Args:
        target: the vault.
        wait: poll until the job finishes; False returns at once if it has not.
        poll_seconds: the wait between polls.
        timeout: give up after this many seconds of waiting (None: no limit).
        progress: told of each poll.

    Returns:
        (the job id, whether it finished).

    Raises:
        TargetError: the job failed, or the wait timed out (the job keeps running: run
            again later and it is reused).
    """
    job_id = start_inventory_job(target)
    start = time.monotonic()
    while True:
        status = inventory_job_status(target, job_id)
        if status == "Succeeded":
            return job_id, True
        if status == "Failed":
            raise TargetError(target.url, f"inventory job {job_id} failed")
        if not wait:
            return job_id, False
        poll_pause(
            target.url,
            f"inventory job {job_id}",
            "run again later: the job is reused",
            start=start,
            timeout=timeout,
            poll_seconds=poll_seconds,
            progress=progress,
        )


def sync_vault(
    target: GlacierTarget,
    inventory: Inventory,
    *,
    wait: bool = True,
    poll_seconds: float = 60.0,
    timeout: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> SyncReport | str:
    """Run the whole sync: start or reuse the inventory job, wait for it, reconcile.

    Args:
        target: the vault.
        inventory: the local inventory.
        wait: poll until the job finishes; False returns the job id at once if it has not.
        poll_seconds: the wait between polls.
        timeout: give up after this many seconds of waiting (None: no limit).
        progress: told of each poll ("waiting for inventory job ...").

    Returns:
        The report, or the running job's id when not waiting.

    Raises:
        TargetError: the job failed, or the wait timed out (the job keeps running: run
            again later and it is reused).
    """
    job_id, done = await_inventory_job(
        target, wait=wait, poll_seconds=poll_seconds, timeout=timeout, progress=progress
    )
    if not done:
        return job_id
    date, archives = fetch_inventory(target, job_id)
    rows = [a for a in inventory.archives(None) if a.target == target.url]
    report = reconcile(rows, target.url, date, archives)
    for archive_id, key, ref in report.repaired:
        row = inventory.get(archive_id)
        fields = {
            name: ref for name in ("location", "manifest_location") if getattr(row, name) == key
        }
        inventory.update_archive(archive_id, **fields)
    inventory.log(
        "inventory-sync",
        f"{target.url}: {report.matched} matched, {len(report.only_in_vault)} only in the "
        f"vault, {len(report.only_in_inventory)} only in the inventory, "
        f"{len(report.repaired)} archive id(s) recorded",
        level="info" if report.consistent else "warning",
    )
    return report
