"""Interoperability with the reference age implementation (the ``age`` and ``age-keygen``
binaries): what we write, age reads, and the other way round."""

from __future__ import annotations

import io
import os
import select
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from backup.crypto import (
    CHUNK_SIZE,
    AgeReader,
    AgeWriter,
    PayloadError,
    ScryptIdentity,
    ScryptRecipient,
    X25519Identity,
    load_identities,
    parse_recipient,
)

AGE = shutil.which("age")
AGE_KEYGEN = shutil.which("age-keygen")


@pytest.fixture(autouse=True)
def _need_age() -> None:
    if AGE is None or AGE_KEYGEN is None:
        pytest.skip("age not installed: apt-get install age")


def _age(*args: str, stdin: bytes = b"") -> bytes:
    assert AGE is not None
    proc = subprocess.run([AGE, *args], input=stdin, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def _keygen(path: Path) -> str:
    """Run age-keygen into ``path``; return the public key."""
    assert AGE_KEYGEN is not None
    subprocess.run([AGE_KEYGEN, "-o", str(path)], check=True, capture_output=True)
    for line in path.read_text().splitlines():
        if line.startswith("# public key: "):
            return line.removeprefix("# public key: ")
    raise AssertionError("age-keygen wrote no public key comment")


def _write_identity_file(path: Path, identity: X25519Identity) -> None:
    path.write_text(
        f"# public key: {identity.recipient()}\n{identity.to_string()}\n", encoding="utf-8"
    )
    path.chmod(0o600)


SIZES = [0, 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * 1024 * 1024 + 5]


@pytest.mark.parametrize("size", SIZES)
def test_our_writer_age_decrypts(tmp_path: Path, size: int) -> None:
    identity = X25519Identity.generate()
    key = tmp_path / "key.txt"
    _write_identity_file(key, identity)
    data = os.urandom(size)
    out = io.BytesIO()
    with AgeWriter(out, [identity.recipient()]) as w:
        # Uneven pieces, so the chunking path through the buffer is exercised too.
        for i in range(0, size, 10_000):
            w.write(data[i : i + 10_000])
    assert _age("-d", "-i", str(key), stdin=out.getvalue()) == data


@pytest.mark.parametrize("size", SIZES)
def test_age_encrypts_we_decrypt(tmp_path: Path, size: int) -> None:
    key = tmp_path / "key.txt"
    public = _keygen(key)
    data = os.urandom(size)
    enc = _age("-r", public, stdin=data)
    identities = load_identities(key)
    with AgeReader(io.BytesIO(enc), identities, name="from-age") as reader:
        assert reader.read() == data


def test_age_multiple_recipients_file(tmp_path: Path) -> None:
    keys = [tmp_path / f"key{i}.txt" for i in range(3)]
    publics = [_keygen(k) for k in keys]
    recipients = tmp_path / "recipients.txt"
    recipients.write_text("# team\n" + "\n".join(publics) + "\n")
    data = os.urandom(200_000)
    enc = _age("-R", str(recipients), stdin=data)
    for k in keys:
        assert AgeReader(io.BytesIO(enc), load_identities(k)).read() == data


def test_our_multiple_recipients_age_decrypts(tmp_path: Path) -> None:
    ours = [X25519Identity.generate() for _ in range(2)]
    theirs = tmp_path / "theirs.txt"
    their_public = _keygen(theirs)
    recipients = [i.recipient() for i in ours] + [parse_recipient(their_public)]
    data = os.urandom(100_000)
    out = io.BytesIO()
    with AgeWriter(out, recipients) as w:
        w.write(data)
    assert _age("-d", "-i", str(theirs), stdin=out.getvalue()) == data
    mine = tmp_path / "mine.txt"
    _write_identity_file(mine, ours[1])
    assert _age("-d", "-i", str(mine), stdin=out.getvalue()) == data


def test_generated_identity_file_with_age(tmp_path: Path) -> None:
    identity = X25519Identity.generate()
    key = tmp_path / "generated.txt"
    _write_identity_file(key, identity)
    # age itself derives the same public key from our secret key.
    assert AGE_KEYGEN is not None
    derived = subprocess.run(
        [AGE_KEYGEN, "-y", str(key)], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert derived == identity.recipient().to_string()
    enc = _age("-r", derived, stdin=b"hello")
    assert _age("-d", "-i", str(key), stdin=enc) == b"hello"


def test_age_keygen_file_loads(tmp_path: Path) -> None:
    key = tmp_path / "keygen.txt"
    public = _keygen(key)
    [identity] = load_identities(key)
    assert isinstance(identity, X25519Identity)
    assert identity.recipient().to_string() == public


def _age_on_pty(args: list[str], passphrase: str) -> None:
    """Run age with a pseudo-terminal, answering every passphrase prompt: age reads
    passphrases from the terminal only."""
    import pty

    assert AGE is not None
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - child
        os.execv(AGE, [AGE, *args])
    transcript = bytearray()
    answered = 0
    while True:
        if not select.select([fd], [], [], 60)[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"age hung: {transcript.decode(errors='replace')}")
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO once the child closes the terminal
            break
        if not chunk:
            break
        transcript += chunk
        if transcript.lower().count(b"passphrase") > answered:
            os.write(fd, passphrase.encode() + b"\n")
            answered += 1
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, transcript.decode(errors="replace")


def test_scrypt_our_writer_age_decrypts(tmp_path: Path) -> None:
    data = os.urandom(CHUNK_SIZE + 1000)
    enc = tmp_path / "in.age"
    with enc.open("wb") as f, AgeWriter(f, [ScryptRecipient("interop-pass", log_n=10)]) as w:
        w.write(data)
    plain = tmp_path / "out.bin"
    _age_on_pty(["-d", "-o", str(plain), str(enc)], "interop-pass")
    assert plain.read_bytes() == data


def test_scrypt_age_encrypts_we_decrypt(tmp_path: Path) -> None:
    data = os.urandom(CHUNK_SIZE + 1000)
    plain = tmp_path / "in.bin"
    plain.write_bytes(data)
    enc = tmp_path / "out.age"
    _age_on_pty(["-p", "-o", str(enc), str(plain)], "interop-pass")
    # age's default work factor is 18, within our default cap of 22.
    with enc.open("rb") as f:
        assert AgeReader(f, [ScryptIdentity("interop-pass")]).read() == data


def test_truncated_age_output_fails(tmp_path: Path) -> None:
    key = tmp_path / "key.txt"
    public = _keygen(key)
    enc = _age("-r", public, stdin=os.urandom(2 * CHUNK_SIZE + 1))
    reader = AgeReader(io.BytesIO(enc[:-20]), load_identities(key))
    with pytest.raises(PayloadError):
        while reader.read(CHUNK_SIZE):
            pass


def test_a_header_alone_proves_an_identity(tmp_path: Path) -> None:
    """``header_of`` keeps an age file's header (written here by the real ``age``), and
    ``prove_identity`` tells from it alone which identity decrypts the file: the recipient's
    passes, a stranger's is no match, a header whose stanza or MAC was altered fails."""
    from backup.crypto.age import HeaderError, HMACError, NoIdentityMatch, header_of, prove_identity

    key = tmp_path / "key.txt"
    public = _keygen(key)
    other = X25519Identity.generate()
    enc = _age("-r", public, "-r", str(other.recipient()), stdin=os.urandom(200_000))
    header = header_of(enc, name="f")
    assert enc.startswith(header) and header.endswith(b"\n") and len(header) < 400
    assert header.splitlines()[-1].startswith(b"--- ")
    prove_identity(header, load_identities(key), name="f")
    prove_identity(header, [other], name="f")
    with pytest.raises(NoIdentityMatch):
        prove_identity(header, [X25519Identity.generate()], name="f")
    mac_at = header.rindex(b"--- ") + 4
    flipped = header[:mac_at] + (b"A" if header[mac_at : mac_at + 1] != b"A" else b"B")
    with pytest.raises((HMACError, HeaderError)):
        prove_identity(flipped + header[mac_at + 1 :], load_identities(key), name="f")
    with pytest.raises(HeaderError):
        header_of(b"not an age file", name="f")
