"""Object Lock, legal holds and prune on an S3 bucket with Object Lock enabled (moto's server
on loopback): backups store archives in the policy's class and manifests hot, tagged and
locked; ``backup hold`` puts and lifts legal holds; prune keeps locked and held archives
with every archive they depend on, and never leaves a chain half-deleted."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from backup.cli import cli
from backup.engine import run_backup
from backup.errors import PolicyError
from backup.inventory import Archive, Inventory
from backup.policy import Policy, load_policies
from backup.retention import apply_prune, plan_prune
from backup.targets import open_target
from tests.conftest import Key
from tests.targets.s3util import new_bucket

T0 = datetime(2026, 11, 1, 2, tzinfo=UTC)


def policy_file(path: Path, source: Path, target: str, key: Key, extra: str = "") -> Path:
    path.write_text(
        f"""[[policy]]
name = "p"
sources = ["{source}"]
target = "{target}"
recipients = ["{key.recipient}"]
full_every = "7d"
{extra}
[policy.retention]
keep_last = 1
"""
    )
    return path


@pytest.fixture
def setup(
    tmp_path: Path, key: Key, aws_env: Any, monkeypatch: pytest.MonkeyPatch
) -> tuple[Policy, Inventory, str, Any]:
    bucket = new_bucket(aws_env, lock=True, prefix="lock")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("first")
    cfg = policy_file(
        tmp_path / "policies.toml",
        src,
        f"s3://{bucket}/v?storage_class=DEEP_ARCHIVE",
        key,
        'tags = { team = "ops" }',
    )
    inv_url = f"sqlite:///{tmp_path / 'inv.db'}"
    monkeypatch.setenv("BACKUP_CONFIG", str(cfg))
    monkeypatch.setenv("BACKUP_INVENTORY_URL", inv_url)
    # these tests are about locks and holds: DEEP_ARCHIVE's 180-day minimum would keep the
    # month-old archives on its own (tests/test_economics.py tests that)
    monkeypatch.setenv("BACKUP_MIN_STORAGE_DAYS", '{"DEEP_ARCHIVE": 0}')
    inv = Inventory(inv_url)
    return load_policies(cfg)["p"], inv, bucket, aws_env


def backups(pol: Policy, inv: Inventory, src: Path, n: int, start: datetime) -> list[Archive]:
    out = []
    for i in range(n):
        (src / f"f{start:%d}-{i}.txt").write_text(f"change {i}")
        out.append(run_backup(pol, inv, now=start + timedelta(hours=i)).archive)
    return out


def test_backup_stores_cold_archives_hot_manifests_tagged_and_locked(
    tmp_path: Path, key: Key, aws_env: Any
) -> None:
    bucket = new_bucket(aws_env, lock=True, prefix="lock")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("x")
    cfg = policy_file(
        tmp_path / "p.toml",
        src,
        f"s3://{bucket}/v?storage_class=DEEP_ARCHIVE",
        key,
        '[policy.object_lock]\nmode = "governance"\nretain = "30d"',
    )
    pol = load_policies(cfg)["p"]
    assert pol.object_lock is not None and pol.object_lock.mode == "GOVERNANCE"
    inv = Inventory(f"sqlite:///{tmp_path / 'inv.db'}")
    now = datetime.now(UTC).replace(microsecond=0)
    a = run_backup(pol, inv, now=now).archive
    s3 = aws_env.client()
    head = s3.head_object(Bucket=bucket, Key=f"v/{a.location}")
    mhead = s3.head_object(Bucket=bucket, Key=f"v/{a.manifest_location}")
    assert head["StorageClass"] == "DEEP_ARCHIVE"
    assert mhead.get("StorageClass", "STANDARD") == "STANDARD"
    tags = s3.get_object_tagging(Bucket=bucket, Key=f"v/{a.manifest_location}")["TagSet"]
    assert {t["Key"]: t["Value"] for t in tags} == {"policy": "p", "kind": "full", "host": a.host}
    t = open_target(pol.target)
    for ref in (a.location, a.manifest_location):
        lock = t.object_lock(ref)
        assert lock.mode == "GOVERNANCE" and lock.retain_until == now + timedelta(days=30)
    # prune would delete it (a newer chain exists) but the lock keeps it, and says so
    b = run_backup(pol, inv, full=True, now=now + timedelta(minutes=1)).archive
    plan = plan_prune(inv, "p", pol.retention)
    assert [x.id for x, _ in plan.locked] == [a.id]
    assert "GOVERNANCE retention until" in plan.locked[0][1]
    assert plan.delete == [] and {x.id for x, _ in plan.keep} == {a.id, b.id}


def test_hold_command_and_prune_keep_the_held_chain(setup: Any, tmp_path: Path) -> None:
    pol, inv, _bucket, _aws = setup
    src = pol.sources[0]
    a0, a1, a2 = backups(pol, inv, src, 3, T0)  # chain A: full, inc, inc
    assert [a.kind for a in (a0, a1, a2)] == ["full", "incremental", "incremental"]
    (b0,) = backups(pol, inv, src, 1, T0 + timedelta(days=8))  # chain B starts
    runner = CliRunner()
    r = runner.invoke(cli, ["hold", a1.id[:12], "on"])
    assert r.exit_code == 0, r.output
    assert "archive: legal hold on" in r.output and "manifest: legal hold on" in r.output
    t = open_target(pol.target)
    assert t.object_lock(a1.location).legal_hold and t.object_lock(a1.manifest_location).legal_hold

    r = runner.invoke(cli, ["prune", "p", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["deleted"] == [a2.id]  # only the incremental nothing depends on
    assert out["locked"] == [{"id": a1.id, "reason": "locked: legal hold"}]
    keep = {k["id"]: k["reason"] for k in out["keep"]}
    assert keep[a0.id] == f"parent of kept {a1.id}" and keep[b0.id] == "last"
    assert not t.exists(a2.location) and t.exists(a1.location) and t.exists(a0.location)
    assert inv.get(a2.id).state == "deleted"
    assert inv.get(a1.id).state == inv.get(a0.id).state == "complete"

    r = runner.invoke(cli, ["hold", a1.id, "off", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["archive"]["legal_hold"] is False
    r = runner.invoke(cli, ["prune", "p"])
    assert r.exit_code == 0, r.output
    assert f"deleted {a1.id}" in r.output and f"deleted {a0.id}" in r.output
    assert [a.id for a in inv.archives("p")] == [b0.id]


def test_a_refused_deletion_keeps_the_rest_of_its_chain(setup: Any) -> None:
    pol, inv, _bucket, _aws = setup
    src = pol.sources[0]
    a0, a1, a2 = backups(pol, inv, src, 3, T0)
    backups(pol, inv, src, 1, T0 + timedelta(days=8))
    plan = plan_prune(inv, "p", pol.retention)  # planned before the hold
    assert [a.id for a in plan.delete] == [a2.id, a1.id, a0.id]
    open_target(pol.target).set_legal_hold(a1.location, True)
    deleted = apply_prune(inv, plan)
    assert deleted == [a2.id]
    skipped = {a.id: why for a, why in plan.skipped}
    assert "refused" in skipped[a1.id]
    assert skipped[a0.id] == f"parent of {a1.id}, which could not be deleted"
    assert inv.get(a1.id).state == "complete" and inv.get(a0.id).state == "complete"
    t = open_target(pol.target)
    assert t.exists(a1.manifest_location) and t.exists(a0.location)
    # the chain that is left restores: its full archive and the held incremental are whole
    assert [a.id for a in inv.chain(a1.id)] == [a0.id, a1.id]


def test_hold_on_a_target_without_object_lock_says_so(env: Any) -> None:
    from backup.engine import run_backup as rb

    a = rb(env.policy(), Inventory(env.inventory_url)).archive
    r = CliRunner().invoke(cli, ["hold", a.id, "on"])
    assert r.exit_code == 1
    assert "does not support object lock" in r.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[policy.object_lock]\nmode = "strict"\nretain = "30d"', "not an Object Lock mode"),
        ('[policy.object_lock]\nmode = "COMPLIANCE"\nretain = "12h"', "at least one day"),
        ('[policy.object_lock]\nmode = "COMPLIANCE"\nretain = "soon"', "not a duration"),
        ('restore_tier = "Fastest"', "not a retrieval tier"),
        ('tags = { kind = "x" }', "set by backup itself"),
        ('tags = { "a&b" = "x" }', "tag key"),
    ],
)
def test_bad_cold_storage_fields_are_policy_errors(
    tmp_path: Path, key: Key, aws_env: Any, extra: str, message: str
) -> None:
    cfg = policy_file(tmp_path / "p.toml", tmp_path, "s3://some-bucket/x", key, extra)
    with pytest.raises(PolicyError, match=message):
        load_policies(cfg)


def test_object_lock_needs_a_target_that_has_it(tmp_path: Path, key: Key) -> None:
    cfg = policy_file(
        tmp_path / "p.toml",
        tmp_path,
        f"file://{tmp_path}/vault",
        key,
        '[policy.object_lock]\nmode = "GOVERNANCE"\nretain = "30d"',
    )
    with pytest.raises(PolicyError, match=r"object_lock: target file://.* has no Object Lock"):
        load_policies(cfg)
    pol = load_policies(policy_file(tmp_path / "q.toml", tmp_path, "file:///v", key))["p"]
    assert (pol.restore_tier, pol.tags, pol.object_lock) == ("Standard", {}, None)
