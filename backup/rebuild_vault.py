"""Rebuild the inventory from a Glacier vault (``backup inventory rebuild glacier://VAULT``).

A vault cannot be listed, and nothing in it can be read at once: its manifests are as cold
as its archives. So a vault's rebuild has three steps, each of which a later run resumes:

1. The vault's inventory: an ``inventory-retrieval`` job, started or reused exactly as
   ``backup inventory sync`` does (:func:`backup.inventory.sync.await_inventory_job`), so
   either command reuses the job the other started. Its archive list and the descriptions
   (which carry each object's key) name every archive and manifest this product wrote, with
   the vault's archive id and tree hash: the references the inventory records.
2. Only with the user's opt-in (``--retrieve-manifests``): an ``archive-retrieval`` job for
   each manifest the inventory lacks, never for an archive. What that costs and how long it
   takes is shown first, as ``restore --dry-run`` does (:mod:`backup.coldplan`). The jobs
   are the state of the rebuild: the vault lists them (and keeps a finished job's output for
   24 hours), so a later run, with or without the option, finds them in one listing and
   neither starts nor pays for a job again.
3. Each manifest whose job finished is downloaded (checked against its tree hash),
   decrypted, and recorded by the core (:func:`backup.inventory.rebuild.record_parsed`),
   parents before children.

Without the opt-in nothing is recorded that the vault's inventory alone cannot prove: the
report lists the archives and manifests found by key, and what retrieving the manifests
would cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .coldplan import estimate_cost, expected_ready
from .crypto.age import Identity, decrypt_bytes
from .errors import Error, TargetError
from .inventory import Inventory
from .inventory.rebuild import (
    Damaged,
    Difference,
    Leftover,
    Orphan,
    ParsedManifest,
    RebuildReport,
    Stored,
    parse_manifest,
    record_parsed,
    split_key,
)
from .inventory.sync import VaultArchive, await_inventory_job, fetch_inventory, poll_pause
from .targets import Readiness
from .targets.glacier import GlacierTarget, format_ref

__all__ = ["ManifestPlan", "VaultObject", "VaultRebuild", "rebuild_vault"]


@dataclass(frozen=True, slots=True)
class VaultObject:
    """An archive of this product's in the vault, with its manifest.

    Attributes:
        policy: the policy its key names.
        archive_id: the backup's archive id (from the key), not the vault's.
        archive: the archive object, as the vault's inventory lists it.
        manifest: its manifest object.
    """

    policy: str
    archive_id: str
    archive: VaultArchive
    manifest: VaultArchive

    @property
    def archive_ref(self) -> str:
        """The archive's reference, as the backup that wrote it recorded it."""
        return _ref(self.archive)

    @property
    def manifest_ref(self) -> str:
        """The manifest's reference."""
        return _ref(self.manifest)


def _ref(v: VaultArchive) -> str:
    return format_ref(v.key or "", v.archive_id, v.tree_hash or "")


@dataclass(slots=True)
class ManifestPlan:
    """What retrieving the manifests the inventory lacks costs, before anything is requested.

    Attributes:
        tier: the retrieval tier.
        objects: how many manifests.
        bytes: their bytes.
        cost: estimated USD (:func:`backup.coldplan.estimate_cost`, class ``VAULT``).
        ready_in: (earliest, latest) expected time from request to readable.
    """

    tier: str
    objects: int = 0
    bytes: int = 0
    cost: float = 0.0
    ready_in: tuple[timedelta, timedelta] = (timedelta(0), timedelta(0))

    def as_dict(self) -> dict[str, Any]:
        """Returns: the plan as JSON-ready data (times in seconds, cost in USD)."""
        return {
            "tier": self.tier,
            "objects": self.objects,
            "bytes": self.bytes,
            "cost_usd": round(self.cost, 4),
            "ready_in_seconds": [int(t.total_seconds()) for t in self.ready_in],
        }


@dataclass(slots=True)
class VaultRebuild:
    """The outcome of a vault's rebuild.

    Attributes:
        report: the core report (added, known, differing, foreign, damaged, leftovers,
            orphans), as for every target kind.
        inventory_job: the vault's inventory job.
        inventory_date: the date of the vault's inventory (None while the job runs).
        state: ``inventory-pending`` (the inventory job runs: run again later),
            ``unretrieved`` (manifests the inventory lacks, not retrieved: see ``plan``),
            ``retrieving`` (manifest jobs still run: run again later) or ``done``.
        found: every archive with its manifest the vault holds (of the policy asked for).
        unrecorded: those the inventory lacks whose manifests are not read yet.
        plan: what retrieving those manifests costs.
        requested: manifest retrievals this run started (vault job ids).
        pending: (archive id, job id) of manifest retrievals still running.
        notes: what could not be looked at (the vault's unfinished uploads), in one line each.
    """

    report: RebuildReport
    inventory_job: str
    inventory_date: datetime | None = None
    state: str = "done"
    found: list[VaultObject] = field(default_factory=list)
    unrecorded: list[VaultObject] = field(default_factory=list)
    plan: ManifestPlan | None = None
    requested: list[str] = field(default_factory=list)
    pending: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """As the core report's: 3 when something was skipped or differs."""
        return self.report.exit_code

    def as_dict(self) -> dict[str, Any]:
        """Returns: the outcome as JSON-ready data (the core report's fields, plus the
        vault's)."""

        def obj(o: VaultObject) -> dict[str, Any]:
            return {
                "policy": o.policy,
                "archive_id": o.archive_id,
                "archive": o.archive.key,
                "archive_size": o.archive.size,
                "manifest": o.manifest.key,
                "manifest_size": o.manifest.size,
            }

        return self.report.to_json() | {
            "state": self.state,
            "inventory_job": self.inventory_job,
            "inventory_date": self.inventory_date.isoformat() if self.inventory_date else None,
            "found": [obj(o) for o in self.found],
            "unrecorded": [obj(o) for o in self.unrecorded],
            "plan": self.plan.as_dict() if self.plan else None,
            "requested": list(self.requested),
            "pending": [{"archive_id": a, "job_id": j} for a, j in self.pending],
            "notes": list(self.notes),
        }


def _newest(vs: Sequence[VaultArchive]) -> VaultArchive:
    return max(vs, key=lambda v: (v.created or datetime.min.replace(tzinfo=UTC), v.archive_id))


def _pair(
    report: RebuildReport, archives: Sequence[VaultArchive], policy: str | None
) -> list[VaultObject]:
    """Pair the vault's archives by key into (archive, manifest), oldest first; everything
    else goes into the report (foreign archives, leftovers)."""
    by_key: dict[str, list[VaultArchive]] = {}
    for v in archives:
        parts = split_key(v.key) if v.key is not None else None
        if v.key is None or parts is None:
            # not written by this product (no description of ours, or not one of its keys)
            report.foreign.append(v.key or f"vault archive {v.archive_id}")
            continue
        if policy is not None and parts[0] != policy:
            continue
        by_key.setdefault(v.key, []).append(v)
    objects: dict[str, dict[str, VaultArchive]] = {}
    for key, vs in sorted(by_key.items()):
        keep = _newest(vs)
        for v in vs:
            if v is not keep:
                # a vault never overwrites: a second archive under one key is an upload
                # retried after its first copy landed
                report.leftovers.append(
                    Leftover(f"{key}#{v.archive_id}", "an older copy of the object (a retry)")
                )
        pol, aid, what = split_key(key) or ("", "", "")
        objects.setdefault(f"{pol}/{aid}", {})[what] = keep
    out = []
    for stem, kinds in sorted(objects.items()):
        a, m = kinds.get("archive"), kinds.get("manifest")
        if a is not None and m is not None:
            pol, aid = stem.split("/", 1)
            out.append(VaultObject(pol, aid, a, m))
        elif a is not None:
            report.leftovers.append(
                Leftover(a.key or stem, "archive without its manifest (an interrupted backup)")
            )
        elif m is not None:
            report.leftovers.append(
                Leftover(m.key or stem, "manifest without its archive (an interrupted backup)")
            )
    return sorted(out, key=lambda o: o.archive.created or datetime.min.replace(tzinfo=UTC))


def _compare_known(report: RebuildReport, inventory: Inventory, o: VaultObject) -> bool:
    """Compare an archive the inventory has with what the vault's inventory says, without
    its manifest (reading it would cost a retrieval). Returns: whether it was known."""
    row = inventory.find(o.archive_id)
    if row is None:
        return False
    seen = {
        "policy": o.policy,
        "location": o.archive_ref,
        "manifest_location": o.manifest_ref,
        "size_stored": str(o.archive.size),
    }
    diff = {k: (str(getattr(row, k)), v) for k, v in seen.items() if str(getattr(row, k)) != v}
    if diff:
        report.differing.append(Difference(o.archive_id, diff))
    else:
        report.known.append(o.archive_id)
    report.storage_classes["VAULT"] = report.storage_classes.get("VAULT", 0) + 1
    return True


def _read_manifest(
    target: GlacierTarget,
    o: VaultObject,
    job_id: str,
    identities: Sequence[Identity],
) -> ParsedManifest:
    with target.open_job_output(job_id, o.manifest_ref, o.manifest.tree_hash) as f:
        blob = f.read()
    plain = decrypt_bytes(blob, identities, name=f"manifest {o.manifest.key}")
    return parse_manifest(
        target.url,
        plain,
        blob,
        stored=Stored(o.archive_ref, o.archive.size, "VAULT", o.archive.created),
        manifest_ref=o.manifest_ref,
        expect=(o.policy, o.archive_id),
    )


def _record(
    inventory: Inventory,
    report: RebuildReport,
    parsed: Sequence[ParsedManifest],
    waiting: set[str],
) -> list[ParsedManifest]:
    """Record manifests parents first, by their links (not by creation time: a clock may
    have stepped back). Returns: those whose chain waits for a manifest still being
    retrieved (recorded by a later round or run, never reported as orphans)."""
    later: list[ParsedManifest] = []
    waiting = set(waiting)
    todo = sorted(parsed, key=lambda p: (p.archive.created, p.archive.id))
    pending = {p.archive.id for p in todo}
    recorded: set[str] = set()
    while todo:
        again = []
        for p in todo:
            row = p.archive
            parent = row.parent_id
            if parent is not None and parent not in recorded:
                if parent in pending:
                    again.append(p)
                    continue
                pending.discard(row.id)
                if parent in waiting:
                    later.append(p)
                    waiting.add(row.id)  # and so waits every descendant
                    continue
                if inventory.find(parent) is None:
                    report.orphans.append(Orphan(row.id, parent))
                    continue
            outcome = record_parsed(inventory, p, dry_run=report.dry_run, parent_checked=True)
            recorded.add(row.id)
            pending.discard(row.id)
            if outcome.result == "added":
                report.added.append(row.id)
            elif outcome.result == "known":
                report.known.append(row.id)
            elif outcome.difference is not None:
                report.differing.append(outcome.difference)
            report.storage_classes["VAULT"] = report.storage_classes.get("VAULT", 0) + 1
        if len(again) == len(todo):  # a loop of parents: none can be recorded
            report.orphans.extend(Orphan(p.archive.id, p.archive.parent_id or "") for p in again)
            break
        todo = again
    return later


def rebuild_vault(
    inventory: Inventory,
    target: GlacierTarget,
    identities: Sequence[Identity],
    *,
    policy: str | None = None,
    dry_run: bool = False,
    retrieve_manifests: bool = False,
    tier: str | None = None,
    wait: bool = True,
    poll_seconds: float = 60.0,
    timeout: float | None = None,
    prices: Mapping[str, tuple[float, float]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> VaultRebuild:
    """Rebuild the inventory's archives of a vault (see the module's description).

    Args:
        inventory: where the rows go.
        target: the vault.
        identities: to decrypt the manifests.
        policy: only this policy's archives.
        dry_run: request nothing, record nothing: report what exists and what retrieving
            the manifests would cost.
        retrieve_manifests: start retrieval jobs for the manifests the inventory lacks
            (never for archives); without it, only jobs already started are used.
        tier: the retrieval tier (default the vault URL's).
        wait: wait for the inventory job and the manifest jobs; False returns at once with
            what is pending (run again later: every job is reused).
        poll_seconds: the wait between two looks at the vault's jobs.
        timeout: give up waiting after this many seconds (jobs keep running).
        prices: the retrieval price table (``BACKUP_RETRIEVAL_PRICES``), for the estimate.
        progress: told of each wait.

    Returns:
        The outcome.

    Raises:
        TargetError: the vault refused, or its inventory job failed or timed out.
    """
    report = RebuildReport(target.url, dry_run=dry_run)
    job_id, ready = await_inventory_job(
        target,
        wait=wait,
        poll_seconds=poll_seconds,
        timeout=timeout,
        progress=progress,
    )
    out = VaultRebuild(report, job_id)
    if not ready:
        out.state = "inventory-pending"
        return out
    out.inventory_date, listed = fetch_inventory(target, job_id)
    prefix = f"{policy}/" if policy else ""
    try:
        report.leftovers.extend(
            Leftover(k, "partial upload (an interrupted write)")
            for k in target.partial_uploads(prefix)
        )
    except TargetError as e:
        # only the report's list of leftovers is missing: the rebuild itself goes on
        out.notes.append(f"multipart uploads not listed: {e.get_message()}")
    out.found = _pair(report, listed, policy)
    todo = [o for o in out.found if not _compare_known(report, inventory, o)]
    t = (tier or target.tier).capitalize()
    plan = ManifestPlan(t, len(todo), sum(o.manifest.size for o in todo))
    plan.cost = estimate_cost("VAULT", t, plan.bytes, requests=plan.objects, prices=prices)
    plan.ready_in = expected_ready("VAULT", t)
    out.plan = plan
    if not todo:
        return out

    # the vault's job list is the rebuild's state: jobs started by an earlier run (or by a
    # restore) are found here, in one listing, and never started or paid for twice
    jobs = target.retrieval_jobs()
    if retrieve_manifests and not dry_run:
        for o in todo:
            if o.manifest.archive_id not in jobs:
                st = target.start_retrieval(o.manifest_ref, tier=t)
                assert st.job_id is not None
                jobs[o.manifest.archive_id] = st
                out.requested.append(st.job_id)
        if out.requested:
            inventory.log(
                "rebuild",
                f"requested {len(out.requested)} manifest retrieval(s) from {target.url} "
                f"({t}, about ${plan.cost:.2f})",
                jobs=out.requested,
            )
    waiting = {o.archive_id: o for o in todo if o.manifest.archive_id in jobs}
    out.unrecorded = [o for o in todo if o.manifest.archive_id not in jobs]
    if dry_run:
        out.unrecorded = todo
        out.state = "unretrieved"
        return out
    start = time.monotonic()
    held: list[ParsedManifest] = []
    while True:
        parsed: list[ParsedManifest] = list(held)
        for aid, o in sorted(waiting.items()):
            job = jobs.get(o.manifest.archive_id)
            if job is None:
                # its job failed, or its output expired, since it was listed: it is
                # requested again only by a run that opts in
                del waiting[aid]
                out.unrecorded.append(o)
                continue
            if job.state is not Readiness.READY or job.job_id is None:
                continue
            del waiting[aid]
            try:
                p = _read_manifest(target, o, job.job_id, identities)
            except Error as e:
                report.damaged.append(Damaged(o.manifest.key or aid, e.get_message()))
                continue
            report.manifests_read += 1
            parsed.append(p)
        held = _record(inventory, report, parsed, set(waiting))
        if not waiting:
            break
        if not wait:
            break
        poll_pause(
            target.url,
            f"{len(waiting)} manifest retrieval(s)",
            "run the rebuild again later: the jobs are reused",
            start=start,
            timeout=timeout,
            poll_seconds=poll_seconds,
            progress=progress,
        )
        jobs = target.retrieval_jobs()
    out.pending = [
        (aid, getattr(jobs.get(o.manifest.archive_id), "job_id", None) or "")
        for aid, o in waiting.items()
    ]
    out.state = "retrieving" if out.pending else ("unretrieved" if out.unrecorded else "done")
    report.log_event(inventory)
    return out
