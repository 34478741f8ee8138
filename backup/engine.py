"""Backup runs: policy -> scan -> pack -> target -> inventory.

Invariants:

- The inventory row is created (``writing``) before the first byte is stored and becomes
  ``complete`` only after the archive and its manifest are both committed in the target, so
  the inventory never points at a half archive, and a crash leaves a ``writing`` row that
  says exactly which objects to look for.
- An incremental holds what is new or changed since its parent (size, mtime, mode, inode
  or ctime differ) plus the paths deleted since; paths under a directory that could not be
  read are carried over, never recorded as deleted. If one name of a hard-linked file is
  packed, all its names are, so the link survives ``tar -x`` of any single archive.
- Backing up needs recipients only, never a secret key.
- The engine is given its source (a local tree it walks, or a bucket's objects as of a
  snapshot, listed by the caller) and calls nothing above it: what comes before and after
  an archive (snapshots, protection of the target, drills) is the jobs layer's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import socket
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

from .archive import FORMAT_VERSION, Entry, pack
from .archive.manifest import ManifestWriter, path_to_json
from .archive.pack import Record
from .archive.scan import FILE, ScanResult, Unreadable, scan_iter
from .crypto.age import AgeWriter, Recipient, header_of, parse_recipient
from .errors import Error
from .gcpause import gc_paused
from .inventory import Archive, Inventory, Sig, TreeState, sig_of
from .inventory.tree_codec import ChunkWriter, canonical_key
from .policy import Policy
from .progress import Progress
from .targets import WriteOptions, open_target
from .threads import leave_signals_to_main

__all__ = [
    "BackupResult",
    "archive_keys",
    "merge_walk",
    "new_archive_id",
    "run_backup",
    "select_changed",
]


@dataclass(slots=True)
class BackupResult:
    """The outcome of one backup run."""

    archive: Archive
    unreadable: list[Unreadable] = field(default_factory=list)
    changed: list[bytes] = field(default_factory=list)
    deleted: int = 0

    @property
    def exit_code(self) -> int:
        """0, or 3 when some files could not be read."""
        return 3 if self.unreadable else 0


def new_archive_id(now: datetime) -> str:
    """Returns: a time-sortable, unique archive id such as ``20261121T020000Z-9f2c41d7``."""
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def archive_keys(policy: str, archive_id: str) -> tuple[str, str]:
    """Returns: the object keys of an archive and of its manifest."""
    return (
        f"{policy}/{archive_id}.tar.zst.age",
        f"{policy}/{archive_id}.manifest.json.zst.age",
    )


def select_changed(
    entries: Sequence[Entry],
    state: TreeState,
    unreadable: Sequence[Unreadable],
    unreadable_dirs: Sequence[bytes],
) -> tuple[list[Entry], list[bytes]]:
    """Choose what an incremental packs: the definition, over the whole walk and the parent's
    tree as a dict (a backup runs :func:`merge_walk`, which is tested against this).

    Args:
        entries: the scan, in order.
        state: the tree at the parent archive.
        unreadable: paths the scan could not read (carried over, not deleted).
        unreadable_dirs: directories the scan could not list (their contents carried over).

    Returns:
        (entries to pack, in scan order; paths deleted since the parent, sorted).
    """
    chosen: set[bytes] = set()
    groups: dict[tuple[int, int], list[bytes]] = defaultdict(list)
    get = state.get
    found = 0  # entries whose path the parent has: all of the parent's paths, if len(state)
    for e in entries:
        sig = get(e.path)
        if sig is not None:
            found += 1
        # a tuple comparison, in C: this runs once per path in the tree
        if sig != (e.kind, e.size, e.mode & 0o7777, e.mtime_ns, e.ctime_ns, e.ino):
            chosen.add(e.path)
        if e.kind == FILE and e.nlink > 1:
            groups[(e.dev, e.ino)].append(e.path)
    for members in groups.values():
        if len(members) > 1 and any(m in chosen for m in members):
            chosen.update(members)
    selected = [e for e in entries if e.path in chosen] if chosen else []
    if found == len(state):  # the walk's paths are unique: nothing of the parent's is gone
        return selected, []
    present = {e.path for e in entries}
    keep = {u.path for u in unreadable}
    prefixes = tuple(d + b"/" for d in unreadable_dirs if d) if unreadable_dirs else ()
    whole_tree_unreadable = b"" in unreadable_dirs
    deleted = sorted(
        p
        for p in state
        if p not in present
        and p not in keep
        and not whole_tree_unreadable
        and not (prefixes and p.startswith(prefixes))
    )
    return selected, deleted


def merge_walk(
    walk: Iterable[Entry], parent: Iterable[tuple[bytes, Sig]], scanned: ScanResult
) -> tuple[list[Entry], list[bytes]]:
    """:func:`select_changed` as a merge of two streams: the walk, consumed once as it is
    made, and the tree at the parent in walk order (:meth:`Inventory.tree_stream`), so
    neither is held. Memory: the changed entries, the hard-linked files, and the parent's
    paths the walk passed without meeting (deleted, or carried over); never a path per path
    of the tree.

    Correct for a walk in any order: a parent path passed over is kept aside, and a walk
    entry that comes later than the walk's order would put it still finds it there (a walk
    far out of order holds more of the parent then, as a dict would).

    Args:
        walk: the scan, in order (a lazy :func:`~backup.archive.scan.scan_iter`).
        parent: the tree at the parent archive, ascending in
            :func:`~backup.inventory.tree_codec.canonical_key`; consumed.
        scanned: where the walk reports what it could not read; read once it is consumed.

    Returns:
        (entries to pack, in scan order; paths deleted since the parent, sorted).
    """
    picked: list[tuple[int, Entry]] = []
    chosen: set[bytes] = set()
    groups: dict[tuple[int, int], list[tuple[int, Entry]]] = defaultdict(list)
    unmet: dict[bytes, Sig] = {}
    items = iter(parent)
    end = (None, None)
    head, head_sig = next(items, end)
    head_key: bytes | None = None  # canonical_key(head), made only when the paths differ
    for i, e in enumerate(walk):
        p = e.path
        sig: Sig | None
        if p == head:  # the common case: the two streams in step
            sig = head_sig
            head, head_sig = next(items, end)
            head_key = None
        else:
            k = canonical_key(p)
            while head is not None:
                if head_key is None:
                    head_key = canonical_key(head)
                if not head_key < k:
                    break
                unmet[head] = head_sig  # type: ignore[assignment]
                head, head_sig = next(items, end)
                head_key = None
            if head is not None and head_key == k:
                sig = head_sig
                head, head_sig = next(items, end)
                head_key = None
            else:
                sig = unmet.pop(p, None)
        # a tuple comparison, in C: this runs once per path in the tree
        if sig != (e.kind, e.size, e.mode & 0o7777, e.mtime_ns, e.ctime_ns, e.ino):
            chosen.add(p)
            picked.append((i, e))
        if e.kind == FILE and e.nlink > 1:
            groups[(e.dev, e.ino)].append((i, e))
    extra = [
        m
        for members in groups.values()
        if len(members) > 1 and any(e.path in chosen for _, e in members)
        for m in members
        if m[1].path not in chosen
    ]
    if extra:
        picked += extra
        picked.sort(key=itemgetter(0))
    selected = [e for _, e in picked]
    deleted: list[bytes] = []
    if head is not None:
        unmet[head] = head_sig  # type: ignore[assignment]
        unmet.update(items)
    if unmet:  # the parent's paths the walk did not meet
        keep = {u.path for u in scanned.unreadable}
        dirs = scanned.unreadable_dirs
        prefixes = tuple(d + b"/" for d in dirs if d)
        whole_tree_unreadable = b"" in dirs
        if not whole_tree_unreadable:  # else not read, so not known to be gone
            deleted = [
                p for p in unmet if p not in keep and not (prefixes and p.startswith(prefixes))
            ]
            deleted.sort()
    return selected, deleted


def run_backup(
    policy: Policy,
    inventory: Inventory,
    *,
    full: bool = False,
    progress: Progress | None = None,
    now: datetime | None = None,
    archive_id: str | None = None,
    on_phase: Callable[[str], None] | None = None,
    scanned: ScanResult | None = None,
    source_info: dict[str, Any] | None = None,
) -> BackupResult:
    """Back up one policy now, in this process.

    Args:
        policy: what to back up.
        inventory: where the record goes.
        full: start a new chain even if ``full_every`` has not elapsed.
        progress: told of bytes packed.
        now: the run's time (tests); defaults to the clock.
        archive_id: the id to record the archive under (a job records it before the run,
            so the sweep can clean up after a worker that died); a new one by default.
        on_phase: told ``uploading`` once the archive stream is stored and ``recorded``
            once the inventory row is complete.
        scanned: the source, listed elsewhere, instead of a walk of the policy's local
            sources: a bucket's objects as of a snapshot (backup/snapshots/source.py; the
            jobs layer takes the snapshot, :func:`backup.jobs.backups.back_up`).
        source_info: recorded in the manifest as ``bucket_source`` (the snapshot packed).

    Returns:
        The archive recorded, and what could not be read.

    Raises:
        ValueError: the policy backs up a bucket and ``scanned`` was not given.
        SourceError: a source is missing (nothing is written).
        TargetError: the target refused the write (the row is marked failed).
    """
    if policy.source is not None and scanned is None:
        # the engine is given its source; a bucket's snapshot is taken by the jobs layer
        raise ValueError(
            f"policy {policy.name!r} backs up a bucket: run it with backup.jobs.backups.back_up"
        )
    with gc_paused():  # from the parent's tree to the tree cache: per-path objects throughout
        return _run_backup(
            policy, inventory, full=full, progress=progress, now=now, archive_id=archive_id,
            on_phase=on_phase, scanned=scanned, source_info=source_info,
        )  # fmt: skip


class _Digesting:
    """A writer's sink that hashes what passes and keeps its first write: the age header,
    which ``AgeWriter`` writes whole, at once, before any payload."""

    def __init__(self, out: Any) -> None:
        self._out = out
        self.sha256 = hashlib.sha256()
        self.head = b""

    def write(self, data: bytes) -> int:
        if not self.head:
            self.head = bytes(data)
        self.sha256.update(data)
        self._out.write(data)
        return len(data)


def _run_backup(
    policy: Policy,
    inventory: Inventory,
    *,
    full: bool,
    progress: Progress | None,
    now: datetime | None,
    archive_id: str | None,
    on_phase: Callable[[str], None] | None,
    scanned: ScanResult | None,
    source_info: dict[str, Any] | None,
) -> BackupResult:
    progress = progress or Progress()
    now = now or datetime.now(UTC)
    target = open_target(policy.target)
    recipients: list[Recipient] = [parse_recipient(r) for r in policy.recipients]

    parent = None if full else inventory.latest(policy.name, policy.target)
    if parent is not None:
        chain_full = inventory.chain(parent.id)[0]
        if now - chain_full.created >= policy.full_every:
            parent = None
    listed = scanned
    scanned = ScanResult()
    selected: Iterable[Entry]
    if parent is None:
        # a full packs the walk as it goes (the sources are checked now, before any write)
        kind, deleted = "full", list[bytes]()
        if listed is not None:
            scanned, selected = listed, listed.entries
        else:
            selected = scan_iter(policy.name, policy.source_names(), policy.exclude, scanned)
    else:
        # the parent's tree first (checked, then read as a stream): a walk prefetched by
        # the CLI goes on meanwhile
        parent_tree = inventory.tree_stream(parent.id)
        walk: Iterable[Entry]
        if listed is not None:
            scanned, walk = listed, listed.entries
        else:  # merged as it is walked: no entry per path is held
            walk = scan_iter(policy.name, policy.source_names(), policy.exclude, scanned)
        selected, deleted = merge_walk(walk, parent_tree, scanned)
        del parent_tree
        kind = "incremental"

    archive_id = archive_id or new_archive_id(now)
    key, manifest_key = archive_keys(policy.name, archive_id)
    row = Archive(
        id=archive_id,
        policy=policy.name,
        target=policy.target,
        location=key,
        manifest_location=manifest_key,
        kind=kind,
        parent_id=parent.id if parent else None,
        created=now,
        state="writing",
        host=socket.gethostname(),
        format_version=FORMAT_VERSION,
    )
    lock = policy.object_lock
    host_tag = "".join(c if c.isalnum() or c in " .:/=+-@_" else "_" for c in row.host)[:256]
    stored = WriteOptions(  # tags, and Object Lock on archive and manifest alike
        tags={**policy.tags, "policy": policy.name, "kind": kind, "host": host_tag},
        lock_mode=lock.mode if lock else None,
        retain_until=now + lock.retain if lock else None,
    )
    inventory.add_archive(row)
    committed: list[str] = []
    # each packed entry goes straight into the manifest's spool and the tree at this archive
    # (for the next incremental): nothing per path is held for the whole run but the tree
    entries = ManifestWriter()
    tree = _TreeAt(parent is None)
    aside = ThreadPoolExecutor(
        2, thread_name_prefix="backup-aside", initializer=leave_signals_to_main
    )
    commit: Future[str] | None = None
    try:
        total = None if kind == "full" else sum(e.size for e in selected if e.kind == FILE)
        progress.start(f"{policy.name}: {kind}", total)
        with target.open_write(key, stored) as w:
            res = pack(
                selected, w, recipients, level=policy.compression_level, progress=progress,
                on_record=tree.add_and(entries.add),
            )  # fmt: skip
            # the archive's commit (an fsync, for a file target) and the tree at this archive
            # (for the next incremental) run aside, overlapping the manifest's encoding
            commit = aside.submit(w.commit)
        nothing_new = not res.count and not deleted
        cached = aside.submit(tree.finish, deleted, nothing_new)
        progress.finish()
        unreadable = scanned.unreadable + res.unreadable
        manifest: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "archive_id": archive_id,
            "policy": policy.name,
            "kind": kind,
            "parent": row.parent_id,
            "created": now.isoformat(),
            "host": row.host,
            "target": policy.target,
            "sources": [{"name": n, "path": str(p)} for n, p in policy.source_names()],
            **({"bucket_source": source_info} if source_info else {}),
            "compression": {"zstd_level": policy.compression_level},
            "archive": {"key": key, "size": res.size_stored, "sha256": res.sha256},
            "size_in": res.size_in,
            "size_tar": res.size_tar,
            "deleted": [path_to_json(p) for p in deleted],
            "unreadable": [{"path": path_to_json(u.path), "error": u.error} for u in unreadable],
            "changed_while_reading": [path_to_json(p) for p in res.changed],
        }
        committed.append(commit.result())
        commit = None
        if on_phase:
            on_phase("uploading")
        # the manifest stays hot (STANDARD): restores are planned without a thaw. It is
        # streamed from its spool through age into the target, its sha256 and age header
        # taken as the bytes pass, and the file index is recorded from the same pass in
        # chunks (unpacked when first read): no whole copy of it is held, at any size
        with target.open_write(manifest_key, dataclasses.replace(stored, hot=True)) as w:
            sink = _Digesting(w)
            with AgeWriter(sink, recipients) as aw:
                entries.stream(
                    manifest,
                    aw.write,
                    on_chunk=lambda seq, blob: inventory.add_file_index_chunk(
                        archive_id, seq, blob
                    ),
                )
            committed.append(w.commit())
        # its header proves a restore's identity where the manifest itself is cold (a vault)
        inventory.add_manifest_header(archive_id, header_of(sink.head, name=archive_id))
        inventory.update_archive(
            archive_id,
            state="complete",
            # what the target names the objects by (a vault's archive ids, not the keys)
            location=committed[0],
            manifest_location=committed[1],
            finished=datetime.now(UTC),
            size_in=res.size_in,
            size_tar=res.size_tar,
            size_stored=res.size_stored,
            sha256=res.sha256,
            manifest_sha256=sink.sha256.hexdigest(),
            entries=res.count,
            deleted_paths=len(deleted),
            unreadable=json.dumps(
                [{"path": path_to_json(u.path), "error": u.error} for u in unreadable]
            ),
            changed=json.dumps([path_to_json(p) for p in res.changed]),
        )
        _cache_tree(inventory, archive_id, cached, tree, parent, deleted, nothing_new)
        if on_phase:
            on_phase("recorded")
    except BaseException as e:
        # nothing may still be committing or writing rows while this cleans up
        aside.shutdown(wait=True, cancel_futures=True)
        entries.close()
        tree.close()
        if commit is not None and not commit.cancelled() and commit.exception() is None:
            committed.append(commit.result())
        # an archive without its manifest or its record is not one: remove what was stored
        for ref in committed:
            with suppress(Exception):
                target.delete(ref)
        msg = e.get_message() if isinstance(e, Error) else f"{type(e).__name__}: {e}"
        inventory.update_archive(archive_id, state="failed", error=msg, finished=datetime.now(UTC))
        # a failed archive's file index rows describe nothing
        with suppress(Exception):
            inventory.delete_file_records(archive_id)
        inventory.log(
            "backup",
            f"backup failed: {msg}",
            level="error",
            policy=policy.name,
            archive_id=archive_id,
        )
        raise
    aside.shutdown()  # its work is done; its threads go now
    inventory.log(
        "backup",
        f"{kind} archive {archive_id}: {res.count} entries, {res.size_stored} bytes stored",
        level="warning" if unreadable else "info",
        policy=policy.name,
        archive_id=archive_id,
        unreadable=len(unreadable),
        changed=len(res.changed),
    )
    return BackupResult(inventory.get(archive_id), unreadable, res.changed, len(deleted))


def _cache_tree(
    inventory: Inventory,
    archive_id: str,
    cached: Future[ChunkWriter | None],
    tree: _TreeAt,
    parent: Archive | None,
    deleted: list[bytes],
    nothing_new: bool,
) -> None:
    """Cache the tree at a complete archive (derived data: a failure is logged, and the next
    incremental replays the file index instead), in format tree2, a chunk at a time.

    Args:
        inventory: where it goes.
        archive_id: the archive.
        cached: a full's tree, written as it was packed (see :meth:`_TreeAt.finish`).
        tree: an incremental's packed paths' signatures, merged here with the parent's tree.
        parent: an incremental's parent.
        deleted: an incremental's deleted paths.
        nothing_new: nothing changed since the parent (its cached rows are copied).
    """
    writer: ChunkWriter | None = None
    try:
        writer = cached.result()
        if parent is not None and not (
            nothing_new and inventory.copy_tree_cache(archive_id, parent.id)
        ):
            writer = tree.merge(inventory.tree_stream(parent.id), deleted, writer)
        if writer is None:
            return
        if not writer.ordered:  # a walk out of order (see ChunkWriter): no cache to trust
            raise ValueError("the walk was not in walk order")
        header, chunks = writer.finish()
        inventory.cache_tree_stream(archive_id, header, chunks)
    except Exception as e:
        inventory.log(
            "backup",
            f"archive {archive_id} is complete, but caching its tree failed "
            f"({type(e).__name__}): the next incremental replays the file index",
            level="warning",
            archive_id=archive_id,
        )
    finally:
        if writer is not None:
            writer.close()


class _TreeAt:
    """The tree at the archive being made, for the tree cache. A full's is written as its
    entries are packed, in walk order, a chunk at a time to a spool
    (:class:`~backup.inventory.tree_codec.ChunkWriter`); an incremental's packed paths are
    kept (their signatures: what changed) and merged with the parent's tree, read again as
    a stream, once the archive is complete (:meth:`merge`)."""

    __slots__ = ("updates", "writer")

    def __init__(self, full: bool) -> None:
        self.writer = ChunkWriter() if full else None
        self.updates: list[tuple[bytes, Sig]] = []

    def add_and(self, then: Callable[[Record], None]) -> Callable[[Record], None]:
        """Returns: a function that adds a packed record to the tree, then calls ``then``."""
        writer, updates = self.writer, self.updates

        def add(r: Record) -> None:
            # attributes, not the record's dict-like access: this runs once per packed path
            size = r.size if r.file_size is None else r.file_size
            sig = sig_of(r.type, size, r.mode, r.mtime_ns, r.ctime_ns, r.ino)
            if writer is not None:
                writer.add(r.path, *sig)
            else:
                updates.append((r.path, sig))
            then(r)

        return add

    def finish(self, deleted: list[bytes], nothing_new: bool) -> ChunkWriter | None:
        """A full's tree, its last chunk written (beside the manifest's encoding); for an
        incremental, None (its tree is merged by :func:`_cache_tree`)."""
        if self.writer is not None:
            self.writer.finish()
        return self.writer

    def merge(
        self, parent: Iterable[tuple[bytes, Sig]], deleted: list[bytes], writer: ChunkWriter | None
    ) -> ChunkWriter:
        """Returns: the tree at an incremental: the parent's (in walk order), less what was
        deleted, with the packed paths' signatures (new, or in place of the parent's)."""
        out = writer if writer is not None else ChunkWriter()
        updates = sorted(self.updates, key=lambda u: canonical_key(u[0]))
        self.updates = []
        gone = set(deleted)
        add = out.add
        at, n = 0, len(updates)
        ukey = canonical_key(updates[0][0]) if n else b""
        for p, sig in parent:
            if at < n:  # the packed paths up to this one go first; this one, if packed, is
                k = canonical_key(p)  # replaced by its packed signature
                replaced = False
                while at < n and ukey <= k:
                    replaced = replaced or ukey == k
                    add(updates[at][0], *updates[at][1])
                    at += 1
                    if at < n:
                        ukey = canonical_key(updates[at][0])
                if replaced:
                    continue
            if gone and p in gone:
                continue
            add(p, *sig)
        for u in updates[at:]:
            add(u[0], *u[1])
        return out

    def close(self) -> None:
        """Drop a spool left by a failed run."""
        if self.writer is not None:
            self.writer.close()
