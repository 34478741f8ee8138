"""The recovery drill of docs/disaster-recovery.md is real: its blocks marked ``<!-- drill -->``
run as written, through the real CLI, on a machine that has lost its inventory and its policy
file, and bring the newest tree back byte for byte."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import Key, snapshot_tree, write_policy

DOC = Path(__file__).resolve().parent.parent / "docs" / "disaster-recovery.md"
# a fenced shell block whose opening fence follows a <!-- drill --> line
DRILL = re.compile(r"<!-- drill -->\n```sh\n(.*?)\n```", re.S)


def drill_blocks() -> list[str]:
    return DRILL.findall(DOC.read_text())


def cli(env: dict[str, str], *args: str, cwd: Path | None = None) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "backup", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, f"backup {' '.join(args)}: {r.returncode}\n{r.stdout}{r.stderr}"
    return r.stdout


def archive_list(env: dict[str, str]) -> list[dict[str, Any]]:
    """Every field `backup list --json` shows: ids, kinds, parents, times, sizes, hashes, keys."""
    rows: list[dict[str, Any]] = json.loads(cli(env, "list", "--json"))
    return rows


def test_the_doc_has_a_drill() -> None:
    blocks = drill_blocks()
    assert len(blocks) >= 2
    text = "\n".join(blocks)
    assert "backup inventory rebuild" in text
    assert "backup restore" in text


def test_drill_restores_the_newest_tree_on_a_bare_machine(tmp_path: Path, key: Key) -> None:
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "a.txt").write_text("first\n")
    (src / "docs" / "b.bin").write_bytes(os.urandom(5000))
    (src / "notes.md").write_text("notes\n")
    (src / "gone.txt").write_text("deleted later\n")
    vault = tmp_path / "vault"
    config = tmp_path / "lost" / "policies.toml"
    config.parent.mkdir()
    write_policy(
        config,
        name="home",
        sources=[str(src)],
        target=f"file://{vault}",
        recipients=[key.recipient],
        full_every="30d",
    )
    inventory = tmp_path / "lost" / "inventory.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKUP_", "AWS_", "XDG_"))}
    env["HOME"] = str(tmp_path / "home")
    before = {
        **env,
        "BACKUP_CONFIG": str(config),
        "BACKUP_INVENTORY_URL": f"sqlite:///{inventory}",
    }
    cli(before, "run", "home")
    # changes, a deletion, a rename, a new directory: each an incremental
    (src / "docs" / "a.txt").write_text("first, then changed\n")
    (src / "gone.txt").unlink()
    cli(before, "run", "home")
    (src / "notes.md").rename(src / "docs" / "notes-renamed.md")
    (src / "new" / "deep").mkdir(parents=True)
    (src / "new" / "deep" / "c.txt").write_text("new file\n")
    cli(before, "run", "home")
    listed = archive_list(before)
    assert [a["kind"] for a in listed] == ["full", "incremental", "incremental"]
    assert [a["parent"] for a in listed] == [None, listed[0]["id"], listed[1]["id"]]
    want = snapshot_tree(src)

    # the disaster: the inventory and the policy file are gone with the machine
    shutil.rmtree(tmp_path / "lost")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(key.path, bare / "key.txt")
    drill_env = {
        **env,
        "TARGET": f"file://{vault}",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "XDG_CONFIG_HOME": str(tmp_path / "bare-config"),
        "XDG_DATA_HOME": str(tmp_path / "bare-data"),
    }
    for block in drill_blocks():
        r = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            env=drill_env,
            cwd=bare,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, f"drill block failed ({r.returncode}):\n{block}\n{r.stderr}"

    assert snapshot_tree(bare / "restored") == want
    # the rebuilt inventory lists the archives exactly as they were before the loss
    assert archive_list(drill_env) == listed
