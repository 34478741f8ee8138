"""Cold-storage economics: the arithmetic against hand-computed examples from AWS's published
us-east-1 prices; prune on moto's server keeping archives inside their class's minimum
storage duration, or deleting them with the fee when allowed (locks and chains intact);
``backup cost``'s JSON; the warning for settings that fight the class."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from backup.cli import cli
from backup.economics import monthly_estimate, policy_warnings, simulate
from backup.engine import run_backup
from backup.inventory import Inventory
from backup.policy import Retention, load_policies
from backup.pricing import (
    Prices,
    class_of,
    early_delete_fee,
    free_to_delete_at,
    monthly_storage_usd,
)
from backup.settings import Settings
from backup.targets import open_target
from tests.conftest import Key
from tests.targets.s3util import new_bucket

GiB, MiB, KiB = 1024**3, 1024**2, 1024
AWS = Prices.from_settings(Settings(storage_prices={}, min_storage_days={}, put_prices={}))


def test_monthly_storage_by_hand() -> None:
    # 100 GiB in DEEP_ARCHIVE: $0.00099/GB-month, plus 32 KiB at that price and 8 KiB at
    # STANDARD's $0.023 for the one object
    one = 100 * 0.00099 + 32 / MiB * 0.00099 + 8 / MiB * 0.023
    assert monthly_storage_usd("DEEP_ARCHIVE", [100 * GiB], AWS) == pytest.approx(one)
    # a million 1 MiB objects: 976.5625 GiB of data; the ~40 KB per object adds 17.5 %
    data = 1e6 * MiB / GiB * 0.00099
    overhead = 1e6 * 32 * KiB / GiB * 0.00099 + 1e6 * 8 * KiB / GiB * 0.023
    got = monthly_storage_usd("DEEP_ARCHIVE", [MiB] * 1_000_000, AWS)
    assert got == pytest.approx(data + overhead)
    assert data == pytest.approx(0.966797, abs=1e-6)
    assert overhead == pytest.approx(0.205688, abs=1e-6)
    # GLACIER: $0.0036; STANDARD_IA bills a 1 KiB object as 128 KiB; a directory bills nothing
    assert monthly_storage_usd("GLACIER", [10 * GiB], AWS) == pytest.approx(
        10 * 0.0036 + 32 / MiB * 0.0036 + 8 / MiB * 0.023
    )
    assert monthly_storage_usd("STANDARD_IA", [KiB], AWS) == pytest.approx(128 / MiB * 0.0125)
    assert class_of("file:///srv/vault") is None
    assert class_of("s3://b/p?storage_class=deep_archive") == "DEEP_ARCHIVE"
    assert class_of("s3://b/p") == "STANDARD"
    assert class_of("glacier://vault") == "VAULT"


def test_early_deletion_fee_by_hand() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    # 100 GiB in DEEP_ARCHIVE for 30 days: 150 days of its 180 left, billed at $0.00099/30/day
    created = now - timedelta(days=30)
    fee = early_delete_fee("DEEP_ARCHIVE", 100 * GiB, created, now, AWS)
    assert fee == pytest.approx((100 + 32 / MiB) * 0.00099 / 30 * 150)
    assert fee == pytest.approx(0.495, abs=1e-5)
    assert free_to_delete_at("DEEP_ARCHIVE", created, AWS) == created + timedelta(days=180)
    # GLACIER, 10 GiB, 89 days in: one day of 90 left
    fee = early_delete_fee("GLACIER", 10 * GiB, now - timedelta(days=89), now, AWS)
    assert fee == pytest.approx((10 + 32 / MiB) * 0.0036 / 30)
    # past the minimum, or a class without one (or a store configured without): free
    assert early_delete_fee("GLACIER", GiB, now - timedelta(days=91), now, AWS) == 0
    assert early_delete_fee("STANDARD", GiB, now, now, AWS) == 0
    flat = Prices.from_settings(Settings(min_storage_days={"DEEP_ARCHIVE": 0}))
    assert early_delete_fee("DEEP_ARCHIVE", GiB, now, now, flat) == 0


def test_a_weekly_full_on_deep_archive_keeps_about_26_fulls_billed() -> None:
    s = simulate(
        "DEEP_ARCHIVE",
        run_every=timedelta(days=1),
        full_every=timedelta(days=7),
        retention=Retention(keep_daily=7),
        full_bytes=100 * GiB,
        incremental_bytes=1 * GiB,
        growth_per_month=0.0,
        prices=AWS,
    )
    # every archive is billed its 180 days: 180 daily archives, 180/7 = 25.7 of them fulls
    assert s.archives_billed == pytest.approx(180, rel=0.01)
    assert s.fulls_billed == pytest.approx(180 / 7, rel=0.02)
    gb = 180 / 7 * 100 + (180 - 180 / 7) * 1
    assert s.storage_usd == pytest.approx(gb * 0.00099, rel=0.02)
    # 30 runs a month, two objects each: the archive at DEEP_ARCHIVE's PUT price, the manifest
    # at STANDARD's
    assert s.requests_usd == pytest.approx(30 * (0.05 + 0.005) / 1000)
    # the same with a monthly full: about 7 fulls billed, a fraction of the bill
    m = simulate(
        "DEEP_ARCHIVE",
        run_every=timedelta(days=1),
        full_every=timedelta(days=30),
        retention=Retention(keep_daily=7),
        full_bytes=100 * GiB,
        incremental_bytes=1 * GiB,
        growth_per_month=0.0,
        prices=AWS,
    )
    assert m.fulls_billed == pytest.approx(6, abs=1) and m.monthly_usd < s.monthly_usd / 2


def _policy_toml(path: Path, target: str, key: Key, retention: str, full_every: str = "7d") -> Path:
    path.write_text(
        f"""[[policy]]
name = "p"
sources = ["{path.parent / "src"}"]
target = "{target}"
recipients = ["{key.recipient}"]
schedule = "0 2 * * *"
full_every = "{full_every}"
[policy.retention]
{retention}
"""
    )
    return path


def test_the_quick_estimate_prices_each_size_once(
    tmp_path: Path, key: Key, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `status` and `schedule` estimate every cold policy: with ~180 archives billed per
    # DEEP_ARCHIVE policy, pricing them one by one made 1,000 policies 1.7x one policy
    import backup.pricing as pricing

    (tmp_path / "src").mkdir()
    cfg = _policy_toml(
        tmp_path / "p.toml", "s3://b/p?storage_class=DEEP_ARCHIVE", key, "keep_daily = 7"
    )
    pol = load_policies(cfg)["p"]
    full, inc = 3 * GiB, 40 * MiB
    priced: list[int] = []
    real = pricing.billable_bytes

    def counted(cls: str, size: int) -> tuple[float, float]:
        priced.append(size)
        return real(cls, size)

    monkeypatch.setattr(pricing, "billable_bytes", counted)
    got = monthly_estimate(pol, full, inc, AWS)
    assert got is not None and sorted(priced) == [inc, full]
    # the same as pricing every archive billed: 180 days (the minimum) of daily runs, a full
    # every 7 days (the fixture's)
    fulls = (180 + 7) / 7
    by_archive = monthly_storage_usd(
        "DEEP_ARCHIVE", [full] * round(fulls) + [inc] * round(181 - fulls), AWS
    )
    requests = 30 * (AWS.put["DEEP_ARCHIVE"] + AWS.put["STANDARD"]) / 1000
    assert got == pytest.approx(by_archive + requests, rel=1e-3)


def test_settings_that_fight_the_class_warn_when_the_policy_file_loads(
    tmp_path: Path, key: Key
) -> None:
    (tmp_path / "src").mkdir()
    cfg = _policy_toml(
        tmp_path / "p.toml", "s3://b/p?storage_class=DEEP_ARCHIVE", key, "keep_daily = 7"
    )
    pol = load_policies(cfg)["p"]
    lines = policy_warnings(pol, AWS)
    assert len(lines) == 2
    assert "retention keeps archives about 7 days" in lines[0] and "180 days" in lines[0]
    assert "25.7x" in lines[0]
    assert "full_every 7d" in lines[1] and "27 fulls billed" in lines[1]
    env = {"BACKUP_CONFIG": str(cfg), "BACKUP_INVENTORY_URL": f"sqlite:///{tmp_path / 'i.db'}"}
    r = subprocess.run(
        [sys.executable, "-m", "backup", "schedule", "--json"],
        env={**__import__("os").environ, **env},
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("warning: policy 'p'") == 2
    row = json.loads(r.stdout)[0]
    assert row["storage_class"] == "DEEP_ARCHIVE" and row["monthly_storage_usd"] >= 0
    # a retention longer than the minimum, or a store without minimums: nothing to say
    cfg2 = _policy_toml(
        tmp_path / "q.toml",
        "s3://b/p?storage_class=DEEP_ARCHIVE",
        key,
        "keep_monthly = 12",
        full_every="30d",
    )
    assert policy_warnings(load_policies(cfg2)["p"], AWS) == []
    flat = Prices.from_settings(Settings(min_storage_days={"DEEP_ARCHIVE": 0}))
    assert policy_warnings(pol, flat) == []


@pytest.fixture
def cold(tmp_path: Path, key: Key, aws_env: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    for var in ("BACKUP_MIN_STORAGE_DAYS", "BACKUP_STORAGE_PRICES", "BACKUP_PUT_PRICES"):
        monkeypatch.delenv(var, raising=False)

    def make(storage_class: str, retention: str) -> tuple[Any, Inventory, str]:
        bucket = new_bucket(aws_env, lock=True, prefix="cost")
        (tmp_path / "src").mkdir(exist_ok=True)
        cfg = _policy_toml(
            tmp_path / f"{storage_class}.toml",
            f"s3://{bucket}/v?storage_class={storage_class}",
            key,
            retention,
            full_every="60d",  # a new chain only where a test asks for a full
        )
        inv_url = f"sqlite:///{tmp_path / f'{storage_class}.db'}"
        monkeypatch.setenv("BACKUP_CONFIG", str(cfg))
        monkeypatch.setenv("BACKUP_INVENTORY_URL", inv_url)
        return load_policies(cfg)["p"], Inventory(inv_url), bucket

    return make


def _archives(
    pol: Any, inv: Inventory, src: Path, ages_days: list[float], full_at: set[int]
) -> list[Any]:
    now = datetime.now(UTC)
    out = []
    for i, age in enumerate(ages_days):
        (src / f"f{i}.txt").write_bytes(bytes([i]) * (20_000 + i))
        out.append(run_backup(pol, inv, full=i in full_at, now=now - timedelta(days=age)).archive)
    return out


def test_prune_keeps_deep_archive_inside_its_minimum_then_deletes_with_the_fee(
    cold: Any, tmp_path: Path
) -> None:
    pol, inv, _bucket = cold("DEEP_ARCHIVE", "keep_last = 1")
    # chain A (full 40 days ago, an incremental 39), chain B (full 20 days ago, inc 19, inc 1)
    a0, a1, b0, b1, b2 = _archives(pol, inv, tmp_path / "src", [40, 39, 20, 19, 1], {0, 2})
    assert [a.kind for a in (a0, a1, b0, b1, b2)] == [
        "full",
        "incremental",
        "full",
        "incremental",
        "incremental",
    ]
    runner = CliRunner()

    r = runner.invoke(cli, ["prune", "p", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["deleted"] == [] and out["delete"] == [] and out["early_delete_fee_usd"] == 0
    keep = {k["id"]: k for k in out["keep"]}
    for a in (a0, a1, b1):
        assert keep[a.id]["reason"].startswith("minimum storage duration of DEEP_ARCHIVE")
        free_at = datetime.fromisoformat(keep[a.id]["free_to_delete_at"].replace("Z", "+00:00"))
        assert abs(free_at - (a.created + timedelta(days=180))) < timedelta(seconds=1)
    assert keep[b2.id]["reason"] == "last" and keep[b0.id]["reason"].startswith(
        ("parent", "minimum")
    )

    # the dry run prices what early deletion would cost, and deletes nothing
    r = runner.invoke(cli, ["prune", "p", "--dry-run", "--allow-early-delete", "--json"])
    out = json.loads(r.stdout)
    assert out["deleted"] == []
    assert [d["id"] for d in out["delete"]] == [a1.id, a0.id]  # b0, b1 stay: b2 needs them
    now = datetime.now(UTC)
    for d, a in zip(out["delete"], (a1, a0), strict=True):
        want = early_delete_fee("DEEP_ARCHIVE", a.size_stored, a.created, now, AWS)
        assert d["early_delete_fee_usd"] == pytest.approx(want, rel=1e-3)
        assert want == pytest.approx(
            (a.size_stored + 32 * KiB) / GiB * 0.00099 / 30 * (180 - 40 + (1 if a is a1 else 0)),
            rel=1e-3,
        )
    assert out["early_delete_fee_usd"] == pytest.approx(
        sum(d["early_delete_fee_usd"] for d in out["delete"]), abs=1e-6
    )
    t = open_target(pol.target)
    assert t.exists(a0.location) and t.exists(a1.location)

    # a legal hold on the chain keeps it even when early deletion is allowed
    t.set_legal_hold(a1.location, True)
    r = runner.invoke(cli, ["prune", "p", "--allow-early-delete", "--json"])
    out = json.loads(r.stdout)
    assert out["deleted"] == [] and {k["id"] for k in out["keep"]} >= {a0.id, a1.id}
    t.set_legal_hold(a1.location, False)

    r = runner.invoke(cli, ["prune", "p", "--allow-early-delete"])
    assert r.exit_code == 0, r.output
    assert f"deleted {a1.id}" in r.output and "early-deletion fee $" in r.output
    assert "early-deletion fees: $" in r.output
    assert not t.exists(a0.location) and not t.exists(a1.location)
    assert [a.id for a in inv.archives("p")] == [b0.id, b1.id, b2.id]  # chain B whole


def test_prune_on_glacier_deletes_what_is_past_90_days_and_holds_the_rest(
    cold: Any, tmp_path: Path
) -> None:
    pol, inv, _bucket = cold("GLACIER", "keep_last = 1")
    old, young, last = _archives(pol, inv, tmp_path / "src", [120, 30, 1], {0, 1, 2})
    r = CliRunner().invoke(cli, ["prune", "p", "--json"])
    out = json.loads(r.stdout)
    assert out["deleted"] == [old.id]  # past its 90 days: free
    assert "early_delete_fee_usd" not in out["delete"][0]
    keep = {k["id"]: k for k in out["keep"]}
    assert "free_to_delete_at" in keep[young.id] and keep[last.id]["reason"] == "last"
    assert out["early_delete_fee_usd"] == 0


def test_cost_command_json(cold: Any, tmp_path: Path) -> None:
    pol, inv, _bucket = cold("DEEP_ARCHIVE", "keep_daily = 7")
    _archives(pol, inv, tmp_path / "src", [3, 2, 1], {0})
    r = CliRunner().invoke(cli, ["cost", "p", "--months", "6", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["storage_class"] == "DEEP_ARCHIVE" and out["months"] == 6
    assert out["monthly_usd"] > 0 and out["yearly_usd"] == pytest.approx(
        out["monthly_usd"] * 12, abs=0.01
    )
    assert set(out["breakdown"]) == {"storage_usd", "overhead_usd", "requests_usd"}
    assert out["inputs"]["full_bytes"] == inv.archives("p")[0].size_stored
    alts = {(a["storage_class"], a["full_every_days"]) for a in out["alternatives"]}
    # the policy's full_every is 60 d (the fixture's): every other choice is an alternative
    assert alts == {(c, d) for c in ("DEEP_ARCHIVE", "GLACIER") for d in (7, 30, 90)}
    for a in out["alternatives"]:
        assert a["restore_hours"][1] > 0 and a["restore_usd"] >= 0
    by = {(a["storage_class"], a["full_every_days"]): a for a in out["alternatives"]}
    # a weekly full on DEEP_ARCHIVE keeps ~26 fulls billed, a monthly one ~7
    assert by[("DEEP_ARCHIVE", 7)]["fulls_billed"] > 3 * by[("DEEP_ARCHIVE", 30)]["fulls_billed"]
    assert by[("GLACIER", 7)]["restore_hours"] == [3.0, 5.0]
    assert by[("DEEP_ARCHIVE", 7)]["restore_hours"] == [6.0, 12.0]
    # the closed form schedule/status carry is close to the simulation
    quick = monthly_estimate(
        pol, out["inputs"]["full_bytes"], out["inputs"]["incremental_bytes"], AWS
    )
    assert quick == pytest.approx(out["monthly_usd"], rel=0.1)
