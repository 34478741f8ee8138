"""Copies of the inventory in the targets (backup/inventory_copy.py): written after each run
and on `backup inventory export`, encrypted (real age and zstd read them), hot on a cold
bucket, pruned to the newest few; `backup inventory import` brings every row back, from
SQLite into PostgreSQL and back, all or nothing."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from backup.inventory import Inventory
from backup.inventory.models import Base
from backup.inventory_copy import PREFIX, TABLES, export_inventory, import_inventory, list_exports
from backup.targets import open_target
from tests.conftest import (
    POSTGRES_URL,
    Env,
    Key,
    MotoServer,
    postgres_schema_url,
    require_tools,
    write_policy,
)
from tests.test_interop import cli, make_tree


@pytest.fixture(autouse=True)
def _tools(monkeypatch: pytest.MonkeyPatch) -> None:
    require_tools("age", "zstd", "tar")
    # a copy after every run (the default is at most one an hour per target)
    monkeypatch.setenv("BACKUP_INVENTORY_EXPORT_INTERVAL", "0")


def rows(inv: Inventory) -> dict[str, list[str]]:
    """Every row of every table an export holds, as comparable text."""
    out = {}
    with inv.engine.connect() as c:
        for name in TABLES:
            t = Base.metadata.tables[name]
            out[name] = sorted(
                repr(tuple(bytes(v) if isinstance(v, memoryview) else v for v in r))
                for r in c.execute(sa.select(t))
            )
    return out


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr
    return proc


def one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def three_runs(env: Env) -> list[str]:
    """A full and two incrementals, with a change, a deletion and a rename between."""
    make_tree(env.source, big=False)
    ids = [json.loads(ok(cli(env, "run", "p", "--json")).stdout)["id"]]
    (env.source / "plain.txt").write_bytes(b"changed\n")
    (env.source / "zero").unlink()
    ids.append(json.loads(ok(cli(env, "run", "p", "--json")).stdout)["id"])
    (env.source / "exec.sh").rename(env.source / "renamed.sh")
    ids.append(json.loads(ok(cli(env, "run", "p", "--json")).stdout)["id"])
    return ids


def views(env: Env, url: str, ids: list[str]) -> list[str]:
    """What a user sees of the inventory: list, show of each archive, and each job."""
    e = {"BACKUP_INVENTORY_URL": url}
    out = [ok(cli(env, "list", "--json", extra_env=e)).stdout]
    out += [ok(cli(env, "show", a, "--json", extra_env=e)).stdout for a in ids]
    jobs = json.loads(ok(cli(env, "status", "--json", extra_env=e)).stdout)
    out.append(json.dumps(jobs, sort_keys=True))
    return out


def test_after_each_run_a_copy_lands_and_imports_into_an_empty_inventory(
    env: Env, tmp_path: Path
) -> None:
    ids = three_runs(env)
    # one copy per run, each readable with the real tools: age -d | zstd -d
    found = list_exports(open_target(f"file://{env.vault}"))
    assert len(found) >= 1 and all(e.key.startswith(PREFIX) for e in found)
    newest = env.vault / found[-1].key
    plain = subprocess.run(
        f"age -d -i {env.key.path} {newest} | zstd -d -q -c",
        shell=True, capture_output=True, check=True,
    ).stdout  # fmt: skip
    lines = plain.splitlines()
    assert json.loads(lines[0])["format"] == "backup-inventory/1"
    assert json.loads(lines[-1])["end"] is True
    # the copy written after the last run holds that run's job, done
    jobs = [json.loads(x) for x in lines if x.startswith(b'["')]
    assert any(ids[-1] in x and "done" in x for x in jobs)

    inv = Inventory(env.inventory_url)
    before_rows = rows(inv)
    export_inventory(inv, f"file://{env.vault}", [env.key.recipient])
    before = views(env, env.inventory_url, ids)
    inv.close()

    # the machine is lost: a new inventory, and the copy brought back
    fresh = f"sqlite:///{tmp_path / 'fresh' / 'inventory.db'}"
    e = {"BACKUP_INVENTORY_URL": fresh}
    res = json.loads(ok(cli(env, "inventory", "import", f"file://{env.vault}", "--json", extra_env=e)).stdout)  # fmt: skip
    assert res["added"]["archives"] == 3 and res["conflicts"] == []
    assert res["added"]["jobs"] == 3
    got = Inventory(fresh)
    assert rows(got) == before_rows
    got.close()
    assert views(env, fresh, ids) == before
    # a restore from the imported inventory equals the source tree
    dest = tmp_path / "restored"
    ok(cli(env, "restore", "p", "--to", str(dest), extra_env=e))
    assert sorted(os.listdir(dest)) == sorted(os.listdir(env.source))

    # importing again changes nothing (the restore's own rows stay as they are)
    got = Inventory(fresh)
    before_rows = rows(got)
    got.close()
    again = json.loads(ok(cli(env, "inventory", "import", f"file://{env.vault}", "--json", extra_env=e)).stdout)  # fmt: skip
    assert sum(again["added"].values()) == 0 and again["conflicts"] == []
    got = Inventory(fresh)
    assert rows(got) == before_rows
    got.close()


@pytest.mark.skipif(not POSTGRES_URL, reason="BACKUP_TEST_POSTGRES_URL not set")
@pytest.mark.parametrize("inventory_url", ["sqlite"], indirect=True)  # and PostgreSQL inside
def test_sqlite_to_postgresql_and_back(env: Env, tmp_path: Path) -> None:
    three_runs(env)
    target = f"file://{env.vault}"
    src = Inventory(env.inventory_url)
    want = rows(src)
    first, _ = export_inventory(src, target, [env.key.recipient])
    src.close()
    pg_urls = postgres_schema_url()
    pg = Inventory(next(pg_urls))
    try:
        res = import_inventory(pg, target, [env.key.identity], key=first.key)
        assert res.conflicts == []
        assert rows(pg) == want
        # its counters go on past the imported ids
        pg.log("test", "after the import")
        ev = rows(pg)["events"]
        assert len(ev) == len(want["events"]) + 1
        second, _ = export_inventory(
            pg, target, [env.key.recipient], now=datetime.now(UTC) + timedelta(seconds=2)
        )
    finally:
        pg.close()
    back = Inventory(f"sqlite:///{tmp_path / 'back.db'}")
    import_inventory(back, target, [env.key.identity], key=second.key.removeprefix(PREFIX))
    got = rows(back)
    assert {k: v for k, v in got.items() if k != "events"} == {
        k: v for k, v in want.items() if k != "events"
    }
    assert set(want["events"]) < set(got["events"])
    back.close()
    next(pg_urls, None)  # drop the schema


def test_copy_is_hot_on_a_deep_archive_bucket(
    aws_env: MotoServer, key: Key, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = f"inv-{secrets.token_hex(4)}"
    s3 = aws_env.client()
    s3.create_bucket(Bucket=bucket)
    src = tmp_path / "src"
    make_tree(src, big=False)
    config = tmp_path / "policies.toml"
    write_policy(
        config, name="p", sources=[str(src)],
        target=f"s3://{bucket}/v?storage_class=DEEP_ARCHIVE", recipients=[key.recipient],
    )  # fmt: skip
    url = f"sqlite:///{tmp_path / 'inv.db'}"
    env = Env(tmp_path, config, src, tmp_path / "unused", key, url)
    ok(cli(env, "run", "p"))
    objects = {o["Key"]: o["StorageClass"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    copies = [k for k in objects if k.startswith("v/" + PREFIX)]
    assert len(copies) == 1
    assert (
        s3.head_object(Bucket=bucket, Key=copies[0]).get("StorageClass", "STANDARD") == "STANDARD"
    )
    archive = [k for k in objects if k.endswith(".tar.zst.age") and "/p/" in "/" + k]
    assert s3.head_object(Bucket=bucket, Key=archive[0])["StorageClass"] == "DEEP_ARCHIVE"
    listing = json.loads(ok(cli(env, "inventory", "exports", f"s3://{bucket}/v?storage_class=DEEP_ARCHIVE", "--json")).stdout)  # fmt: skip
    assert [e["key"] for e in listing] == [copies[0][2:]]
    # no cold object had a retrieval requested to import it
    fresh = {"BACKUP_INVENTORY_URL": f"sqlite:///{tmp_path / 'fresh.db'}"}
    res = json.loads(ok(cli(env, "inventory", "import", f"s3://{bucket}/v", "--json", extra_env=fresh)).stdout)  # fmt: skip
    assert res["added"]["archives"] == 1
    assert "Restore" not in s3.head_object(Bucket=bucket, Key=archive[0])


@pytest.mark.parametrize(
    "inventory_url", ["sqlite"], indirect=True
)  # the database is not what these test
def test_keeps_the_newest_copies_of_each_host(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    inv = Inventory(env.inventory_url)
    target = f"file://{env.vault}"
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    monkeypatch.setattr(socket, "gethostname", lambda: "other-host")
    export_inventory(inv, target, [env.key.recipient], keep=3, now=t0)
    monkeypatch.setattr(socket, "gethostname", lambda: "this_host")
    deleted_all = []
    for i in range(5):
        _, deleted = export_inventory(
            inv, target, [env.key.recipient], keep=3, now=t0 + timedelta(hours=i + 1)
        )
        deleted_all += deleted
    keys = [e.key for e in list_exports(open_target(target))]
    assert keys == [
        f"{PREFIX}20260301T000000Z-other-host.inventory.zst.age",
        f"{PREFIX}20260301T030000Z-this-host.inventory.zst.age",
        f"{PREFIX}20260301T040000Z-this-host.inventory.zst.age",
        f"{PREFIX}20260301T050000Z-this-host.inventory.zst.age",
    ]
    assert deleted_all == [
        f"{PREFIX}20260301T010000Z-this-host.inventory.zst.age",
        f"{PREFIX}20260301T020000Z-this-host.inventory.zst.age",
    ]
    inv.close()


def _fill(inv: Inventory, n: int) -> None:
    """Events of random text: an export spanning several age chunks (64 KiB each)."""
    from backup.inventory.models import Event

    with inv.session() as s:
        for _ in range(n):
            s.add(
                Event(time=datetime.now(UTC), level="info", kind="test", message=secrets.token_hex(64), data="{}")
            )  # fmt: skip


@pytest.mark.parametrize(
    "inventory_url", ["sqlite"], indirect=True
)  # the database is not what these test
def test_wrong_identity_and_damaged_copy_are_one_line_and_import_nothing(
    env: Env, tmp_path: Path
) -> None:
    three_runs(env)
    inv = Inventory(env.inventory_url)
    _fill(inv, 3000)
    info, _ = export_inventory(inv, f"file://{env.vault}", [env.key.recipient])
    inv.close()
    fresh_url = f"sqlite:///{tmp_path / 'fresh.db'}"
    e = {"BACKUP_INVENTORY_URL": fresh_url}
    other = tmp_path / "other.txt"
    ok(cli(env, "keys", "generate", "--out", str(other)))
    one_line_error(
        cli(env, "inventory", "import", f"file://{env.vault}", "--identity", str(other), extra_env=e),
        "No identity matches",
    )  # fmt: skip
    path = env.vault / info.key
    data = bytearray(path.read_bytes())
    assert len(data) > 3 * 65536  # the damage is chunks past rows already inserted
    data[-1000] ^= 0x01
    path.write_bytes(bytes(data))
    one_line_error(
        cli(env, "inventory", "import", f"file://{env.vault}", "--from", info.key, extra_env=e),
        info.key, "damaged, nothing imported",
    )  # fmt: skip
    fresh = Inventory(fresh_url)
    assert all(v == [] for v in rows(fresh).values())
    fresh.close()
    one_line_error(
        cli(env, "inventory", "import", f"file://{env.vault}", "--from", "nope", extra_env=e),
        "no export",
    )  # fmt: skip


@pytest.mark.parametrize(
    "inventory_url", ["sqlite"], indirect=True
)  # the database is not what these test
def test_backup_succeeds_when_the_copy_fails(env: Env) -> None:
    # the target refuses the copy: a file stands where its directory would be
    env.vault.mkdir(parents=True, exist_ok=True)
    (env.vault / PREFIX.rstrip("/")).write_text("in the way")
    make_tree(env.source, big=False)
    run = json.loads(ok(cli(env, "run", "p", "--json")).stdout)
    inv = Inventory(env.inventory_url)
    assert inv.get(run["id"]).state == "complete"
    failed = [ev for ev in inv.events() if ev.kind == "inventory-export"]
    assert [ev.level for ev in failed] == ["error"]
    assert "inventory copy to file://" in failed[0].message
    inv.close()


@pytest.mark.parametrize(
    "inventory_url", ["sqlite"], indirect=True
)  # the database is not what these test
def test_the_copy_holds_no_secret(env: Env, receiver: Any) -> None:
    password = "s3cr3t-" + secrets.token_hex(8)
    url = f"json://user:{password}@127.0.0.1:{receiver.port}/hook"
    write_policy(
        env.config, name="p", sources=[str(env.source)], target=f"file://{env.vault}",
        recipients=[env.key.recipient],
    )  # fmt: skip
    env.config.write_text(env.config.read_text() + '[policy.notify]\non_success = ["ops"]\n')
    make_tree(env.source, big=False)
    ok(cli(env, "run", "p", extra_env={"BACKUP_NOTIFY_OPS": url}))
    assert receiver.requests  # the notification went out, with its password
    inv = Inventory(env.inventory_url)
    info, _ = export_inventory(inv, f"file://{env.vault}", [env.key.recipient])
    inv.close()
    plain = subprocess.run(
        f"age -d -i {env.key.path} {env.vault / info.key} | zstd -d -q -c",
        shell=True, capture_output=True, check=True,
    ).stdout  # fmt: skip
    secret_key = env.key.identity.to_string()
    assert password.encode() not in plain
    assert secret_key.encode() not in plain and b"AGE-SECRET-KEY" not in plain


@pytest.mark.parametrize(
    "inventory_url", ["sqlite"], indirect=True
)  # the database is not what these test
def test_interval_setting_and_export_on_demand(env: Env) -> None:
    make_tree(env.source, big=False)
    target = f"file://{env.vault}"
    hourly = {"BACKUP_INVENTORY_EXPORT_INTERVAL": "3600"}
    ok(cli(env, "run", "p", extra_env=hourly))
    (env.source / "plain.txt").write_bytes(b"changed\n")
    ok(cli(env, "run", "p", extra_env=hourly))
    inv = Inventory(env.inventory_url)
    copies = lambda: [ev for ev in inv.events() if ev.kind == "inventory-export"]  # noqa: E731
    assert len(copies()) == 1  # the second run was within the hour
    ok(cli(env, "run", "p", extra_env={"BACKUP_INVENTORY_EXPORT_AFTER_RUN": "false"}))
    assert len(copies()) == 1
    ok(cli(env, "run", "p"))  # every run, with an interval of 0
    assert len(copies()) == 2
    from backup.settings import Settings

    os.environ.pop("BACKUP_INVENTORY_EXPORT_INTERVAL")
    assert Settings().inventory_export_interval == 3600  # by default, at most one an hour
    inv.close()
    # on demand: by policy, or by target URL (the recipients of the policies using it)
    out = json.loads(ok(cli(env, "inventory", "export", "--policy", "p", "--json")).stdout)
    assert out["target"] == target and out["key"].startswith(PREFIX)
    one_line_error(cli(env, "inventory", "export"), "TARGET_URL or --policy")
    one_line_error(cli(env, "inventory", "export", "file:///nowhere"), "no policy uses target")
    listing = ok(cli(env, "inventory", "exports", target)).stdout.splitlines()
    assert len(listing) == len(list_exports(open_target(target))) >= 1


def test_merge_into_an_inventory_in_use(env: Env, tmp_path: Path) -> None:
    """Into an inventory with rows of its own, in the other database: counters that collide
    are renumbered (past every id the copy keeps), rows it holds differently are kept and
    reported, and the second import adds nothing."""
    ids = three_runs(env)
    a = Inventory(env.inventory_url)
    _fill(a, 6000)  # more than one batch of events
    want = rows(a)
    info, _ = export_inventory(a, f"file://{env.vault}", [env.key.recipient])
    a.close()
    schemas = None
    if env.inventory_url.startswith("sqlite") and POSTGRES_URL:
        schemas = postgres_schema_url()
        b = Inventory(next(schemas))
    else:
        b = Inventory(f"sqlite:///{tmp_path / 'b.db'}")
    try:
        for n in range(3):
            b.log("local", f"this machine's own event {n}")
        res = import_inventory(b, f"file://{env.vault}", [env.key.identity], key=info.key)
        assert res.conflicts == []
        assert res.added["events"] == len(want["events"])
        got = rows(b)
        assert {k: v for k, v in got.items() if k != "events"} == {
            k: v for k, v in want.items() if k != "events"
        }
        assert len(got["events"]) == len(want["events"]) + 3
        b.update_archive(ids[0], state="deleted")
        again = import_inventory(b, f"file://{env.vault}", [env.key.identity], key=info.key)
        assert sum(again.added.values()) == 0
        assert again.conflicts == [f"archives {ids[0]}: kept as it is (state differ)"]
        assert b.get(ids[0]).state == "deleted"
        b.log("local", "after the imports")  # the counter goes on past every imported id
    finally:
        b.close()
        if schemas is not None:
            next(schemas, None)


def test_a_copy_and_its_import_hold_packed_index_runs_a_few_at_a_time(
    tmp_path: Path, key: Key
) -> None:
    # A full of 10M paths leaves ~1,000 packed runs of its file index (~200 KB each). The
    # copy made after every run read them 5,000 rows at a time, i.e. the whole table at
    # once: the 10M-file benchmark's full peaked at 410 MiB where the run itself held
    # 130. Here 48 runs of 512 KB (24 MB): the copy must hold a few, not all of them.
    import tracemalloc

    from backup.inventory import Archive

    inv = Inventory(f"sqlite:///{tmp_path / 'inv.db'}")
    inv.add_archive(
        Archive(
            id="a1", policy="p", target="file:///v", location="p/a1", manifest_location="p/a1.m",
            kind="full", parent_id=None, created=datetime(2026, 11, 1, tzinfo=UTC),
            state="complete",
        )
    )  # fmt: skip
    blobs = [secrets.token_bytes(512 * 1024) for _ in range(48)]
    for seq, blob in enumerate(blobs):
        inv.add_file_index_chunk("a1", seq, blob)
    target = tmp_path / "vault"
    target.mkdir()
    tracemalloc.start()
    try:
        info, _ = export_inventory(inv, f"file://{target}", [key.recipient])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 * 1024 * 1024, f"the copy held {peak >> 20} MiB"
    # and it is whole: every run comes back byte for byte
    back = Inventory(f"sqlite:///{tmp_path / 'back.db'}")
    tracemalloc.start()
    try:
        import_inventory(back, f"file://{target}", [key.identity], key=info.key)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 * 1024 * 1024, f"the import held {peak >> 20} MiB"
    with back.engine.connect() as c:
        got = c.execute(sa.text("SELECT seq, blob FROM file_index_chunks ORDER BY seq")).all()
    assert [bytes(b) for _, b in got] == blobs
