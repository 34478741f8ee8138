"""Rebuild the inventory from a target alone (``backup inventory rebuild TARGET_URL``).

Every archive has its manifest beside it (docs/format.md), kept hot whatever the archive's
storage class, and the manifest holds everything the inventory records about the archive:
id, policy, kind, parent, creation time, host, the stored object's key, size and SHA-256,
and every entry. So a rebuild lists the target, pairs each ``POLICY/ID.tar.zst.age`` with
its ``POLICY/ID.manifest.json.zst.age``, decrypts the manifests (never the archives, and
never anything that needs a retrieval) and records each archive as the backup that made it
did.

Contract, for every target kind (a vault's or a snapshot bucket's rebuild feeds the same
:func:`parse_manifest` and :func:`record_parsed`):

- :func:`record_parsed` is the one place a decrypted manifest becomes an archive row,
  with its packed file index and its manifest's age header, in one transaction: a rebuild
  killed at any point leaves whole rows or none, and the next rebuild finishes the work.
- Idempotent: an archive the inventory already has is compared, never rewritten; fields
  that differ from the target are named in the report.
- Never fatal per object: a manifest that does not decrypt, parse or match its archive
  object is named in the report and skipped, and so are archives whose parent is missing
  (an incremental cannot be restored without its chain).
- Only what the target already shows is checked (the archive object's size against the
  manifest's record); archives are not read.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..crypto.age import AgeError, Identity, decrypt_bytes, header_of
from ..errors import ArchiveCorrupt, ArchiveNotFound, Error
from ..progress import Progress
from ..targets import ObjectInfo, Target
from . import Archive, Inventory

__all__ = [
    "ARCHIVE_SUFFIX",
    "COLD_CLASSES",
    "MANIFEST_SUFFIX",
    "Damaged",
    "Difference",
    "Leftover",
    "Orphan",
    "Outcome",
    "ParsedManifest",
    "RebuildReport",
    "Stored",
    "parse_manifest",
    "rebuild",
    "record_parsed",
    "split_key",
]

ARCHIVE_SUFFIX = ".tar.zst.age"
MANIFEST_SUFFIX = ".manifest.json.zst.age"
#: where copies of the inventory go in a target (backup/inventory_copy.py); a policy name
#: starts with a letter or digit, so no archive or manifest key starts so
COPY_PREFIX = ".backup-inventory/"
#: storage classes an object must be retrieved from before it is read: a manifest found in
#: one is reported, never read (a rebuild requests no retrieval)
COLD_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
# POLICY/ARCHIVE_ID + suffix; policy names as policy.py allows them
_KEY = re.compile(
    r"^(?P<policy>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})/(?P<id>[A-Za-z0-9][A-Za-z0-9_.-]{0,63}?)"
    r"(?P<suffix>\.tar\.zst\.age|\.manifest\.json\.zst\.age)$"
)
#: the archive row fields a rebuild compares with an existing row
COMPARED = (
    "policy",
    "kind",
    "parent_id",
    "created",
    "host",
    "location",
    "manifest_location",
    "size_in",
    "size_tar",
    "size_stored",
    "sha256",
    "entries",
    "state",
)


def split_key(key: str) -> tuple[str, str, str] | None:
    """Returns: (policy, archive id, ``archive`` or ``manifest``) of an object key this
    product writes, None for any other key."""
    m = _KEY.match(key)
    if m is None:
        return None
    return m["policy"], m["id"], "archive" if m["suffix"] == ARCHIVE_SUFFIX else "manifest"


@dataclass(frozen=True, slots=True)
class Stored:
    """What the target says about an archive's object, without reading it.

    Attributes:
        ref: the reference the target names it by (a key; a vault's archive reference).
        size: its size in bytes, None when the target cannot tell without reading it.
        storage_class: its class, where the target has classes.
        modified: when it was stored, if known (recorded as the archive's ``finished``).
    """

    ref: str
    size: int | None = None
    storage_class: str | None = None
    modified: datetime | None = None


@dataclass(frozen=True, slots=True)
class Damaged:
    """A manifest (or its archive) that could not be recorded: named and skipped."""

    key: str
    reason: str


@dataclass(frozen=True, slots=True)
class Leftover:
    """What an interrupted backup left: a partial upload, an archive without its manifest
    or a manifest without its archive."""

    key: str
    reason: str


@dataclass(frozen=True, slots=True)
class Orphan:
    """An archive whose parent is neither in the inventory nor recorded by the rebuild:
    not recorded (it cannot be restored without its chain)."""

    archive_id: str
    parent_id: str


@dataclass(frozen=True, slots=True)
class Difference:
    """An archive the inventory knows whose record differs from the target: field name to
    (inventory's value, target's value), as text."""

    archive_id: str
    fields: dict[str, tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What :func:`record_parsed` did: ``added`` (or would add, in a dry run), ``known``
    (and identical), or ``differs``."""

    archive_id: str
    result: str
    difference: Difference | None = None


@dataclass(slots=True)
class RebuildReport:
    """The outcome of a rebuild.

    Attributes:
        target: the target's URL.
        dry_run: nothing was recorded.
        added: archives recorded (or that would be), oldest first.
        known: archives the inventory already had, identical to the target.
        differing: archives the inventory already had whose record differs from the target.
        foreign: object keys this product did not write, ignored.
        copies: copies of an inventory found (``backup inventory import`` brings one back,
            with the job history a rebuild cannot know).
        damaged: manifests that do not decrypt, parse or match their archive object.
        leftovers: what interrupted uploads left.
        orphans: archives skipped because their parent is missing.
        storage_classes: archives added or known, counted by their object's storage class.
        manifests_read: how many manifests were downloaded and decrypted.
    """

    target: str
    dry_run: bool = False
    added: list[str] = field(default_factory=list)
    known: list[str] = field(default_factory=list)
    differing: list[Difference] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    copies: list[str] = field(default_factory=list)
    damaged: list[Damaged] = field(default_factory=list)
    leftovers: list[Leftover] = field(default_factory=list)
    orphans: list[Orphan] = field(default_factory=list)
    storage_classes: dict[str, int] = field(default_factory=dict)
    manifests_read: int = 0

    @property
    def exit_code(self) -> int:
        """0, or 3 when something was skipped or differs (damaged manifests, orphans,
        differing records): the rebuild did what it could, and the report says what not."""
        return 3 if self.damaged or self.orphans or self.differing else 0

    def log_event(self, inventory: Inventory) -> None:
        """Record in the inventory's event log what the rebuild added (nothing when it added
        nothing, or only would have: a dry run)."""
        if self.added and not self.dry_run:
            inventory.log(
                "rebuild",
                f"rebuilt {len(self.added)} archive(s) from {self.target}",
                archives=len(self.added),
                damaged=len(self.damaged),
                orphans=len(self.orphans),
            )

    def to_json(self) -> dict[str, Any]:
        """Returns: the report as JSON-ready data."""
        d = asdict(self)
        d["differing"] = [
            {"archive_id": x.archive_id, "fields": {k: list(v) for k, v in x.fields.items()}}
            for x in self.differing
        ]
        return d


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    """A decrypted manifest, checked, with the archive row it stands for.

    Attributes:
        archive: the row to record (state ``complete``), not yet added to any session.
        plain: the manifest as decrypted (compressed JSON): the packed file index.
        header: the age header of the encrypted manifest.
    """

    archive: Archive
    plain: bytes
    header: bytes


def parse_manifest(
    target_url: str,
    plain: bytes,
    blob: bytes,
    *,
    stored: Stored,
    manifest_ref: str,
    expect: tuple[str, str] | None = None,
) -> ParsedManifest:
    """Turn a decrypted manifest into the archive row it stands for, checking it against
    what the target says about the archive object.

    Args:
        target_url: the target's URL, recorded as the archive's target (the manifest's own,
            when it names the same place with another query, such as its storage class).
        plain: the decrypted manifest (compressed JSON).
        blob: the encrypted manifest as stored (its header and SHA-256 are recorded).
        stored: what the target says about the archive object.
        manifest_ref: the reference the target names the manifest by.
        expect: (policy, archive id) the object keys name, checked against the manifest.

    Raises:
        ArchiveCorrupt: the manifest does not parse, lacks a field, or does not match the
            keys or the archive object (the message says which).
    """
    name = expect[1] if expect else manifest_ref
    m = _decode(plain, name)
    try:
        archive_id = str(m["archive_id"])
        policy = str(m["policy"])
        kind = str(m["kind"])
        parent = m["parent"]
        created = datetime.fromisoformat(str(m["created"]))
        stored_obj = m["archive"]
        size = int(stored_obj["size"])
        sha256 = stored_obj["sha256"]
        entries = m["entries"]
        deleted = m["deleted"]
        unreadable = m.get("unreadable", [])
        changed = m.get("changed_while_reading", [])
        row = Archive(
            id=archive_id,
            policy=policy,
            target=_target_of(target_url, m.get("target")),
            location=stored.ref,
            manifest_location=manifest_ref,
            kind=kind,
            parent_id=None if parent is None else str(parent),
            created=created if created.tzinfo else created.replace(tzinfo=UTC),
            finished=stored.modified,
            state="complete",
            host=str(m.get("host", "")),
            format_version=int(m["format"]),
            size_in=int(m["size_in"]),
            size_tar=int(m["size_tar"]),
            size_stored=size,
            sha256=None if sha256 is None else str(sha256),
            manifest_sha256=hashlib.sha256(blob).hexdigest(),
            entries=len(entries),
            deleted_paths=len(deleted),
            unreadable=json.dumps(unreadable),
            changed=json.dumps(changed),
        )
    except KeyError as e:
        raise ArchiveCorrupt(name, f"manifest lacks {e}") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise ArchiveCorrupt(name, f"manifest field has the wrong type: {e}") from None
    if kind not in ("full", "incremental") or (kind == "incremental") == (parent is None):
        raise ArchiveCorrupt(name, f"manifest kind {kind!r} with parent {parent!r}")
    if expect is not None and (policy, archive_id) != expect:
        raise ArchiveCorrupt(
            name,
            f"manifest describes {policy}/{archive_id}, but is stored as {expect[0]}/{expect[1]}",
        )
    archive_key = stored_obj.get("key") if isinstance(stored_obj, dict) else None
    if expect is not None and archive_key != f"{expect[0]}/{expect[1]}{ARCHIVE_SUFFIX}":
        raise ArchiveCorrupt(
            name, f"manifest names archive object {archive_key!r}, not this archive's key"
        )
    if stored.size is not None and stored.size != size:
        raise ArchiveCorrupt(
            name,
            f"archive object is {stored.size} bytes, its manifest records {size} "
            "(a truncated or replaced archive)",
        )
    try:
        header = header_of(blob, name=f"manifest of {archive_id}")
    except AgeError as e:
        raise ArchiveCorrupt(name, e.get_message()) from None
    return ParsedManifest(row, plain, header)


def _target_of(target_url: str, recorded: Any) -> str:
    """The target URL to record: the one in the manifest (the policy's, as the backup
    recorded it: the next backup of the policy continues the chain only where the URLs are
    equal) when it names the same place as the URL rebuilt from, whatever its query
    (``?storage_class=``); else the URL rebuilt from, which was just read (a bucket copied
    elsewhere)."""
    from urllib.parse import urlsplit

    if not isinstance(recorded, str):
        return target_url

    def place(u: str) -> tuple[str, str, str]:
        p = urlsplit(u)
        return p.scheme, p.netloc, p.path.rstrip("/")

    try:
        return recorded if place(recorded) == place(target_url) else target_url
    except ValueError:
        return target_url


def _decode(plain: bytes, name: str) -> dict[str, Any]:
    # slim: entries are only counted here; the inventory keeps the manifest itself
    from ..archive.manifest import decode_manifest

    return decode_manifest(plain, name, slim=True)


def record_parsed(
    inventory: Inventory,
    parsed: ParsedManifest,
    *,
    dry_run: bool = False,
    parent_checked: bool = False,
) -> Outcome:
    """Record one archive from its manifest (as :func:`parse_manifest` checked it), or
    compare it with the inventory's record when the inventory has it.

    The row (state ``complete``, with the manifest's id, policy, kind, parent, creation time,
    host, sizes and SHA-256, and the references the target names the objects by), its
    packed file index (the manifest itself, unpacked when first read) and its manifest's age
    header go in together, in one transaction. The parent must already be recorded (the
    inventory keeps chains whole): record a chain oldest first, as :func:`rebuild` does.

    Args:
        inventory: where the row goes.
        parsed: the checked manifest.
        dry_run: compare, record nothing.
        parent_checked: the caller made sure the parent is recorded (or, in a dry run,
            would be): not looked up again.

    Returns:
        ``added``, ``known`` or ``differs`` (with the fields that differ).

    Raises:
        ArchiveNotFound: the archive is new and its parent is not in the inventory.
    """
    row = parsed.archive
    existing = inventory.find(row.id)
    unknown_parent = (
        existing is None
        and row.parent_id is not None
        and not parent_checked
        and inventory.find(row.parent_id) is None
    )
    if unknown_parent:
        assert row.parent_id is not None
        raise ArchiveNotFound(row.parent_id, f" (the parent of {row.id}, not in the inventory)")
    if existing is None and not dry_run:
        existing = inventory.add_rebuilt_archive(row, parsed.plain, parsed.header)
        if existing is None:
            return Outcome(row.id, "added")
    if existing is None:
        return Outcome(row.id, "added")
    diff = {
        f: (_text(getattr(existing, f)), _text(getattr(row, f)))
        for f in COMPARED
        if getattr(existing, f) != getattr(row, f)
    }
    if not diff:
        return Outcome(row.id, "known")
    return Outcome(row.id, "differs", Difference(row.id, diff))


def _text(v: Any) -> str:
    if isinstance(v, datetime):
        return v.astimezone(UTC).isoformat()
    return "" if v is None else str(v)


def rebuild(
    inventory: Inventory,
    target: Target,
    identities: Sequence[Identity],
    *,
    policy: str | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    listing: Iterable[ObjectInfo] | None = None,
) -> RebuildReport:
    """Record every archive of a target the inventory lacks, from the manifests alone.

    Args:
        inventory: where the rows go (SQLite or PostgreSQL; may already hold archives).
        target: a target whose objects can be listed and whose manifests read at once
            (``file://``, ``s3://`` in any storage class: manifests are kept hot).
        identities: to decrypt the manifests.
        policy: only this policy's archives (``POLICY/`` keys).
        dry_run: read and compare, record nothing.
        progress: told of manifest bytes read.
        listing: the target's objects, when the caller listed them already (a snapshot's
            view of a bucket); ``target.list`` otherwise.

    Returns:
        What was added, known, differing, foreign, damaged, left over and orphaned.

    Raises:
        TargetError: the target cannot be listed.
    """
    progress = progress or Progress()
    report = RebuildReport(target.url, dry_run=dry_run)
    prefix = f"{policy}/" if policy else ""
    objects = list(listing) if listing is not None else list(target.list(prefix))
    archives: dict[str, ObjectInfo] = {}
    manifests: dict[str, ObjectInfo] = {}
    for o in objects:
        if prefix and not o.key.startswith(prefix):
            continue
        parts = split_key(o.key)
        if parts is None:
            (report.copies if o.key.startswith(COPY_PREFIX) else report.foreign).append(o.key)
            continue
        (archives if parts[2] == "archive" else manifests)[f"{parts[0]}/{parts[1]}"] = o
    for stem in sorted(archives.keys() - manifests.keys()):
        report.leftovers.append(
            Leftover(archives[stem].key, "archive without its manifest (an interrupted backup)")
        )
    for stem in sorted(manifests.keys() - archives.keys()):
        report.leftovers.append(
            Leftover(manifests[stem].key, "manifest without its archive (an interrupted backup)")
        )
    for key in target.partial_uploads(prefix):
        report.leftovers.append(Leftover(key, "partial upload (an interrupted write)"))

    pairs = sorted(manifests.keys() & archives.keys())
    parsed: dict[str, tuple[ParsedManifest, ObjectInfo]] = {}
    progress.start("reading manifests", sum(manifests[s].size for s in pairs))
    try:
        for stem in pairs:
            mo, ao = manifests[stem], archives[stem]
            pol, aid = stem.split("/", 1)
            try:
                if (mo.storage_class or "").upper() in COLD_CLASSES:
                    # reading it would need a retrieval, which a rebuild never requests
                    raise ArchiveCorrupt(
                        aid, f"manifest is in storage class {mo.storage_class}, not read"
                    )
                with target.open_read(mo.key) as f:
                    blob = f.read()
                report.manifests_read += 1
                plain = decrypt_bytes(blob, identities, name=f"manifest {mo.key}")
                p = parse_manifest(
                    target.url,
                    plain,
                    blob,
                    stored=Stored(ao.key, ao.size, ao.storage_class, ao.modified),
                    manifest_ref=mo.key,
                    expect=(pol, aid),
                )
                parsed[stem] = (p, ao)
            except Error as e:
                report.damaged.append(Damaged(mo.key, e.get_message()))
            progress.advance(mo.size)
    finally:
        progress.finish()

    # parents before children, whatever the clocks said: oldest first, and a child whose
    # parent is still to be recorded waits for it
    waiting = sorted(parsed.values(), key=lambda x: (x[0].archive.created, x[0].archive.id))
    pending_ids = {p.archive.id for p, _ in waiting}
    recorded: set[str] = set()
    while waiting:
        later: list[tuple[ParsedManifest, ObjectInfo]] = []
        for p, ao in waiting:
            row = p.archive
            parent = row.parent_id
            if parent is not None and parent not in recorded:
                if parent in pending_ids:
                    later.append((p, ao))
                    continue
                if inventory.find(parent) is None:
                    report.orphans.append(Orphan(row.id, parent))
                    pending_ids.discard(row.id)  # and its children are orphans too
                    continue
            outcome = record_parsed(inventory, p, dry_run=dry_run, parent_checked=True)
            recorded.add(row.id)
            pending_ids.discard(row.id)
            if outcome.result == "added":
                report.added.append(row.id)
            elif outcome.result == "known":
                report.known.append(row.id)
            else:
                assert outcome.difference is not None
                report.differing.append(outcome.difference)
            cls = ao.storage_class or "-"
            report.storage_classes[cls] = report.storage_classes.get(cls, 0) + 1
        if len(later) == len(waiting):  # a loop of parents: none can be recorded
            for p, _ in later:
                assert p.archive.parent_id is not None
                report.orphans.append(Orphan(p.archive.id, p.archive.parent_id))
            break
        waiting = later
    report.log_event(inventory)
    return report
