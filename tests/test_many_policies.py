"""Many policies in one file (issue 15): a command validates and opens only the policies it
touches. Counts target constructions, in process, through the real CLI: ``schedule``,
``status`` and ``list`` build none, ``run P`` builds P's only; a broken other policy does not
stop ``run P``, and a broken P is refused with one line naming it and the field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from backup.cli import cli
from backup.errors import PolicyError
from backup.policy import PolicyFile, load_policies, read_policies
from backup.targets import FileTarget, Target
from backup.targets.glacier import GlacierTarget
from backup.targets.s3 import S3Target
from tests.conftest import Key

MANY = 60


def policy_table(name: str, target: str, recipient: str, **extra: str) -> str:
    fields = {
        "name": json.dumps(name),
        "sources": json.dumps(["/srv/data"]),
        "target": json.dumps(target),
        "recipients": json.dumps([recipient]),
        "schedule": json.dumps("0 2 * * *"),
        **extra,
    }
    return "[[policy]]\n" + "".join(f"{k} = {v}\n" for k, v in fields.items()) + "\n"


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URL of every target constructed while the test runs."""
    urls: list[str] = []
    for cls in (FileTarget, S3Target, GlacierTarget):
        init = cls.__init__

        def counting(self: Target, url: str, *a: Any, __init: Any = init, **kw: Any) -> None:
            urls.append(url)
            __init(self, url, *a, **kw)

        monkeypatch.setattr(cls, "__init__", counting)
    return urls


@pytest.fixture
def many(tmp_path: Path, key: Key, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A file of MANY policies: the first backs up a local tree to a file:// target, the
    others name S3 buckets (never reached: nothing may build them)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n" * 100)
    config = tmp_path / "policies.toml"
    body = policy_table("p0000", f"file://{tmp_path / 'vault'}", key.recipient).replace(
        '"/srv/data"', json.dumps(str(src))
    )
    for i in range(1, MANY):
        body += policy_table(f"p{i:04d}", f"s3://bucket/p{i:04d}", key.recipient)
    config.write_text(body)
    monkeypatch.setenv("BACKUP_CONFIG", str(config))
    monkeypatch.setenv("BACKUP_INVENTORY_URL", f"sqlite:///{tmp_path / 'inv.db'}")
    monkeypatch.delenv("BACKUP_BROKER_URL", raising=False)
    yield config


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize(
    "args", [["schedule", "--json"], ["schedule"], ["status", "--json"], ["list", "--json"]]
)
def test_listing_commands_build_no_target(many: Path, built: list[str], args: list[str]) -> None:
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    assert built == []
    if args == ["schedule", "--json"]:
        rows = json.loads(r.output)
        assert [row["policy"] for row in rows] == [f"p{i:04d}" for i in range(MANY)]
        assert all(len(row["next_runs"]) == 3 for row in rows)
        assert rows[0]["next_runs"] == rows[-1]["next_runs"]
    if args == ["status", "--json"]:
        assert len(json.loads(r.output)["next_runs"]) == MANY


def test_run_builds_only_the_target_of_its_policy(many: Path, built: list[str]) -> None:
    own = load_policies(many)["p0000"].target
    built.clear()
    r = invoke("run", "p0000", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["kind"] == "full"
    assert built and set(built) == {own}


def test_run_beside_a_broken_other_policy_and_refusing_a_broken_one(
    many: Path, built: list[str]
) -> None:
    text = many.read_text()
    start = text.index('name = "p0007"')
    broken = text[:start] + text[start:].replace("age1", "age1broken", 1)
    many.write_text(broken)
    r = invoke("run", "p0000", "--json")
    assert r.exit_code == 0, r.output
    r = invoke("run", "p0007")
    assert r.exit_code == 1
    assert str(many) in r.output and "policy 'p0007'" in r.output and "recipients:" in r.output
    assert "Traceback" not in r.output
    # the schedule fields are all schedule reads: it lists every policy, the broken one too
    r = invoke("schedule", "--json")
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)) == MANY
    r = invoke("schedule", "--check")  # validates every policy: finds the broken one
    assert r.exit_code == 1 and "policy 'p0007'" in r.output and "recipients:" in r.output
    # run p0007 and schedule --check open the targets of the policies they validate
    assert {u for u in built if u.startswith("s3://")} == {
        f"s3://bucket/p{i:04d}" for i in range(1, 8)
    }


def test_a_broken_schedule_fails_schedule_and_leaves_status_its_jobs(many: Path) -> None:
    text = many.read_text()
    start = text.index('name = "p0031"')
    many.write_text(text[:start] + text[start:].replace("0 2 * * *", "0 25 * * *", 1))
    r = invoke("schedule")
    assert r.exit_code == 1
    assert "policy 'p0031'" in r.output and "schedule:" in r.output and "hour field" in r.output
    r = invoke("status", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["next_runs"] == []
    assert invoke("run", "p0000", "--json").exit_code == 0


def test_the_file_is_parsed_once_per_content(many: Path) -> None:
    first = read_policies(many)
    assert read_policies(many) is first
    assert first["p0003"] is first["p0003"]  # validated once
    # same size, and on a coarse clock the same mtime: the content still tells
    many.write_text(many.read_text().replace("0 2 * * *", "0 3 * * *"))
    again = read_policies(many)
    assert again is not first
    assert {s.schedule for s in again.schedules()} == {"0 3 * * *"}


def test_the_whole_file_is_checked_for_names(tmp_path: Path, key: Key) -> None:
    f = tmp_path / "p.toml"
    good = policy_table("a", "s3://b/a", key.recipient)
    f.write_text(good + policy_table("a", "s3://b/x", key.recipient))
    with pytest.raises(PolicyError, match="policy 'a': name: defined twice"):
        read_policies(f)
    f.write_text(good + policy_table("bad name!", "s3://b/x", key.recipient))
    with pytest.raises(PolicyError, match="policy 'bad name!': name: must be 1-64"):
        read_policies(f)
    f.write_text(good + good.replace('name = "a"\n', ""))
    with pytest.raises(PolicyError, match="policy '#2': name: Field required"):
        read_policies(f)


def test_a_broken_policy_is_reported_by_name_and_field_when_used(tmp_path: Path, key: Key) -> None:
    f = tmp_path / "p.toml"
    f.write_text(
        policy_table("a", "s3://b/a", key.recipient)
        + policy_table("b", "s3x://b/b", key.recipient, compression_level="99")
    )
    pf = read_policies(f)
    assert isinstance(pf, PolicyFile) and list(pf) == ["a", "b"] and "b" in pf
    assert pf["a"].target == "s3://b/a"
    for _ in range(2):  # a failure is not remembered as a policy
        with pytest.raises(PolicyError) as e:
            pf["b"]
        msg = e.value.get_message()
        assert str(f) in msg and "policy 'b'" in msg
        assert "compression_level:" in msg and "target:" in msg
    with pytest.raises(PolicyError, match="policy 'b'"):
        load_policies(f)
    with pytest.raises(PolicyError, match="policy 'b'"):
        pf.validate_all()
    assert pf.get("nope") is None
