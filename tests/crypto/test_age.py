"""Unit tests for backup.crypto: round trips, streaming edge cases, failure modes."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest

from backup.crypto import (
    CHUNK_SIZE,
    AgeError,
    AgeReader,
    AgeWriter,
    ArmorError,
    HeaderError,
    HMACError,
    NoIdentityMatch,
    PayloadError,
    ScryptIdentity,
    ScryptRecipient,
    X25519Identity,
    X25519Recipient,
    age,
    bech32,
    decrypt_bytes,
    encrypt_bytes,
    load_identities,
    parse_identities,
    parse_recipient,
)

# Low work factor keeps the scrypt tests fast; the format is the same at any N.
FAST_LOG_N = 10


@pytest.fixture(scope="module")
def identity() -> X25519Identity:
    return X25519Identity.generate()


def _header_len(data: bytes) -> int:
    """Offset of the first payload byte (after the header and the 16-byte nonce)."""
    return data.index(b"\n", data.index(b"\n---") + 1) + 1 + 16


# --- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE, 5 * 1024 * 1024 + 7],
)
def test_round_trip_sizes(identity: X25519Identity, size: int) -> None:
    data = os.urandom(size)
    enc = encrypt_bytes(data, [identity.recipient()])
    assert decrypt_bytes(enc, [identity]) == data


def test_ciphertext_size(identity: X25519Identity) -> None:
    # Full final chunk: 64 KiB of plaintext is one chunk, not a full one plus an empty one.
    enc = encrypt_bytes(bytes(CHUNK_SIZE), [identity.recipient()])
    assert len(enc) - _header_len(enc) == CHUNK_SIZE + 16
    enc = encrypt_bytes(b"", [identity.recipient()])
    assert len(enc) - _header_len(enc) == 16


def test_multiple_recipients() -> None:
    ids = [X25519Identity.generate() for _ in range(3)]
    data = os.urandom(100_000)
    enc = encrypt_bytes(data, [i.recipient() for i in ids])
    for i in ids:
        assert decrypt_bytes(enc, [i]) == data
    # An unrelated identity first in the list is skipped.
    assert decrypt_bytes(enc, [X25519Identity.generate(), ids[2]]) == data


def test_scrypt_round_trip() -> None:
    data = os.urandom(70_000)
    enc = encrypt_bytes(data, [ScryptRecipient("correct horse", log_n=FAST_LOG_N)])
    assert b"\n-> scrypt " in enc
    assert decrypt_bytes(enc, [ScryptIdentity("correct horse")]) == data
    assert decrypt_bytes(enc, [ScryptIdentity(b"correct horse")]) == data
    with pytest.raises(NoIdentityMatch):
        decrypt_bytes(enc, [ScryptIdentity("wrong")])


def test_scrypt_default_work_factor() -> None:
    enc = encrypt_bytes(b"x", [ScryptRecipient("pw")])
    assert b" 18\n" in enc.split(b"\n---")[0]


def test_scrypt_must_be_alone(identity: X25519Identity) -> None:
    with pytest.raises(AgeError, match="only recipient"):
        AgeWriter(io.BytesIO(), [ScryptRecipient("pw", log_n=FAST_LOG_N), identity.recipient()])


def test_scrypt_cap_refuses_without_computing(monkeypatch: pytest.MonkeyPatch) -> None:
    enc = encrypt_bytes(b"secret", [ScryptRecipient("pw", log_n=12)])

    def no_scrypt(*args: object) -> bytes:
        raise AssertionError("scrypt must not run above the cap")

    monkeypatch.setattr(age, "_scrypt", no_scrypt)
    with pytest.raises(HeaderError, match="work factor 12 exceeds the limit of 11"):
        decrypt_bytes(enc, [ScryptIdentity("pw", max_log_n=11)])
    monkeypatch.undo()
    assert decrypt_bytes(enc, [ScryptIdentity("pw", max_log_n=12)]) == b"secret"


def test_scrypt_identity_ignores_x25519_files(identity: X25519Identity) -> None:
    enc = encrypt_bytes(b"x", [identity.recipient()])
    with pytest.raises(NoIdentityMatch):
        decrypt_bytes(enc, [ScryptIdentity("pw")])


# --- streaming --------------------------------------------------------------------------


def test_writer_odd_pieces_and_reader_odd_reads(identity: X25519Identity) -> None:
    rng = random.Random(1)
    data = os.urandom(3 * CHUNK_SIZE + 12_345)
    out = io.BytesIO()
    with AgeWriter(out, [identity.recipient()]) as w:
        pos = 0
        while pos < len(data):
            n = rng.choice([0, 1, 7, 1000, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 200_000])
            piece = data[pos : pos + n]
            # All accepted buffer types.
            kind = rng.choice([bytes, bytearray, memoryview])
            assert w.write(kind(piece)) == len(piece)
            pos += n
    enc = out.getvalue()
    assert enc == out.getvalue()  # close() left out open
    assert decrypt_bytes(enc, [identity]) == data

    reader = AgeReader(io.BytesIO(enc), [identity])
    got = bytearray()
    while True:
        chunk = reader.read(rng.choice([1, 3, 4096, 65535, 65536, 65537, 300_000]))
        if not chunk:
            break
        got += chunk
    assert got == data
    assert reader.read(10) == b""
    assert reader.read() == b""


def test_chunk_layout_independent_of_write_pattern(identity: X25519Identity) -> None:
    data = os.urandom(2 * CHUNK_SIZE + 5)
    sizes = []
    for pieces in (
        [data],
        [data[:1], data[1:]],
        [data[i : i + 999] for i in range(0, len(data), 999)],
    ):
        out = io.BytesIO()
        w = AgeWriter(out, [identity.recipient()])
        for p in pieces:
            w.write(p)
        w.close()
        sizes.append(len(out.getvalue()) - _header_len(out.getvalue()))
        assert decrypt_bytes(out.getvalue(), [identity]) == data
    assert sizes == [2 * (CHUNK_SIZE + 16) + 5 + 16] * 3


def test_readinto_sizes(identity: X25519Identity) -> None:
    data = os.urandom(2 * CHUNK_SIZE + 100)
    enc = encrypt_bytes(data, [identity.recipient()])
    for size in (1, 1000, CHUNK_SIZE, CHUNK_SIZE + 3, 4 * CHUNK_SIZE):
        reader = AgeReader(io.BytesIO(enc), [identity])
        buf = bytearray(size)
        got = bytearray()
        while n := reader.readinto(buf):
            got += buf[:n]
        assert got == data, size


def test_reader_is_a_file_object(identity: X25519Identity) -> None:
    data = b"line one\nline two\n" * 10_000
    enc = encrypt_bytes(data, [identity.recipient()])
    with AgeReader(io.BytesIO(enc), [identity], name="archive-1") as reader:
        assert reader.readable()
        assert not reader.writable()
        assert not reader.seekable()
        buffered = io.BufferedReader(reader)
        assert buffered.readline() == b"line one\n"
        assert buffered.read() == data[len(b"line one\n") :]
    assert reader.closed
    with pytest.raises(ValueError):
        reader.read(1)


def test_reader_on_source_without_readinto(identity: X25519Identity) -> None:
    class Trickle:
        """Returns at most 1000 bytes per read, and has no readinto."""

        def __init__(self, data: bytes) -> None:
            self._f = io.BytesIO(data)

        def read(self, n: int = -1) -> bytes:
            return self._f.read(min(n, 1000) if n >= 0 else 1000)

    data = os.urandom(3 * CHUNK_SIZE)
    enc = encrypt_bytes(data, [identity.recipient()])
    assert AgeReader(Trickle(enc), [identity]).read() == data


def test_writer_close_is_idempotent_and_write_after_close_fails(
    identity: X25519Identity,
) -> None:
    out = io.BytesIO()
    w = AgeWriter(out, [identity.recipient()])
    w.write(b"abc")
    w.close()
    size = len(out.getvalue())
    w.close()
    assert len(out.getvalue()) == size
    assert not out.closed
    with pytest.raises(ValueError):
        w.write(b"more")


def test_writer_exception_in_with_leaves_truncated_file(identity: X25519Identity) -> None:
    out = io.BytesIO()
    with pytest.raises(RuntimeError), AgeWriter(out, [identity.recipient()]) as w:
        w.write(os.urandom(CHUNK_SIZE * 2 + 1))
        raise RuntimeError("source failed")
    with pytest.raises(PayloadError, match="truncated"):
        decrypt_bytes(out.getvalue(), [identity])


def test_writer_requires_recipients() -> None:
    with pytest.raises(AgeError):
        AgeWriter(io.BytesIO(), [])


# --- failures ---------------------------------------------------------------------------


def _read_until_error(enc: bytes, identity: X25519Identity) -> tuple[bytes, PayloadError]:
    reader = AgeReader(io.BytesIO(enc), [identity], name="test-file")
    got = bytearray()
    with pytest.raises(PayloadError) as info:
        while chunk := reader.read(CHUNK_SIZE):
            got += chunk
    return bytes(got), info.value


@pytest.mark.parametrize("cut", [1, 16, 17, CHUNK_SIZE + 16, CHUNK_SIZE + 17])
def test_truncation_is_payload_error(identity: X25519Identity, cut: int) -> None:
    data = os.urandom(2 * CHUNK_SIZE + 10)
    enc = encrypt_bytes(data, [identity.recipient()])
    released, err = _read_until_error(enc[:-cut], identity)
    assert "test-file" in str(err)
    # Only whole authenticated chunks, in order, before the failure.
    assert len(released) % CHUNK_SIZE == 0
    assert released == data[: len(released)]


def test_truncation_at_chunk_boundary(identity: X25519Identity) -> None:
    data = os.urandom(2 * CHUNK_SIZE + 10)
    enc = encrypt_bytes(data, [identity.recipient()])
    cut = _header_len(enc) + CHUNK_SIZE + 16
    released, err = _read_until_error(enc[:cut], identity)
    assert released == data[:CHUNK_SIZE]
    assert "truncated" in str(err)


def test_trailing_data_is_payload_error(identity: X25519Identity) -> None:
    data = os.urandom(CHUNK_SIZE)
    enc = encrypt_bytes(data, [identity.recipient()])
    released, err = _read_until_error(enc + b"x", identity)
    assert released == data
    assert "trailing data" in str(err)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_bit_flip_is_payload_error(identity: X25519Identity, where: str) -> None:
    data = os.urandom(3 * CHUNK_SIZE + 10)
    enc = bytearray(encrypt_bytes(data, [identity.recipient()]))
    start = _header_len(bytes(enc))
    offset = {"first": start + 5, "middle": start + CHUNK_SIZE + 16 + 100, "last": len(enc) - 1}
    enc[offset[where]] ^= 0x01
    released, _ = _read_until_error(bytes(enc), identity)
    assert released == data[: len(released)]
    assert len(released) == {"first": 0, "middle": CHUNK_SIZE, "last": 3 * CHUNK_SIZE}[where]


def test_errors_are_sticky(identity: X25519Identity) -> None:
    enc = bytearray(encrypt_bytes(os.urandom(CHUNK_SIZE + 1), [identity.recipient()]))
    enc[-1] ^= 1
    reader = AgeReader(io.BytesIO(bytes(enc)), [identity])
    assert len(reader.read(CHUNK_SIZE)) == CHUNK_SIZE
    for _ in range(2):
        with pytest.raises(PayloadError):
            reader.read(1)


def test_readinto_failure_leaves_no_plaintext(identity: X25519Identity) -> None:
    data = b"\xaa" * (CHUNK_SIZE + 1)
    enc = bytearray(encrypt_bytes(data, [identity.recipient()]))
    enc[_header_len(bytes(enc)) + 3] ^= 1  # corrupt the first chunk
    reader = AgeReader(io.BytesIO(bytes(enc)), [identity])
    buf = bytearray(CHUNK_SIZE)
    with pytest.raises(PayloadError):
        reader.readinto(buf)
    assert buf == bytes(CHUNK_SIZE)


def test_header_bit_flip_is_hmac_error(identity: X25519Identity) -> None:
    enc = encrypt_bytes(b"data", [identity.recipient(), X25519Identity.generate().recipient()])
    # Swap the two stanzas: every stanza still parses, but the MAC covers their order.
    lines = enc.split(b"\n")
    swapped = b"\n".join([lines[0], lines[3], lines[4], lines[1], lines[2], *lines[5:]])
    with pytest.raises(HMACError, match="archive-9"):
        decrypt_bytes(swapped, [identity], name="archive-9")


def test_wrong_key_is_no_identity_match(identity: X25519Identity) -> None:
    enc = encrypt_bytes(b"data", [identity.recipient()])
    with pytest.raises(NoIdentityMatch, match="archive-7"):
        decrypt_bytes(enc, [X25519Identity.generate()], name="archive-7")


def test_not_an_age_file(identity: X25519Identity) -> None:
    with pytest.raises(HeaderError, match="not an age file"):
        decrypt_bytes(b"\x28\xb5\x2f\xfd" + bytes(100), [identity])
    with pytest.raises(ArmorError, match="without its END line"):
        decrypt_bytes(b"-----BEGIN AGE ENCRYPTED FILE-----\n", [identity])
    armored = encrypt_bytes(b"data", [identity.recipient()], armor=True)
    with pytest.raises(HeaderError, match="armored"):
        AgeReader(io.BytesIO(armored), [identity], armor=False)


def test_no_identities(identity: X25519Identity) -> None:
    enc = encrypt_bytes(b"data", [identity.recipient()])
    with pytest.raises(AgeError):
        decrypt_bytes(enc, [])


# --- keys -------------------------------------------------------------------------------


def test_identity_repr_redacts_secret(identity: X25519Identity) -> None:
    secret = identity.to_string()
    assert secret.startswith("AGE-SECRET-KEY-1")
    for text in (repr(identity), str(identity), f"{identity}", repr([identity])):
        assert secret not in text
        assert secret[16:].lower() not in text.lower()
        assert identity.recipient().to_string() in text
    assert "pw123" not in repr(ScryptIdentity("pw123")) + repr(ScryptRecipient("pw123"))


def test_identity_string_round_trip(identity: X25519Identity) -> None:
    again = X25519Identity.from_string(identity.to_string())
    assert again.recipient() == identity.recipient()
    assert again.to_string() == identity.to_string()


def test_recipient_string_round_trip(identity: X25519Identity) -> None:
    s = identity.recipient().to_string()
    assert s.startswith("age1") and len(s) == 62
    r = parse_recipient(f"  {s}\n")
    assert isinstance(r, X25519Recipient)
    assert str(r) == s
    assert r == identity.recipient()


def test_known_key_pair() -> None:
    # From the CCTV vectors / age's documentation format.
    ident = X25519Identity.from_string(
        "AGE-SECRET-KEY-1EGTZVFFV20835NWYV6270LXYVK2VKNX2MMDKWYKLMGR48UAWX40Q2P2LM0"
    )
    assert ident.to_string() == (
        "AGE-SECRET-KEY-1EGTZVFFV20835NWYV6270LXYVK2VKNX2MMDKWYKLMGR48UAWX40Q2P2LM0"
    )
    assert ident.recipient().to_string().startswith("age1")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            "AGE-SECRET-KEY-1EGTZVFFV20835NWYV6270LXYVK2VKNX2MMDKWYKLMGR48UAWX40Q2P2LM0",
            "secret key",
        ),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI", "SSH"),
        ("age1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq", "checksum"),
        ("AGE1QQQ", "X25519"),
        ("hello", "unknown recipient type"),
        ("", "unknown recipient type"),
    ],
)
def test_parse_recipient_errors(text: str, match: str) -> None:
    with pytest.raises(AgeError, match=match) as info:
        parse_recipient(text)
    if len(text) > 12:
        assert text not in str(info.value)


def test_parse_recipient_rejects_uppercase(identity: X25519Identity) -> None:
    with pytest.raises(AgeError, match="lowercase"):
        parse_recipient(identity.recipient().to_string().upper())


def test_identity_rejects_lowercase(identity: X25519Identity) -> None:
    with pytest.raises(AgeError):
        X25519Identity.from_string(identity.to_string().lower())


# --- bech32 -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 20, 32, 100, 1200])
def test_bech32_round_trip(size: int) -> None:
    data = os.urandom(size)
    for hrp in ("age", "AGE-SECRET-KEY-"):
        s = bech32.encode(hrp, data)
        assert bech32.decode(s) == (hrp, data)
    # Far beyond BIP-173's 90-character limit.
    assert len(bech32.encode("age", bytes(1200))) > 1900


def test_bech32_bip173_vectors() -> None:
    for valid in (
        "A12UEL5L",
        "a12uel5l",
        "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
        "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",
    ):
        hrp, _ = bech32.decode(valid)
        assert valid.startswith(hrp)
    for invalid in (
        "\x201nwldj5",  # HRP character out of range
        "pzry9x0s0muk",  # no separator
        "1pzry9x0s0muk",  # empty HRP
        "x1b4n0q5v",  # invalid data character
        "li1dgmt3",  # too short checksum
        "A1G7SGD8",  # checksum calculated with uppercase HRP
        "10a06t8",  # empty HRP
        "1qzzfhee",  # empty HRP
        "A12uEL5L",  # mixed case
    ):
        with pytest.raises(bech32.Bech32Error):
            bech32.decode(invalid)


def test_bech32_rejects_nonzero_padding() -> None:
    s = bech32.encode("age", b"\xff")  # 8 bits -> two 5-bit groups, 2 padding bits
    values = [bech32._CHARSET.index(c) for c in s[4:-6]]
    values[-1] |= 1  # set a padding bit, then fix up the checksum
    poly = bech32._polymod([*bech32._hrp_expand("age"), *values, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(poly >> 5 * (5 - i)) & 31 for i in range(6)]
    bad = "age1" + "".join(bech32._CHARSET[v] for v in values + checksum)
    with pytest.raises(bech32.Bech32Error, match="padding"):
        bech32.decode(bad)


# --- identity files ---------------------------------------------------------------------


def test_parse_identities_with_comments() -> None:
    a, b = X25519Identity.generate(), X25519Identity.generate()
    text = (
        "# created: 2024-01-01T00:00:00Z\n"
        f"# public key: {a.recipient()}\n"
        f"{a.to_string()}\n"
        "\n"
        f"{b.to_string()}\r\n"
    )
    ids = parse_identities(text, "keys.txt")
    assert all(isinstance(i, X25519Identity) for i in ids)
    assert [i.recipient() for i in ids if isinstance(i, X25519Identity)] == [
        a.recipient(),
        b.recipient(),
    ]


def test_parse_identities_error_names_file_and_line_not_content() -> None:
    good = X25519Identity.generate().to_string()
    bad = good[:-1] + ("q" if good[-1] != "Q" else "P")  # checksum now wrong
    text = f"# comment\n{good}\n\n{bad}\n"
    with pytest.raises(AgeError) as info:
        parse_identities(text, "/etc/backup/keys.txt")
    msg = str(info.value)
    assert "/etc/backup/keys.txt" in msg
    assert "line 4" in msg
    assert bad not in msg and good not in msg
    assert bad[16:30] not in msg
    # The chained original error is hidden from tracebacks, and secret-free anyway.
    assert info.value.__suppress_context__
    assert bad not in repr(info.value.__context__)


def test_parse_identities_empty() -> None:
    with pytest.raises(AgeError, match="no identities"):
        parse_identities("# nothing here\n\n", "empty.txt")


def test_load_identities(tmp_path: Path) -> None:
    ident = X25519Identity.generate()
    path = tmp_path / "key.txt"
    path.write_text(f"# public key: {ident.recipient()}\n{ident.to_string()}\n")
    [loaded] = load_identities(path)
    enc = encrypt_bytes(b"payload", [ident.recipient()])
    assert decrypt_bytes(enc, [loaded]) == b"payload"
    with pytest.raises(AgeError, match=r"missing\.txt"):
        load_identities(tmp_path / "missing.txt")
    enc_path = tmp_path / "key.age"
    enc_path.write_bytes(enc)
    with pytest.raises(AgeError, match="encrypted identity file"):
        load_identities(enc_path)


def test_tar_zstd_age_pipeline(identity: X25519Identity) -> None:
    # The archive format is tar | zstd | age; both directions must stream through.
    import tarfile

    zstandard = pytest.importorskip("zstandard")
    payload = os.urandom(300_000) + bytes(1_000_000)
    out = io.BytesIO()
    with (
        AgeWriter(out, [identity.recipient()]) as aw,
        zstandard.ZstdCompressor(level=3).stream_writer(aw, closefd=False) as zw,
        tarfile.open(fileobj=zw, mode="w|") as tf,
    ):
        info = tarfile.TarInfo("data.bin")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    reader = AgeReader(io.BytesIO(out.getvalue()), [identity], name="pipeline")
    zr = zstandard.ZstdDecompressor().stream_reader(reader, closefd=False)
    with tarfile.open(fileobj=zr, mode="r|") as tf:
        member = tf.next()
        assert member is not None and member.name == "data.bin"
        extracted = tf.extractfile(member)
        assert extracted is not None and extracted.read() == payload
