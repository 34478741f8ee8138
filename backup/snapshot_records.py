"""Rebuild the inventory's ``snapshots`` rows from the buckets themselves, after the archives
were rebuilt from a target (``backup inventory rebuild``).

The product records three kinds of snapshot with a policy (:mod:`.actions`, :mod:`.source`),
and each can be recognised again without the inventory:

- ``archive-ARCHIVE_ID`` in a target bucket (``target_snapshots``), taken after the archive
  landed: recorded as ``s3://BUCKET/PREFIX/`` with the archive's policy and id;
- ``POLICY-archive-YYYYmmddTHHMMSSZ`` in a bucket source, the snapshot an archive packed: the
  archive's manifest names it exactly (``bucket_source``: the source URL and the version);
- ``POLICY-YYYYmmddTHHMMSSZ`` in a bucket source, taken by the policy's ``snapshot`` action:
  recorded with the policy, no archive.

A snapshot is recorded only if its bucket still lists it: on Tigris the bucket's snapshot
listing; on a versioned bucket the snapshot manifests under ``.backup-snapshots/``. Its time
is its version (both implementations record ``created`` as the version's instant). Other
snapshots (taken by hand, or by other tools: a Tigris listing cannot tell them apart) are
counted, never recorded: the inventory never held a policy or an archive for them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from .archive.manifest import decode_manifest
from .errors import Error
from .inventory import Archive, Inventory, Snapshot
from .snapshot_actions import _target_bucket
from .snapshots import open_provider
from .snapshots.base import SnapshotInfo, from_ns
from .targets.s3client import s3_client

__all__ = ["SnapshotRecords", "bucket_source_of", "rebuild_snapshot_records"]

_ARCHIVE = re.compile(r"archive-(?P<id>.+)")


@dataclass(slots=True)
class SnapshotRecords:
    """What a rebuild of the ``snapshots`` rows did.

    Attributes:
        added: rows recorded (or that would be, in a dry run): bucket URL, version, name,
            policy, archive id.
        known: snapshots the inventory already recorded.
        others: snapshots seen that no policy or archive took (not recorded).
        unreadable: buckets (or manifests) that could not be read, with why.
    """

    added: list[dict[str, Any]] = field(default_factory=list)
    known: int = 0
    others: int = 0
    unreadable: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Returns: JSON-ready data."""
        return {
            "added": list(self.added),
            "known": self.known,
            "others": self.others,
            "unreadable": list(self.unreadable),
        }


def bucket_source_of(plain: bytes, name: str) -> dict[str, Any] | None:
    """Returns: the ``bucket_source`` a decrypted manifest records (the bucket and snapshot
    an archive of a bucket source packed), or None."""

    m = decode_manifest(plain, name, slim=True)
    src = m.get("bucket_source")
    return src if isinstance(src, dict) else None


def _packed_manifest(inventory: Inventory, archive_id: str) -> bytes | None:
    # the manifest's fields (its bucket_source among them), whole or chunked
    return inventory.packed_manifest_head(archive_id)


def _recorded(inventory: Inventory) -> tuple[set[tuple[str, str]], set[str]]:

    with inventory.session() as db:
        rows = db.query(Snapshot).all()
        return (
            {(urlparse(r.bucket).netloc, r.version) for r in rows},
            {r.archive_id for r in rows if r.archive_id},
        )


def _place(url: str) -> tuple[str, str, str]:
    p = urlparse(url)
    return p.scheme, p.netloc, p.path.rstrip("/")


def _list(url: str, client: Any, out: SnapshotRecords) -> Sequence[SnapshotInfo] | None:

    try:
        return open_provider(url, client=client).list()
    except Error as e:
        out.unreadable.append(f"{url}: {e.get_message()}")
        return None


def rebuild_snapshot_records(
    inventory: Inventory,
    target_url: str,
    *,
    dry_run: bool = False,
    client: Any = None,
    read_manifest: Callable[[Archive], bytes | None] | None = None,
) -> SnapshotRecords:
    """Record the snapshots the product took for the archives of a target (see the module's
    description), those the inventory lacks; idempotent.

    Args:
        inventory: holds the target's archives (rebuilt first).
        target_url: the target the archives were rebuilt from.
        dry_run: record nothing.
        client: an S3 client (default: :func:`backup.targets.s3client.s3_client`).
        read_manifest: the decrypted manifest of an archive whose packed file index is gone
            from the inventory (read since), or None when it cannot be read (a vault's).

    Returns:
        What was recorded.
    """

    out = SnapshotRecords()
    here = _place(target_url)
    # a row keeps its policy's target URL, which may differ in its query (a storage class)
    archives = {a.id: a for a in inventory.archives(None) if _place(a.target) == here}
    if not archives:
        return out
    have, linked = _recorded(inventory)
    want: list[Snapshot] = []
    clients: list[Any] = [client] if client is not None else []

    def s3() -> Any:
        # built only when a bucket is to be listed: a file target's rebuild needs none
        if not clients:
            clients.append(s3_client())
        return clients[0]

    def consider(url: str, s: SnapshotInfo, policy: str | None, archive_id: str | None) -> None:
        key = (urlparse(url).netloc, s.version)
        if key in have:
            out.known += 1
            return
        have.add(key)
        want.append(
            Snapshot(
                bucket=url,
                name=s.name,
                version=s.version,
                # what taking it recorded: the instant of its version
                created=from_ns(int(s.version)),
                policy=policy,
                archive_id=archive_id,
            )
        )

    target = urlparse(target_url)
    if target.scheme == "s3":
        bucket, prefix = _target_bucket(target_url)
        for s in _list(f"s3://{bucket}", s3(), out) or ():
            m = _ARCHIVE.fullmatch(s.name or "")
            a = archives.get(m["id"]) if m else None
            if a is None:
                out.others += 1
                continue
            consider(f"s3://{bucket}/{prefix}", s, a.policy, a.id)

    # bucket sources: the manifests name the snapshot each archive packed
    packed: dict[str, list[tuple[Archive, dict[str, Any]]]] = {}
    for a in archives.values():
        if a.id in linked:
            continue
        plain = _packed_manifest(inventory, a.id)
        if plain is None and read_manifest is not None:
            try:
                plain = read_manifest(a)
            except Error as e:
                out.unreadable.append(f"manifest of {a.id}: {e.get_message()}")
        if plain is None:
            continue
        try:
            src = bucket_source_of(plain, a.id)
        except Error as e:
            out.unreadable.append(f"manifest of {a.id}: {e.get_message()}")
            continue
        if src and isinstance(src.get("bucket"), str) and src.get("snapshot"):
            packed.setdefault(src["bucket"], []).append((a, src))
    for url, items in sorted(packed.items()):
        listed = _list(url, s3(), out)
        if listed is None:
            continue
        by_version = {s.version: s for s in listed}
        policies = {a.policy for a, _src in items}
        taken_by_action = re.compile(
            rf"(?:{'|'.join(re.escape(p) for p in sorted(policies))})-\d{{8}}T\d{{6}}Z"
        )
        packed_versions = set()
        for a, src in items:
            snap = by_version.get(str(src["snapshot"]))
            if snap is None:
                out.unreadable.append(
                    f"{url}: snapshot {src['snapshot']} of archive {a.id} is no longer listed"
                )
                continue
            packed_versions.add(snap.version)
            consider(url, snap, a.policy, a.id)
        for s in listed:
            if s.version in packed_versions:
                continue
            if s.name and taken_by_action.fullmatch(s.name):
                consider(url, s, s.name.rsplit("-", 1)[0], None)
            elif not (s.name and "-archive-" in s.name):
                out.others += 1
    out.added = [
        {
            "bucket": r.bucket,
            "version": r.version,
            "name": r.name,
            "policy": r.policy,
            "archive_id": r.archive_id,
        }
        for r in want
    ]
    if want and not dry_run:
        with inventory.session() as db:
            db.add_all(want)
        inventory.log(
            "rebuild",
            f"recorded {len(want)} snapshot(s) of the archives of {target_url}",
            snapshots=len(want),
        )
    return out
