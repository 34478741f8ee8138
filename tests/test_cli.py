"""The ``backup`` command as a user runs it: keys, run/list/show with --json and exit
codes, prune. Each CLI run is a subprocess (about a second each), so setup that is not
under test goes through the library."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup.crypto.age import load_identities
from backup.engine import run_backup
from backup.errors import Error
from backup.inventory import Inventory, RetrievalJob
from backup.jobs import JobStore
from backup.restore import restore
from backup.retention import apply_prune, plan_prune
from tests.conftest import Env, MotoServer, require_tools, write_policy
from tests.targets.s3util import new_bucket
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


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed command prints: exit 1, ``error: `` once, no usage text."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "Error:" not in lines[0], lines[0]
    assert "Usage:" not in proc.stderr and "Traceback" not in proc.stderr
    return lines[0]


def test_errors_say_error_once(env: Env) -> None:
    assert str(Error("name the POLICY")) == "name the POLICY"
    line = _one_error_line(cli(env, "restore", "--to", str(env.tmp / "out")))
    assert line == "error: name the POLICY to restore (or --file for an archive file)"
    # the message names the setting; no "Configuration error" between
    line = _one_error_line(cli(env, "run", "p", extra_env={"BACKUP_WALK_THREADS": "abc"}))
    assert line.endswith(": BACKUP_WALK_THREADS must be a whole number from 1 to 64, not 'abc'")
    assert "rror:" not in line[len("error:") :], line


def test_bad_times_are_one_line_naming_the_option(env: Env, inventory: Inventory) -> None:
    (env.source / "f").write_text("1")
    run_backup(env.policy(), inventory)
    dest = env.tmp / "out"
    cases: list[tuple[str, tuple[str, ...]]] = [
        ("garbage", ()),
        ("2026-13-45T99:00:00Z", ()),
        # empty is not "the newest" (that is leaving --at out), on every path of restore
        ("", ()),
        ("", ("--dry-run",)),
        ("", ("--notify", "json://127.0.0.1:9/x")),
    ]
    for at, extra in cases:
        line = _one_error_line(cli(env, "restore", "p", "--to", str(dest), "--at", at, *extra))
        assert line.startswith(f"error: --at: {at!r} is not an ISO 8601 time"), line
        assert not dest.exists()
    # nothing was requested: no restore job recorded
    assert not [j for j in JobStore(inventory).jobs(limit=100) if j.kind == "restore"]
    # a good one still works, with or without a zone
    proc = cli(env, "restore", "p", "--to", str(dest), "--at", _iso_now())
    assert proc.returncode == 0, proc.stderr
    assert (dest / "f").read_text() == "1"
    for since in ("forever", "0s", "7"):
        line = _one_error_line(cli(env, "status", "--since", since))
        assert line.startswith(f"error: --since: {since!r} is "), line


def _iso_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def test_list_shows_each_object_url_with_the_query_at_the_end(
    env: Env, inventory: Inventory, aws_env: MotoServer
) -> None:
    bucket = new_bucket(aws_env)
    write_policy(
        env.config,
        name="p",
        sources=[str(env.source)],
        target=f"s3://{bucket}/vault?storage_class=DEEP_ARCHIVE",
        recipients=[env.key.recipient],
    )
    (env.source / "f").write_text("1")
    archive = run_backup(env.policy(), inventory).archive

    proc = cli(env, "list", "--json")
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(proc.stdout)
    assert row["id"] == archive.id
    key = f"vault/{row['location']}"
    assert row["url"] == f"s3://{bucket}/{key}?storage_class=DEEP_ARCHIVE"
    # the path of the URL is the object itself, stored in the target's class
    head = aws_env.client().head_object(Bucket=bucket, Key=key)
    assert head["StorageClass"] == "DEEP_ARCHIVE"

    proc = cli(env, "list")
    assert proc.returncode == 0, proc.stderr
    assert row["url"] in proc.stdout
    assert "DEEP_ARCHIVE/" not in proc.stdout

    # a vault's reference KEY#ARCHIVE_ID#TREE_HASH: the query goes before the fragment
    from backup.cli.output import object_url as _object_url

    assert (
        _object_url("glacier://v?region=eu-west-1", "p/a.tar.zst.age#AID#TH")
        == "glacier://v/p/a.tar.zst.age?region=eu-west-1#AID#TH"
    )
    assert (
        _object_url("file:///srv/vault/", "p/a.tar.zst.age") == "file:///srv/vault/p/a.tar.zst.age"
    )


def test_job_and_status_show_a_late_retrieval(env: Env, inventory: Inventory) -> None:
    """A request waiting past its class and tier's window says so, with the tier really used
    (DEEP_ARCHIVE has no Expedited). Time cannot pass in a test: the rows are written as the
    runner writes them, 13 hours ago. The real path, through workers: tests/workers/test_cold.py."""
    store = JobStore(inventory)
    job = store.create("restore", policy="p", state="requested", params={"to": "/srv/r"})
    assert job is not None and store.cas(job.id, ["requested"], "retrieving")
    asked = datetime.now(UTC) - timedelta(hours=13)
    soon = datetime.now(UTC) + timedelta(minutes=20)
    with inventory.session() as s:
        s.add_all(
            [
                RetrievalJob(
                    job_id=job.id, target="s3://b/p?storage_class=DEEP_ARCHIVE", ref="a.tar.zst.age",
                    tier="Expedited", state="pending", requested=asked, next_check=soon,
                    storage_class="DEEP_ARCHIVE", size=1000,
                ),
                RetrievalJob(
                    job_id=job.id, target="s3://b/p?storage_class=DEEP_ARCHIVE", ref="a.manifest",
                    tier="Expedited", state="ready", requested=asked, completed=asked,
                    storage_class="STANDARD", size=0,
                ),
            ]
        )  # fmt: skip
    proc = cli(env, "job", job.id, "--json")
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)["retrieval"]
    assert (shown["objects"], shown["ready"], shown["bytes"], shown["bytes_ready"]) == (
        2,
        1,
        1000,
        0,
    )
    assert shown["classes"] == [
        {
            "storage_class": "DEEP_ARCHIVE",
            "tier": "Standard",
            "objects": 1,
            "ready": 0,
            "bytes": 1000,
        },
        {"storage_class": "STANDARD", "tier": None, "objects": 1, "ready": 1, "bytes": 0},
    ]
    # DEEP_ARCHIVE Standard: 6 to 12 hours, so 13 hours on it is late
    assert _utc(shown["expected_ready"]["latest"]) == asked + timedelta(hours=12)
    assert shown["expected_ready"]["late"] is True
    assert _utc(shown["next_check"]) == soon
    proc = cli(env, "status")
    assert proc.returncode == 0, proc.stderr
    assert "1 of 2 objects ready (DEEP_ARCHIVE Standard 0 of 1, STANDARD 1 of 1)" in proc.stdout
    assert "(late); next check " in proc.stdout
