"""Copies of the inventory kept in the targets: what brings the job history back.

An export is one object under :data:`PREFIX` in a target, written hot (a cold target keeps
it immediately readable, as it keeps manifests) and encrypted to the policies' recipients, so
backing up never needs a secret. Its plaintext is zstd-compressed JSON lines, one format for
SQLite and PostgreSQL, so an export of either imports into either:

- a header ``{"format": FORMAT, "created", "host", "dialect"}``;
- per table, ``{"table": name, "columns": [...]}`` then one JSON array per row (bytes as
  base64, times as ISO 8601 UTC);
- a trailer ``{"end": true, "rows": {table: count}}``: an export without it is incomplete.

It is read from one consistent snapshot: SQLite's backup API into a private temporary file,
or one REPEATABLE READ transaction on PostgreSQL. Runtime state (policy locks, the scheduler's
lease) stays out: restored, it would block the next run. The tree cache stays out too: it is
derived, and where missing the file index is replayed.

An import merges in one transaction: rows the inventory has are kept (those that differ are
reported as conflicts), nothing is half imported. The rebuild from manifests
(``backup inventory rebuild``) stays the path that always works; an export adds what
manifests cannot hold: jobs, events, snapshots and retrieval records.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import socket
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import zstandard

from .crypto.age import AgeReader, AgeWriter, ArmorWriter, Identity, Recipient, parse_recipient
from .errors import Error, TargetError
from .inventory import Inventory
from .inventory.models import Base, Event, UTCDateTime
from .inventory.rebuild import COPY_PREFIX
from .targets import Target, WriteOptions, open_target

__all__ = [
    "FORMAT",
    "PREFIX",
    "ExportInfo",
    "ImportResult",
    "InventoryCopyError",
    "export_after_run",
    "export_inventory",
    "import_inventory",
    "list_exports",
]

log = logging.getLogger(__name__)

#: every export's key starts with this; a policy name starts with a letter or digit, so no
#: archive or manifest key (``POLICY/...``) can (a rebuild lists them as copies, not foreign)
PREFIX = COPY_PREFIX
SUFFIX = ".inventory.zst.age"
FORMAT = "backup-inventory/1"
_KEY = re.compile(r"^\.backup-inventory/(\d{8}T\d{6}Z)-([A-Za-z0-9.-]+)\.inventory\.zst\.age$")

#: the tables an export holds, in the order an import inserts them (a row's references first)
TABLES: tuple[str, ...] = (
    "archives",
    "file_index",
    "file_index_packed",
    "file_index_chunks",
    "manifest_headers",
    "retrieval_jobs",
    "snapshots",
    "events",
    "jobs",
)
#: tables of one archive's data: imported only with an archive the inventory lacked
_PER_ARCHIVE = ("file_index", "file_index_packed", "file_index_chunks", "manifest_headers")
#: tables whose ids are the database's own counters: a row is matched by its content
_SERIAL = ("retrieval_jobs", "snapshots", "events")


class InventoryCopyError(Error):
    """Inventory copy {}: {}"""


@dataclass(frozen=True, slots=True)
class ExportInfo:
    """One export in a target."""

    key: str
    created: datetime
    host: str
    size: int
    storage_class: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "created": self.created.isoformat().replace("+00:00", "Z"),
            "host": self.host,
            "size": self.size,
            "storage_class": self.storage_class,
        }


@dataclass(slots=True)
class ImportResult:
    """What an import did: per table, rows added and rows already there; conflicts name rows
    the inventory holds differently (kept as they were)."""

    key: str
    added: dict[str, int] = field(default_factory=dict)
    present: dict[str, int] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "added": self.added,
            "already_present": self.present,
            "conflicts": self.conflicts,
        }


# --- encoding ---------------------------------------------------------------------------


def _table(name: str) -> sa.Table:
    return Base.metadata.tables[name]


def _kinds(table: sa.Table) -> list[str]:
    """Per column: ``b`` bytes, ``t`` time, ``v`` a JSON value as it is."""
    out = []
    for c in table.columns:
        if isinstance(c.type, sa.LargeBinary):
            out.append("b")
        elif isinstance(c.type, UTCDateTime):
            out.append("t")
        else:
            out.append("v")
    return out


def _encode(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "b":
        return base64.b64encode(bytes(value)).decode()
    if kind == "t":
        return value.astimezone(UTC).isoformat()
    return value


def _decode(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "b":
        return base64.b64decode(value, validate=True)
    if kind == "t":
        return datetime.fromisoformat(value).astimezone(UTC)
    return value


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:64] or "host"


def _export_key(now: datetime) -> str:
    return f"{PREFIX}{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{_host()}{SUFFIX}"


# --- snapshot ---------------------------------------------------------------------------


#: tables whose rows are packed runs of a file index (one ~200 KB blob per 10,000 paths):
#: read a few rows at a time, or a batch of 5,000 holds the whole table (~300 MB at 10M
#: paths, in every backup's copy of the inventory)
_BLOB_TABLES = frozenset({"file_index_packed", "file_index_chunks"})


def _rows(conn: sa.Connection, name: str) -> Iterator[sa.Row[Any]]:
    t = _table(name)
    pk = list(t.primary_key.columns)
    batch = 4 if name in _BLOB_TABLES else 5000
    yield from conn.execution_options(yield_per=batch).execute(sa.select(t).order_by(*pk))


def _snapshot_lines(conn: sa.Connection, dialect: str) -> Iterator[bytes]:
    yield _line(
        {
            "format": FORMAT,
            "created": datetime.now(UTC).isoformat(),
            "host": socket.gethostname(),
            "dialect": dialect,
        }
    )
    counts: dict[str, int] = {}
    for name in TABLES:
        t = _table(name)
        kinds = _kinds(t)
        yield _line({"table": name, "columns": [c.name for c in t.columns]})
        n = 0
        for row in _rows(conn, name):
            yield _line([_encode(v, k) for v, k in zip(row, kinds, strict=True)])
            n += 1
        counts[name] = n
    yield _line({"end": True, "rows": counts})


def _line(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _with_snapshot(inventory: Inventory, write: Any) -> None:
    """Call ``write(lines)`` with the lines of one consistent snapshot of the inventory."""
    engine = inventory.engine
    if engine.dialect.name == "sqlite":
        # the backup API copies pages of one read transaction: a backup recording rows
        # meanwhile is in the copy whole or not at all
        with tempfile.TemporaryDirectory(prefix="backup-inventory-") as tmp:  # 0700
            path = Path(tmp) / "copy.db"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            with engine.connect() as conn:
                raw = conn.connection.dbapi_connection
                assert isinstance(raw, sqlite3.Connection)
                dst = sqlite3.connect(path)
                try:
                    raw.backup(dst)
                finally:
                    dst.close()
            copy = sa.create_engine(f"sqlite:///{path}")
            try:
                with copy.connect() as conn:
                    write(_snapshot_lines(conn, "sqlite"))
            finally:
                copy.dispose()
        return
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            write(_snapshot_lines(conn, engine.dialect.name))


# --- export -----------------------------------------------------------------------------


def _listable(target: Target) -> None:
    from .targets.glacier import GlacierTarget

    if isinstance(target, GlacierTarget):
        raise InventoryCopyError(
            target.url,
            "a Glacier vault cannot be listed at once: keep copies in an S3 or file target",
        )


def list_exports(target: Target) -> list[ExportInfo]:
    """Returns: the exports in a target, oldest first."""
    _listable(target)
    out = []
    for info in target.list(PREFIX):
        m = _KEY.match(info.key)
        if m is None:
            continue
        created = datetime.strptime(m.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        out.append(ExportInfo(info.key, created, m.group(2), info.size, info.storage_class))
    out.sort(key=lambda e: (e.created, e.key))
    return out


def export_inventory(
    inventory: Inventory,
    target_url: str,
    recipients: Sequence[str],
    *,
    keep: int = 5,
    now: datetime | None = None,
    armor: bool = False,
) -> tuple[ExportInfo, list[str]]:
    """Write a consistent copy of the inventory into a target, then delete this host's
    older copies beyond the newest ``keep``.

    Args:
        inventory: the inventory copied.
        target_url: where it goes (under :data:`PREFIX`).
        recipients: age recipients it is encrypted to (public keys only).
        keep: how many of this host's copies stay (the new one included); at least 1.
        now: the export's time (names the key).
        armor: ASCII-armor the copy (text that can be printed or mailed; import reads both).

    Returns:
        The copy written, and the keys of the copies deleted.

    Raises:
        InventoryCopyError: no recipient, or a vault target.
        TargetError: the target refused the write (nothing is left under the key).
    """
    if not recipients:
        raise InventoryCopyError(target_url, "no recipient to encrypt to")
    parsed: list[Recipient] = [parse_recipient(r) for r in recipients]
    target = open_target(target_url)
    _listable(target)
    now = now or datetime.now(UTC)
    key = _export_key(now)
    options = WriteOptions(tags={"kind": "inventory", "host": _host()}, hot=True)

    def write(lines: Iterator[bytes]) -> None:
        with target.open_write(key, options) as w:
            armored = ArmorWriter(w) if armor else None
            age = AgeWriter(armored or w, parsed)
            z = zstandard.ZstdCompressor(level=3, write_checksum=True).stream_writer(
                age,  # type: ignore[arg-type]  # any object with write() will do
                closefd=False,
            )
            for line in lines:
                z.write(line)
            z.close()  # type: ignore[no-untyped-call]  # ends the frame; the age stream stays open
            age.close()
            if armored is not None:
                armored.close()
            w.commit()

    _with_snapshot(inventory, write)
    info = target.stat(key)
    mine = [e for e in list_exports(target) if e.host == _host() and e.key != key]
    keep = max(1, keep)
    deleted = []
    for e in mine[: max(0, len(mine) - (keep - 1))]:
        try:
            target.delete(e.key)
        except TargetError as err:  # the new copy stands; an old one stays (Object Lock)
            log.warning("older inventory copy %s stays: %s", e.key, err.get_message())
            continue
        deleted.append(e.key)
    return ExportInfo(
        key, now.replace(microsecond=0), _host(), info.size, info.storage_class
    ), deleted


def export_after_run(
    inventory: Inventory, target_url: str, recipients: Sequence[str], *, keep: int,
    min_interval: float, policy: str,
) -> ExportInfo | None:  # fmt: skip
    """The copy made after a successful backup: at most once per ``min_interval`` seconds
    per target. Never raises: a failed copy is logged and recorded as an error event, and
    the backup stands.

    Returns:
        The copy written, or None (too soon after the last one, a vault, or a failure).
    """
    if target_url.startswith("glacier://"):
        return None
    try:
        if min_interval > 0:
            last = _last_export(inventory, target_url)
            if last is not None and (datetime.now(UTC) - last).total_seconds() < min_interval:
                return None
        t0 = time.monotonic()
        info, deleted = export_inventory(inventory, target_url, recipients, keep=keep)
    except Exception as e:
        msg = e.get_message() if isinstance(e, Error) else f"{type(e).__name__}: {e}"
        log.warning("inventory copy to %s failed: %s", target_url, msg)
        inventory.log(
            "inventory-export",
            f"inventory copy to {target_url} failed: {msg}",
            level="error",
            policy=policy,
            target=target_url,
        )
        return None
    inventory.log(
        "inventory-export",
        f"inventory copied to {target_url} as {info.key} ({info.size} bytes)",
        policy=policy,
        target=target_url,
        key=info.key,
        size=info.size,
        deleted=len(deleted),
        seconds=round(time.monotonic() - t0, 3),
    )
    return info


def _last_export(inventory: Inventory, target_url: str) -> datetime | None:
    with inventory.session() as s:
        rows = s.execute(
            sa.select(Event.time, Event.data)
            .where(Event.kind == "inventory-export", Event.level == "info")
            .order_by(Event.time.desc())
            .limit(100)
        ).all()
    for when, data in rows:
        try:
            if json.loads(data).get("target") == target_url:
                return when
        except ValueError:
            continue
    return None


# --- import -----------------------------------------------------------------------------


def _resolve_key(target: Target, key: str | None) -> str:
    if key is not None:
        if not key.startswith(PREFIX):
            key = PREFIX + key
        if not target.exists(key):
            raise InventoryCopyError(
                target.url, f"no export {key!r} (see 'backup inventory exports')"
            )
        return key
    found = list_exports(target)
    if not found:
        raise InventoryCopyError(target.url, f"no export under {PREFIX}")
    return found[-1].key


def _plain_lines(target: Target, key: str, identities: Sequence[Identity]) -> Iterator[bytes]:
    src = target.open_read(key)
    try:
        reader = AgeReader(src, identities, name=key)
        buf = b""
        for chunk in zstandard.ZstdDecompressor().read_to_iter(reader):  # type: ignore[arg-type]
            buf += chunk
            *lines, buf = buf.split(b"\n")
            yield from lines
        if buf:
            yield buf
    finally:
        src.close()


def import_inventory(
    inventory: Inventory,
    target_url: str,
    identities: Sequence[Identity],
    *,
    key: str | None = None,
) -> ImportResult:
    """Merge an export into the inventory, in one transaction.

    Args:
        inventory: where the rows go (empty or not; SQLite or PostgreSQL).
        target_url: the target holding the export.
        identities: identities that decrypt it.
        key: the export (its key, with or without :data:`PREFIX`); the newest by default.

    Returns:
        Rows added and already present per table, and conflicts.

    Raises:
        InventoryCopyError: no export, or one that is damaged or incomplete (nothing is
            imported then).
        AgeError: no identity decrypts it.
    """
    from .crypto.age import HeaderError, HMACError, NoIdentityMatch, PayloadError

    target = open_target(target_url)
    key = _resolve_key(target, key)
    result = ImportResult(key)
    try:
        with inventory.engine.begin() as conn:
            _merge(conn, _plain_lines(target, key, identities), result)
            for name in _SERIAL:
                _fix_sequence(conn, name)
    except (NoIdentityMatch, TargetError):
        raise
    except (HeaderError, HMACError, PayloadError, zstandard.ZstdError) as e:
        why = e.get_message() if isinstance(e, Error) else f"zstd: {e}"
        raise InventoryCopyError(key, f"damaged, nothing imported ({why})") from None
    except InventoryCopyError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, sa.exc.DBAPIError) as e:
        raise InventoryCopyError(
            key, f"damaged or not an inventory export, nothing imported ({type(e).__name__}: {e})"
        ) from None
    return result


def _merge(conn: sa.Connection, lines: Iterator[bytes], result: ImportResult) -> None:
    header = json.loads(next(lines, b"{}") or b"{}")
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise InventoryCopyError(result.key, f"not an export of format {FORMAT}")
    counts: dict[str, int] = {}
    table: sa.Table | None = None
    kinds: list[str] = []
    columns: list[str] = []
    batch: list[dict[str, Any]] = []
    state = _MergeState(conn, result)
    ended = False
    for raw in lines:
        if ended:
            raise InventoryCopyError(result.key, "data after the end")
        item = json.loads(raw)
        if isinstance(item, dict):
            if table is not None:
                state.flush(table, batch)
                state.end_table(table)
                batch = []
            if item.get("end") is True:
                ended = True
                if item.get("rows") != counts:
                    raise InventoryCopyError(result.key, "row counts do not match: incomplete")
                continue
            name = item["table"]
            if name not in TABLES:
                raise InventoryCopyError(result.key, f"unknown table {name!r}")
            table = _table(name)
            columns = list(item["columns"])
            unknown = set(columns) - set(table.columns.keys())
            if unknown:
                raise InventoryCopyError(
                    result.key, f"table {name} has columns this version lacks: {sorted(unknown)}"
                )
            kinds = [_kinds(table)[list(table.columns.keys()).index(c)] for c in columns]
            counts[name] = 0
            continue
        if table is None or len(item) != len(columns):
            raise InventoryCopyError(result.key, "a row outside a table, or of the wrong width")
        counts[table.name] += 1
        batch.append({c: _decode(v, k) for c, v, k in zip(columns, item, kinds, strict=True)})
        # an archive may come before its parent: the archives go in at once, parents first
        if len(batch) >= (4 if table.name in _BLOB_TABLES else 5000) and table.name != "archives":
            state.flush(table, batch)
            batch = []
    if not ended:
        raise InventoryCopyError(result.key, "no end: incomplete")


class _MergeState:
    """Decides, table by table, which rows of an export the inventory lacks."""

    def __init__(self, conn: sa.Connection, result: ImportResult) -> None:
        self.conn = conn
        self.result = result
        self.new_archives: set[str] = set()
        #: per serial table: rows whose id another row holds, inserted with a new one
        self.renumbered: dict[str, list[dict[str, Any]]] = {}
        #: per serial table: the content of its rows, and the ids taken
        self.seen: dict[str, tuple[set[tuple[Any, ...]], set[int]]] = {}

    def _note(self, name: str, added: int, present: int) -> None:
        self.result.added[name] = self.result.added.get(name, 0) + added
        self.result.present[name] = self.result.present.get(name, 0) + present

    def _existing(self, table: sa.Table, key: str, values: Sequence[Any]) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        col = table.columns[key]
        for i in range(0, len(values), 500):
            part = values[i : i + 500]
            for row in self.conn.execute(sa.select(table).where(col.in_(part))):
                out[getattr(row, key)] = row._mapping
        return out

    def _conflict(self, name: str, ident: Any, old: Any, new: dict[str, Any]) -> bool:
        differs = [c for c, v in new.items() if _norm(old[c]) != _norm(v)]
        if differs:
            self.result.conflicts.append(
                f"{name} {ident}: kept as it is ({', '.join(differs)} differ)"
            )
        return bool(differs)

    def flush(self, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        name = table.name
        if not rows:
            self._note(name, 0, 0)
            return
        if name == "archives":
            old = self._existing(table, "id", [r["id"] for r in rows])
            fresh = []
            for r in rows:
                if r["id"] in old:
                    self._conflict(name, r["id"], old[r["id"]], r)
                else:
                    fresh.append(r)
            # parents first: a chain's rows reference their parent
            fresh = _parents_first(fresh)
            self._insert(table, fresh)
            self.new_archives.update(r["id"] for r in fresh)
            self._note(name, len(fresh), len(rows) - len(fresh))
        elif name in _PER_ARCHIVE:
            fresh = [r for r in rows if r["archive_id"] in self.new_archives]
            self._insert(table, fresh)
            self._note(name, len(fresh), len(rows) - len(fresh))
        elif name == "jobs":
            old = self._existing(table, "id", [r["id"] for r in rows])
            slots = {
                (r.policy, _norm(r.scheduled_for)): r.id
                for r in self.conn.execute(
                    sa.select(table.c.id, table.c.policy, table.c.scheduled_for).where(
                        table.c.scheduled_for.is_not(None)
                    )
                )
            }
            fresh = []
            for r in rows:
                if r["id"] in old:
                    self._conflict(name, r["id"], old[r["id"]], r)
                    continue
                slot = (r.get("policy"), _norm(r.get("scheduled_for")))
                if r.get("scheduled_for") is not None and slot in slots:
                    self.result.conflicts.append(
                        f"jobs {r['id']}: not added, job {slots[slot]} holds its schedule slot"
                    )
                    continue
                fresh.append(r)
            self._insert(table, fresh)
            self._note(name, len(fresh), len(rows) - len(fresh))
        else:  # counters of this database: a row is the same row when its content is
            cols = [c.name for c in table.columns if c.name != "id"]
            if name not in self.seen:  # read once per table, then kept up to date
                have: set[tuple[Any, ...]] = set()
                used: set[int] = set()
                for row in self.conn.execute(sa.select(table)):
                    have.add(tuple(_norm(row._mapping[c]) for c in cols))
                    used.add(row.id)
                self.seen[name] = (have, used)
            have, used = self.seen[name]
            keep_id, new_id = [], []
            for r in rows:
                sig = tuple(_norm(r.get(c)) for c in cols)
                if sig in have:
                    continue
                have.add(sig)
                if r["id"] in used:
                    new_id.append({c: v for c, v in r.items() if c != "id"})
                else:
                    used.add(r["id"])
                    keep_id.append(r)
            self._insert(table, keep_id)
            # after every row that keeps its id, so a counter's next id collides with none
            self.renumbered.setdefault(name, []).extend(new_id)
            self._note(name, len(keep_id) + len(new_id), len(rows) - len(keep_id) - len(new_id))

    def end_table(self, table: sa.Table) -> None:
        rows = self.renumbered.pop(table.name, [])
        if rows:
            _fix_sequence(self.conn, table.name)
            self._insert(table, rows)

    def _insert(self, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.conn.execute(table.insert(), rows)


def _norm(v: Any) -> Any:
    if isinstance(v, memoryview):
        return bytes(v)
    if isinstance(v, datetime):
        return v.astimezone(UTC)
    return v


def _parents_first(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_id = {r["id"]: r for r in rows}
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for r in sorted(rows, key=lambda r: (r["created"], r["id"])):
        stack = []
        cur: dict[str, Any] | None = r
        while cur is not None and cur["id"] not in seen:
            stack.append(cur)
            seen.add(cur["id"])
            cur = by_id.get(cur["parent_id"]) if cur["parent_id"] else None
        out.extend(reversed(stack))
    return out


def _fix_sequence(conn: sa.Connection, name: str) -> None:
    """Move a PostgreSQL serial past the ids inserted explicitly (SQLite needs nothing)."""
    if conn.dialect.name != "postgresql":
        return
    conn.execute(
        sa.text(
            f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
            f"COALESCE((SELECT MAX(id) FROM {name}), 0) + 1, false)"
        )
    )
