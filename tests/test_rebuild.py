"""Disaster drills: ``backup inventory rebuild`` from a target alone, then a bare machine
(no policy file) lists, shows, verifies, prunes (dry run) and restores every point in time
byte for byte. Real age/zstd/tar, the file target and moto's S3 server over HTTP, SQLite and
PostgreSQL inventories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from backup.coldplan import archives_for_restore, plan_restore
from backup.crypto.age import X25519Identity, encrypt_bytes, load_identities
from backup.engine import run_backup
from backup.inventory import Archive, Inventory
from backup.inventory.models import Base
from backup.inventory.rebuild import rebuild, split_key
from backup.policy import load_policies
from backup.restore import restore
from backup.targets import open_target
from tests.conftest import Env, MotoServer, require_tools, snapshot_tree, write_policy
from tests.targets.s3util import ClientProxy, new_bucket
from tests.test_interop import cli

Tree = dict[bytes, tuple[Any, ...]]


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tools("age", "zstd", "tar")


def _fields(a: Archive) -> tuple[Any, ...]:
    """What a rebuild must bring back exactly, per archive."""
    return (
        a.id, a.policy, a.kind, a.parent_id, a.created, a.host, a.target, a.location,
        a.manifest_location, a.size_in, a.size_tar, a.size_stored, a.sha256,
        a.manifest_sha256, a.entries, a.deleted_paths, a.unreadable, a.changed, a.state,
    )  # fmt: skip


def _steps(src: Path) -> list[Callable[[], None]]:
    """A full and three incrementals' worth of changes: edits, deletions, renames, a
    directory replaced by a file, links."""

    def s0() -> None:
        (src / "docs").mkdir()
        (src / "docs" / "a.txt").write_text("alpha\n")
        (src / "docs" / "b.txt").write_text("bravo\n" * 1000)
        (src / "empty").mkdir()
        (src / "bin.dat").write_bytes(os.urandom(70_000))
        os.symlink("docs/a.txt", src / "link")
        (src / "hard1").write_text("hard")
        os.link(src / "hard1", src / "hard2")

    def s1() -> None:
        (src / "docs" / "a.txt").write_text("alpha, changed\n")
        os.rename(src / "docs" / "b.txt", src / "docs" / "b-renamed.txt")
        (src / "new.txt").write_text("new in 1")

    def s2() -> None:
        os.unlink(src / "bin.dat")
        os.rmdir(src / "empty")
        (src / "empty").write_text("a file where a directory was")
        os.rename(src / "docs", src / "papers")

    def s3() -> None:
        (src / "papers" / "a.txt").write_text("alpha, changed again\n")
        os.unlink(src / "link")
        os.symlink("new.txt", src / "link")

    return [s0, s1, s2, s3]


def _make_chain(src: Path, backup: Callable[[], str]) -> tuple[list[str], list[Tree]]:
    ids: list[str] = []
    trees: list[Tree] = []
    for step in _steps(src):
        step()
        ids.append(backup())
        trees.append(snapshot_tree(src))
    return ids, trees


def _lose_inventory(inventory: Inventory, url: str) -> Inventory:
    """The machine is gone: every table of the inventory dropped; a fresh, empty one."""
    Base.metadata.drop_all(inventory.engine)
    inventory.close()
    fresh = Inventory(url)
    assert fresh.archives(states=()) == []
    return fresh


def _bare(env: Env) -> dict[str, str]:
    """The CLI environment of a bare machine: the identity and the inventory URL only."""
    return {"BACKUP_CONFIG": str(env.tmp / "no-such-policies.toml")}


def test_file_target_drill_bare_machine_restores_every_point(
    env: Env, inventory: Inventory
) -> None:
    src = env.source
    ids, trees = _make_chain(src, lambda: run_backup(env.policy(), inventory).archive.id)
    before = [_fields(a) for a in inventory.archives()]
    assert [a.kind for a in inventory.archives()] == ["full"] + ["incremental"] * 3

    # what a target also holds: a foreign object, a damaged manifest (of an archive
    # whose object is present), a manifest to another key, an interrupted upload
    (env.vault / "p" / "README.txt").write_text("not ours")
    (env.vault / "notes.json").write_text("{}")
    dam = "20990101T000000Z-deadbeef"
    (env.vault / "p" / f"{dam}.tar.zst.age").write_bytes(b"x" * 10)
    (env.vault / "p" / f"{dam}.manifest.json.zst.age").write_bytes(b"age-encryption.org/v1\n")
    other = "20990101T000000Z-0therkey"
    stranger = X25519Identity.generate().recipient()
    (env.vault / "p" / f"{other}.tar.zst.age").write_bytes(b"y" * 10)
    (env.vault / "p" / f"{other}.manifest.json.zst.age").write_bytes(
        encrypt_bytes(b"whatever", [stranger])
    )
    (env.vault / "p" / "20990101T000000Z-l0nely00.tar.zst.age").write_bytes(b"z")
    (env.vault / ".partial").mkdir(exist_ok=True)
    (env.vault / ".partial" / "0123abcd.feed.partial").write_bytes(b"half")

    inventory = _lose_inventory(inventory, env.inventory_url)
    env.config.unlink()

    proc = cli(env, "inventory", "rebuild", f"file://{env.vault}", "--json", extra_env=_bare(env))
    assert proc.returncode == 3, proc.stderr  # something was skipped: said, not fatal
    report = json.loads(proc.stdout)
    assert report["added"] == ids
    assert report["known"] == [] and report["differing"] == [] and report["orphans"] == []
    assert sorted(report["foreign"]) == ["notes.json", "p/README.txt"]
    damaged = {d["key"]: d["reason"] for d in report["damaged"]}
    assert set(damaged) == {
        f"p/{dam}.manifest.json.zst.age",
        f"p/{other}.manifest.json.zst.age",
    }
    assert "recipient" in damaged[f"p/{other}.manifest.json.zst.age"].lower() or "identit" in (
        damaged[f"p/{other}.manifest.json.zst.age"].lower()
    )
    assert {lo["key"] for lo in report["leftovers"]} == {
        "p/20990101T000000Z-l0nely00.tar.zst.age",
        ".partial/0123abcd.feed.partial",
    }
    assert report["manifests_read"] == len(ids) + 2

    # the archive list is the one before the loss, field for field
    assert [_fields(a) for a in inventory.archives()] == before
    assert all(inventory.manifest_header(i) for i in ids)

    # bare machine: list, show, verify, prune --dry-run, restore at each point, by the CLI
    listed = json.loads(cli(env, "list", "p", "--json", extra_env=_bare(env)).stdout)
    assert [a["id"] for a in listed] == ids
    shown = cli(env, "show", ids[1], "--json", extra_env=_bare(env))
    assert shown.returncode == 0, shown.stderr
    paths = {e["path"] for e in json.loads(shown.stdout)["entries_list"]}
    assert {"docs/a.txt", "docs/b-renamed.txt", "docs/b.txt", "new.txt"} <= paths
    ver = cli(env, "verify", ids[3], "--json", extra_env=_bare(env))
    assert ver.returncode == 0 and json.loads(ver.stdout)["ok"], ver.stderr
    pr = cli(env, "prune", "p", "--dry-run", extra_env=_bare(env))
    assert pr.returncode == 0, pr.stderr
    assert "no retention rules, keeping everything" in pr.stdout
    assert [a.id for a in inventory.archives()] == ids
    for i, aid in enumerate(ids):
        out = env.tmp / f"out{i}"
        created = listed[i]["created"]
        proc = cli(env, "restore", "p", "--to", str(out), "--at", created, "--json",
                   extra_env=_bare(env))  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["archives"] == ids[: i + 1]
        assert snapshot_tree(out) == trees[i], f"point {i} ({aid}) differs"

    # a second rebuild changes nothing
    again = rebuild(inventory, open_target(f"file://{env.vault}"), load_identities(env.key.path))
    assert again.added == [] and again.known == ids and again.differing == []
    assert [_fields(a) for a in inventory.archives()] == before


@pytest.mark.parametrize("storage_class", ["STANDARD", "DEEP_ARCHIVE"])
def test_s3_drill(storage_class: str, aws_env: MotoServer, env: Env, inventory: Inventory) -> None:
    bucket = new_bucket(aws_env)
    url = f"s3://{bucket}/backups?storage_class={storage_class}"
    write_policy(
        env.config, name="p", sources=[str(env.source)], target=url,
        recipients=[env.key.recipient], full_every="7d",
    )  # fmt: skip
    ids, trees = _make_chain(env.source, lambda: run_backup(env.policy(), inventory).archive.id)
    before = [_fields(a) for a in inventory.archives()]
    s3 = aws_env.client()
    s3.put_object(Bucket=bucket, Key="backups/p/stray.bin", Body=b"stray")
    s3.create_multipart_upload(Bucket=bucket, Key="backups/p/20990101T000000Z-c0ffee00.tar.zst.age")
    plans_before = [
        [(o.archive_id, o.ref, o.size, o.storage_class, o.state) for o in plan_restore(
            archives_for_restore(inventory, archive_ids=[i])).objects]
        for i in ids
    ]  # fmt: skip
    if storage_class == "DEEP_ARCHIVE":
        assert {s[3] for p in plans_before for s in p} == {"DEEP_ARCHIVE"}

    dry_before: Any = None
    if storage_class == "DEEP_ARCHIVE":
        proc = cli(env, "restore", "p", "--to", str(env.tmp / "cold"), "--dry-run", "--json")
        assert proc.returncode == 0, proc.stderr
        dry_before = json.loads(proc.stdout)

    inventory = _lose_inventory(inventory, env.inventory_url)
    env.config.unlink()
    # the user need not remember the storage class: the rows keep the policy's URL
    target = open_target(f"s3://{bucket}/backups/")
    proxy = ClientProxy(aws_env.client(), {})
    target._client = proxy  # type: ignore[attr-defined]
    report = rebuild(inventory, target, load_identities(env.key.path))
    assert report.added == ids
    assert report.foreign == ["p/stray.bin"]
    assert [lo.key for lo in report.leftovers] == ["p/20990101T000000Z-c0ffee00.tar.zst.age"]
    assert report.damaged == [] and report.orphans == []
    assert report.storage_classes == {storage_class: len(ids)}
    assert [_fields(a) for a in inventory.archives()] == before
    # hot manifests only: one GET per manifest, no HEAD, no retrieval
    assert proxy.calls.get("get_object") == len(ids)
    assert "restore_object" not in proxy.calls and "head_object" not in proxy.calls
    for o in s3.list_objects_v2(Bucket=bucket)["Contents"]:
        head = s3.head_object(Bucket=bucket, Key=o["Key"])
        assert "Restore" not in head, o["Key"]
        if o["Key"].endswith(".tar.zst.age") and "manifest" not in o["Key"]:
            assert head.get("StorageClass", "STANDARD") == storage_class

    plans_after = [
        [(o.archive_id, o.ref, o.size, o.storage_class, o.state) for o in plan_restore(
            archives_for_restore(inventory, archive_ids=[i])).objects]
        for i in ids
    ]  # fmt: skip
    assert plans_after == plans_before
    if storage_class == "STANDARD":
        ident = load_identities(env.key.path)
        for i, aid in enumerate(ids):
            out = env.tmp / f"s3out{i}"
            res = restore("p", inventory, out, ident, archive_id=aid)
            assert res.archives == ids[: i + 1]
            assert snapshot_tree(out) == trees[i]
    else:
        # a bare machine plans the cold restore as the lost one did: same objects, classes,
        # tiers, cost (archives are read only once retrieved, by `backup serve` or workers)
        after = cli(env, "restore", "p", "--to", str(env.tmp / "cold"), "--dry-run", "--json",
                    extra_env=_bare(env))  # fmt: skip
        assert after.returncode == 0, after.stderr
        assert json.loads(after.stdout) == dry_before
        assert len(dry_before["objects"]) == len(ids)


def test_missing_parent_is_an_orphan_and_merges_into_an_existing_inventory(
    env: Env, inventory: Inventory, tmp_path: Path
) -> None:
    """A second machine: its inventory holds its own policy; the rebuild adds the target's
    archives beside them. A chain whose full lost its manifest: the full is a leftover, the
    incrementals orphans (not recorded: they cannot be restored without it)."""
    ids, _ = _make_chain(env.source, lambda: run_backup(env.policy(), inventory).archive.id)
    second = Inventory(f"sqlite:///{tmp_path / 'second.db'}")
    src2 = tmp_path / "src2"
    src2.mkdir()
    (src2 / "f").write_text("machine two")
    cfg2 = tmp_path / "q.toml"
    write_policy(
        cfg2, name="q", sources=[str(src2)], target=f"file://{tmp_path / 'vault2'}",
        recipients=[env.key.recipient],
    )  # fmt: skip
    q = run_backup(load_policies(cfg2)["q"], second).archive.id
    ident = load_identities(env.key.path)
    target = open_target(f"file://{env.vault}")

    report = rebuild(second, target, ident, dry_run=True)
    assert report.added == ids and [a.id for a in second.archives()] == [q]
    report = rebuild(second, target, ident)
    assert report.added == ids
    assert [a.id for a in second.archives()] == sorted(
        [q, *ids], key=lambda i: second.get(i).created
    )
    # the rebuilt chain goes on: the next backup of p is an incremental on its newest archive
    nxt = run_backup(env.policy(), second).archive
    assert (nxt.kind, nxt.parent_id) == ("incremental", ids[-1])

    # a fresh machine, and the full's manifest is gone
    os.unlink(env.vault / "p" / f"{ids[0]}.manifest.json.zst.age")
    third = Inventory(f"sqlite:///{tmp_path / 'third.db'}")
    report = rebuild(third, target, ident, policy="p")
    assert report.added == []
    assert [(o.archive_id, o.parent_id) for o in report.orphans] == [
        (ids[1], ids[0]), (ids[2], ids[1]), (ids[3], ids[2]), (nxt.id, ids[3]),
    ]  # fmt: skip
    assert [lo.key for lo in report.leftovers] == [f"p/{ids[0]}.tar.zst.age"]
    assert report.exit_code == 3
    assert third.archives(states=()) == []


def test_a_known_archive_that_differs_is_named_not_rewritten(
    env: Env, inventory: Inventory
) -> None:
    ids, _ = _make_chain(env.source, lambda: run_backup(env.policy(), inventory).archive.id)
    inventory.update_archive(ids[2], sha256="0" * 64, state="deleted")
    proc = cli(env, "inventory", "rebuild", f"file://{env.vault}")
    assert proc.returncode == 3, proc.stderr
    assert f"differs:  {ids[2]}: sha256" in proc.stdout
    assert "0 archive(s) added, 3 already known" in proc.stdout
    assert inventory.get(ids[2]).sha256 == "0" * 64  # compared, never rewritten


def test_bad_input_is_one_line(env: Env) -> None:
    e = env.environ()
    del e["BACKUP_IDENTITY"]
    p = subprocess.run([sys.executable, "-m", "backup", "inventory", "rebuild", "nope://x"],
                       env=e, capture_output=True, text=True, check=False)  # fmt: skip
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [
        "error: Identity: the manifests are encrypted: pass --identity FILE or set BACKUP_IDENTITY"
    ]
    p = subprocess.run([sys.executable, "-m", "backup", "inventory", "rebuild", "nope://x",
                        "--identity", str(env.key.path)],
                       env=e, capture_output=True, text=True, check=False)  # fmt: skip
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    # without a policy file, prune of a name the inventory does not know is a mistake
    e["BACKUP_CONFIG"] = str(env.tmp / "none.toml")
    p = subprocess.run([sys.executable, "-m", "backup", "prune", "typo", "--dry-run"],
                       env=e, capture_output=True, text=True, check=False)  # fmt: skip
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [
        f"error: {env.tmp / 'none.toml'}: policy file not found (set BACKUP_CONFIG or --config)"
    ]


def test_split_key() -> None:
    assert split_key("p/20261121T020000Z-9f2c41d7.tar.zst.age") == (
        "p", "20261121T020000Z-9f2c41d7", "archive",
    )  # fmt: skip
    assert split_key("home.x/20261121T020000Z-9f2c41d7.manifest.json.zst.age") == (
        "home.x", "20261121T020000Z-9f2c41d7", "manifest",
    )  # fmt: skip
    assert split_key("p/x.tar.zst") is None
    assert split_key("a/b/c.tar.zst.age") is None
    assert split_key(".partial/x.tar.zst.age") is None


def test_a_chain_is_recorded_parent_first_whatever_the_clocks_said(
    env: Env, inventory: Inventory, tmp_path: Path
) -> None:
    """The clock stepped back between two backups: the incremental was created before its
    parent. The rebuild still records the parent first, and the chain whole."""
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)
    (env.source / "f").write_text("one")
    full = run_backup(env.policy(), inventory, now=t0).archive
    (env.source / "f").write_text("two!")
    inc = run_backup(env.policy(), inventory, now=t0 - timedelta(hours=1)).archive
    assert (inc.kind, inc.parent_id) == ("incremental", full.id) and inc.created < full.created
    fresh = Inventory(f"sqlite:///{tmp_path / 'fresh.db'}")
    report = rebuild(fresh, open_target(f"file://{env.vault}"), load_identities(env.key.path))
    assert report.orphans == [] and report.added == [full.id, inc.id]
    assert [a.id for a in fresh.chain(inc.id)] == [full.id, inc.id]
    out = tmp_path / "out"
    restore("p", fresh, out, load_identities(env.key.path), archive_id=inc.id)
    assert (out / "f").read_text() == "two!"


def test_a_manifest_that_does_not_match_its_archive_object_is_damaged(
    env: Env, inventory: Inventory, tmp_path: Path
) -> None:
    (env.source / "f").write_text("data" * 1000)
    a = run_backup(env.policy(), inventory).archive
    stem = env.vault / "p" / a.id
    # a manifest copied beside another archive id, and the real archive cut short
    copy = "20990101T000000Z-c0pyc0py"
    (env.vault / "p" / f"{copy}.manifest.json.zst.age").write_bytes(
        Path(f"{stem}.manifest.json.zst.age").read_bytes()
    )
    (env.vault / "p" / f"{copy}.tar.zst.age").write_bytes(Path(f"{stem}.tar.zst.age").read_bytes())
    with open(f"{stem}.tar.zst.age", "r+b") as f:
        f.truncate(a.size_stored - 1)
    fresh = Inventory(f"sqlite:///{tmp_path / 'fresh.db'}")
    report = rebuild(fresh, open_target(f"file://{env.vault}"), load_identities(env.key.path))
    assert report.added == [] and fresh.archives(states=()) == []
    reasons = {d.key: d.reason for d in report.damaged}
    assert (
        f"describes p/{a.id}, but is stored as p/{copy}"
        in reasons[f"p/{copy}.manifest.json.zst.age"]
    )
    assert (
        f"archive object is {a.size_stored - 1} bytes, its manifest records {a.size_stored}"
        in (reasons[f"p/{a.id}.manifest.json.zst.age"])
    )
    assert report.exit_code == 3
