"""``backup snapshot`` and ``backup bucket`` against moto's server: tables, --json, the
inventory record, errors as one message and exit code 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from backup.cli import cli
from backup.inventory import Inventory, Snapshot

from .conftest import Writer, at, unique


@pytest.fixture
def inv_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'inv.db'}"
    monkeypatch.setenv("BACKUP_INVENTORY_URL", url)
    return url


def run(*args: str) -> Any:
    r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return r


def test_snapshot_commands(writer: Writer, inv_url: str, s3: Any) -> None:
    writer.put("a", b"1", 10)
    writer.put("b", b"2", 10)
    writer.stamp()
    url = f"s3://{writer.bucket}"
    r = run("snapshot", "take", url, "--name", "first", "--json")
    assert r.exit_code == 0, r.output
    taken = json.loads(r.output)
    assert taken["name"] == "first" and taken["kind"] == "versioned"
    inv = Inventory(inv_url)
    with inv.session() as db:
        rows = db.query(Snapshot).all()
        assert [(x.bucket, x.name, x.version) for x in rows] == [(url, "first", taken["version"])]
    inv.close()
    s3.delete_object(Bucket=writer.bucket, Key="a")
    r = run("snapshot", "list", url)
    assert r.exit_code == 0 and "first" in r.output and taken["version"] in r.output
    listed = json.loads(run("snapshot", "list", url, "--json").output)
    assert [x["version"] for x in listed] == [taken["version"]]

    # what the bucket held at the snapshot, by name, and at a time
    held = json.loads(run("bucket", "at", url, "first", "--json").output)
    assert [o["key"] for o in held["objects"]] == ["a", "b"]
    assert held["at"]["snapshot"]["name"] == "first"
    held = json.loads(run("bucket", "at", url, at(5).isoformat(), "--json").output)
    assert held["objects"] == []
    table = run("bucket", "at", url, "first").output
    assert "a " in table and "b " in table

    now = "2100-01-01T00:00:00Z"
    sl = json.loads(run("bucket", "slice", url, "first", now, "--json").output)
    assert [o["key"] for o in sl["deleted"]] == ["a"] and sl["created"] == sl["changed"] == []
    assert "deleted" in run("bucket", "slice", url, "first", now).output

    fork = unique("fork")
    fk = json.loads(run("snapshot", "fork", url, fork, "--snapshot", "first", "--json").output)
    assert (fk["copied"], fk["source_snapshot"]) == (2, taken["version"])
    assert s3.get_object(Bucket=fork, Key="a")["Body"].read() == b"1"

    r = run("snapshot", "delete", url, "first")
    assert r.exit_code == 0 and "deleted snapshot" in r.output
    assert json.loads(run("snapshot", "list", url, "--json").output) == []


def test_errors_are_one_message_and_exit_1(aws_env: Any, inv_url: str, tmp_path: Path) -> None:
    bucket = unique()
    aws_env.client().create_bucket(Bucket=bucket)  # versioning off
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-m", "backup", "snapshot", "take", f"s3://{bucket}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1
    assert f"Bucket {bucket}: versioning is off" in proc.stderr
    assert "Traceback" not in proc.stderr
    r = run("bucket", "at", f"s3://{bucket}", "yesterday")
    assert r.exit_code == 2 and "neither a snapshot" in r.output
    r = run("snapshot", "list", "file:///tmp")
    assert r.exit_code == 1
