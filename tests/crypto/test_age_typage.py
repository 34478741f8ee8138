"""Interoperability of the post-quantum hybrid type and armor with an independent age
implementation: typage (npm ``age-encryption`` 0.3.1, FiloSottile's TypeScript age, on the
noble ML-KEM and X25519 code, nothing shared with OpenSSL). ``scripts/test`` installs it
under tests/interop/typage. Debian's age 1.1.1 predates the hybrid type (age 1.3.0 added
it), and pyrage 1.4.0 (rage) has no mlkem768x25519 either, so typage is the one here."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from backup.crypto import (
    HybridIdentity,
    decrypt_bytes,
    encrypt_bytes,
    parse_identity,
    parse_recipient,
)

_DIR = Path(__file__).resolve().parents[1] / "interop" / "typage"


@pytest.fixture(scope="module", autouse=True)
def _typage() -> None:
    if not (_DIR / "node_modules" / "age-encryption").is_dir():
        pytest.fail(f"typage is not installed in {_DIR}: run ./scripts/test, which installs it")


def ts(*args: str, data: bytes = b"") -> bytes:
    proc = subprocess.run(
        ["node", str(_DIR / "age.mjs"), *args], input=data, capture_output=True, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


PLAIN = bytes(range(256)) * 600 + b"tail"  # several STREAM chunks, a short last one


def test_typage_key_reads_here_and_derives_the_same_recipient() -> None:
    identity, recipient = ts("keygen-pq").decode().split()
    ours = parse_identity(identity)
    assert isinstance(ours, HybridIdentity)
    assert ours.recipient().to_string() == recipient
    assert parse_recipient(recipient) == ours.recipient()


@pytest.mark.parametrize("armor", [False, True])
def test_typage_encrypts_we_decrypt(armor: bool) -> None:
    ident = HybridIdentity.generate()
    enc = ts("encrypt", ident.recipient().to_string(), *(["armor"] if armor else []), data=PLAIN)
    assert enc.startswith(b"-----BEGIN AGE" if armor else b"age-encryption.org/v1\n-> mlkem")
    assert decrypt_bytes(enc, [ident]) == PLAIN


@pytest.mark.parametrize("armor", [False, True])
def test_we_encrypt_typage_decrypts(armor: bool) -> None:
    identity, recipient = ts("keygen-pq").decode().split()
    enc = encrypt_bytes(PLAIN, [parse_recipient(recipient)], armor=armor)
    assert ts("decrypt", identity, data=enc) == PLAIN
    # and our own generated identity, both ways
    ident = HybridIdentity.generate()
    enc = encrypt_bytes(PLAIN, [ident.recipient(), parse_recipient(recipient)], armor=armor)
    assert ts("decrypt", ident.to_string(), data=enc) == PLAIN
    assert ts("recipient", ident.to_string()).decode().strip() == ident.recipient().to_string()
