"""``backup inventory sync glacier://vault`` against moto's Glacier (its inventory jobs finish
after about five seconds): the job is started once and reused, polled, and the vault's
archive list reconciled with the inventory both ways."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from backup.cli import cli
from backup.inventory import Archive, Inventory
from backup.inventory.sync import reconcile, start_inventory_job
from backup.targets.glacier import GlacierTarget, parse_ref


def store(t: GlacierTarget, key: str, data: bytes) -> str:
    with t.open_write(key) as w:
        w.write(data)
        return w.commit()


def row(aid: str, url: str, loc: str, man: str, created: datetime) -> Archive:
    return Archive(
        id=aid,
        policy="p",
        target=url,
        location=loc,
        manifest_location=man,
        kind="full",
        parent_id=None,
        created=created,
        state="complete",
        host="h",
        format_version=1,
    )


@pytest.fixture
def vault(aws_env: Any, monkeypatch: pytest.MonkeyPatch) -> GlacierTarget:
    monkeypatch.setenv("BACKUP_GLACIER_ENDPOINT_URL", aws_env.endpoint)
    name = f"inv-{os.urandom(4).hex()}"
    aws_env.client("glacier").create_vault(vaultName=name)
    return GlacierTarget(f"glacier://{name}")


def test_sync_reports_both_ways(
    vault: GlacierTarget, aws_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inv_url = f"sqlite:///{tmp_path / 'inv.db'}"
    monkeypatch.setenv("BACKUP_INVENTORY_URL", inv_url)
    inv = Inventory(inv_url)
    past = datetime.now(UTC) - timedelta(days=1)
    a = store(vault, "p/A.tar.zst.age", b"archive A")
    am = store(vault, "p/A.manifest.json.zst.age", b"manifest A")
    inv.add_archive(row("A", vault.url, a, am, past))
    stray = store(vault, "p/S.tar.zst.age", b"archive the inventory lost")
    aws_env.client("glacier").upload_archive(
        vaultName=vault.vault, archiveDescription="someone else's", body=b"foreign"
    )
    gone = f"p/G.tar.zst.age#{'0' * 32}#{'1' * 64}"
    inv.add_archive(row("G", vault.url, gone, f"p/G.m#{'2' * 32}", past))
    fresh = f"p/N.tar.zst.age#{'3' * 32}"
    inv.add_archive(row("N", vault.url, fresh, f"p/N.m#{'4' * 32}", past + timedelta(days=30)))

    runner = CliRunner()
    r = runner.invoke(cli, ["inventory", "sync", vault.url, "--no-wait", "--json"])
    assert r.exit_code == 0, r.output
    started = json.loads(r.output)
    assert started["state"] == "running"
    assert start_inventory_job(vault) == started["job_id"]  # reused, not started again

    r = runner.invoke(cli, ["inventory", "sync", vault.url, "--poll", "0.5", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["matched"] == 2 and not rep["consistent"]
    assert [v["key"] for v in rep["only_in_vault"]] == ["p/S.tar.zst.age"]
    assert rep["only_in_vault"][0]["archive_id"] == parse_ref(vault.url, stray)[1]
    assert len(rep["foreign"]) == 1
    assert {(x["archive"], x["ref"]) for x in rep["only_in_inventory"]} == {
        ("G", gone),
        ("G", f"p/G.m#{'2' * 32}"),
    }
    assert {x["archive"] for x in rep["too_new"]} == {"N"}
    events = [e.message for e in inv.events() if e.kind == "inventory-sync"]
    assert events and "1 only in the vault" in events[0]

    r = runner.invoke(cli, ["inventory", "sync", vault.url, "--poll", "0.5"])
    assert r.exit_code == 0, r.output
    assert "only in the vault:     p/S.tar.zst.age" in r.output
    assert "1 archive(s) not written by backup" in r.output


def test_sync_refuses_other_targets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUP_INVENTORY_URL", f"sqlite:///{tmp_path / 'i.db'}")
    r = CliRunner().invoke(cli, ["inventory", "sync", f"file://{tmp_path}/v"])
    assert r.exit_code == 1 and "reads Glacier vaults" in r.output


def test_reconcile_without_an_inventory_date_reports_every_missing_ref() -> None:
    url = "glacier://v"
    rows = [row("X", url, "k#aid1", "m#aid2", datetime(2030, 1, 1, tzinfo=UTC))]
    rep = reconcile(rows, url, None, [])
    assert rep.only_in_inventory == [("X", "k#aid1"), ("X", "m#aid2")] and rep.too_new == []


def test_backups_record_vault_ids_and_sync_repairs_rows_that_hold_only_keys(
    vault: GlacierTarget, aws_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backup.crypto.age import X25519Identity
    from backup.engine import run_backup
    from backup.policy import load_policies
    from backup.targets import Readiness
    from tests.conftest import write_policy

    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("hello\n")
    config = tmp_path / "policies.toml"
    recipient = X25519Identity.generate().recipient().to_string()
    write_policy(config, name="p", sources=[str(src)], target=vault.url, recipients=[recipient])
    inv_url = f"sqlite:///{tmp_path / 'inv.db'}"
    monkeypatch.setenv("BACKUP_INVENTORY_URL", inv_url)
    inv = Inventory(inv_url)
    a = run_backup(load_policies(config)["p"], inv).archive
    # what the vault named the objects is recorded, so a retrieval asks for the right one
    for ref in (a.location, a.manifest_location):
        assert vault.request_retrieval(ref, tier="Expedited").state is Readiness.PENDING
    # a row written before the ids were kept holds only the keys
    old = store(vault, "p/OLD.tar.zst.age", b"old archive")
    old_m = store(vault, "p/OLD.manifest.json.zst.age", b"old manifest")
    past = datetime.now(UTC) - timedelta(days=1)
    inv.add_archive(row("OLD", vault.url, "p/OLD.tar.zst.age", "p/OLD.manifest.json.zst.age", past))

    runner = CliRunner()
    r = runner.invoke(cli, ["inventory", "sync", vault.url, "--poll", "0.5", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["consistent"] and rep["matched"] == 4, rep
    assert {(x["archive"], x["ref"]) for x in rep["repaired"]} == {("OLD", old), ("OLD", old_m)}
    fixed = inv.get("OLD")
    assert (fixed.location, fixed.manifest_location) == (old, old_m)
    r = runner.invoke(cli, ["inventory", "sync", vault.url, "--poll", "0.5", "--json"])
    rep = json.loads(r.output)
    assert rep["consistent"] and rep["matched"] == 4 and rep["repaired"] == []
