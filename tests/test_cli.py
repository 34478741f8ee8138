"""The ``backup`` command as a user runs it: keys, run/list/show with --json and exit
codes, prune. Each CLI run is a subprocess (about a second each), so setup that is not
under test goes through the library."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backup.crypto.age import load_identities
from backup.engine import run_backup
from backup.inventory import Inventory
from backup.restore import restore
from backup.retention import apply_prune, plan_prune
from tests.conftest import Env, require_tools, write_policy
from tests.test_interop import cli, make_tree, q, sh


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tools("age", "zstd", "tar")


def test_keys_generate(tmp_path: Path) -> None:
    f = tmp_path / "id.txt"
    proc = cli(None, "keys", "generate", "--out", str(f))
    assert proc.returncode == 0, proc.stderr
    rcpt = proc.stdout.strip()
    assert rcpt.startswith("age1") and len(rcpt.splitlines()) == 1
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    text = f.read_text()
    secrets_ = [ln for ln in text.splitlines() if ln.startswith("AGE-SECRET-KEY-1")]
    assert len(secrets_) == 1
    assert secrets_[0] not in proc.stdout + proc.stderr
    # the real age agrees on the recipient, and decrypts what is encrypted to it
    assert sh(f"age-keygen -y {q(f)}").stdout.decode().strip() == rcpt
    msg = tmp_path / "msg"
    msg.write_text("hello")
    sh(f"age -r {rcpt} -o {q(msg)}.age {q(msg)}")
    assert sh(f"age -d -i {q(f)} {q(msg)}.age").stdout == b"hello"

    proc = cli(None, "keys", "generate", "--out", str(f))
    assert proc.returncode == 1
    assert "exists" in proc.stderr and "--force" in proc.stderr
    assert f.read_text() == text

    proc = cli(None, "keys", "generate", "--out", str(f), "--force")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() != rcpt
    assert f.read_text() != text
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert load_identities(f)[0].recipient().to_string() == proc.stdout.strip()  # type: ignore[attr-defined]


def _utc(s: str) -> datetime:
    assert s.endswith("Z"), s
    t = datetime.fromisoformat(s)
    assert t.utcoffset() is not None and t.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    return t


def test_run_list_show(env: Env, inventory: Inventory) -> None:
    make_tree(env.source, big=False)
    first = run_backup(env.policy(), inventory).archive
    (env.source / "plain.txt").write_text("changed")
    second = run_backup(env.policy(), inventory).archive

    proc = cli(env, "run", "p", "--full", "--json")
    assert proc.returncode == 0, proc.stderr
    forced = json.loads(proc.stdout)
    assert forced["kind"] == "full" and forced["parent"] is None
    assert forced["unreadable"] == [] and forced["changed_while_reading"] == []
    assert forced["entries"] == first.entries

    proc = cli(env, "list", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["id"] for r in rows] == [first.id, second.id, forced["id"]]
    assert [r["kind"] for r in rows] == ["full", "incremental", "full"]
    assert rows[1]["parent"] == first.id
    assert rows[1]["entries"] == 1
    for r in rows:
        assert r["state"] == "complete"
        assert abs(_utc(r["created"]) - datetime.now(UTC)).total_seconds() < 300
        assert (env.vault / r["location"]).is_file() and (env.vault / r["manifest"]).is_file()

    proc = cli(env, "show", first.id, "--json")
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["id"] == first.id
    by_path = {os.fsencode(e["path"]): e for e in shown["entries_list"]}
    assert set(by_path) == {r.path for r in inventory.records(first.id)}
    odd = by_path[b"bad\xff\xfename"]  # not UTF-8: survives as a surrogate escape
    assert odd["type"] == "file" and odd["size"] == len(b"not utf-8")
    assert by_path[b"ro.txt"]["mode"] == "0400"
    assert by_path[b"link-rel"]["link"] == "plain.txt"
    st = os.stat(env.source / "exec.sh")
    assert by_path[b"exec.sh"]["mtime_ns"] == st.st_mtime_ns
    assert _utc(by_path[b"exec.sh"]["mtime"]).timestamp() == pytest.approx(st.st_mtime, abs=1e-5)


def test_prune(tmp_path: Path, env: Env, inventory: Inventory) -> None:
    write_policy(
        env.config,
        name="p",
        sources=[str(env.source)],
        target=f"file://{env.vault}",
        recipients=[env.key.recipient],
        retention={"keep_last": 1},
    )
    (env.source / "f").write_text("1")
    chain = [run_backup(env.policy(), inventory).archive.id]
    for i in (2, 3):
        (env.source / "f").write_text(str(i))
        chain.append(run_backup(env.policy(), inventory).archive.id)
    objects = sorted(p.name for p in (env.vault / "p").iterdir())
    assert len(objects) == 6

    # keep_last = 1 keeps the newest incremental, and so the archives it needs
    plan = plan_prune(inventory, "p", env.policy().retention)
    assert plan.delete == [] and apply_prune(inventory, plan) == []
    kept = {a.id: reason for a, reason in plan.keep}
    assert set(kept) == set(chain)
    assert kept[chain[2]] == "last"
    assert kept[chain[0]].startswith("parent of kept") and kept[chain[1]].startswith(
        "parent of kept"
    )
    assert sorted(p.name for p in (env.vault / "p").iterdir()) == objects

    new_full = run_backup(env.policy(), inventory, full=True).archive.id
    proc = cli(env, "prune", "p", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    for aid in chain:
        assert f"would delete {aid}" in proc.stdout
    assert f"keep    {new_full}" in proc.stdout
    assert set(objects) <= {p.name for p in (env.vault / "p").iterdir()}
    assert all(a.state == "complete" for a in inventory.archives("p"))

    proc = cli(env, "prune", "p", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["dry_run"] is False
    assert [d["id"] for d in out["delete"]] == chain[::-1]
    assert out["deleted"] == chain[::-1]  # newest first
    assert [k["id"] for k in out["keep"]] == [new_full]
    left = sorted(p.name for p in (env.vault / "p").iterdir())
    assert left == sorted([f"{new_full}.tar.zst.age", f"{new_full}.manifest.json.zst.age"])
    states = {a.id: a.state for a in inventory.archives("p", states=())}
    assert states == {**dict.fromkeys(chain, "deleted"), new_full: "complete"}
    assert all(inventory.get(a).deleted_at is not None for a in chain)
    # the new chain still restores
    restore("p", inventory, tmp_path / "out", load_identities(env.key.path))
    assert (tmp_path / "out" / "f").read_text() == "3"


def test_error_messages_with_brackets_print_as_text(env: Env) -> None:
    r = cli(env, "show", "[bold]x[/bold]")
    assert r.returncode == 1, r.stderr
    assert "No archive matches '[bold]x[/bold]'" in r.stderr
    assert "Traceback" not in r.stderr
