"""Bad input: missing sources, unreadable files, files changing while read, broken policy
files, unknown targets, wrong or missing identities; and the secret key never appears in
what the program stores or prints."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import zstandard

from backup.archive import scan
from backup.crypto.age import decrypt_bytes, load_identities, parse_recipient
from backup.engine import run_backup
from backup.errors import Error, PolicyError
from backup.inventory import Inventory
from backup.policy import load_policies
from backup.restore import identities_from, restore, verify
from tests.conftest import Env, Key, require_tools, snapshot_tree, write_policy
from tests.test_interop import (
    cli,
    encrypt_with_tools,
    make_tree,
    sh,
    small_tmpfs,
    staging_left,
)

# the module, not the function that backup.archive re-exports under the same name
pack_mod = importlib.import_module("backup.archive.pack")


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tools("age", "zstd", "tar", "setpriv")


def secret_of(key: Key) -> str:
    s = key.identity.to_string()
    assert s.startswith("AGE-SECRET-KEY-1")
    return s


def inventory_bytes(inv: Inventory) -> bytes:
    """Everything the inventory stores: the database file(s) for SQLite, every row of every
    table otherwise."""
    if inv.url.startswith("sqlite:///"):
        db = Path(inv.url[len("sqlite:///") :])
        files = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
        assert files
    else:
        files = b""
    rows = []
    with inv.engine.connect() as c:
        for t in sa.inspect(inv.engine).get_table_names():
            rows += [repr(tuple(r)) for r in c.execute(sa.text(f'SELECT * FROM "{t}"'))]
    return files + "\n".join(rows).encode()


def tree_bytes(root: Path, *, skip: tuple[Path, ...] = ()) -> bytes:
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink() and p not in skip:
            out.append(p.read_bytes())
    return b"".join(out)


# sources --------------------------------------------------------------------------------


def test_missing_source_writes_nothing(env: Env, inventory: Inventory) -> None:
    (env.source / "f").write_text("x")
    missing = env.tmp / "missing"
    write_policy(
        env.config,
        name="p",
        sources=[str(env.source), str(missing)],
        target=f"file://{env.vault}",
        recipients=[env.key.recipient],
    )
    proc = cli(env, "run", "p")
    assert proc.returncode == 1
    assert str(missing) in proc.stderr and "'p'" in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not env.vault.exists() or [p for p in env.vault.rglob("*") if p.is_file()] == []
    assert inventory.archives(states=()) == []


def test_full_vault_fails_cleanly(env: Env, inventory: Inventory) -> None:
    (env.source / "big.bin").write_bytes(os.urandom(3 << 20))
    with small_tmpfs(env.vault, "1m"):
        proc = cli(env, "run", "p")
        assert proc.returncode == 1
        # no half archive left, and the row says what happened
        assert [p for p in env.vault.rglob("*") if p.is_file()] == []
    rows = inventory.archives(states=())
    assert [r.state for r in rows] == ["failed"]
    assert "No space left" in (rows[0].error or "")
    # one clear message, as for every other error
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr, last
    assert last.startswith("error:") and "No space left" in last


def _without_dac(cmd: list[str]) -> list[str]:
    """Run ``cmd`` so that permission bits bind: tests run as root, whom chmod 000 does not
    stop, so drop the capabilities that override file permissions."""
    if os.geteuid() != 0:
        return cmd
    return ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", *cmd]


def test_unreadable_files_are_skipped_reported_and_carried_over(
    env: Env, inventory: Inventory
) -> None:
    src = env.source
    make_tree(src, big=False)
    (src / "secret.txt").write_text("old secret")
    (src / "locked").mkdir()
    (src / "locked" / "inner").write_text("inner")
    full = run_backup(env.policy(), inventory).archive
    snap_full = snapshot_tree(src)

    (src / "plain.txt").write_text("changed, readable")
    (src / "secret.txt").write_text("new secret")
    os.chmod(src / "secret.txt", 0)
    os.chmod(src / "locked", 0)
    # the way the backup runs below really cannot read them
    probe = subprocess.run(
        _without_dac(["cat", str(src / "secret.txt")]), capture_output=True, check=False
    )
    assert probe.returncode != 0 and b"Permission denied" in probe.stderr
    expected = snapshot_tree(src)
    expected[b"secret.txt"] = snap_full[b"secret.txt"]
    expected[b"locked/inner"] = snap_full[b"locked/inner"]

    cmd = [sys.executable, "-m", "backup", "run", "p"]
    proc = subprocess.run(
        _without_dac([*cmd, "--json"]),
        env=env.environ(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr
    out = json.loads(proc.stdout)
    assert out["kind"] == "incremental" and out["parent"] == full.id
    assert {u["path"] for u in out["unreadable"]} == {"secret.txt", "locked"}
    assert all("Permission denied" in u["error"] for u in out["unreadable"])
    # carried over, not recorded as deleted
    assert out["deleted_paths"] == 0
    rec = inventory.get(out["id"])
    assert rec.state == "complete"
    assert {u["path"] for u in json.loads(rec.unreadable)} == {"secret.txt", "locked"}
    m = json.loads(
        zstandard.ZstdDecompressor()
        .decompressobj()
        .decompress(
            decrypt_bytes(
                (env.vault / rec.manifest_location).read_bytes(), load_identities(env.key.path)
            )
        )
    )
    assert {u["path"] for u in m["unreadable"]} == {"secret.txt", "locked"}
    assert m["deleted"] == []
    assert "plain.txt" in {e["path"] for e in m["entries"]}

    # the rest is backed up; what could not be read comes back as it was last read
    out_dir = env.tmp / "out"
    restore("p", inventory, out_dir, load_identities(env.key.path))
    assert snapshot_tree(out_dir) == expected

    # the text output names them too, and still exits 3
    proc = subprocess.run(
        _without_dac(cmd), env=env.environ(), capture_output=True, text=True, check=False
    )
    assert proc.returncode == 3, proc.stderr
    assert "could not read secret.txt" in proc.stderr and "could not read locked" in proc.stderr


# files that change while they are read ------------------------------------------------------


class _Buf:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, b: Any) -> int:
        self.data += b
        return len(b)


def _unpack(blob: bytes, key: Key) -> dict[str, bytes]:
    raw = (
        zstandard.ZstdDecompressor().decompressobj().decompress(decrypt_bytes(blob, [key.identity]))
    )
    with tarfile.open(fileobj=io.BytesIO(raw)) as t:
        return {m.name: t.extractfile(m).read() for m in t if m.isfile()}  # type: ignore[union-attr]


@pytest.mark.parametrize("change", ["grows", "shrinks"])
def test_file_changing_while_read_is_flagged(
    tmp_path: Path, key: Key, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a" * 1000)
    (src / "b").write_bytes(b"b" * 1000)
    entries = scan("p", [("", src)], []).entries
    real_preadv = os.preadv
    calls = 0

    def preadv(fd: int, bufs: Any, offset: int, flags: int = 0) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:  # while "a" is read
            if change == "grows":
                with open(src / "a", "ab") as f:
                    f.write(b"more")
            else:
                os.truncate(src / "a", 400)
        return real_preadv(fd, bufs, offset, flags)

    monkeypatch.setattr(pack_mod.os, "preadv", preadv)
    buf = _Buf()
    res = pack_mod.pack(entries, buf, [parse_recipient(key.recipient)])  # type: ignore[arg-type]
    assert calls >= 2
    assert res.changed == [b"a"]
    files = _unpack(bytes(buf.data), key)
    # consistent with the header: the size the scan saw
    want = b"a" * 1000 if change == "grows" else b"a" * 400 + bytes(600)
    assert files == {"a": want, "b": b"b" * 1000}
    rec = {e["path"]: e for e in res.entries}
    assert rec[b"a"]["sha256"] == hashlib.sha256(want).hexdigest()


def test_file_replaced_by_fifo_after_scan_does_not_hang(tmp_path: Path, key: Key) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    (src / "b").write_text("b")
    entries = scan("p", [("", src)], []).entries
    os.unlink(src / "a")
    os.mkfifo(src / "a")  # nobody will ever write to it
    result: list[Any] = []
    t = threading.Thread(
        target=lambda: result.append(
            pack_mod.pack(entries, _Buf(), [parse_recipient(key.recipient)])
        ),  # type: ignore[arg-type]
        daemon=True,
    )
    t.start()
    t.join(10)
    if t.is_alive():
        # let the blocked open() return so the thread ends
        fd = os.open(src / "a", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        t.join(10)
        pytest.fail("pack blocked opening a FIFO that replaced a file after the scan")
    assert result[0].changed == [b"a"]
    assert [e["path"] for e in result[0].entries if e["type"] == "file"] == [b"b"]


def test_change_while_read_recorded_with_archive(
    env: Env, inventory: Inventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    (env.source / "log").write_bytes(b"x" * 100)
    (env.source / "quiet").write_bytes(b"q")
    real_preadv = os.preadv

    def preadv(fd: int, bufs: Any, offset: int, flags: int = 0) -> int:
        n = real_preadv(fd, bufs, offset, flags)
        if os.path.samestat(os.fstat(fd), os.stat(env.source / "log")):
            with open(env.source / "log", "ab") as f:
                f.write(b"appended")
        return n

    monkeypatch.setattr(pack_mod.os, "preadv", preadv)
    res = run_backup(env.policy(), inventory)
    assert res.changed == [b"log"]
    assert res.exit_code == 0
    assert json.loads(inventory.get(res.archive.id).changed) == ["log"]


# policy files ---------------------------------------------------------------------------


_BAD_FIELDS: dict[str, tuple[dict[str, Any], str]] = {
    "compression_level": ({"compression_level": 99}, "compression_level"),
    "full_every": ({"full_every": "7 days"}, "full_every"),
    "relative-source": ({"sources": ["relative/dir"]}, "sources"),
    "unknown-field": ({"colour": "red"}, "colour"),
    "negative-retention": ({"retention": {"keep_last": -1}}, "retention.keep_last"),
    "unknown-scheme": ({"target": "s3x://bucket/x"}, "target"),
    "bad-recipient": ({"recipients": ["age1notakey"]}, "recipients"),
}


@pytest.mark.parametrize("case", sorted(_BAD_FIELDS))
def test_broken_policy_names_file_policy_and_field(tmp_path: Path, key: Key, case: str) -> None:
    fields: dict[str, Any] = {
        "name": "p",
        "sources": [str(tmp_path)],
        "target": f"file://{tmp_path / 'vault'}",
        "recipients": [key.recipient],
    }
    change, field = _BAD_FIELDS[case]
    fields.update(change)
    f = tmp_path / "policies.toml"
    write_policy(f, **fields)
    with pytest.raises(PolicyError) as ei:
        load_policies(f)
    msg = ei.value.get_message()
    assert str(f) in msg and "policy 'p'" in msg and f"{field}:" in msg, msg


def test_broken_policy_through_cli(tmp_path: Path, key: Key) -> None:
    f = tmp_path / "policies.toml"
    f.write_text('[[policy]]\nname = "p"\nsources = [\n')
    proc = cli(None, "--config", str(f), "run", "p")
    assert proc.returncode == 1
    assert str(f) in proc.stderr and "not valid TOML" in proc.stderr
    write_policy(
        f, name="p", sources=[str(tmp_path)], target="s3x://bucket/x", recipients=[key.recipient]
    )
    proc = cli(None, "--config", str(f), "run", "p")
    assert proc.returncode == 1
    assert "Unknown target scheme" in proc.stderr and "s3x://bucket/x" in proc.stderr
    assert str(f) in proc.stderr and "'p'" in proc.stderr and "target" in proc.stderr
    assert "Traceback" not in proc.stderr


# identities and secrets -------------------------------------------------------------------


def test_identity_errors_never_show_the_secret(tmp_path: Path, key: Key) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("f")
    plain = tmp_path / "a.tar"
    sh(f"tar -c -f {plain} -C {src} .")
    archive = tmp_path / "a.tar.zst.age"
    encrypt_with_tools(key.recipient, plain, archive)
    secret = secret_of(key)
    mangled = tmp_path / "mangled.txt"
    bad_secret = secret[:-3] + ("AAA" if not secret.endswith("AAA") else "BBB")
    mangled.write_text(f"# a key with a typo\n{bad_secret}\n")
    other = tmp_path / "other.txt"
    sh(f"age-keygen -o {other}")
    in_policy = tmp_path / "policies.toml"
    write_policy(
        in_policy,
        name="p",
        sources=[str(src)],
        target=f"file://{tmp_path / 'v'}",
        recipients=[secret],
    )

    base = ["restore", "--file", str(archive)]
    cases: list[tuple[list[str], list[str]]] = [
        ([*base, "--to", str(tmp_path / "o1")], ["need a secret key", "--identity"]),
        (
            [*base, "--to", str(tmp_path / "o2"), "--identity", str(tmp_path / "nope.txt")],
            [str(tmp_path / "nope.txt")],
        ),
        (
            [*base, "--to", str(tmp_path / "o3"), "--identity", str(mangled)],
            [str(mangled), "line 2"],
        ),
        (
            [*base, "--to", str(tmp_path / "o4"), "--identity", str(other)],
            ["No identity matches", str(archive)],
        ),
        (["--config", str(in_policy), "run", "p"], [str(in_policy), "recipients", "secret key"]),
    ]
    for args, want in cases:
        proc = cli(None, *args)
        assert proc.returncode == 1, (args, proc.stderr)
        for w in want:
            assert w in proc.stderr, (args, proc.stderr)
        for s in (secret, bad_secret, secret[len("AGE-SECRET-KEY-1") :][:20]):
            assert s not in proc.stdout + proc.stderr, args
        assert "Traceback" not in proc.stderr
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))
    assert staging_left(tmp_path) == []
    assert not (tmp_path / "v").exists()


def test_secret_key_stored_nowhere(env: Env, inventory: Inventory) -> None:
    make_tree(env.source, big=False)
    secret = secret_of(env.key)
    proc = cli(env, "run", "p", "--json")
    assert proc.returncode == 0, proc.stderr
    aid = json.loads(proc.stdout)["id"]
    outputs = proc.stdout + proc.stderr
    restore("p", inventory, env.tmp / "out", load_identities(env.key.path))
    verify(aid, inventory, load_identities(env.key.path))
    assert secret not in outputs
    # failed attempts with a mistyped copy of the key or another key store nothing either
    mangled = env.tmp / "mangled.txt"
    mangled.write_text(secret[:-2] + ("QQ" if not secret.endswith("QQ") else "PP") + "\n")
    with pytest.raises(Error) as ei:
        restore("p", inventory, env.tmp / "o2", identities_from(mangled))
    assert secret[:-2] not in ei.value.get_message()
    other = env.tmp / "other.txt"
    sh(f"age-keygen -o {other}")
    with pytest.raises(Error, match="No identity matches"):
        restore("p", inventory, env.tmp / "o3", identities_from(other))

    stored = inventory_bytes(inventory)
    assert aid.encode() in stored and b"restored" in stored  # the check reads real content
    assert secret.encode() not in stored
    assert secret.lower().encode() not in stored
    vault = tree_bytes(env.vault)
    assert vault and secret.encode() not in vault
    # nothing else under the test's directory (config, XDG dirs, restored tree) holds it
    assert secret[:-2].encode() not in tree_bytes(env.tmp, skip=(env.key.path, mangled))


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        # no credentials anywhere: botocore's NoCredentialsError
        ({"BACKUP_S3_ENDPOINT_URL": "http://127.0.0.1:9"}, "Unable to locate credentials"),
        # credentials, but an endpoint that does not answer
        (
            {
                "BACKUP_S3_ENDPOINT_URL": "http://127.0.0.1:9",
                "AWS_ACCESS_KEY_ID": "k",
                "AWS_SECRET_ACCESS_KEY": "s3cr3t-value",
            },
            "Could not connect to the endpoint URL",
        ),
    ],
)
def test_cloud_sdk_errors_are_one_line(env: Env, extra: dict[str, str], expect: str) -> None:
    """What the AWS SDK raises beyond the answers the storage layer expects (no
    credentials, an endpoint that does not answer) is one line naming it, exit 1: the
    issue's `backup snapshot fork s3://src s3://new` printed a botocore traceback."""
    environ = {k: v for k, v in env.environ().items() if not k.startswith("AWS_")}
    environ.update(extra, AWS_DEFAULT_REGION="us-east-1", AWS_MAX_ATTEMPTS="1")
    environ["AWS_CONFIG_FILE"] = environ["AWS_SHARED_CREDENTIALS_FILE"] = str(env.tmp / "none")
    proc = subprocess.run(
        [sys.executable, "-m", "backup", "snapshot", "fork", "s3://src", "s3://new"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith("error: S3: ") and expect in proc.stderr, proc.stderr
    assert "s3cr3t-value" not in proc.stderr and "Traceback" not in proc.stderr
