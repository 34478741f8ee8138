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
    inv = Inventory(inv_url)
    with inv.session() as db:
        assert db.query(Snapshot).count() == 0
    inv.close()
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
    # the command it names exists (there is no `backup snapshot enable`)
    assert f"aws s3api put-bucket-versioning --bucket {bucket} " in proc.stderr
    assert "backup snapshot enable" not in proc.stderr
    r = run("bucket", "at", f"s3://{bucket}", "yesterday")
    assert r.exit_code == 2 and "neither a snapshot" in r.output
    r = run("snapshot", "list", "file:///tmp")
    assert r.exit_code == 1


def test_policy_commands_for_a_bucket_source(
    writer: Writer, inv_url: str, s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backup.crypto.age import X25519Identity
    from tests.conftest import write_policy

    ident = X25519Identity.generate()
    keyfile = tmp_path / "key.txt"
    keyfile.write_text(ident.to_string() + "\n")
    writer.put("data/a", b"alpha", 10)
    writer.stamp()
    config = tmp_path / "p.toml"
    write_policy(
        config,
        name="m",
        source=f"s3://{writer.bucket}/data/",
        target=f"file://{tmp_path / 'vault'}",
        recipients=[ident.recipient().to_string()],
    )
    config.write_text(
        config.read_text() + '[policy.drill]\ncheck = "test -n \\"$BACKUP_DRILL_URL\\""\n'
    )
    monkeypatch.setenv("BACKUP_CONFIG", str(config))
    monkeypatch.setenv("BACKUP_IDENTITY", str(keyfile))
    r = run("snapshot", "run", "m", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["taken"]["name"].startswith("m-")
    r = run("snapshot", "drill", "m", "--json")
    assert r.exit_code == 0, r.output
    drill = json.loads(r.output)["drill"]
    assert (
        drill["ok"]
        and s3.get_object(Bucket=drill["bucket"], Key="data/a")["Body"].read() == b"alpha"
    )
    assert run("run", "m").exit_code == 0
    dest = unique("dest")
    s3.create_bucket(Bucket=dest)
    r = run("restore", "m", "--to", f"s3://{dest}/x", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["uploaded"] == 1
    assert s3.get_object(Bucket=dest, Key="x/a")["Body"].read() == b"alpha"
    r = run("restore", "m", "--to", f"s3://{writer.bucket}/data/")
    assert r.exit_code == 1 and "overlaps the source" in r.output
    r = run("restore", "m", "--to", str(tmp_path / "local"), "--in-place")
    assert r.exit_code == 1 and "--in-place restores into a bucket source" in r.output


def test_bucket_arguments_are_urls_or_names_and_bad_names_one_line(
    writer: Writer, inv_url: str, s3: Any
) -> None:
    writer.put("a", b"1", 10)
    writer.stamp()
    name = writer.bucket
    # the report: both buckets as URLs, through the real entry point
    new = unique("fork")
    proc = subprocess.run(
        [sys.executable, "-m", "backup", "snapshot", "fork", f"s3://{name}", f"s3://{new}"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert s3.get_object(Bucket=new, Key="a")["Body"].read() == b"1"
    # a bare name is the same bucket everywhere
    r = run("snapshot", "take", name, "--name", "first", "--json")
    assert r.exit_code == 0, r.output
    inv = Inventory(inv_url)
    with inv.session() as db:
        assert [x.bucket for x in db.query(Snapshot).all()] == [f"s3://{name}"]
    inv.close()
    assert [s["name"] for s in json.loads(run("snapshot", "list", name, "--json").output)] == [
        "fork-" + new,
        "first",
    ]
    held = json.loads(run("bucket", "at", name, "first", "--json").output)
    assert [o["key"] for o in held["objects"]] == ["a"]
    bare = unique("fork")
    r = run("snapshot", "fork", name, bare, "--snapshot", "first", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["bucket"] == bare, r.output

    def fails(*args: str, says: str) -> None:
        r = run(*args)
        assert r.exit_code == 1, (args, r.output)
        assert says in r.output and r.output.count("\n") == 1, (args, r.output)

    for bad in ("Bad Name!", "ab", "s3://a/b", "x" * 256):
        fails("snapshot", "list", bad, says="not a valid bucket name")
    for bad in ("gs://x", ""):
        fails("snapshot", "take", bad, says="not a bucket: write s3://BUCKET")
    # a fork creates its bucket, so today's rules apply in full
    for bad, why in (
        ("s3://New_Fork", "lowercase letters"),
        ("a..b", "two '.' in a row"),
        ("10.0.0.1", "IP address"),
        ("xn--fork", "reserves"),
        (f"s3://{unique('fork')}/prefix", "a fork is a whole bucket"),
        (name, "is the bucket being forked"),
    ):
        fails("snapshot", "fork", f"s3://{name}", bad, says=why)
    buckets = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert not {"New_Fork", "a..b", "10.0.0.1", "xn--fork"} & buckets
