"""The local inventory: archives, their file index, retrieval jobs, snapshots and events.

SQLite is the embedded default; the same code runs on PostgreSQL for a cluster. An archive
row is created in state ``writing`` before the first byte goes to the target and becomes
``complete`` only after the archive and its manifest are committed there, so the inventory
never points at an archive that is not whole. Prune marks rows ``deleted``; rows are never
removed, so the history of what existed stays.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import and_, create_engine, delete, event, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from ..errors import ArchiveError, ArchiveNotFound, ConfigError
from ..redact import hide_password
from . import packed
from .models import (
    ADDED_INDEXES,
    Archive,
    Base,
    Event,
    FileIndexChunk,
    FileRecord,
    ManifestHeader,
    PackedFileIndex,
    RetrievalJob,
    Snapshot,
    TreeCache,
    TreeChunk,
)
from .tree_codec import (
    TREE2_FORMAT,
    TREE_FORMAT,
    canonical_key,
    check_chunk,
    decode_chunk,
    decode_header2,
    decode_tree,
    encode_tree,
)

__all__ = [
    "FILE_INDEX_COLUMNS",
    "Archive",
    "Event",
    "FileIndexChunk",
    "FileRecord",
    "Inventory",
    "PackedFileIndex",
    "RetrievalJob",
    "Sig",
    "Snapshot",
    "TreeCache",
    "TreeChunk",
    "TreeState",
    "checkpoint_all",
    "encode_tree",
    "sig_of",
]

log = logging.getLogger(__name__)

#: What a path looked like when an archive recorded it: (type, size, permission bits,
#: mtime_ns, ctime_ns, inode), with a hard link's type as ``file``. An incremental compares
#: the tree against these. Plain tuples: 70k of them are compared, cached and loaded per run.
Sig = tuple[str, int, int, int, int, int]
#: every path that existed at an archive, with its signature
TreeState = dict[bytes, Sig]

# the tree cache's format (tree_codec.py): safe to load from a database others write; a row
# in any other format (the earlier marshal ones included) is replayed from the file index
_TREE_FORMAT = TREE_FORMAT


#: the file index's columns, the order of a row given as a tuple to ``add_file_records``
FILE_INDEX_COLUMNS: tuple[str, ...] = tuple(c.name for c in FileRecord.__table__.columns)


def sig_of(type_: str, size: int, mode: int, mtime_ns: int, ctime_ns: int, ino: int) -> Sig:
    """Returns: the signature of a file index row (or of a scanned entry)."""
    return ("file" if type_ == "hardlink" else type_, size, mode & 0o7777, mtime_ns, ctime_ns, ino)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets a restore read while a backup writes; FKs keep the chain consistent
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _private_sqlite_file(path: Path) -> None:
    """Make the SQLite inventory readable by its owner only: it lists every path backed up
    and every job's parameters. A new file is created 0600 before SQLite opens it (SQLite
    gives the ``-wal`` and ``-shm`` files the database file's mode), in a directory created
    0700; an existing file (or ``-wal``/``-shm``) that others may read is tightened, with a
    warning. Directories that already exist are the user's and keep their mode."""
    path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        os.close(fd)
        return
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = stat.S_IMODE(p.stat().st_mode)
            if mode & 0o077:
                p.chmod(mode & 0o700)
                log.warning(
                    "inventory file %s was readable by other users (mode %04o): now %04o",
                    p, mode, mode & 0o700,
                )  # fmt: skip
        except FileNotFoundError:
            continue
        except OSError as e:  # not ours to change: say so, and go on
            log.warning("inventory file %s may be readable by other users: %s", p, e.strerror)


#: every Inventory of this process, for :func:`checkpoint_all`
_OPEN: weakref.WeakSet[Inventory] = weakref.WeakSet()


def checkpoint_all() -> None:
    """Checkpoint every SQLite inventory this process opened: for a command about to end
    with ``os._exit``, which closes no connection, so SQLite would not move the ``-wal``
    file's pages into the database file, and a copy of the file alone would miss them."""
    for inv in list(_OPEN):
        inv.checkpoint()


class Inventory:
    """Access to one inventory database.

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:////var/lib/backup/inventory.db`` or
            ``postgresql+psycopg://backup@db/backup``.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            if url.startswith("sqlite:///"):
                from sqlalchemy.engine import make_url

                parsed = make_url(url)  # the file without query options (?timeout=...)
                path = parsed.database
                if path and path != ":memory:" and "uri" not in parsed.query:
                    _private_sqlite_file(Path(path))
            self.engine: Engine = create_engine(url, pool_pre_ping=True)
        except Exception as e:  # bad URL or missing driver
            raise ConfigError(f"inventory URL {hide_password(url)}: {e}") from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        for attempt in range(5):
            try:
                Base.metadata.create_all(self.engine)
                for index in ADDED_INDEXES:  # an inventory made before them: upgraded
                    index.create(self.engine, checkfirst=True)
                break
            except Exception as e:
                # processes starting together (a worker, a scheduler, a command) race to
                # create the tables: the loser sees "already exists" and checks again
                text = str(e).lower()
                racing = "already exists" in text or "duplicate key" in text
                if racing and attempt < 4:
                    time.sleep(0.05 * (attempt + 1))
                    continue
                raise ConfigError(
                    f"cannot open inventory {hide_password(url)}: {type(e).__name__}: {e}"
                ) from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        _OPEN.add(self)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success and rolled back on error."""
        with self._sessions() as s, s.begin():
            yield s

    def close(self) -> None:
        self.engine.dispose()

    def checkpoint(self) -> None:
        """Move SQLite's write-ahead log into the database file and truncate the log, so the
        file alone holds everything committed (a user copying ``inventory.db`` gets it
        all). Best effort and never raises: what was committed is safe in the log either
        way, and a reader holding an old snapshot (a worker) only makes it partial."""
        if self.engine.dialect.name != "sqlite":
            return
        try:
            with self.engine.connect() as conn:
                raw = conn.connection.dbapi_connection
                assert raw is not None
                cur = raw.cursor()
                try:
                    # a busy database must not hold the command's exit for 30 s
                    cur.execute("PRAGMA busy_timeout=1000")
                    cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    cur.fetchall()
                    cur.execute("PRAGMA busy_timeout=30000")
                finally:
                    cur.close()
        except Exception as e:
            log.debug("checkpoint of inventory %s failed: %s", hide_password(self.url), e)

    @property
    def _mark(self) -> str:
        """The DB-API parameter placeholder of this database."""
        return "?" if self.engine.dialect.paramstyle == "qmark" else "%s"

    @contextmanager
    def _cursor(self, *, write: bool = False) -> Iterator[Any]:
        """A DB-API cursor, for the two bulk paths where per-row SQLAlchemy work would cost
        more than the database; in a committed transaction when ``write``."""
        ctx = self.engine.begin() if write else self.engine.connect()
        with ctx as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            cur = raw.cursor()
            try:
                yield cur
            finally:
                cur.close()

    # archives ---------------------------------------------------------------------------

    def add_archive(self, archive: Archive) -> None:
        """Record an archive about to be written (state ``writing``)."""
        with self.session() as s:
            s.add(archive)

    def update_archive(self, archive_id: str, **fields: Any) -> None:
        """Set fields of an archive row."""
        with self.session() as s:
            row = s.get(Archive, archive_id)
            if row is None:
                raise ArchiveNotFound(archive_id, "")
            for k, v in fields.items():
                setattr(row, k, v)

    def add_file_records(
        self, rows: Iterable[dict[str, Any] | tuple[Any, ...]], batch: int = 5000
    ) -> None:
        """Insert file index rows in batches: dicts with every one of FileRecord's columns,
        or tuples of them in :data:`FILE_INDEX_COLUMNS` order."""
        cols = FILE_INDEX_COLUMNS
        buf: list[tuple[Any, ...]] = []
        with self._cursor(write=True) as cur:
            for r in rows:
                buf.append(r if isinstance(r, tuple) else tuple(r[c] for c in cols))
                if len(buf) >= batch:
                    self._insert_file_records(cur, buf)
                    buf = []
            if buf:
                self._insert_file_records(cur, buf)

    def _insert_file_records(self, cur: Any, rows: Sequence[tuple[Any, ...]]) -> None:
        # The DB-API's executemany, not the ORM: a full backup indexes every path in the
        # tree, and per-row ORM (or even Core) parameter processing costs more than SQLite.
        quote = self.engine.dialect.identifier_preparer.quote
        names = ", ".join(map(quote, FILE_INDEX_COLUMNS))
        if hasattr(cur, "copy"):
            # psycopg on PostgreSQL: COPY, in the caller's transaction. executemany sends a
            # statement per row; the first show of an archive of a million paths unpacked
            # them for minutes that way
            with cur.copy(f"COPY file_index ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return
        marks = ", ".join([self._mark] * len(FILE_INDEX_COLUMNS))
        cur.executemany(f"INSERT INTO file_index ({names}) VALUES ({marks})", rows)

    def add_packed_file_records(self, archive_id: str, manifest: bytes) -> None:
        """Record an archive's file index as its manifest (compressed, not encrypted: what
        ``encode_manifest`` returned), which the first reader of the index unpacks into
        rows (backup/inventory/packed.py)."""
        with self.session() as s:
            s.add(PackedFileIndex(archive_id=archive_id, format=packed.FORMAT, blob=manifest))

    def add_file_index_chunk(self, archive_id: str, seq: int, blob: bytes) -> None:
        """Record one chunk of an archive's packed file index (``ManifestWriter.stream``'s
        ``on_chunk``: seq 0 the manifest's fields, then runs of entries), which the first
        reader of the index unpacks into rows with the others (backup/inventory/packed.py).
        A backup stores them as its manifest is streamed, so no copy of the whole manifest
        is held; a failed backup deletes them (:meth:`delete_file_records`)."""
        with self.session() as s:
            s.add(
                FileIndexChunk(
                    archive_id=archive_id, seq=seq, format=packed.CHUNK_FORMAT, blob=blob
                )
            )

    def add_manifest_header(self, archive_id: str, header: bytes) -> None:
        """Record the age header of an archive's manifest (see ``ManifestHeader``)."""
        with self.session() as s:
            s.merge(ManifestHeader(archive_id=archive_id, header=header))

    def manifest_header(self, archive_id: str) -> bytes | None:
        """Returns: the age header of the archive's manifest, None when not recorded (an
        archive made before headers were recorded)."""
        with self.session() as s:
            row = s.get(ManifestHeader, archive_id)
            return None if row is None else bytes(row.header)

    def unpack_file_records(self, archive_ids: Sequence[str]) -> int:
        """Move the packed file index rows of these archives (a whole packed manifest, or
        its chunks) into ``file_index``.

        Returns:
            How many rows were moved (0 when they were already unpacked).
        """
        if not archive_ids:
            return 0
        mark = self._mark
        moved = 0
        marks = ", ".join([mark] * len(archive_ids))
        with self._cursor() as cur:
            cur.execute(
                f"SELECT archive_id FROM file_index_packed WHERE archive_id IN ({marks})",
                tuple(archive_ids),
            )
            waiting = [r[0] for r in cur.fetchall()]
            cur.execute(
                f"SELECT DISTINCT archive_id FROM file_index_chunks WHERE archive_id IN ({marks})",
                tuple(archive_ids),
            )
            chunked = [r[0] for r in cur.fetchall()]
        for archive_id in waiting:
            with self._cursor(write=True) as cur:
                # the delete claims the row: of two readers unpacking at once, the second
                # finds nothing to move once the first has committed
                cur.execute(
                    f"DELETE FROM file_index_packed WHERE archive_id = {mark} "
                    "RETURNING format, blob",
                    (archive_id,),
                )
                claimed = cur.fetchone()
                if claimed is None:
                    continue
                rows = packed.rows_from_manifest(archive_id, bytes(claimed[1]), claimed[0])
                self._insert_file_records(cur, rows)
                moved += len(rows)
        for archive_id in chunked:
            with self._cursor(write=True) as cur:
                cur.execute(
                    f"SELECT seq FROM file_index_chunks WHERE archive_id = {mark} ORDER BY seq",
                    (archive_id,),
                )
                seqs = [r[0] for r in cur.fetchall()]
                # one chunk in memory at a time, all in one transaction: each delete claims
                # its chunk as above, and every row is in exactly one of the two places
                for seq in seqs:
                    cur.execute(
                        f"DELETE FROM file_index_chunks WHERE archive_id = {mark} "
                        f"AND seq = {mark} RETURNING format, blob",
                        (archive_id, seq),
                    )
                    claimed = cur.fetchone()
                    if claimed is None:
                        continue
                    rows = packed.rows_from_chunk(archive_id, bytes(claimed[1]), claimed[0])
                    del claimed
                    self._insert_file_records(cur, rows)
                    moved += len(rows)
        return moved

    def packed_manifest_head(self, archive_id: str) -> bytes | None:
        """Returns: the packed file index's manifest, compressed (``decode_manifest`` reads
        it): the whole manifest when packed whole, the manifest's fields without its entries
        when chunked; None when the index is not packed (or already unpacked)."""
        with self.session() as s:
            chunk = s.get(FileIndexChunk, (archive_id, 0))
            if chunk is not None:
                return bytes(chunk.blob)
            row = s.get(PackedFileIndex, archive_id)
            return None if row is None else bytes(row.blob)

    def delete_file_records(self, archive_id: str) -> None:
        """Delete an archive's file index rows, packed or not."""
        with self.session() as s:
            s.execute(delete(FileRecord).where(FileRecord.archive_id == archive_id))
            s.execute(delete(PackedFileIndex).where(PackedFileIndex.archive_id == archive_id))
            s.execute(delete(FileIndexChunk).where(FileIndexChunk.archive_id == archive_id))

    def find(self, archive_id: str) -> Archive | None:
        """Returns: the archive with exactly this id (any state), None when there is none."""
        with self.session() as s:
            return s.get(Archive, archive_id)

    def add_rebuilt_archive(
        self, archive: Archive, manifest: bytes, header: bytes
    ) -> Archive | None:
        """Record a complete archive read back from its target, with its packed file index
        (the decrypted manifest) and its manifest's age header, in one transaction: a rebuild
        killed midway leaves whole archives or none.

        Returns:
            None when recorded; the existing row when the inventory already had the archive
            (recorded meanwhile by another process), which is left as it is.
        """
        from sqlalchemy.exc import IntegrityError

        try:
            with self.session() as s:
                s.add(archive)
                s.flush()  # the archive row first: the others refer to it
                s.add(PackedFileIndex(archive_id=archive.id, format=packed.FORMAT, blob=manifest))
                s.add(ManifestHeader(archive_id=archive.id, header=header))
        except IntegrityError:
            existing = self.find(archive.id)
            if existing is None:
                raise  # not a duplicate: the parent is missing
            return existing
        return None

    def get(self, archive_id: str) -> Archive:
        """Find an archive by id or unique id prefix (any state)."""
        with self.session() as s:
            row = s.get(Archive, archive_id)
            if row is not None:
                return row
            rows = s.scalars(
                select(Archive).where(Archive.id.startswith(archive_id, autoescape=True)).limit(2)
            ).all()
        if len(rows) == 1:
            return rows[0]
        raise ArchiveNotFound(archive_id, " (ambiguous prefix)" if rows else "")

    def archives(
        self,
        policy: str | None = None,
        states: Sequence[str] = ("complete",),
        *,
        limit: int | None = None,
        before: Archive | None = None,
    ) -> list[Archive]:
        """Archives, oldest first, optionally of one policy and in given states.

        Args:
            limit: at most this many: the newest ones (still listed oldest first).
            before: only archives older than this one, in the order ``(created, id)``: the
                cursor of the next page back, the oldest archive of the page before.
        """
        q = select(Archive)
        if policy is not None:
            q = q.where(Archive.policy == policy)
        if states:
            q = q.where(Archive.state.in_(states))
        if before is not None:
            # keyset, not OFFSET: a page costs the same however far back it is
            q = q.where(
                or_(
                    Archive.created < before.created,
                    and_(Archive.created == before.created, Archive.id < before.id),
                )
            )
        with self.session() as s:
            if limit is None:
                return list(s.scalars(q.order_by(Archive.created, Archive.id)).all())
            newest = s.scalars(
                q.order_by(Archive.created.desc(), Archive.id.desc()).limit(limit)
            ).all()
            return list(reversed(newest))

    def latest(self, policy: str, target: str, *, kind: str | None = None) -> Archive | None:
        """The newest complete archive of a policy in a target (of one kind, if given)."""
        q = (
            select(Archive)
            .where(Archive.policy == policy, Archive.target == target, Archive.state == "complete")
            .order_by(Archive.created.desc(), Archive.id.desc())
            .limit(1)
        )
        if kind:
            q = q.where(Archive.kind == kind)
        with self.session() as s:
            return s.scalars(q).first()

    def at(self, policy: str, when: datetime) -> Archive | None:
        """The newest complete archive of a policy created at or before ``when``."""
        q = (
            select(Archive)
            .where(Archive.policy == policy, Archive.state == "complete", Archive.created <= when)
            .order_by(Archive.created.desc(), Archive.id.desc())
            .limit(1)
        )
        with self.session() as s:
            return s.scalars(q).first()

    def chain(self, archive_id: str) -> list[Archive]:
        """The archive and its ancestors, full first."""
        # One recursive query, not one per ancestor: a chain is as long as the policy's
        # incrementals since its last full, and every incremental reads its parent's.
        # UNION (not UNION ALL) drops a row seen before, so a looping chain ends too.
        link = (
            select(Archive.id, Archive.parent_id)
            .where(Archive.id == archive_id)
            .cte("chain", recursive=True)
        )
        link = link.union(
            select(Archive.id, Archive.parent_id).join(link, Archive.id == link.c.parent_id)
        )
        with self.session() as s:
            rows = {a.id: a for a in s.scalars(select(Archive).join(link, Archive.id == link.c.id))}
        out: list[Archive] = []
        cur: str | None = archive_id
        seen: set[str] = set()
        while cur is not None:
            if cur in seen:
                raise ArchiveNotFound(archive_id, " (its parent chain loops)")
            seen.add(cur)
            row = rows.get(cur)
            if row is None:
                raise ArchiveNotFound(cur, f" (parent in the chain of {archive_id})")
            out.append(row)
            cur = row.parent_id
        out.reverse()
        return out

    def children(self, archive_id: str) -> list[Archive]:
        """Archives whose parent is ``archive_id`` (any state but deleted)."""
        with self.session() as s:
            return list(
                s.scalars(
                    select(Archive).where(
                        Archive.parent_id == archive_id, Archive.state != "deleted"
                    )
                ).all()
            )

    def records(
        self, archive_id: str, *, after: bytes | None = None, limit: int | None = None
    ) -> list[FileRecord]:
        """The file index rows of one archive, in path order (bytewise).

        Args:
            after: only paths after this one: the cursor of the next page, the last path of
                the page before.
            limit: at most this many rows.

        A packed index is unpacked by the first call (in one transaction, whatever the
        page); later calls find nothing to unpack and read only their page, through the
        primary key ``(archive_id, path)``.
        """
        self.unpack_file_records([archive_id])
        q = select(FileRecord).where(FileRecord.archive_id == archive_id)
        if after is not None:
            q = q.where(FileRecord.path > after)
        q = q.order_by(FileRecord.path)
        if limit is not None:
            q = q.limit(limit)
        with self.session() as s:
            return list(s.scalars(q).all())

    def tree_state(self, archive_id: str) -> TreeState:
        """Every path that existed at ``archive_id``, from its cached tree when there is one,
        else by replaying the chain's file index."""
        cached = self._cached_tree(archive_id)
        return cached if cached is not None else self.replay_tree(archive_id)

    def replay_tree(self, archive_id: str) -> TreeState:
        """Replay a chain's file index: every path that existed at ``archive_id``."""
        state: TreeState = {}
        # The DB-API directly: this runs before an incremental over every path in the tree,
        # and ORM row objects would cost more than the walk itself.
        sql = (
            "SELECT path, type, size, mode, mtime_ns, ctime_ns, ino FROM file_index "
            f"WHERE archive_id = {self._mark}"
        )
        chain = self.chain(archive_id)
        self.unpack_file_records([a.id for a in chain])
        with self._cursor() as cur:
            for arch in chain:
                cur.execute(sql, (arch.id,))
                for path, typ, size, mode, mtime_ns, ctime_ns, ino in cur.fetchall():
                    if typ == "deleted":
                        state.pop(bytes(path), None)
                    else:
                        state[bytes(path)] = sig_of(typ, size, mode, mtime_ns, ctime_ns, ino)
        return state

    def _tree_cache_row(self, archive_id: str) -> tuple[str, bytes] | None:
        """Returns: the archive's tree_cache row (format, blob), or None."""
        with self._cursor() as cur:
            cur.execute(
                f"SELECT format, blob FROM tree_cache WHERE archive_id = {self._mark}",
                (archive_id,),
            )
            row = cur.fetchone()
        return None if row is None else (row[0], row[1])

    def _cached_tree(self, archive_id: str) -> TreeState | None:
        row = self._tree_cache_row(archive_id)
        if row is not None and row[0] == TREE2_FORMAT:
            chunks = self._checked_chunks(archive_id, row[1])
            return None if chunks is None else dict(self._chunk_items(archive_id, chunks))
        # another format, damaged or hostile: None, and the index is the truth
        return None if row is None else decode_tree(row[0], row[1])

    def tree_stream(self, archive_id: str) -> Iterator[tuple[bytes, Sig]]:
        """Every path that existed at ``archive_id`` with its signature, in walk order
        (ascending :func:`~backup.inventory.tree_codec.canonical_key`), as a stream: a tree2
        cache is read a chunk at a time (checked whole first, then decoded again as it is
        consumed, so a damaged chunk is found before anything is compared against it); an
        older tree1 row, or the file index replayed where there is no cache to trust, is a
        dict sorted into that order (memory per path, as before tree2)."""
        row = self._tree_cache_row(archive_id)
        if row is not None and row[0] == TREE2_FORMAT:
            chunks = self._checked_chunks(archive_id, row[1])
            if chunks is not None:
                return self._chunk_items(archive_id, chunks)
            state = self.replay_tree(archive_id)
        else:
            tree = None if row is None else decode_tree(row[0], row[1])
            state = tree if tree is not None else self.replay_tree(archive_id)
        items = sorted(state.items(), key=lambda kv: canonical_key(kv[0]))
        state.clear()
        return iter(items)

    def _chunk_blobs(self, archive_id: str, chunks: int) -> Iterator[bytes | None]:
        # one row per query, by its key: a chunk in memory at a time, on any driver
        sql = f"SELECT blob FROM tree_chunks WHERE archive_id = {self._mark} AND seq = {self._mark}"
        with self._cursor() as cur:
            for seq in range(chunks):
                cur.execute(sql, (archive_id, seq))
                row = cur.fetchone()
                yield None if row is None else bytes(row[0])

    def _checked_chunks(self, archive_id: str, header: bytes) -> int | None:
        """Returns: the chunk count of a tree2 cache whose every chunk decodes, in order, to
        the number of paths its header declares; None when it cannot be trusted."""
        declared = decode_header2(TREE2_FORMAT, header)
        if declared is None:
            return None
        chunks, paths = declared
        last: bytes | None = None
        count = 0
        for blob in self._chunk_blobs(archive_id, chunks):
            checked = None if blob is None else check_chunk(blob, last)
            if checked is None:
                return None
            count += checked[0]
            last = checked[1]
            if count > paths:
                return None
        return chunks if count == paths else None

    def _chunk_items(self, archive_id: str, chunks: int) -> Iterator[tuple[bytes, Sig]]:
        last: bytes | None = None
        for blob in self._chunk_blobs(archive_id, chunks):
            items = None if blob is None else decode_chunk(blob, last)
            if items is None:  # changed since it was checked: a writer is replacing it
                raise ArchiveError(archive_id, "its tree cache changed while it was read")
            last = canonical_key(items[-1][0])
            yield from items

    def copy_tree_cache(self, archive_id: str, same_as: str) -> bool:
        """Cache at ``archive_id`` the tree cached at ``same_as`` (nothing changed between
        them), copied in the database, and drop older ones (as :meth:`cache_tree`).

        Returns: whether ``same_as`` had a cached tree to copy."""
        mark = self._mark
        with self._cursor(write=True) as cur:
            cur.execute(
                f"INSERT INTO tree_cache (archive_id, format, blob) "
                f"SELECT {mark}, format, blob FROM tree_cache WHERE archive_id = {mark}",
                (archive_id, same_as),
            )
            if cur.rowcount != 1:
                return False
            cur.execute(
                f"INSERT INTO tree_chunks (archive_id, seq, blob) "
                f"SELECT {mark}, seq, blob FROM tree_chunks WHERE archive_id = {mark}",
                (archive_id, same_as),
            )
            self._drop_older_trees(cur, archive_id)
        return True

    def cache_tree_stream(self, archive_id: str, header: bytes, chunks: Iterable[bytes]) -> None:
        """Store the tree at ``archive_id`` in format tree2 (``header`` and ``chunks`` from a
        :class:`~backup.inventory.tree_codec.ChunkWriter`), a chunk at a time, and drop the
        cached trees of the same policy's older archives (as :meth:`cache_tree`)."""
        mark = self._mark
        with self._cursor(write=True) as cur:
            cur.execute(
                f"INSERT INTO tree_cache (archive_id, format, blob) VALUES ({mark}, {mark}, {mark})",
                (archive_id, TREE2_FORMAT, header),
            )
            for seq, blob in enumerate(chunks):
                cur.execute(
                    f"INSERT INTO tree_chunks (archive_id, seq, blob) VALUES ({mark}, {mark}, {mark})",
                    (archive_id, seq, blob),
                )
            self._drop_older_trees(cur, archive_id)

    def cache_tree(
        self,
        archive_id: str,
        state: TreeState,
        *,
        encoded: bytes | None = None,
        same_as: str | None = None,
    ) -> None:
        """Store the tree at ``archive_id`` for the next incremental, and drop the cached
        trees of the same policy's older archives (only the newest is ever a parent).

        Args:
            archive_id: a complete archive.
            state: its tree.
            encoded: ``encode_tree(state)``, when the caller made it already.
            same_as: an archive whose tree this one's equals (nothing changed): its cached
                row, if it has one, is copied in the database instead of encoding ``state``.
        """
        mark = self._mark
        with self._cursor(write=True) as cur:
            copied = 0
            if same_as is not None:
                cur.execute(
                    f"INSERT INTO tree_cache (archive_id, format, blob) "
                    f"SELECT {mark}, format, blob FROM tree_cache WHERE archive_id = {mark}",
                    (archive_id, same_as),
                )
                copied = cur.rowcount
                cur.execute(  # a tree2 cache's chunks with it
                    f"INSERT INTO tree_chunks (archive_id, seq, blob) "
                    f"SELECT {mark}, seq, blob FROM tree_chunks WHERE archive_id = {mark}",
                    (archive_id, same_as),
                )
            if copied != 1:
                blob = encoded if encoded is not None else encode_tree(state)
                cur.execute(
                    f"INSERT INTO tree_cache (archive_id, format, blob) "
                    f"VALUES ({mark}, {mark}, {mark})",
                    (archive_id, _TREE_FORMAT, blob),
                )
            self._drop_older_trees(cur, archive_id)

    def _drop_older_trees(self, cur: Any, archive_id: str) -> None:
        mark = self._mark
        # driven from the few cached trees (one per policy and target), each looked up
        # by its key: not from every older archive of the policy, so the cost stays flat
        # however many archives accumulate
        cur.execute(
            "DELETE FROM tree_cache WHERE EXISTS (SELECT 1 FROM archives a "
            "JOIN archives b ON a.policy = b.policy AND a.target = b.target "
            f"WHERE a.id = tree_cache.archive_id AND b.id = {mark} "
            "AND a.created < b.created)",
            (archive_id,),
        )
        # a tree2 cache's chunks go with its header row (a few rows per cached tree)
        cur.execute(
            "DELETE FROM tree_chunks WHERE NOT EXISTS (SELECT 1 FROM tree_cache t "
            "WHERE t.archive_id = tree_chunks.archive_id)"
        )

    # events -----------------------------------------------------------------------------

    def log(
        self,
        kind: str,
        message: str,
        *,
        level: str = "info",
        policy: str | None = None,
        archive_id: str | None = None,
        **data: Any,
    ) -> None:
        """Append an event."""
        with self.session() as s:
            s.add(
                Event(
                    time=datetime.now(UTC),
                    level=level,
                    kind=kind,
                    policy=policy,
                    archive_id=archive_id,
                    message=message,
                    data=json.dumps(data, default=str),
                )
            )

    def events(self, limit: int = 100) -> list[Event]:
        """The newest events, newest first."""
        with self.session() as s:
            return list(s.scalars(select(Event).order_by(Event.id.desc()).limit(limit)).all())
