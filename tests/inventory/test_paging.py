"""The inventory read a page at a time: an archive's file index by keyset on its primary key
``(archive_id, path)``, archives by ``(created, id)``; and the chain in one query."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from backup.archive.manifest import encode_manifest
from backup.archive.pack import Record
from backup.errors import ArchiveNotFound
from backup.inventory import FileRecord, Inventory
from tests.inventory.test_inventory import T0, add, rec

# bytewise order, which both databases keep for BLOB/bytea: not UTF-8, control bytes, a
# prefix of another path, a byte above every ASCII one, quotes and spaces
ODD = [
    b"\x01",
    b"'quoted' \"x\"",
    b"A",
    b"a",
    b"a b",
    b"a/b",
    b"a0",
    b"a\xff",
    b"bad-\xff\xfe",
    b"caf\xe9",
    b"caf\xc3\xa9",
    b"\x7f",
    b"\xff",
    b"\xff\xff\xfe",
    b"z" * 300,
    b"-n",
    b"%_",
]


def pages_of(inv: Inventory, aid: str, limit: int) -> list[list[FileRecord]]:
    pages: list[list[FileRecord]] = []
    after: bytes | None = None
    while True:
        page = inv.records(aid, after=after, limit=limit)
        if not page:
            return pages
        pages.append(page)
        after = page[-1].path


@pytest.mark.parametrize("limit", [1, 4, 5, 1000])
def test_pages_give_every_row_once_in_order(inventory: Inventory, limit: int) -> None:
    add(inventory, "a1", T0)
    add(inventory, "a2", T0 + timedelta(days=1), parent="a1")
    paths = ODD + [b"d/f%03d" % i for i in range(3)]
    shuffled = paths[:]
    random.Random(limit).shuffle(shuffled)
    inventory.add_file_records([rec("a1", p) for p in shuffled])
    inventory.add_file_records([rec("a2", b"a"), rec("a2", b"\x00")])  # another archive's
    pages = pages_of(inventory, "a1", limit)
    got = [r.path for page in pages for r in page]
    assert got == sorted(paths)  # every row, once, in bytewise order
    assert all(len(p) <= limit for p in pages)
    assert len(pages) == -(-len(paths) // limit)
    assert [r.path for r in inventory.records("a1")] == sorted(paths)
    assert inventory.records("a1", after=b"\xff\xff\xfe") == []


def test_a_packed_index_is_unpacked_once_by_the_first_page(inventory: Inventory) -> None:
    add(inventory, "a1", T0)
    entries = [Record(p, "file", 0o644, 5, 6, 7, 0, 0, 512) for p in ODD]
    head = {"format": 1, "archive_id": "a1", "kind": "full", "deleted": ["gone"]}
    inventory.add_packed_file_records("a1", encode_manifest(head, entries))
    first = inventory.records("a1", limit=3)
    assert [r.path for r in first] == sorted([*ODD, b"gone"])[:3]
    # moved whole, not a page of it: the next pages find nothing left to unpack
    assert inventory.unpack_file_records(["a1"]) == 0
    rest = inventory.records("a1", after=first[-1].path)
    assert [r.path for r in first + rest] == sorted([*ODD, b"gone"])
    assert {r.path: r.type for r in rest}[b"gone"] == "deleted"


def test_archive_pages_back_from_the_newest(inventory: Inventory) -> None:
    ids: list[str] = []
    parent = None
    for i in range(9):
        # three share each time: the id breaks the tie
        aid = f"x{(7 * i) % 9}"
        add(inventory, aid, T0 + timedelta(hours=i // 3), parent=parent, policy=f"p{i % 2}")
        parent = aid
        ids.append(aid)
    add(inventory, "failed", T0 + timedelta(hours=9), state="failed")
    order = [a.id for a in inventory.archives()]
    assert order == sorted(ids, key=lambda a: (ids.index(a) // 3, a))
    for limit in (1, 2, 4, 9, 20):
        pages = []
        before = None
        while page := inventory.archives(limit=limit, before=before):
            assert len(page) <= limit
            pages.insert(0, [a.id for a in page])
            before = page[0]
        assert [a for p in pages for a in p] == order
    assert [a.id for a in inventory.archives("p1", limit=2)] == [
        a for a in order if a in ids[1::2]
    ][-2:]
    assert inventory.archives(states=(), limit=1)[0].id == "failed"


def test_chain_in_one_query_keeps_its_errors(inventory: Inventory) -> None:
    add(inventory, "a1", T0)
    for i in range(2, 60):
        add(inventory, f"a{i}", T0 + timedelta(hours=i), parent=f"a{i - 1}")
    add(inventory, "other", T0, policy="q")
    assert [a.id for a in inventory.chain("a59")] == [f"a{i}" for i in range(1, 60)]
    assert [a.id for a in inventory.chain("a1")] == ["a1"]
    with pytest.raises(ArchiveNotFound):
        inventory.chain("nope")
    # a loop (no database makes one through its API; a damaged one might)
    inventory.update_archive("a1", parent_id="a3")
    with pytest.raises(ArchiveNotFound, match="loops"):
        inventory.chain("a5")


def test_an_inventory_made_before_the_list_index_gets_it_when_opened(
    inventory_url: str,
) -> None:
    from sqlalchemy import inspect, text

    inv = Inventory(inventory_url)
    add(inv, "a1", T0)
    with inv.engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_archives_created_id"))
    assert "ix_archives_created_id" not in {
        i["name"] for i in inspect(inv.engine).get_indexes("archives")
    }
    inv.close()
    again = Inventory(inventory_url)  # and twice: the second open finds it there
    again.close()
    again = Inventory(inventory_url)
    names = {i["name"]: i["column_names"] for i in inspect(again.engine).get_indexes("archives")}
    assert names["ix_archives_created_id"] == ["created", "id"]
    assert [a.id for a in again.archives(limit=1)] == ["a1"]
    again.close()
