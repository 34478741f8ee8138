"""Backup runs end to end: archive layout, the manifest beside it, and what incrementals
hold (new or changed files, deleted paths, whole hard-link groups, new chains)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backup.crypto.age import load_identities
from backup.engine import run_backup
from backup.inventory import Inventory
from backup.restore import restore
from tests.conftest import Env, Key, require_tools
from tests.test_interop import (
    assert_same_tree,
    cli,
    decrypt_with_tools,
    extract_with_tools,
    link_groups,
    make_tree,
    q,
    sh,
)


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tools("age", "zstd", "tar")


def manifest_with_tools(key: Key, path: Path) -> dict[str, Any]:
    """``age -d -i KEY MANIFEST | zstd -d``, parsed as JSON."""
    out = sh(f"age -d -i {q(key.path)} {q(path)} | zstd -d -q -c").stdout
    m = json.loads(out)
    assert isinstance(m, dict)
    return m


def archive_files(env: Env, archive_id: str) -> tuple[Path, Path]:
    d = env.vault / "p"
    return d / f"{archive_id}.tar.zst.age", d / f"{archive_id}.manifest.json.zst.age"


def manifest_of(env: Env, archive_id: str) -> dict[str, Any]:
    return manifest_with_tools(env.key, archive_files(env, archive_id)[1])


def entry_paths(m: dict[str, Any]) -> set[bytes]:
    return {os.fsencode(e["path"]) for e in m["entries"]}


def source_paths(root: Path) -> set[bytes]:
    rootb = os.fsencode(root)
    out = set()
    for dirpath, dirs, files in os.walk(rootb):
        for n in dirs + files:
            out.add(os.path.relpath(os.path.join(dirpath, n), rootb))
    return out


def test_run_writes_archive_and_encrypted_manifest(env: Env) -> None:
    make_tree(env.source)
    environ = env.environ()
    del environ["BACKUP_IDENTITY"]  # backing up needs recipients only
    hidden = env.key.path.with_name("elsewhere.txt")
    env.key.path.rename(hidden)
    try:
        proc = cli(None, "run", "p", "--json", extra_env=environ)
    finally:
        hidden.rename(env.key.path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    aid = out["id"]
    assert out["kind"] == "full" and out["parent"] is None and out["state"] == "complete"
    archive, manifest_file = archive_files(env, aid)
    assert archive.is_file() and manifest_file.is_file()
    assert sorted(p.name for p in (env.vault / "p").iterdir()) == sorted(
        [archive.name, manifest_file.name]
    )
    # both are age files, not plaintext
    assert archive.read_bytes().startswith(b"age-encryption.org/v1\n")
    assert manifest_file.read_bytes().startswith(b"age-encryption.org/v1\n")

    m = manifest_with_tools(env.key, manifest_file)
    assert m["format"] == 1
    assert m["policy"] == "p"
    assert m["kind"] == "full"
    assert m["parent"] is None
    assert abs(datetime.fromisoformat(m["created"]) - datetime.now(UTC)) < timedelta(minutes=5)
    assert m["deleted"] == []
    assert out["entries"] == len(m["entries"])
    assert entry_paths(m) == source_paths(env.source)

    src = os.fsencode(env.source)
    kinds = {"file", "dir", "symlink", "hardlink"}
    for e in m["entries"]:
        assert {"path", "type", "size", "mode", "mtime_ns", "offset"} <= set(e), e
        assert e["type"] in kinds
        st = os.lstat(os.path.join(src, os.fsencode(e["path"])))
        assert e["mode"] == stat.S_IMODE(st.st_mode)
        assert e["mtime_ns"] == st.st_mtime_ns
        if e["type"] == "file":
            with open(os.path.join(src, os.fsencode(e["path"])), "rb") as f:
                data = f.read()
            assert e["size"] == len(data)
            assert e["sha256"] == hashlib.sha256(data).hexdigest()
    types = {os.fsencode(e["path"]): e["type"] for e in m["entries"]}
    assert types[b"plain.txt"] == "file"
    assert types[b"empty"] == "dir"
    assert types[b"link-rel"] == "symlink"
    # one name of the hard-link group carries the data, the others link to it
    assert sorted(types[p] for p in (b"hl/a", b"hl/b", b"hl-c")) == ["file", "hardlink", "hardlink"]

    # offsets point at the tar headers of the entries
    plain = env.tmp / "plain.tar"
    decrypt_with_tools(env.key, archive, plain)
    with tarfile.open(plain, encoding="utf-8", errors="surrogateescape") as t:
        tar_offsets = {os.fsencode(mem.name): mem.offset for mem in t}
    data = plain.read_bytes()
    for e in m["entries"]:
        path = os.fsencode(e["path"])
        assert e["offset"] == tar_offsets[path], path
        block = data[e["offset"] : e["offset"] + 512]
        assert block[257:262] == b"ustar", path
        chk = int(block[148:156].split(b"\0")[0].strip() or b"0", 8)
        assert chk == sum(block[:148]) + 8 * 32 + sum(block[156:]), path
        assert block[156:157] in (b"x", b"0", b"1", b"2", b"5"), path


def _run(env: Env, inv: Inventory, **kw: Any) -> tuple[Any, dict[str, Any]]:
    res = run_backup(env.policy(), inv, **kw)
    return res, manifest_of(env, res.archive.id)


def test_incrementals_hold_changes_and_deletions(env: Env, inventory: Inventory) -> None:
    src = env.source
    make_tree(src, big=False)
    full, mfull = _run(env, inventory)
    assert full.archive.kind == "full"

    # nothing changed: an empty incremental
    nochange, m0 = _run(env, inventory)
    assert nochange.archive.kind == "incremental"
    assert nochange.archive.parent_id == full.archive.id
    assert m0["kind"] == "incremental" and m0["parent"] == full.archive.id
    assert m0["entries"] == [] and m0["deleted"] == []
    assert nochange.archive.entries == 0

    # content changed, size and mtime kept: found by ctime
    st = os.stat(src / "plain.txt")
    (src / "plain.txt").write_bytes(b"HELLO\n")
    os.utime(src / "plain.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    # mode only
    os.chmod(src / "exec.sh", 0o700)
    # same name, size, mode and mtime, another inode
    st = os.stat(src / "ro.txt")
    tmp = src / ".tmp-ro"
    tmp.write_bytes((src / "ro.txt").read_bytes())
    os.chmod(tmp, 0o400)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(tmp, src / "ro.txt")
    # mtime only
    os.utime(src / "zero", ns=(10**18, 10**18))
    # a hard-linked file changed through one of its names
    with open(src / "hl" / "b", "r+b") as f:
        f.write(b"LINKED")
    # new and deleted
    (src / "new.txt").write_text("new")
    os.unlink(src / "old")
    os.unlink(src / "dir with space" / "file name with spaces.txt")
    os.rmdir(src / "dir with space")

    inc, m1 = _run(env, inventory)
    assert inc.archive.parent_id == nochange.archive.id
    assert entry_paths(m1) == {
        b"plain.txt",
        b"exec.sh",
        b"ro.txt",
        b"zero",
        b"hl/a",
        b"hl/b",
        b"hl-c",
        b"new.txt",
    }
    assert sorted(m1["deleted"]) == sorted(
        ["old", "dir with space", "dir with space/file name with spaces.txt"]
    )
    assert inc.deleted == 3
    # the incremental alone, through tar, keeps the hard-link group whole
    alone = env.tmp / "alone"
    extract_with_tools(env.key, archive_files(env, inc.archive.id)[0], alone)
    assert link_groups(alone) == {frozenset({b"hl/a", b"hl/b", b"hl-c"})}
    assert (alone / "hl-c").read_bytes() == b"LINKED content"

    # a new name for an unchanged hard-linked file brings the whole group
    os.link(src / "hl" / "a", src / "hl" / "d")
    inc2, m2 = _run(env, inventory)
    assert entry_paths(m2) == {b"hl/a", b"hl/b", b"hl-c", b"hl/d", b"hl"}
    alone2 = env.tmp / "alone2"
    extract_with_tools(env.key, archive_files(env, inc2.archive.id)[0], alone2)
    assert link_groups(alone2) == {frozenset({b"hl/a", b"hl/b", b"hl-c", b"hl/d"})}

    # every run cached its tree, and the cache says what replaying the index says; an
    # incremental compares against it, so a wrong cache would have missed changes above
    for a in (full, nochange, inc, inc2):
        assert inventory.replay_tree(a.archive.id) == _cached(inventory, a.archive.id) or (
            a is not inc2 and _cached(inventory, a.archive.id) is None  # older: dropped
        )
    assert _cached(inventory, inc2.archive.id) == inventory.replay_tree(inc2.archive.id)
    assert _cached(inventory, full.archive.id) is None

    # the file index records the deletions too
    recs = {r.path: r.type for r in inventory.records(inc.archive.id)}
    assert recs[b"old"] == "deleted" and recs[b"plain.txt"] == "file"
    assert mfull["kind"] == "full"

    # and the chain, empty incremental included, gives back the tree as it is now
    out = env.tmp / "restored"
    res = restore("p", inventory, out, load_identities(env.key.path))
    assert res.archives == [full.archive.id, nochange.archive.id, inc.archive.id, inc2.archive.id]
    assert_same_tree(src, out)


def _cached(inventory: Inventory, archive_id: str) -> Any:
    return inventory._cached_tree(archive_id)


def test_incremental_without_a_cached_tree_replays_the_index(
    env: Env, inventory: Inventory
) -> None:
    src = env.source
    make_tree(src, big=False)
    full, mfull = _run(env, inventory)
    with inventory._cursor(write=True) as cur:
        # the backup stored its file index packed (its manifest, in chunks), not as rows
        cur.execute("SELECT count(*) FROM file_index")
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT DISTINCT archive_id FROM file_index_chunks")
        assert cur.fetchall() == [(full.archive.id,)]
        cur.execute("DELETE FROM tree_cache")  # e.g. an inventory written by an older version
    (src / "new.txt").write_text("new")
    os.unlink(src / "old")
    inc, m = _run(env, inventory)
    assert entry_paths(m) == {b"new.txt"} and m["deleted"] == ["old"]
    # the replay unpacked the full's index into rows, one per entry of its manifest
    assert {r.path for r in inventory.records(full.archive.id)} == entry_paths(mfull)
    # the incremental cached its tree anyway, so the next one reads it
    assert _cached(inventory, inc.archive.id) == inventory.replay_tree(inc.archive.id)
    again, m2 = _run(env, inventory)
    assert m2["entries"] == [] and m2["deleted"] == []
    assert _cached(inventory, again.archive.id) == inventory.replay_tree(inc.archive.id)


def test_full_every_starts_a_new_chain(env: Env, inventory: Inventory) -> None:
    (env.source / "f").write_text("x")
    t0 = datetime.now(UTC)
    full = run_backup(env.policy(), inventory, now=t0)
    inc = run_backup(env.policy(), inventory, now=t0 + timedelta(days=6, hours=23))
    assert (inc.archive.kind, inc.archive.parent_id) == ("incremental", full.archive.id)
    # the policy says full_every = "7d", counted from the chain's full
    new_full = run_backup(env.policy(), inventory, now=t0 + timedelta(days=7))
    assert (new_full.archive.kind, new_full.archive.parent_id) == ("full", None)
    assert new_full.archive.entries == 1
    after = run_backup(env.policy(), inventory, now=t0 + timedelta(days=7, hours=1))
    assert (after.archive.kind, after.archive.parent_id) == ("incremental", new_full.archive.id)
    forced = run_backup(env.policy(), inventory, full=True, now=t0 + timedelta(days=7, hours=2))
    assert (forced.archive.kind, forced.archive.parent_id) == ("full", None)
    assert manifest_of(env, forced.archive.id)["kind"] == "full"


def test_manifest_failure_leaves_no_archive_and_no_index_rows(
    env: Env, inventory: Inventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the file index is written while the manifest is stored: when storing the manifest
    # fails, the archive, its row's index and the stored stream all go
    from backup.errors import TargetError
    from backup.targets.file import FileWriter

    make_tree(env.source, big=False)
    real = FileWriter.commit

    def commit(self: FileWriter) -> str:
        if self._key.endswith(".manifest.json.zst.age"):
            self.abort()
            raise TargetError("file://vault", "no room for the manifest")
        return real(self)

    monkeypatch.setattr(FileWriter, "commit", commit)
    with pytest.raises(TargetError, match="no room for the manifest"):
        run_backup(env.policy(), inventory)
    [row] = inventory.archives(states=())
    assert row.state == "failed" and "no room for the manifest" in (row.error or "")
    assert inventory.records(row.id) == []
    assert [p for p in env.vault.rglob("*") if p.is_file()] == []


def _chunks(inventory: Inventory) -> list[tuple[str, int]]:
    with inventory._cursor() as cur:
        cur.execute("SELECT archive_id, seq FROM file_index_chunks ORDER BY archive_id, seq")
        return [(r[0], r[1]) for r in cur.fetchall()]


def test_manifest_streamed_to_the_target_is_what_was_recorded(
    env: Env, inventory: Inventory
) -> None:
    make_tree(env.source, big=False)
    full = run_backup(env.policy(), inventory)
    path = archive_files(env, full.archive.id)[1]
    blob = path.read_bytes()
    # the sha256 and the age header were taken as the bytes passed: they are the object's
    row = inventory.get(full.archive.id)
    assert row.manifest_sha256 == hashlib.sha256(blob).hexdigest()
    header = inventory.manifest_header(full.archive.id)
    assert header is not None and blob.startswith(header) and header.endswith(b"\n")
    assert b"\n---" in header
    # one JSON document through the real programs, with every entry the index has
    m = manifest_with_tools(env.key, path)
    assert m["format"] == 1 and m["archive_id"] == full.archive.id
    assert entry_paths(m) == {r.path for r in inventory.records(full.archive.id)}


def test_file_index_in_many_chunks_answers_show_and_restore(
    env: Env, inventory: Inventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import functools

    import backup.engine
    from backup.archive.manifest import ManifestWriter

    # three entries to a chunk: the tree's index is recorded in many pieces
    monkeypatch.setattr(
        backup.engine, "ManifestWriter", functools.partial(ManifestWriter, index_chunk_entries=3)
    )
    src = env.source
    make_tree(src, big=False)
    for i in range(20):
        (src / f"many{i:02d}.txt").write_text(f"file {i}\n" * (i + 1))
    full = run_backup(env.policy(), inventory)
    n = full.archive.entries
    assert n > 25
    assert [s for a, s in _chunks(inventory)] == list(range(1 + (n + 2) // 3))
    os.unlink(src / "many03.txt")
    (src / "many07.txt").write_text("changed\n")
    inc = run_backup(env.policy(), inventory)
    assert {a for a, _ in _chunks(inventory)} == {full.archive.id, inc.archive.id}

    # show of one file, a page of one after its predecessor, from the chunked index
    proc = cli(env, "show", full.archive.id, "--limit", "1", "--after", "many04.txt", "--json")
    assert proc.returncode == 0, proc.stderr
    [e] = json.loads(proc.stdout)["entries_list"]
    assert e["path"] == "many05.txt" and e["size"] == len("file 5\n" * 6)
    # every row of the full came out, once; the chunks are gone with their rows moved
    assert {r.path for r in inventory.records(full.archive.id)} == entry_paths(
        manifest_of(env, full.archive.id)
    )
    assert {a for a, _ in _chunks(inventory)} == {inc.archive.id}
    # the incremental's deletion is in its seq 0 chunk: it is a row of the index too
    recs = {r.path: r.type for r in inventory.records(inc.archive.id)}
    assert recs == {b"many03.txt": "deleted", b"many07.txt": "file"}
    assert _chunks(inventory) == []

    # restore of a single file, at the incremental (its chain read from the index)
    out = env.tmp / "one"
    restore("p", inventory, out, load_identities(env.key.path), include=["many07.txt"])
    assert [p.name for p in out.iterdir()] == ["many07.txt"]
    assert (out / "many07.txt").read_text() == "changed\n"
    out2 = env.tmp / "two"
    restore("p", inventory, out2, load_identities(env.key.path), include=["many1[12].txt"])
    assert sorted(p.name for p in out2.iterdir()) == ["many11.txt", "many12.txt"]
    assert (out2 / "many12.txt").read_text() == "file 12\n" * 13


@pytest.mark.parametrize("where", ["chunk", "header"])
def test_crash_between_manifest_and_record_leaves_nothing_half(
    env: Env, inventory: Inventory, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    import functools

    import backup.engine
    from backup.archive.manifest import ManifestWriter

    monkeypatch.setattr(
        backup.engine, "ManifestWriter", functools.partial(ManifestWriter, index_chunk_entries=2)
    )
    make_tree(env.source, big=False)
    real_chunk, real_header = Inventory.add_file_index_chunk, Inventory.add_manifest_header

    def chunk(self: Inventory, archive_id: str, seq: int, blob: bytes) -> None:
        if where == "chunk" and seq == 3:  # the manifest half streamed, three chunks stored
            raise RuntimeError("inventory went away")
        real_chunk(self, archive_id, seq, blob)

    def header(self: Inventory, archive_id: str, blob: bytes) -> None:
        # the manifest is uploaded and committed, every chunk recorded: then the crash
        assert len(_chunks(self)) > 3
        assert archive_files(env, archive_id)[1].is_file()
        raise RuntimeError("inventory went away")

    monkeypatch.setattr(Inventory, "add_file_index_chunk", chunk)
    monkeypatch.setattr(Inventory, "add_manifest_header", header)
    with pytest.raises(RuntimeError, match="inventory went away"):
        run_backup(env.policy(), inventory)
    [row] = inventory.archives(states=())
    assert row.state == "failed" and "inventory went away" in (row.error or "")
    # no archive, no manifest (nor its partial write), no index chunk or row
    assert [p for p in env.vault.rglob("*") if p.is_file()] == []
    assert _chunks(inventory) == [] and inventory.records(row.id) == []
    assert inventory.manifest_header(row.id) is None
    # and the next run is whole
    monkeypatch.setattr(Inventory, "add_file_index_chunk", real_chunk)
    monkeypatch.setattr(Inventory, "add_manifest_header", real_header)
    again = run_backup(env.policy(), inventory)
    assert again.archive.kind == "full" and again.archive.state == "complete"
    assert entry_paths(manifest_of(env, again.archive.id)) == source_paths(env.source)


def test_several_sources_are_walked_in_walk_order_and_cached_as_tree2(
    env: Env, inventory: Inventory
) -> None:
    # sources listed out of their names' order: walked by name, so the full's tree is in walk
    # order and cached as a tree2 stream, which the next incremental merges against
    zeta, alpha = env.tmp / "zeta", env.tmp / "alpha"
    for d in (zeta, alpha):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "f").write_text(d.name)
        (d / "sub.x").write_text("x")
    text = env.config.read_text()
    assert text.count(f'"{env.source}"') == 1
    env.config.write_text(text.replace(f'"{env.source}"', f'"{zeta}", "{alpha}"'))
    full, m = _run(env, inventory)
    paths = [e["path"] for e in m["entries"]]
    assert paths == [
        "alpha", "alpha/sub", "alpha/sub/f", "alpha/sub.x",
        "zeta", "zeta/sub", "zeta/sub/f", "zeta/sub.x",
    ]  # fmt: skip
    with inventory._cursor() as cur:
        cur.execute("SELECT archive_id, format FROM tree_cache")
        assert cur.fetchall() == [(full.archive.id, "tree2-chunks")]
    assert _cached(inventory, full.archive.id) == inventory.replay_tree(full.archive.id)
    (alpha / "sub" / "f").write_text("changed, longer")
    os.unlink(zeta / "sub.x")
    inc, m2 = _run(env, inventory)
    # the file changed, and the directory the deletion was made in
    assert entry_paths(m2) == {b"alpha/sub/f", b"zeta"} and m2["deleted"] == ["zeta/sub.x"]
    assert _cached(inventory, inc.archive.id) == inventory.replay_tree(inc.archive.id)


def test_probe_files_read_from_a_cold_and_a_warm_cache_pack_whole(env: Env) -> None:
    # the packer reads one file in 64 first without waiting (pack.Hints), at offset 0, then
    # goes on from where that read ended: the first file is such a probe, and larger than a
    # read, so a wrong offset would repeat or drop bytes
    src = env.source
    src.mkdir(parents=True, exist_ok=True)
    (src / "a-big").write_bytes(os.urandom((5 << 20) // 2))
    for i in range(40):
        (src / f"s{i:02d}").write_bytes(os.urandom(1000 + 5000 * i))
    for warm in (False, True):
        for p in src.iterdir():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                if not warm:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                else:
                    os.read(fd, 8 << 20)
            finally:
                os.close(fd)
        proc = cli(env, "run", "p", "--full", "--json")
        assert proc.returncode == 0, proc.stderr
        archive, _ = archive_files(env, json.loads(proc.stdout)["id"])
        out = env.tmp / f"by-hand-{warm}"
        extract_with_tools(env.key, archive, out)
        assert_same_tree(src, out)
