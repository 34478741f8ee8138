from __future__ import annotations

import json
import pathlib
from datetime import UTC, datetime, timedelta

import pytest
import zstandard

from backup.errors import ArchiveNotFound
from backup.inventory import Archive, Inventory, encode_tree

T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


def add(
    inv: Inventory,
    aid: str,
    created: datetime,
    parent: str | None = None,
    state: str = "complete",
    policy: str = "p",
) -> None:
    inv.add_archive(
        Archive(
            id=aid,
            policy=policy,
            target="file:///v",
            location=f"{policy}/{aid}.tar.zst.age",
            manifest_location=f"{policy}/{aid}.manifest.json.zst.age",
            kind="incremental" if parent else "full",
            parent_id=parent,
            created=created,
            state=state,
        )
    )


def rec(
    aid: str, path: bytes, typ: str = "file", size: int = 1, mtime_ns: int = 5
) -> dict[str, object]:
    return dict(
        archive_id=aid,
        path=path,
        type=typ,
        size=size,
        mode=0o644,
        mtime_ns=mtime_ns,
        ctime_ns=6,
        ino=7,
        uid=0,
        gid=0,
        sha256=None,
        link=None,
        offset=0,
    )


def test_chain_and_tree_state_replay(inventory: Inventory) -> None:
    add(inventory, "a1", T0)
    add(inventory, "a2", T0 + timedelta(days=1), parent="a1")
    add(inventory, "a3", T0 + timedelta(days=2), parent="a2")
    bad = b"bad-\xff\xfe"
    inventory.add_file_records([rec("a1", b"x"), rec("a1", b"y"), rec("a1", bad)])
    inventory.add_file_records([rec("a2", b"x", size=2), rec("a2", b"y", "deleted")])
    inventory.add_file_records([rec("a3", b"y", size=9)])
    assert [a.id for a in inventory.chain("a3")] == ["a1", "a2", "a3"]
    s1 = inventory.tree_state("a1")
    assert set(s1) == {b"x", b"y", bad}
    s2 = inventory.tree_state("a2")
    assert set(s2) == {b"x", bad} and s2[b"x"] == ("file", 2, 0o644, 5, 6, 7)
    s3 = inventory.tree_state("a3")
    assert s3[b"y"] == ("file", 9, 0o644, 5, 6, 7) and s3[bad] == ("file", 1, 0o644, 5, 6, 7)


def test_tree_cache_stands_in_for_the_replay(inventory: Inventory) -> None:
    add(inventory, "a1", T0)
    add(inventory, "a2", T0 + timedelta(days=1), parent="a1")
    add(inventory, "a3", T0 + timedelta(days=2), parent="a2")
    bad = b"bad-\xff\xfe"
    inventory.add_file_records([rec("a1", b"x"), rec("a1", bad), rec("a1", b"h", "hardlink")])
    inventory.add_file_records([rec("a2", b"x", size=2)])
    s1 = inventory.replay_tree("a1")
    assert s1[b"h"][0] == "file"  # a hard link's signature is its file's
    inventory.cache_tree("a1", s1)
    # a cached tree is what tree_state returns, even where the index would say otherwise
    # (so this proves the cache is read, not the index)
    inventory.add_file_records([rec("a1", b"late")])
    assert inventory.tree_state("a1") == s1 != inventory.replay_tree("a1")
    # the next archive's tree replaces it: only the newest is ever a parent
    s2 = inventory.replay_tree("a2")
    inventory.cache_tree("a2", s2)
    assert inventory.tree_state("a2") == s2
    assert inventory.tree_state("a1") == inventory.replay_tree("a1")  # a1's cache was dropped
    # nothing new: the parent's row is copied, not re-encoded (the state passed is ignored)
    inventory.cache_tree("a3", {b"ignored": ("file", 0, 0, 0, 0, 0)}, same_as="a2")
    assert inventory.tree_state("a3") == s2
    # a copy with no parent row to copy encodes the state given
    add(inventory, "b1", T0 + timedelta(days=3), policy="q")
    add(inventory, "b2", T0 + timedelta(days=4), parent="b1", policy="q")
    inventory.cache_tree("b2", {b"z": ("dir", 0, 0o755, 1, 2, 3)}, same_as="b1")
    assert inventory.tree_state("b2") == {b"z": ("dir", 0, 0o755, 1, 2, 3)}
    # an encoding made by the caller is stored as it is (the state is not encoded again)
    add(inventory, "b3", T0 + timedelta(days=5), parent="b2", policy="q")
    made = encode_tree({b"w": ("file", 1, 0o600, 1, 2, 3)})
    inventory.cache_tree("b3", {b"ignored": ("file", 0, 0, 0, 0, 0)}, encoded=made)
    assert inventory.tree_state("b3") == {b"w": ("file", 1, 0o600, 1, 2, 3)}


def test_damaged_tree_cache_falls_back_to_the_index(inventory: Inventory) -> None:
    add(inventory, "a1", T0)
    inventory.add_file_records([rec("a1", b"x"), rec("a1", b"y")])
    inventory.cache_tree("a1", {b"only-in-cache": ("file", 1, 0, 0, 0, 0)})
    with inventory._cursor(write=True) as cur:
        cur.execute("SELECT blob FROM tree_cache WHERE archive_id = 'a1'")
        blob = bytearray(cur.fetchone()[0])
        blob[len(blob) // 2] ^= 0xFF
        cur.execute(f"UPDATE tree_cache SET blob = {inventory._mark}", (bytes(blob),))
    assert set(inventory.tree_state("a1")) == {b"x", b"y"}


def test_get_by_prefix_and_times_are_utc(inventory: Inventory) -> None:
    add(inventory, "20261101T020000Z-aaaa", T0)
    add(inventory, "20261102T020000Z-bbbb", T0 + timedelta(days=1))
    a = inventory.get("20261101")
    assert a.id == "20261101T020000Z-aaaa"
    assert a.created == T0 and a.created.tzinfo is not None
    with pytest.raises(ArchiveNotFound, match="ambiguous"):
        inventory.get("2026110")
    with pytest.raises(ArchiveNotFound):
        inventory.get("nothing")


def test_at_latest_and_states(inventory: Inventory) -> None:
    add(inventory, "a1", T0)
    add(inventory, "a2", T0 + timedelta(hours=1), parent="a1")
    add(inventory, "a3", T0 + timedelta(hours=2), state="failed")
    assert inventory.at("p", T0 + timedelta(minutes=30)).id == "a1"  # type: ignore[union-attr]
    assert inventory.at("p", T0 + timedelta(hours=5)).id == "a2"  # type: ignore[union-attr]
    assert inventory.at("p", T0 - timedelta(seconds=1)) is None
    assert inventory.latest("p", "file:///v").id == "a2"  # type: ignore[union-attr]
    assert inventory.latest("p", "file:///v", kind="full").id == "a1"  # type: ignore[union-attr]
    assert [a.id for a in inventory.archives("p")] == ["a1", "a2"]
    assert [a.id for a in inventory.archives("p", states=())] == ["a1", "a2", "a3"]
    assert [a.id for a in inventory.children("a1")] == ["a2"]


def test_events(inventory: Inventory) -> None:
    inventory.log("backup", "first", policy="p", n=1)
    inventory.log("backup", "second", level="error")
    ev = inventory.events()
    assert [e.message for e in ev] == ["second", "first"]
    assert ev[1].data == '{"n": 1}'


def test_bad_url_is_a_clear_error() -> None:
    from backup.errors import ConfigError

    with pytest.raises(ConfigError, match="inventory URL"):
        Inventory("nosuchdb://x")
    with pytest.raises(ConfigError) as e:
        Inventory("postgresql+psycopg://user:hunter2@127.0.0.1:1/x")
    assert "hunter2" not in str(e.value)


def test_processes_opening_a_new_inventory_together_all_succeed(tmp_path: pathlib.Path) -> None:
    """A worker, a scheduler and a command often start at once on a fresh inventory."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    code = f"from backup.inventory import Inventory; Inventory({url!r}).close()"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE) for _ in range(4)
    ]
    errors = [p.communicate()[1].decode() for p in procs if p.wait() != 0]
    assert errors == []


def _mode(p: pathlib.Path) -> int:
    import stat

    return stat.S_IMODE(p.stat().st_mode)


def test_sqlite_inventory_is_private_to_its_owner(tmp_path: pathlib.Path) -> None:
    """It lists every path backed up: not for other users' eyes under the usual umask."""
    import os

    old = os.umask(0o022)
    try:
        db = tmp_path / "data" / "backup" / "inventory.db"
        inv = Inventory(f"sqlite:///{db}")
        add(inv, "a1", T0)  # written: the -wal and -shm files exist now
        wal, shm = db.with_name("inventory.db-wal"), db.with_name("inventory.db-shm")
        assert wal.exists() and shm.exists()
        assert {p.name: _mode(p) for p in (db, wal, shm)} == {
            "inventory.db": 0o600, "inventory.db-wal": 0o600, "inventory.db-shm": 0o600
        }  # fmt: skip
        assert _mode(db.parent) == 0o700
        inv.close()
        Inventory(f"sqlite:///{tmp_path / 'opts.db'}?timeout=5").close()  # options are no name
        assert _mode(tmp_path / "opts.db") == 0o600 and len(list(tmp_path.iterdir())) == 2
    finally:
        os.umask(old)


def test_loose_existing_inventory_is_tightened(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    db = shared / "inv.db"
    inv = Inventory(f"sqlite:///{db}")
    add(inv, "a1", T0)
    inv.close()
    db.chmod(0o644)
    with caplog.at_level("WARNING", logger="backup.inventory"):
        inv = Inventory(f"sqlite:///{db}")
    assert _mode(db) == 0o600
    assert [r.getMessage() for r in caplog.records] == [
        f"inventory file {db} was readable by other users (mode 0644): now 0600"
    ]
    assert inv.get("a1").state == "complete"  # nothing lost
    assert _mode(shared) == 0o755  # a directory that existed is the user's
    inv.close()


def test_checkpoint_leaves_everything_in_the_database_file(tmp_path: pathlib.Path) -> None:
    """A copy of the .db file alone (no -wal) holds what was committed."""
    import shutil

    db = tmp_path / "inv.db"
    inv = Inventory(f"sqlite:///{db}")
    reader = Inventory(f"sqlite:///{db}")  # another process's connection keeps the log alive
    assert reader.archives() == []
    add(inv, "a1", T0)
    wal = db.with_name("inv.db-wal")
    assert wal.stat().st_size > 0
    inv.checkpoint()
    assert wal.stat().st_size == 0
    shutil.copyfile(db, tmp_path / "copy.db")
    copy = Inventory(f"sqlite:///{tmp_path / 'copy.db'}")
    assert copy.get("a1").state == "complete"
    for i in (copy, reader, inv):
        i.close()


def manifest_of(rows: list[dict[str, object]], deleted: tuple[bytes, ...] = ()) -> bytes:
    """An archive's manifest as the engine encodes it, holding these index rows."""
    from backup.archive.manifest import encode_manifest
    from backup.archive.pack import Record

    recs = []
    for r in rows:
        x = Record(r["path"], r["type"], r["mode"], r["mtime_ns"], r["ctime_ns"], r["ino"],
                   r["uid"], r["gid"], r["offset"])  # fmt: skip
        x.update(size=r["size"], sha256=r["sha256"], link=r["link"])
        recs.append(x)
    return encode_manifest(
        {"format": 1, "deleted": [p.decode("utf-8", "surrogateescape") for p in deleted]}, recs
    )


def test_packed_file_index_unpacks_on_first_read(inventory: Inventory) -> None:
    add(inventory, "a1", T0)
    add(inventory, "a2", T0 + timedelta(days=1), parent="a1")
    bad = b"bad-\xff\xfe"
    inventory.add_packed_file_records(
        "a1", manifest_of([rec("a1", b"x"), rec("a1", bad), rec("a1", b"y")])
    )
    inventory.add_packed_file_records("a2", manifest_of([], deleted=(b"y",)))
    with inventory._cursor() as cur:
        cur.execute("SELECT count(*) FROM file_index")
        assert cur.fetchone()[0] == 0  # packed: one row per archive
        cur.execute("SELECT archive_id FROM file_index_packed ORDER BY archive_id")
        assert cur.fetchall() == [("a1",), ("a2",)]
    # replaying a2's chain unpacks both archives
    assert set(inventory.tree_state("a2")) == {b"x", bad}
    with inventory._cursor() as cur:
        cur.execute("SELECT count(*) FROM file_index_packed")
        assert cur.fetchone()[0] == 0
    assert [(r.path, r.size, r.mtime_ns) for r in inventory.records("a1")] == [
        (p, 1, 5) for p in sorted([b"x", bad, b"y"])
    ]
    assert inventory.unpack_file_records(["a1", "a2"]) == 0  # nothing left to move
    assert inventory.unpack_file_records([]) == 0
    inventory.delete_file_records("a1")
    assert inventory.records("a1") == []


def test_packed_file_index_unpacked_once_by_racing_readers(inventory_url: str) -> None:
    import threading

    inv = Inventory(inventory_url)
    add(inv, "a1", T0)
    inv.add_packed_file_records("a1", manifest_of([rec("a1", b"%d" % i) for i in range(3000)]))
    readers = [Inventory(inventory_url) for _ in range(4)]
    moved: list[int] = []
    start = threading.Barrier(len(readers))

    def read(r: Inventory) -> None:
        start.wait()
        moved.append(r.unpack_file_records(["a1"]))

    threads = [threading.Thread(target=read, args=(r,)) for r in readers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(moved) == [0, 0, 0, 3000]
    assert len(inv.records("a1")) == 3000
    for r in [inv, *readers]:
        r.close()


def test_packed_file_index_corruption_is_named_and_keeps_the_row(inventory: Inventory) -> None:
    from backup.errors import FileIndexCorrupt

    add(inventory, "a1", T0)
    inventory.add_packed_file_records("a1", manifest_of([rec("a1", b"x"), rec("a1", b"y")]))
    with inventory._cursor(write=True) as cur:
        cur.execute(f"UPDATE file_index_packed SET format = {inventory._mark}", ("future-9",))
    with pytest.raises(FileIndexCorrupt, match="archive a1 cannot be read: unknown format"):
        inventory.records("a1")
    with inventory._cursor() as cur:  # the packed index is still there, nothing half moved
        cur.execute("SELECT count(*) FROM file_index_packed")
        assert cur.fetchone()[0] == 1
        cur.execute("SELECT count(*) FROM file_index")
        assert cur.fetchone()[0] == 0


def chunks_of(
    rows: list[dict[str, object]], deleted: tuple[bytes, ...] = (), per: int = 2
) -> list[tuple[int, bytes]]:
    """An archive's file index as the engine records it while streaming its manifest:
    ``(seq, blob)``, ``per`` entries to a chunk."""
    import io

    from backup.archive.manifest import ManifestWriter
    from backup.archive.pack import Record

    w = ManifestWriter(index_chunk_entries=per)
    for r in rows:
        x = Record(r["path"], r["type"], r["mode"], r["mtime_ns"], r["ctime_ns"], r["ino"],
                   r["uid"], r["gid"], r["offset"])  # fmt: skip
        x.update(size=r["size"], sha256=r["sha256"], link=r["link"])
        w.add(x)
    out: list[tuple[int, bytes]] = []
    head = {"format": 1, "deleted": [p.decode("utf-8", "surrogateescape") for p in deleted]}
    w.stream(head, io.BytesIO().write, on_chunk=lambda seq, blob: out.append((seq, blob)))
    return out


def test_chunked_file_index_round_trips(inventory: Inventory) -> None:
    add(inventory, "a1", T0)
    add(inventory, "a2", T0 + timedelta(days=1), parent="a1")
    bad = b"bad-\xff\xfe"
    paths = [b"x", bad, b"y", *(b"d/%03d" % i for i in range(40))]
    for seq, blob in chunks_of([rec("a1", p) for p in paths], per=7):
        inventory.add_file_index_chunk("a1", seq, blob)
    for seq, blob in chunks_of([rec("a2", b"z")], deleted=(b"y", bad)):
        inventory.add_file_index_chunk("a2", seq, blob)
    with inventory._cursor() as cur:
        cur.execute("SELECT archive_id, count(*) FROM file_index_chunks GROUP BY archive_id")
        assert sorted(cur.fetchall()) == [("a1", 1 + 7), ("a2", 2)]  # 43 entries, 7 a chunk
        cur.execute("SELECT count(*) FROM file_index")
        assert cur.fetchone()[0] == 0
    # the manifest's fields, as seq 0 holds them
    head = inventory.packed_manifest_head("a2")
    assert head is not None
    assert json.loads(zstandard.ZstdDecompressor().decompressobj().decompress(head)) == {
        "format": 1,
        "deleted": ["y", bad.decode("utf-8", "surrogateescape")],
    }
    # replaying a2's chain unpacks both archives, every chunk
    assert set(inventory.tree_state("a2")) == {b"x", b"z", *paths[3:]}
    with inventory._cursor() as cur:
        cur.execute("SELECT count(*) FROM file_index_chunks")
        assert cur.fetchone()[0] == 0
    assert [(r.path, r.size, r.mtime_ns) for r in inventory.records("a1")] == [
        (p, 1, 5) for p in sorted(paths)
    ]
    assert {r.path: r.type for r in inventory.records("a2")} == {
        b"z": "file",
        b"y": "deleted",
        bad: "deleted",
    }
    assert inventory.unpack_file_records(["a1", "a2"]) == 0  # nothing left to move
    assert inventory.packed_manifest_head("a2") is None
    # a failed archive's chunks go with its rows
    add(inventory, "a3", T0 + timedelta(days=2), parent="a2")
    for seq, blob in chunks_of([rec("a3", b"q")]):
        inventory.add_file_index_chunk("a3", seq, blob)
    inventory.delete_file_records("a3")
    assert inventory.records("a3") == [] and inventory.packed_manifest_head("a3") is None


def test_chunked_file_index_unpacked_once_by_racing_readers(inventory_url: str) -> None:
    import threading

    inv = Inventory(inventory_url)
    add(inv, "a1", T0)
    for seq, blob in chunks_of([rec("a1", b"%d" % i) for i in range(3000)], per=500):
        inv.add_file_index_chunk("a1", seq, blob)
    readers = [Inventory(inventory_url) for _ in range(4)]
    moved: list[int] = []
    start = threading.Barrier(len(readers))

    def read(r: Inventory) -> None:
        start.wait()
        moved.append(r.unpack_file_records(["a1"]))

    threads = [threading.Thread(target=read, args=(r,)) for r in readers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(moved) == [0, 0, 0, 3000]
    assert len(inv.records("a1")) == 3000
    for r in [inv, *readers]:
        r.close()


def test_chunked_file_index_corruption_is_named_and_moves_nothing(inventory: Inventory) -> None:
    from backup.errors import FileIndexCorrupt

    add(inventory, "a1", T0)
    for seq, blob in chunks_of([rec("a1", b"%d" % i) for i in range(9)], per=2):
        if seq == 3:
            blob = blob[: len(blob) // 2]  # cut short
        inventory.add_file_index_chunk("a1", seq, blob)
    with pytest.raises(FileIndexCorrupt, match="archive a1 cannot be read: file index chunk"):
        inventory.records("a1")
    with inventory._cursor() as cur:  # every chunk is still there, nothing half moved
        cur.execute("SELECT count(*) FROM file_index_chunks")
        assert cur.fetchone()[0] == 1 + 5
        cur.execute("SELECT count(*) FROM file_index")
        assert cur.fetchone()[0] == 0
