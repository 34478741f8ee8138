"""Post-quantum recipients and ASCII armor through the real ``backup`` command: keys
generate --pq, a backup and restore with a hybrid identity (byte for byte), passphrase-
encrypted armored identity files, inventory export --armor read by Debian's age, and a
malformed age1pq1 recipient in a policy."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

from backup.crypto import bech32
from backup.crypto.age import HybridIdentity, load_identities
from backup.inventory_copy import list_exports
from backup.targets import open_target
from tests.conftest import Env, Key, require_tools, write_policy
from tests.test_interop import assert_same_tree, cli, make_tree, q, sh

_TYPAGE = Path(__file__).resolve().parent / "interop" / "typage" / "age.mjs"


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tools("age", "zstd", "tar")


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr
    return proc


def pq_key(tmp_path: Path, *extra: str, name: str = "pq.txt") -> tuple[Path, str]:
    f = tmp_path / name
    proc = ok(cli(None, "keys", "generate", "--pq", "--out", str(f), *extra))
    return f, proc.stdout.strip()


def test_keys_generate_pq(tmp_path: Path) -> None:
    f, rcpt = pq_key(tmp_path)
    assert rcpt.startswith("age1pq1") and "\n" not in rcpt
    hrp, pub = bech32.decode(rcpt)
    assert (hrp, len(pub)) == ("age1pq", 1216)
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    lines = f.read_text().splitlines()
    assert lines[0].startswith("# created: ") and lines[1] == f"# public key: {rcpt}"
    assert len(lines) == 3 and lines[2].startswith("AGE-SECRET-KEY-PQ-1")
    assert bech32.decode(lines[2])[0] == "AGE-SECRET-KEY-PQ-"
    (ident,) = load_identities(f)
    assert isinstance(ident, HybridIdentity) and ident.recipient().to_string() == rcpt
    assert ok(cli(None, "keys", "recipient", str(f))).stdout.strip() == rcpt
    # --armor is for an encrypted identity file only: one line saying so
    proc = cli(None, "keys", "generate", "--pq", "--armor", "--out", str(tmp_path / "x"))
    assert proc.returncode == 1 and "--passphrase" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_backup_and_restore_with_a_pq_identity(env: Env) -> None:
    key, rcpt = pq_key(env.tmp)
    write_policy(
        env.config,
        name="p",
        sources=[str(env.source)],
        target=f"file://{env.vault}",
        recipients=[rcpt],
    )
    make_tree(env.source, big=False)
    e = {"BACKUP_IDENTITY": str(key)}
    run = json.loads(ok(cli(env, "run", "p", "--json", extra_env=e)).stdout)
    stored = sorted(p for p in env.vault.rglob("*.age"))
    assert stored, "nothing stored"
    for p in stored:  # archive and manifest: binary age with one hybrid stanza
        head = p.read_bytes()[:200]
        assert head.startswith(b"age-encryption.org/v1\n-> mlkem768x25519 ")
    # Debian's age 1.1.1 predates the hybrid type: it cannot read these files
    older = sh(f"age -d -i {q(key)} {q(stored[0])}", check=False)
    assert older.returncode != 0
    out = env.tmp / "out"
    ok(cli(env, "restore", "p", "--to", str(out), extra_env=e))
    assert_same_tree(env.source, out)
    ok(cli(env, "verify", run["id"], extra_env=e))
    # restored by hand with an independent age (typage) instead of age >= 1.3
    (archive,) = [p for p in stored if p.name.endswith(".tar.zst.age")]
    (secret,) = [ln for ln in key.read_text().splitlines() if ln.startswith("AGE-SECRET")]
    by_hand = env.tmp / "by-hand"
    by_hand.mkdir()
    sh(
        f"node {q(_TYPAGE)} decrypt {q(secret)} < {q(archive)} | zstd -d -q -c"
        f" | tar -x -C {q(by_hand)}"
    )
    assert_same_tree(env.source, by_hand)
    # the classic key of the test environment does not open them
    proc = cli(env, "restore", "p", "--to", str(env.tmp / "o2"))
    assert proc.returncode == 1 and "No identity matches" in proc.stderr


def test_passphrase_encrypted_armored_identity(env: Env) -> None:
    pw = {"BACKUP_IDENTITY_PASSPHRASE": "correct horse battery staple"}
    key = env.tmp / "pq.age"
    # no passphrase and no terminal to ask on: one line, no file
    proc = cli(None, "keys", "generate", "--pq", "--passphrase", "--out", str(key))
    assert proc.returncode == 1 and "BACKUP_IDENTITY_PASSPHRASE" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not key.exists()
    proc = ok(
        cli(None, "keys", "generate", "--pq", "--passphrase", "--out", str(key), extra_env=pw)
    )
    rcpt = proc.stdout.strip()
    text = key.read_text()
    assert text.startswith("-----BEGIN AGE ENCRYPTED FILE-----\n") and "SECRET" not in text
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    write_policy(
        env.config, name="p", sources=[str(env.source)], target=f"file://{env.vault}",
        recipients=[rcpt],
    )  # fmt: skip
    make_tree(env.source, big=False)
    ok(cli(env, "run", "p"))
    out = env.tmp / "out"
    ok(cli(env, "restore", "p", "--to", str(out), "--identity", str(key), extra_env=pw))
    assert_same_tree(env.source, out)
    assert ok(cli(None, "keys", "recipient", str(key), extra_env=pw)).stdout.strip() == rcpt
    bad = cli(env, "restore", "p", "--to", str(env.tmp / "o2"), "--identity", str(key),
              extra_env={"BACKUP_IDENTITY_PASSPHRASE": "wrong"})  # fmt: skip
    assert bad.returncode == 1 and "wrong passphrase" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    none = cli(env, "restore", "p", "--to", str(env.tmp / "o3"), "--identity", str(key))
    assert none.returncode == 1 and "BACKUP_IDENTITY_PASSPHRASE" in none.stderr
    assert not (env.tmp / "o2").exists() and not (env.tmp / "o3").exists()


def test_inventory_export_armor_reads_with_debian_age(env: Env) -> None:
    make_tree(env.source, big=False)
    ok(cli(env, "run", "p"))
    ok(cli(env, "inventory", "export", "--policy", "p", "--armor"))
    newest = env.vault / list_exports(open_target(f"file://{env.vault}"))[-1].key
    text = newest.read_text("ascii")
    assert text.startswith("-----BEGIN AGE ENCRYPTED FILE-----\n")
    assert text.endswith("-----END AGE ENCRYPTED FILE-----\n")
    assert all(len(line) <= 64 for line in text.splitlines())
    plain = sh(f"age -d -i {q(env.key.path)} {q(newest)} | zstd -d -q -c").stdout
    assert json.loads(plain.splitlines()[0])["format"] == "backup-inventory/1"
    # and import reads the armored copy
    fresh = f"sqlite:///{env.tmp / 'fresh.db'}"
    res = cli(env, "inventory", "import", f"file://{env.vault}", "--json",
              extra_env={"BACKUP_INVENTORY_URL": fresh})  # fmt: skip
    assert json.loads(ok(res).stdout)["added"]["archives"] >= 1


def test_malformed_pq_recipient_in_policy_is_one_line(env: Env) -> None:
    rcpt = HybridIdentity.generate().recipient().to_string()
    bad = rcpt[:500] + ("q" if rcpt[500] != "q" else "p") + rcpt[501:]
    write_policy(
        env.config, name="p", sources=[str(env.source)], target=f"file://{env.vault}",
        recipients=[bad],
    )  # fmt: skip
    proc = cli(env, "run", "p")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(env.config) in lines[0] and "recipients" in lines[0]
    assert f"recipient 1 ({bad[:12]}...{bad[-6:]})" in lines[0] and "checksum" in lines[0]
    assert "Traceback" not in proc.stderr and not env.vault.exists()


def test_policy_mixing_pq_and_classic_recipients_is_one_line(env: Env) -> None:
    rcpt = HybridIdentity.generate().recipient().to_string()
    write_policy(
        env.config, name="p", sources=[str(env.source)], target=f"file://{env.vault}",
        recipients=[rcpt, env.key.recipient],
    )  # fmt: skip
    proc = cli(env, "run", "p")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "recipients" in lines[0] and "mixes post-quantum" in lines[0]
    assert not env.vault.exists()


def test_debian_age_reads_our_passphrase_encrypted_identity_file(tmp_path: Path) -> None:
    """age 1.1.1 asks for the passphrase of an encrypted identity file on the terminal:
    ``script`` gives it one, and the passphrase is typed into it."""
    require_tools("script")
    pw = {"BACKUP_IDENTITY_PASSPHRASE": "pw for debian age"}
    key = tmp_path / "key.age"
    rcpt = ok(cli(None, "keys", "generate", "--passphrase", "--out", str(key), extra_env=pw))
    msg = tmp_path / "m"
    msg.write_text("hello from age 1.1.1")
    sh(f"age -r {rcpt.stdout.strip()} -o {q(msg)}.age {q(msg)}")
    out = tmp_path / "out"
    inner = f"age -d -i {q(key)} -o {q(out)} {q(msg)}.age"
    sh(
        f"(sleep 1; printf '%s\\n' {q(pw['BACKUP_IDENTITY_PASSPHRASE'])}) | script -qec {q(inner)} /dev/null"
    )
    assert out.read_text() == "hello from age 1.1.1"


def test_inventory_export_to_a_target_whose_policies_mix_kinds(env: Env) -> None:
    """Two policies on one target, one post-quantum and one classic: a copy for the target
    cannot be encrypted to both, so the command says which choice to make, in one line."""
    rcpt = HybridIdentity.generate().recipient().to_string()
    env.config.write_text(
        env.config.read_text()
        + f'[[policy]]\nname = "q"\nsources = ["{env.source}"]\ntarget = "file://{env.vault}"\n'
        + f'recipients = ["{rcpt}"]\n'
    )
    proc = cli(env, "inventory", "export", f"file://{env.vault}")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "mix post-quantum" in lines[0] and "--policy" in lines[0]
    ok(cli(env, "inventory", "export", "--policy", "q", "--armor"))


def test_armored_archive_made_by_debian_age_restores(tmp_path: Path, key: Key) -> None:
    """``tar | zstd | age -a``: restore --file reads the armor (and tells it from binary
    by its first bytes)."""
    src = tmp_path / "src"
    make_tree(src, big=False)
    archive = tmp_path / "t.tar.zst.age"
    sh(
        f"tar -c --format=pax -C {q(src)} . | zstd -q -c | age -a -r {q(key.recipient)} -o {q(archive)}"
    )
    assert archive.read_bytes().startswith(b"-----BEGIN AGE ENCRYPTED FILE-----\n")
    out = tmp_path / "out"
    ok(cli(None, "restore", "--file", str(archive), "--to", str(out), "--identity", str(key.path)))
    assert_same_tree(src, out)


def test_workers_never_ask_for_the_identity_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal the command asks for the passphrase; a worker (ask=False) does not,
    even when started from one: it would wait there for good."""
    import backup.restore as r
    from backup.crypto.age import ScryptRecipient, encrypt_bytes
    from backup.errors import IdentityError

    ident = HybridIdentity.generate()
    key = tmp_path / "key.age"
    key.write_bytes(encrypt_bytes(ident.to_string().encode(), [ScryptRecipient("pw", log_n=2)]))
    monkeypatch.delenv("BACKUP_IDENTITY_PASSPHRASE", raising=False)
    monkeypatch.setattr(r.sys.stdin, "isatty", lambda: True)
    asked: list[str] = []
    monkeypatch.setattr(r.getpass, "getpass", lambda prompt: asked.append(prompt) or "pw")
    (got,) = r.identities_from(key)
    assert isinstance(got, HybridIdentity) and got.recipient() == ident.recipient()
    assert len(asked) == 1
    with pytest.raises(IdentityError, match="BACKUP_IDENTITY_PASSPHRASE"):
        r.identities_from(key, ask=False)
    assert len(asked) == 1
