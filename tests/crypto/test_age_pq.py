"""Post-quantum hybrid recipients (mlkem768x25519) and ASCII armor, beyond the vectors:
round trips, the rule against mixing with classic recipients, key encodings, hostile input."""

from __future__ import annotations

import io

import pytest

from backup.crypto import (
    AgeError,
    AgeReader,
    AgeWriter,
    ArmorError,
    ArmorWriter,
    HeaderError,
    HybridIdentity,
    HybridRecipient,
    NoIdentityMatch,
    ScryptRecipient,
    X25519Identity,
    bech32,
    decrypt_bytes,
    encrypt_bytes,
    load_identities,
    parse_identities,
    parse_identity,
    parse_recipient,
)


@pytest.fixture(scope="module")
def pq() -> HybridIdentity:
    return HybridIdentity.generate()


def test_key_encodings(pq: HybridIdentity) -> None:
    secret = pq.to_string()
    assert secret.startswith("AGE-SECRET-KEY-PQ-1") and secret == secret.upper()
    hrp, seed = bech32.decode(secret)
    assert hrp == "AGE-SECRET-KEY-PQ-" and len(seed) == 32
    rcpt = pq.recipient().to_string()
    assert rcpt.startswith("age1pq1") and rcpt == rcpt.lower()
    hrp, pub = bech32.decode(rcpt)
    assert hrp == "age1pq" and len(pub) == 1216  # ML-KEM-768 key, then X25519 key
    # the seed determines everything: parsing gives back the same public key
    again = parse_identity(secret)
    assert isinstance(again, HybridIdentity)
    assert again.recipient() == pq.recipient()
    assert parse_recipient(f"  {rcpt}\n") == pq.recipient()
    for text in (repr(pq), str(pq), repr(pq.recipient())):
        assert secret not in text and secret[19:].lower() not in text.lower()


def test_round_trip_several_pq_recipients(pq: HybridIdentity) -> None:
    other = HybridIdentity.generate()
    data = bytes(range(256)) * 700  # several STREAM chunks
    enc = encrypt_bytes(data, [other.recipient(), pq.recipient()])
    assert enc.count(b"-> mlkem768x25519 ") == 2
    assert decrypt_bytes(enc, [pq]) == data
    assert decrypt_bytes(enc, [other]) == data
    with pytest.raises(NoIdentityMatch):
        decrypt_bytes(enc, [HybridIdentity.generate(), X25519Identity.generate()])


def test_classic_and_pq_recipients_do_not_mix(pq: HybridIdentity) -> None:
    classic = X25519Identity.generate().recipient()
    for rcpts in ([pq.recipient(), classic], [classic, pq.recipient()]):
        with pytest.raises(AgeError, match="incompatible recipients"):
            AgeWriter(io.BytesIO(), rcpts)
    with pytest.raises(AgeError, match="incompatible recipients"):
        encrypt_bytes(b"x", [pq.recipient(), ScryptRecipient("pw", log_n=2)])
    # reading such a file is allowed, as age does (the hybrid_and_x25519 vector)
    assert HybridRecipient.post_quantum and not type(classic).post_quantum


def test_identity_file_mixes_key_types(
    tmp_path: pytest.TempPathFactory, pq: HybridIdentity
) -> None:
    x = X25519Identity.generate()
    text = f"# created\n{x.to_string()}\n\n# pq\n{pq.to_string()}\r\n"
    ids = parse_identities(text, "keys.txt")
    assert [type(i) for i in ids] == [X25519Identity, HybridIdentity]
    enc = encrypt_bytes(b"pq data", [pq.recipient()])
    assert decrypt_bytes(enc, ids) == b"pq data"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("age1pq1qqqq", "malformed post-quantum recipient"),
        # a valid bech32 string of the wrong length
        (bech32.encode("age1pq", bytes(32)), "wrong key length"),
        # an uppercase recipient is not one
        (HybridIdentity.generate().recipient().to_string().upper(), "lowercase"),
    ],
)
def test_malformed_pq_recipient(text: str, message: str) -> None:
    with pytest.raises(AgeError, match=message) as e:
        parse_recipient(text)
    assert text not in str(e.value)


def test_malformed_pq_recipient_one_changed_character(pq: HybridIdentity) -> None:
    rcpt = pq.recipient().to_string()
    bad = rcpt[:100] + ("q" if rcpt[100] != "q" else "p") + rcpt[101:]
    with pytest.raises(AgeError, match="checksum"):
        parse_recipient(bad)


def test_malformed_pq_identity_never_quoted(pq: HybridIdentity) -> None:
    secret = pq.to_string()
    bad = secret[:-1] + ("Q" if secret[-1] != "Q" else "P")
    with pytest.raises(AgeError, match="line 2") as e:
        parse_identities(f"# x\n{bad}\n", "keys.txt")
    assert bad not in str(e.value) and secret[19:30] not in str(e.value)


# --- armor ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 47, 48, 49, 65536, 65536 * 2 + 5])
def test_armor_round_trip(pq: HybridIdentity, size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    enc = encrypt_bytes(data, [pq.recipient()], armor=True)
    text = enc.decode("ascii")
    lines = text.split("\n")
    assert lines[0] == "-----BEGIN AGE ENCRYPTED FILE-----"
    assert lines[-2:] == ["-----END AGE ENCRYPTED FILE-----", ""]
    body = lines[1:-2]
    assert all(len(line) == 64 for line in body[:-1]) and 0 < len(body[-1]) <= 64
    assert decrypt_bytes(enc, [pq]) == data
    # leading and trailing whitespace, CRLF line ends: still read
    assert decrypt_bytes(b"\n \t" + enc.replace(b"\n", b"\r\n") + b"\n\n", [pq]) == data


def test_armor_streams_and_reports_late_damage(pq: HybridIdentity) -> None:
    data = b"z" * (3 * 65536)
    enc = encrypt_bytes(data, [pq.recipient()], armor=True)
    reader = AgeReader(io.BytesIO(enc + b"trailing garbage\n"), [pq])
    got = bytearray()
    with pytest.raises(ArmorError, match="after the END line"):
        while chunk := reader.read(65536):
            got += chunk
    assert got == data  # the damage is after the data, and is still reported


def test_armor_writer_after_failure_writes_no_end_line(pq: HybridIdentity) -> None:
    out = io.BytesIO()
    with pytest.raises(RuntimeError), ArmorWriter(out) as a, AgeWriter(a, [pq.recipient()]) as w:
        w.write(b"x" * 100)
        raise RuntimeError
    assert b"END AGE" not in out.getvalue()
    with pytest.raises(ArmorError):
        decrypt_bytes(out.getvalue(), [pq])


def test_encrypted_identity_file_is_refused_clearly(tmp_path, pq: HybridIdentity) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "key.age"
    path.write_bytes(
        encrypt_bytes(pq.to_string().encode(), [ScryptRecipient("pw", log_n=2)], armor=True)
    )
    with pytest.raises(AgeError, match="encrypted identity file"):
        load_identities(path)


def test_header_error_for_hybrid_enc_in_x25519_stanza(pq: HybridIdentity) -> None:
    x = X25519Identity.generate()
    enc = encrypt_bytes(b"x", [pq.recipient()]).replace(b"-> mlkem768x25519 ", b"-> X25519 ", 1)
    with pytest.raises(HeaderError, match="wrong size"):
        decrypt_bytes(enc, [x])


def test_pq_recipient_with_invalid_parts_is_refused_when_parsed(pq: HybridIdentity) -> None:
    _, raw = bech32.decode(pq.recipient().to_string())
    low_order = bech32.encode("age1pq", raw[:1184] + bytes(32))
    with pytest.raises(AgeError, match="low-order"):
        parse_recipient(low_order)
    bad_mlkem = bech32.encode("age1pq", b"\xff" * 1184 + raw[1184:])
    with pytest.raises(AgeError, match="invalid ML-KEM-768 key"):
        parse_recipient(bad_mlkem)


class _Trickle(io.RawIOBase):
    """A source that hands out at most 2 bytes per read, like a slow pipe."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview, /) -> int:  # type: ignore[override]
        n = min(2, len(buffer), len(self._data))
        buffer[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


@pytest.mark.parametrize("armor", [False, True])
def test_armor_detected_from_a_trickling_source(pq: HybridIdentity, armor: bool) -> None:
    data = b"trickle" * 20000
    enc = encrypt_bytes(data, [pq.recipient()], armor=armor)
    if armor:
        enc = b"\n\n  " + enc
    assert AgeReader(_Trickle(enc), [pq]).readall() == data
