"""The age v1 file format (https://age-encryption.org/v1), on ``cryptography`` only.

An age file is a text header (intro line, one stanza per recipient, a closing line
carrying HMAC-SHA256 of the header) followed by a 16-byte nonce and the payload in
STREAM ChaCha20-Poly1305 chunks of 64 KiB plaintext. Files written here decrypt with
``age -d`` and files from ``age -e`` decrypt here.

Design invariants:

- Parsing is as strict as filippo.io/age: base64 must be canonical (standard alphabet,
  no padding, zero trailing bits), body lines exactly 64 columns with a final short
  (possibly empty) line, arguments non-empty printable ASCII, lines end in LF only.
  Because of that strictness the raw header bytes are byte-for-byte the canonical
  encoding, so the header MAC is computed over the bytes as read.
- Failures are classified exactly as the CCTV vectors expect: malformed header or a
  malformed stanza for a type we understand -> HeaderError; no identity can unwrap the
  file key -> NoIdentityMatch; MAC mismatch -> HMACError; anything wrong after the
  header (bad tag, truncation, missing final chunk, trailing data) -> PayloadError.
- AgeReader releases only authenticated plaintext, one chunk at a time, in order; after
  a PayloadError every later read fails again. Plaintext of the chunks before the bad
  one may already have been released, so callers must not treat output as valid until
  EOF was reached without error.
- The scrypt work factor is bounded on decryption (``max_log_n``) and the bound is
  checked before any scrypt work is done; an scrypt stanza must be the only stanza.
- AgeWriter never emits a final chunk unless ``close()`` is called explicitly or the
  ``with`` block ends without an exception, so an interrupted writer leaves a file
  that fails to decrypt as truncated rather than a valid, silently shortened one.
- Secrets (identities, passphrases, file keys) never appear in messages or reprs.
- Post-quantum hybrid recipients (``mlkem768x25519``, ``age1pq1...``) are HPKE with the
  ML-KEM-768 + X25519 (X-Wing) KEM, HKDF-SHA256 and ChaCha20-Poly1305, all from
  ``cryptography``. A file encrypted to one may not also be encrypted to a classic
  (X25519 or scrypt) recipient: that would let a quantum attacker in through the classic
  stanza. Decryption accepts such mixed files (age does, and the vectors require it).
- ASCII armor (PEM type ``AGE ENCRYPTED FILE``) is read as strictly as age reads it: 64
  columns, canonical padded base64, LF or CRLF, whitespace allowed only around the armor.
  Its errors are ArmorError. Archives in storage are always binary; armor is written only
  where a user asks for it.
"""

from __future__ import annotations

import abc
import base64
import binascii
import hashlib
import hmac
import io
import os
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from backup.crypto import bech32
from backup.errors import Error

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "CHUNK_SIZE",
    "AgeError",
    "AgeReader",
    "AgeWriter",
    "ArmorError",
    "ArmorReader",
    "ArmorWriter",
    "HMACError",
    "HeaderError",
    "HybridIdentity",
    "HybridRecipient",
    "Identity",
    "NoIdentityMatch",
    "PayloadError",
    "Recipient",
    "ScryptIdentity",
    "ScryptRecipient",
    "Stanza",
    "X25519Identity",
    "X25519Recipient",
    "decrypt_bytes",
    "encrypt_bytes",
    "load_identities",
    "parse_identities",
    "parse_identity",
    "parse_recipient",
]

CHUNK_SIZE = 64 * 1024

_TAG_SIZE = 16
_ENC_CHUNK_SIZE = CHUNK_SIZE + _TAG_SIZE
_FILE_KEY_SIZE = 16
_PAYLOAD_NONCE_SIZE = 16
_MAC_SIZE = 32
_INTRO = b"age-encryption.org/v1\n"
_INTRO_PREFIX = b"age-encryption.org/"
_ARMOR_BEGIN = b"-----BEGIN AGE ENCRYPTED FILE-----"
_ARMOR_END = b"-----END AGE ENCRYPTED FILE-----"
_ARMOR_SPACE = b" \t\r\n"
_BYTES_PER_LINE = 48  # 64 base64 columns
_COLUMNS_PER_LINE = 64
# filippo.io/age has no header limit; this one only stops a non-age input from being
# buffered whole while we look for a newline.
_MAX_HEADER_SIZE = 16 << 20
_HEADER_READ_SIZE = 4096
_IDENTITY_FILE_LIMIT = 16 << 20  # same as age's ParseIdentities

_X25519_LABEL = b"age-encryption.org/v1/X25519"
_SCRYPT_LABEL = b"age-encryption.org/v1/scrypt"
_SCRYPT_SALT_SIZE = 16
# mlkem768x25519: the HPKE info string, and the sizes of the KEM's parts.
_PQ_LABEL = b"age-encryption.org/mlkem768x25519"
_PQ_TYPE = "mlkem768x25519"
_PQ_SEED_SIZE = 32
_MLKEM768_PUBLIC_SIZE = 1184
_MLKEM768_CT_SIZE = 1088
_PQ_PUBLIC_SIZE = _MLKEM768_PUBLIC_SIZE + 32
_PQ_ENC_SIZE = _MLKEM768_CT_SIZE + 32
_PQ_SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
_ZERO_NONCE = bytes(12)
# STREAM nonce: 11-byte big-endian chunk counter, then the last-chunk flag. Chunk
# counts never reach 2**64, so the top three counter bytes are always zero.
_STREAM_NONCE = struct.Struct(">3xQB")

_ARG_RE = re.compile(rb"[\x21-\x7e]+")
_DECIMAL_RE = re.compile(r"[1-9][0-9]*")


# --- errors -----------------------------------------------------------------------------


class AgeError(Error):
    """age: {}"""


class NoIdentityMatch(AgeError):
    """No identity matches any recipient of {}"""


class HeaderError(AgeError):
    """Invalid age header in {}: {}"""


class HMACError(AgeError):
    """Header MAC of {} does not verify: the file is corrupt or was tampered with"""


class PayloadError(AgeError):
    """Encrypted payload of {} is corrupt or truncated: {}"""


class ArmorError(AgeError):
    """Invalid ASCII armor in {}: {}"""


# --- stanzas and encodings --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stanza:
    """One recipient stanza of an age header.

    Attributes:
        type: the first argument, e.g. ``"X25519"`` or ``"scrypt"``.
        args: the remaining arguments.
        body: the decoded body.
    """

    type: str
    args: tuple[str, ...]
    body: bytes


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(s: str | bytes) -> bytes:
    """Decode canonical unpadded standard base64; raise ValueError otherwise."""
    raw = s.encode("ascii") if isinstance(s, str) else bytes(s)
    if len(raw) % 4 == 1:
        raise ValueError("invalid base64 length")
    try:
        out = base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
    except binascii.Error:
        raise ValueError("invalid base64") from None
    # Re-encoding catches padding, non-zero trailing bits and anything else non-canonical.
    if base64.b64encode(out).rstrip(b"=") != raw:
        raise ValueError("non-canonical base64")
    return out


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _marshal_stanza(s: Stanza) -> bytes:
    try:
        encoded = [w.encode("ascii") for w in (s.type, *s.args)]
    except UnicodeEncodeError:
        encoded = []
    if not encoded or not all(_ARG_RE.fullmatch(w) for w in encoded):
        raise AgeError("a recipient produced a stanza with an invalid argument")
    out = [b"-> ", b" ".join(encoded), b"\n"]
    body = base64.b64encode(s.body).rstrip(b"=")
    # The body always ends with a line shorter than 64 columns, possibly empty.
    for i in range(0, len(body) + 1, _COLUMNS_PER_LINE):
        out += [body[i : i + _COLUMNS_PER_LINE], b"\n"]
    return b"".join(out)


# --- recipients and identities ----------------------------------------------------------


class Recipient(abc.ABC):
    """Something a file key can be encrypted to."""

    #: a post-quantum recipient may only share a file with other post-quantum ones
    post_quantum: bool = False

    @abc.abstractmethod
    def wrap(self, file_key: bytes) -> list[Stanza]:
        """Encrypt the file key to this recipient.

        Args:
            file_key: the 16-byte file key.

        Returns:
            The stanzas to put in the header.
        """


class Identity(abc.ABC):
    """Something that can recover a file key from header stanzas."""

    @abc.abstractmethod
    def unwrap(self, stanzas: list[Stanza]) -> bytes | None:
        """Recover the file key from the stanzas meant for this identity.

        Args:
            stanzas: every stanza of the header, in order.

        Returns:
            The 16-byte file key, or None if no stanza is for this identity (stanzas of
            other types are ignored; a stanza of this type that does not authenticate
            counts as "not for us").

        Raises:
            ValueError: a stanza of this identity's type is malformed; the reader reports
                it as a HeaderError.
        """


def _recipient_hrp(hrp: str) -> str:
    return "not an X25519 recipient: it must start with 'age1', in lowercase"


def _pq_recipient_hrp(hrp: str) -> str:
    return "not a post-quantum recipient: it must start with 'age1pq1', in lowercase"


def _pq_identity_hrp(hrp: str) -> str:
    return "not a post-quantum secret key: it must start with 'AGE-SECRET-KEY-PQ-1'"


def _identity_hrp(hrp: str) -> str:
    if hrp.startswith("AGE-PLUGIN-"):
        return "age plugin identities are not supported"
    return "not an age X25519 secret key: it must start with 'AGE-SECRET-KEY-1'"


def _key_bytes(
    s: str, hrp: str, what: str, wrong_hrp: Callable[[str], str], size: int = 32
) -> bytes:
    """The key bytes (``size`` of them) of a bech32 key string (a recipient or an identity).

    Args:
        s: the string.
        hrp: the human-readable part it must have.
        what: what it is, for messages (``secret key``).
        wrong_hrp: the message for another human-readable part.

    Raises:
        AgeError: naming what is wrong, never quoting the input (it may be a secret).
    """
    try:
        got, data = bech32.decode(s)
    except bech32.Bech32Error as e:
        raise AgeError(f"malformed {what}: {e}") from None
    if got != hrp:
        raise AgeError(wrong_hrp(got))
    if len(data) != size:
        raise AgeError(f"malformed {what}: wrong key length")
    return data


class X25519Recipient(Recipient):
    """A native age X25519 recipient, ``age1...``."""

    __slots__ = ("_key", "_raw")

    def __init__(self, public_key: bytes) -> None:
        """Build a recipient from a raw public key.

        Args:
            public_key: the 32-byte X25519 public key.
        """
        if len(public_key) != 32:
            raise AgeError("X25519 public key must be 32 bytes")
        self._raw = bytes(public_key)
        self._key = X25519PublicKey.from_public_bytes(self._raw)

    @classmethod
    def from_string(cls, s: str) -> X25519Recipient:
        """Parse an ``age1...`` recipient.

        Args:
            s: the bech32 recipient string, lowercase.

        Returns:
            The recipient.

        Raises:
            AgeError: naming what is wrong, without quoting the input.
        """
        data = _key_bytes(s, "age", "X25519 recipient", _recipient_hrp)
        return cls(data)

    def to_string(self) -> str:
        """Encode the recipient.

        Returns:
            The ``age1...`` string.
        """
        return bech32.encode("age", self._raw)

    def wrap(self, file_key: bytes) -> list[Stanza]:
        """Encrypt the file key to this recipient with a fresh ephemeral key.

        Args:
            file_key: the 16-byte file key.

        Returns:
            One ``X25519`` stanza.
        """
        ephemeral = X25519PrivateKey.generate()
        share = ephemeral.public_key().public_bytes_raw()
        try:
            secret = ephemeral.exchange(self._key)
        except ValueError:
            raise AgeError(
                "X25519 recipient is a low-order point; refusing to encrypt to it"
            ) from None
        wrap_key = _hkdf(secret, share + self._raw, _X25519_LABEL)
        body = ChaCha20Poly1305(wrap_key).encrypt(_ZERO_NONCE, file_key, None)
        return [Stanza("X25519", (_b64encode(share),), body)]

    def __str__(self) -> str:
        return self.to_string()

    def __repr__(self) -> str:
        return f"X25519Recipient({self.to_string()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, X25519Recipient) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)


class X25519Identity(Identity):
    """A native age X25519 identity, ``AGE-SECRET-KEY-1...``. Its repr shows only the
    public key."""

    __slots__ = ("_key", "_public")

    def __init__(self, private_key: X25519PrivateKey) -> None:
        """Wrap an X25519 private key.

        Args:
            private_key: the key.
        """
        self._key = private_key
        self._public = private_key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> X25519Identity:
        """Create a new random identity.

        Returns:
            The identity.
        """
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_string(cls, s: str) -> X25519Identity:
        """Parse an ``AGE-SECRET-KEY-1...`` identity.

        Args:
            s: the bech32 identity string, uppercase.

        Returns:
            The identity.

        Raises:
            AgeError: naming what is wrong, never quoting the input.
        """
        data = _key_bytes(s, "AGE-SECRET-KEY-", "secret key", _identity_hrp)
        return cls(X25519PrivateKey.from_private_bytes(data))

    def to_string(self) -> str:
        """Encode the identity. The result is the secret key: keep it out of logs.

        Returns:
            The ``AGE-SECRET-KEY-1...`` string.
        """
        return bech32.encode("AGE-SECRET-KEY-", self._key.private_bytes_raw())

    def recipient(self) -> X25519Recipient:
        """Derive the public half.

        Returns:
            The recipient that encrypts to this identity.
        """
        return X25519Recipient(self._public)

    def unwrap(self, stanzas: list[Stanza]) -> bytes | None:
        """Recover the file key from an ``X25519`` stanza addressed to this identity.

        Args:
            stanzas: every stanza of the header.

        Returns:
            The file key, or None if no X25519 stanza is for this identity.

        Raises:
            ValueError: an X25519 stanza is malformed or its share is a low-order point.
        """
        for s in stanzas:
            if s.type != "X25519":
                continue
            if len(s.args) != 1:
                raise ValueError("X25519 stanza must have exactly one argument")
            try:
                share = _b64decode(s.args[0])
            except ValueError as e:
                raise ValueError(f"X25519 stanza share: {e}") from None
            if len(share) != 32:
                raise ValueError("X25519 stanza has an ephemeral share of the wrong size")
            if len(s.body) != _FILE_KEY_SIZE + _TAG_SIZE:
                raise ValueError("X25519 stanza wraps a file key of the wrong size")
            try:
                secret = self._key.exchange(X25519PublicKey.from_public_bytes(share))
            except ValueError:
                secret = bytes(32)
            # OpenSSL already refuses an all-zero result; the explicit check keeps the
            # guarantee independent of the backend.
            if hmac.compare_digest(secret, bytes(32)):
                raise ValueError("X25519 stanza share is a low-order point")
            wrap_key = _hkdf(secret, share + self._public, _X25519_LABEL)
            try:
                return ChaCha20Poly1305(wrap_key).decrypt(_ZERO_NONCE, s.body, None)
            except InvalidTag:
                continue
        return None

    def __repr__(self) -> str:
        return f"<X25519Identity for {self.recipient().to_string()} (secret redacted)>"

    __str__ = __repr__


def _expand_pq_seed(seed: bytes) -> tuple[MLKEM768PrivateKey, X25519PrivateKey]:
    """The ML-KEM-768 and X25519 keys of a 32-byte hybrid seed (X-Wing's key expansion:
    SHAKE256 to 96 bytes, the ML-KEM seed d||z then the X25519 scalar)."""
    expanded = hashlib.shake_256(seed).digest(96)
    return (
        MLKEM768PrivateKey.from_seed_bytes(expanded[:64]),
        X25519PrivateKey.from_private_bytes(expanded[64:]),
    )


class HybridRecipient(Recipient):
    """A post-quantum hybrid recipient, ``age1pq1...``: ML-KEM-768 and X25519 through HPKE.

    A file encrypted to one can only have other post-quantum recipients (AgeWriter refuses
    anything else), since a classic stanza beside it would be the weak way in.
    """

    __slots__ = ("_key", "_raw")
    post_quantum = True

    def __init__(self, public_key: bytes) -> None:
        """Build a recipient from a raw public key.

        Args:
            public_key: the 1216-byte public key, the ML-KEM-768 encapsulation key then the
                X25519 public key.

        Raises:
            AgeError: the key has the wrong size or is not a valid ML-KEM-768 key.
        """
        if len(public_key) != _PQ_PUBLIC_SIZE:
            raise AgeError("post-quantum public key must be 1216 bytes")
        self._raw = bytes(public_key)
        try:
            mlkem = MLKEM768PublicKey.from_public_bytes(self._raw[:_MLKEM768_PUBLIC_SIZE])
        except ValueError:
            raise AgeError("malformed post-quantum recipient: invalid ML-KEM-768 key") from None
        x = X25519PublicKey.from_public_bytes(self._raw[_MLKEM768_PUBLIC_SIZE:])
        try:
            # A low-order X25519 part would make every share's secret zero: refuse it at
            # parse time (so a policy naming it fails when read), not at the first backup.
            X25519PrivateKey.generate().exchange(x)
        except ValueError:
            raise AgeError(
                "malformed post-quantum recipient: its X25519 key is a low-order point"
            ) from None
        self._key = hpke.MLKEM768X25519PublicKey(mlkem, x)

    @classmethod
    def from_string(cls, s: str) -> HybridRecipient:
        """Parse an ``age1pq1...`` recipient.

        Args:
            s: the bech32 recipient string, lowercase.

        Returns:
            The recipient.

        Raises:
            AgeError: naming what is wrong, without quoting the input.
        """
        data = _key_bytes(
            s, "age1pq", "post-quantum recipient", _pq_recipient_hrp, size=_PQ_PUBLIC_SIZE
        )
        return cls(data)

    def to_string(self) -> str:
        """Encode the recipient.

        Returns:
            The ``age1pq1...`` string (about 1960 characters).
        """
        return bech32.encode("age1pq", self._raw)

    def wrap(self, file_key: bytes) -> list[Stanza]:
        """Encrypt the file key to this recipient: one HPKE single-shot seal.

        Args:
            file_key: the 16-byte file key.

        Returns:
            One ``mlkem768x25519`` stanza: the KEM ciphertext as its argument, the sealed
            file key as its body.
        """
        sealed = _PQ_SUITE.encrypt(file_key, self._key, info=_PQ_LABEL)
        enc, body = sealed[:_PQ_ENC_SIZE], sealed[_PQ_ENC_SIZE:]
        return [Stanza(_PQ_TYPE, (_b64encode(enc),), body)]

    def __str__(self) -> str:
        return self.to_string()

    def __repr__(self) -> str:
        return f"HybridRecipient({self.to_string()[:20]}...)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HybridRecipient) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)


class HybridIdentity(Identity):
    """A post-quantum hybrid identity, ``AGE-SECRET-KEY-PQ-1...`` (a 32-byte seed). Its
    repr shows only the start of the public key."""

    __slots__ = ("_key", "_public", "_seed", "_x25519")

    def __init__(self, seed: bytes) -> None:
        """Expand a seed into the key pair.

        Args:
            seed: the 32-byte secret seed.
        """
        if len(seed) != _PQ_SEED_SIZE:
            raise AgeError("post-quantum secret key must be 32 bytes")
        self._seed = bytes(seed)
        mlkem, x = _expand_pq_seed(self._seed)
        self._x25519 = x
        self._key = hpke.MLKEM768X25519PrivateKey(mlkem, x)
        self._public = mlkem.public_key().public_bytes_raw() + x.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> HybridIdentity:
        """Create a new random identity.

        Returns:
            The identity.
        """
        return cls(os.urandom(_PQ_SEED_SIZE))

    @classmethod
    def from_string(cls, s: str) -> HybridIdentity:
        """Parse an ``AGE-SECRET-KEY-PQ-1...`` identity.

        Args:
            s: the bech32 identity string, uppercase.

        Returns:
            The identity.

        Raises:
            AgeError: naming what is wrong, never quoting the input.
        """
        data = _key_bytes(
            s, "AGE-SECRET-KEY-PQ-", "post-quantum secret key", _pq_identity_hrp, size=32
        )
        return cls(data)

    def to_string(self) -> str:
        """Encode the identity. The result is the secret key: keep it out of logs.

        Returns:
            The ``AGE-SECRET-KEY-PQ-1...`` string.
        """
        return bech32.encode("AGE-SECRET-KEY-PQ-", self._seed)

    def recipient(self) -> HybridRecipient:
        """Derive the public half.

        Returns:
            The recipient that encrypts to this identity.
        """
        return HybridRecipient(self._public)

    def unwrap(self, stanzas: list[Stanza]) -> bytes | None:
        """Recover the file key from an ``mlkem768x25519`` stanza addressed to this identity.

        Args:
            stanzas: every stanza of the header.

        Returns:
            The file key, or None if no such stanza is for this identity (ML-KEM rejects
            implicitly, so another recipient's stanza just fails to open).

        Raises:
            ValueError: a stanza of this type is malformed, or its X25519 share is a
                low-order point.
        """
        for s in stanzas:
            if s.type != _PQ_TYPE:
                continue
            if len(s.args) != 1:
                raise ValueError("mlkem768x25519 stanza must have exactly one argument")
            try:
                enc = _b64decode(s.args[0])
            except ValueError as e:
                raise ValueError(f"mlkem768x25519 stanza enc: {e}") from None
            if len(enc) != _PQ_ENC_SIZE:
                raise ValueError("mlkem768x25519 stanza has an encapsulated key of the wrong size")
            if len(s.body) != _FILE_KEY_SIZE + _TAG_SIZE:
                raise ValueError("mlkem768x25519 stanza wraps a file key of the wrong size")
            # HPKE reports a low-order share as a failed open, like a wrong key; age makes
            # it a malformed stanza, so it is checked here first (one more X25519).
            share = X25519PublicKey.from_public_bytes(enc[_MLKEM768_CT_SIZE:])
            try:
                secret = self._x25519.exchange(share)
            except ValueError:
                secret = bytes(32)
            if hmac.compare_digest(secret, bytes(32)):
                raise ValueError("mlkem768x25519 stanza share is a low-order point")
            try:
                return _PQ_SUITE.decrypt(enc + s.body, self._key, info=_PQ_LABEL)
            except InvalidTag:
                continue
        return None

    def __repr__(self) -> str:
        return f"<HybridIdentity for {self.recipient().to_string()[:20]}... (secret redacted)>"

    __str__ = __repr__


def _passphrase_bytes(passphrase: str | bytes) -> bytes:
    return passphrase.encode("utf-8") if isinstance(passphrase, str) else bytes(passphrase)


def _scrypt(passphrase: bytes, salt: bytes, log_n: int) -> bytes:
    kdf = Scrypt(salt=_SCRYPT_LABEL + salt, length=32, n=1 << log_n, r=8, p=1)
    return kdf.derive(passphrase)


class ScryptRecipient(Recipient):
    """A passphrase recipient. It must be the only recipient of a file."""

    __slots__ = ("_log_n", "_passphrase")

    def __init__(self, passphrase: str | bytes, log_n: int = 18) -> None:
        """Encrypt to a passphrase.

        Args:
            passphrase: the passphrase; a str is encoded as UTF-8. Must not be empty.
            log_n: scrypt work factor, N = 2**log_n (age's default is 18, ~256 MiB and
                about a second of CPU).

        Raises:
            AgeError: empty passphrase or work factor outside 1..30.
        """
        if not 1 <= log_n <= 30:
            raise AgeError(f"scrypt work factor must be between 1 and 30, not {log_n}")
        self._passphrase = _passphrase_bytes(passphrase)
        if not self._passphrase:
            raise AgeError("empty passphrase")
        self._log_n = log_n

    def wrap(self, file_key: bytes) -> list[Stanza]:
        """Encrypt the file key under a key derived from the passphrase.

        Args:
            file_key: the 16-byte file key.

        Returns:
            One ``scrypt`` stanza.
        """
        salt = os.urandom(_SCRYPT_SALT_SIZE)
        key = _scrypt(self._passphrase, salt, self._log_n)
        body = ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, file_key, None)
        return [Stanza("scrypt", (_b64encode(salt), str(self._log_n)), body)]

    def __repr__(self) -> str:
        return f"ScryptRecipient(log_n={self._log_n}, passphrase=<redacted>)"


class ScryptIdentity(Identity):
    """A passphrase identity, with a cap on the work factor it will compute."""

    __slots__ = ("_max_log_n", "_passphrase")

    def __init__(self, passphrase: str | bytes, max_log_n: int = 22) -> None:
        """Decrypt with a passphrase.

        Args:
            passphrase: the passphrase; a str is encoded as UTF-8.
            max_log_n: refuse files whose scrypt work factor exceeds this (22 is ~4 GiB
                of memory); the check happens before any scrypt work.
        """
        self._passphrase = _passphrase_bytes(passphrase)
        self._max_log_n = max_log_n

    def unwrap(self, stanzas: list[Stanza]) -> bytes | None:
        """Recover the file key from the ``scrypt`` stanza.

        Args:
            stanzas: every stanza of the header.

        Returns:
            The file key, or None if there is no scrypt stanza or the passphrase is wrong.

        Raises:
            ValueError: the scrypt stanza is malformed, not alone, or its work factor
                exceeds ``max_log_n``.
        """
        for s in stanzas:
            if s.type != "scrypt":
                continue
            if len(stanzas) != 1:
                raise ValueError("an scrypt stanza must be the only stanza")
            if len(s.args) != 2:
                raise ValueError("scrypt stanza must have exactly two arguments")
            try:
                salt = _b64decode(s.args[0])
            except ValueError as e:
                raise ValueError(f"scrypt stanza salt: {e}") from None
            if len(salt) != _SCRYPT_SALT_SIZE:
                raise ValueError("scrypt stanza has a salt of the wrong size")
            if not _DECIMAL_RE.fullmatch(s.args[1]):
                raise ValueError("scrypt work factor is not a canonical decimal number")
            log_n = int(s.args[1])
            if log_n > self._max_log_n:
                raise ValueError(
                    f"scrypt work factor {log_n} exceeds the limit of {self._max_log_n}"
                )
            # Checked before scrypt so a malformed stanza costs no work.
            if len(s.body) != _FILE_KEY_SIZE + _TAG_SIZE:
                raise ValueError("scrypt stanza wraps a file key of the wrong size")
            key = _scrypt(self._passphrase, salt, log_n)
            try:
                return ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, s.body, None)
            except InvalidTag:
                continue
        return None

    def __repr__(self) -> str:
        return f"ScryptIdentity(max_log_n={self._max_log_n}, passphrase=<redacted>)"


def parse_recipient(s: str) -> Recipient:
    """Parse a recipient string.

    Args:
        s: an ``age1...`` X25519 or ``age1pq1...`` post-quantum recipient; surrounding
            whitespace is ignored.

    Returns:
        The recipient.

    Raises:
        AgeError: naming what is wrong; the input is never quoted, in case it is a
            secret key pasted by mistake.
    """
    s = s.strip()
    if s.upper().startswith("AGE-SECRET-KEY-"):
        raise AgeError("this is a secret key, not a recipient: use its public key (age1...)")
    if s.startswith(("ssh-", "ecdsa-")):
        raise AgeError("SSH recipients are not supported; use an age1... X25519 recipient")
    if s.lower().startswith("age1pq1"):
        return HybridRecipient.from_string(s)
    if s.lower().startswith("age1"):
        try:
            hrp, _ = bech32.decode(s)
        except bech32.Bech32Error as e:
            raise AgeError(f"malformed X25519 recipient: {e}") from None
        if hrp.lower().startswith("age1"):
            raise AgeError(f"age plugin recipients ({hrp}1...) are not supported")
        return X25519Recipient.from_string(s)
    raise AgeError(
        "unknown recipient type: expected an X25519 (age1...) or post-quantum (age1pq1...)"
        " recipient"
    )


def parse_identity(s: str) -> Identity:
    """Parse one identity string: ``AGE-SECRET-KEY-1...`` (X25519) or
    ``AGE-SECRET-KEY-PQ-1...`` (post-quantum hybrid).

    Raises:
        AgeError: naming what is wrong, never quoting the input.
    """
    if s.upper().startswith("AGE-SECRET-KEY-PQ-1"):
        return HybridIdentity.from_string(s)
    return X25519Identity.from_string(s)


def parse_identities(text: str, source: str) -> list[Identity]:
    """Parse an age identity file: one ``AGE-SECRET-KEY-1...`` or ``AGE-SECRET-KEY-PQ-1...``
    per line, ``#`` comments and blank lines ignored (as written by ``age-keygen``).

    Args:
        text: the file's content.
        source: where it came from, for error messages (e.g. the path).

    Returns:
        The identities, in file order.

    Raises:
        AgeError: naming ``source`` and the line number (never the line's content), or
            saying the file has no identities.
    """
    identities: list[Identity] = []
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.removesuffix("\r")
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(parse_identity(line))
        except AgeError as e:
            raise AgeError(f"{source}, line {lineno}: {e.args[0]}") from None
    if not identities:
        raise AgeError(f"{source}: no identities found")
    return identities


def load_identities(
    path: str | os.PathLike[str], passphrase: Callable[[], str] | None = None
) -> list[Identity]:
    """Read an age identity file, plain or encrypted with a passphrase (binary or armored,
    as ``age -p [-a]`` writes it and ``age -d -i`` reads it).

    Args:
        path: the file.
        passphrase: called, only for an encrypted file, for its passphrase.

    Returns:
        Its identities.

    Raises:
        AgeError: the file cannot be read, is encrypted and no passphrase (or a wrong one)
            is given, is not UTF-8, or fails :func:`parse_identities`.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            data = f.read(_IDENTITY_FILE_LIMIT + 1)
    except OSError as e:
        raise AgeError(f"cannot read identity file {source}: {e.strerror or e}") from None
    if len(data) > _IDENTITY_FILE_LIMIT:
        raise AgeError(f"{source}: identity file is larger than 16 MiB")
    if data.lstrip(_ARMOR_SPACE).startswith((_INTRO_PREFIX, _ARMOR_BEGIN)):
        if passphrase is None:
            raise AgeError(f"{source}: this is an encrypted identity file; no passphrase given")
        try:
            data = decrypt_bytes(data, [ScryptIdentity(passphrase())], name=source)
        except NoIdentityMatch:
            raise AgeError(
                f"{source}: cannot decrypt the identity file: wrong passphrase, or it is not"
                " encrypted with one"
            ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AgeError(f"{source}: identity file is not UTF-8 text") from None
    return parse_identities(text, source)


# --- streams ----------------------------------------------------------------------------


class _Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class _Source(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def _write_all(out: _Sink, data: bytes) -> None:
    n = out.write(data)
    # Raw (unbuffered) files may accept only part of a write.
    if isinstance(n, int) and 0 <= n < len(data):
        view = memoryview(data)
        while n < len(view):
            got = out.write(bytes(view[n:]))
            if not isinstance(got, int) or got <= 0:
                raise OSError("short write to the age output stream")
            n += got


class AgeWriter:
    """Streaming age encryption to a binary file-like object.

    The header is written by the constructor; plaintext is then sealed in 64 KiB chunks.
    ``close()`` seals the final chunk but leaves ``out`` open.
    """

    def __init__(self, out: _Sink, recipients: Sequence[Recipient]) -> None:
        """Write the header and payload nonce.

        Args:
            out: a binary stream with ``write``; it is never closed here.
            recipients: who can decrypt; at least one. An scrypt recipient must be alone.

        Raises:
            AgeError: no recipients, an scrypt recipient with others, or a recipient that
                cannot be encrypted to.
        """
        if not recipients:
            raise AgeError("no recipients given")
        if len({r.post_quantum for r in recipients}) > 1:
            # As age: a classic stanza beside a post-quantum one undoes its protection.
            raise AgeError(
                "incompatible recipients: post-quantum (age1pq1...) recipients cannot be"
                " mixed with classic (age1... or passphrase) ones in one file"
            )
        file_key = os.urandom(_FILE_KEY_SIZE)
        stanzas = [s for r in recipients for s in r.wrap(file_key)]
        if len(stanzas) != 1 and any(s.type == "scrypt" for s in stanzas):
            raise AgeError("a passphrase (scrypt) recipient must be the only recipient")
        header = _INTRO + b"".join(_marshal_stanza(s) for s in stanzas) + b"---"
        mac = hmac.digest(_hkdf(file_key, b"", b"header"), header, "sha256")
        nonce = os.urandom(_PAYLOAD_NONCE_SIZE)
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self._out = out
        # Fixed-size accumulator: filled by slice assignment, never reallocated.
        self._buf = bytearray(CHUNK_SIZE)
        self._view = memoryview(self._buf)
        self._fill = 0
        self._counter = 0
        self._closed = False
        self._broken = False
        _write_all(out, b"".join([header, b" ", _b64encode(mac).encode(), b"\n", nonce]))

    def _seal(self, chunk: memoryview, last: bool, batch: list[bytes] | None = None) -> None:
        # encrypt() returns a fresh bytes object on purpose: ``out`` may keep a reference
        # to what it is given (queues, BytesIO-like buffers), so a reused output buffer
        # could be overwritten under it.
        ct = self._aead.encrypt(_STREAM_NONCE.pack(self._counter, last), chunk, None)
        self._counter += 1
        if batch is None:
            _write_all(self._out, ct)
        else:
            batch.append(ct)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Encrypt and write ``data``.

        Args:
            data: plaintext, any length.

        Returns:
            ``len(data)`` in bytes: everything is always accepted.

        Raises:
            ValueError: the writer is closed.
        """
        if self._closed:
            raise ValueError("write to a closed AgeWriter")
        if self._broken:
            raise AgeError("a previous write to this AgeWriter failed")
        if isinstance(data, memoryview) and (data.format != "B" or data.ndim != 1):
            data = data.cast("B")
        n = len(data)
        fill = self._fill
        if fill + n <= CHUNK_SIZE:
            # Small writes (compressor output is often a few KiB) only fill the buffer:
            # keep this path free of per-call allocations.
            self._view[fill : fill + n] = data
            self._fill = fill + n
            return n
        mv = memoryview(data)
        # the chunks sealed by one large write go out in one write: fewer, larger writes
        # (and hash updates downstream) for the same bytes
        batch: list[bytes] = []
        try:
            pos = 0
            if fill:
                # Complete the buffered chunk; it is not the final one since data remains.
                pos = CHUNK_SIZE - fill
                self._view[fill:] = mv[:pos]
                self._seal(self._view, last=False, batch=batch)
                self._fill = 0
            # Seal whole chunks straight from the caller's buffer, keeping at least one
            # byte back: the final chunk must never be empty unless the file is.
            while n - pos > CHUNK_SIZE:
                self._seal(mv[pos : pos + CHUNK_SIZE], last=False, batch=batch)
                pos += CHUNK_SIZE
            _write_all(self._out, batch[0] if len(batch) == 1 else b"".join(batch))
            rest = n - pos
            self._view[:rest] = mv[pos:]
            self._fill = rest
        except BaseException:
            self._broken = True
            raise
        return n

    def close(self) -> None:
        """Seal and write the final chunk. Idempotent; ``out`` is left open.

        After a failed write nothing more is written, so the output stays truncated.
        """
        if self._closed:
            return
        self._closed = True
        if self._broken:
            return
        try:
            self._seal(self._view[: self._fill], last=True)
        except BaseException:
            self._broken = True
            raise

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> AgeWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            # Leave the payload without a final chunk: it must not pass for complete.
            self._broken = True
            self._closed = True


# --- ASCII armor ------------------------------------------------------------------------

_ARMOR_MAX_LINE = 1024  # armor lines are 64 columns; this only bounds the buffer


class ArmorReader(io.RawIOBase):
    """The binary age file inside an ASCII-armored one, as a read-only raw stream.

    As strict as age's armor reader: the BEGIN line, lines of exactly 64 columns of
    canonical padded base64 but the last (shorter, or full when the data fills it), the END
    line; lines end in LF or CRLF; whitespace only before BEGIN and after END; no empty
    lines, no headers, no checksum. Errors are ArmorError, raised when the bad line is read
    (so a damaged tail is reported after the data before it). ``src`` is never closed.
    """

    def __init__(self, src: _Source, *, name: str = "<stream>", initial: bytes = b"") -> None:
        """Wrap ``src``.

        Args:
            src: the armored stream.
            name: what to call it in error messages.
            initial: bytes already read from ``src`` (they come first).
        """
        super().__init__()
        self._src = src
        self._name = name
        self._buf = bytearray(initial)
        self._src_eof = False
        self._out = b""
        self._started = False
        self._short = False  # the last body line was short: only END may follow
        self._done = False
        self._error: ArmorError | None = None

    def readable(self) -> bool:
        """Report that the stream supports reading.

        Returns:
            True.
        """
        return True

    def _fail(self, detail: str) -> ArmorError:
        self._error = ArmorError(self._name, detail)
        return self._error

    def _more(self) -> bool:
        if self._src_eof:
            return False
        block = self._src.read(_HEADER_READ_SIZE)
        if not block:
            self._src_eof = True
            return False
        self._buf += block
        return True

    def _line(self) -> tuple[bytes, bool]:
        """The next line without its LF or CRLF, and whether it had one."""
        while True:
            i = self._buf.find(b"\n")
            if i >= 0:
                line = bytes(self._buf[:i])
                del self._buf[: i + 1]
                return line.removesuffix(b"\r"), True
            if len(self._buf) > _ARMOR_MAX_LINE:
                raise self._fail("line is longer than 64 columns")
            if not self._more():
                line = bytes(self._buf)
                self._buf.clear()
                return line, False

    def _skip_space(self) -> None:
        while True:
            stripped = self._buf.lstrip(_ARMOR_SPACE)
            del self._buf[: len(self._buf) - len(stripped)]
            if self._buf or not self._more():
                return

    def _next(self) -> None:
        """Decode the next line into ``_out``, or finish at the END line."""
        if not self._started:
            self._skip_space()
            line, _ = self._line()
            if line != _ARMOR_BEGIN:
                raise self._fail("the first line is not '-----BEGIN AGE ENCRYPTED FILE-----'")
            self._started = True
        line, eol = self._line()
        if line == _ARMOR_END:
            self._finish()
            return
        if self._short:
            raise self._fail("a short line is not followed by the END line")
        if not eol:
            raise self._fail("the armor ends without its END line")
        if not line:
            raise self._fail("empty line")
        if len(line) > _COLUMNS_PER_LINE:
            raise self._fail("line is longer than 64 columns")
        if len(line) % 4:
            raise self._fail("line is not padded base64")
        try:
            data = base64.b64decode(line, validate=True)
        except binascii.Error:
            raise self._fail("invalid base64") from None
        if base64.b64encode(data) != line:
            raise self._fail("non-canonical base64")
        self._short = len(data) < _BYTES_PER_LINE
        self._out = data

    def _finish(self) -> None:
        """After END: only whitespace may remain."""
        self._done = True
        while True:
            if self._buf.strip(_ARMOR_SPACE):
                raise self._fail("data after the END line")
            self._buf.clear()
            if not self._more():
                return

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        """Read decoded bytes into ``buffer``.

        Returns:
            Bytes written; 0 only at the end of a well-formed armor.

        Raises:
            ArmorError: the armor is malformed.
        """
        mv = memoryview(buffer).cast("B")
        if not len(mv):
            return 0
        while not self._out:
            if self._error is not None:
                raise self._error
            if self._done:
                return 0
            self._next()
        n = min(len(mv), len(self._out))
        mv[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def __repr__(self) -> str:
        return f"<ArmorReader {self._name}>"


class ArmorWriter:
    """ASCII-armors what is written to it (an age file) onto ``out``, as age does: BEGIN,
    64-column padded base64, END. The END line is written by ``close()`` or a ``with``
    block that ends without an exception, never after a failure. ``out`` is left open."""

    def __init__(self, out: _Sink) -> None:
        """Write the BEGIN line.

        Args:
            out: a binary stream with ``write``.
        """
        self._out = out
        self._pending = bytearray()
        self._closed = False
        _write_all(out, _ARMOR_BEGIN + b"\n")

    def _emit(self, data: bytes) -> None:
        enc = base64.b64encode(data)
        lines = [enc[i : i + _COLUMNS_PER_LINE] for i in range(0, len(enc), _COLUMNS_PER_LINE)]
        _write_all(self._out, b"\n".join(lines) + b"\n")

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Armor ``data``; whole 48-byte lines go out at once, the rest waits.

        Returns:
            ``len(data)`` in bytes.
        """
        if self._closed:
            raise ValueError("write to a closed ArmorWriter")
        self._pending += data
        whole = len(self._pending) // _BYTES_PER_LINE * _BYTES_PER_LINE
        if whole:
            self._emit(bytes(self._pending[:whole]))
            del self._pending[:whole]
        return memoryview(data).nbytes

    def close(self) -> None:
        """Write the last line and the END line. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._pending:
            self._emit(bytes(self._pending))
        _write_all(self._out, _ARMOR_END + b"\n")

    def __enter__(self) -> ArmorWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._closed = True  # no END line: the output must not pass for complete


class _HeaderLines:
    """Line reader over the source for the header; keeps what it over-reads."""

    def __init__(self, src: _Source, name: str, initial: bytes = b"") -> None:
        self._src = src
        self._name = name
        self._buf = bytearray(initial)
        self._start = 0
        self.raw: list[bytes] = []

    def readline(self) -> bytes | None:
        """Return the next line including its LF, or None at EOF without one."""
        scan = self._start
        while True:
            i = self._buf.find(b"\n", scan)
            if i >= 0:
                line = bytes(self._buf[self._start : i + 1])
                self._start = i + 1
                self.raw.append(line)
                return line
            scan = len(self._buf)
            if scan > _MAX_HEADER_SIZE:
                raise HeaderError(self._name, "header is larger than 16 MiB")
            block = self._src.read(_HEADER_READ_SIZE)
            if not block:
                return None
            self._buf += block

    def leftover(self) -> bytes:
        return bytes(self._buf[self._start :])


@dataclass(frozen=True, slots=True)
class _Header:
    stanzas: list[Stanza]
    mac: bytes
    mac_input: bytes


def _parse_header(lines: _HeaderLines, name: str) -> _Header:
    intro = lines.readline()
    if intro != _INTRO:
        if intro is not None and intro.startswith(_ARMOR_BEGIN):
            raise HeaderError(name, "the file is ASCII-armored where a binary one is expected")
        if intro == _INTRO[:-1] + b"\r\n":
            raise HeaderError(name, "header lines end in CRLF; age headers use LF only")
        if intro is not None and intro.startswith(_INTRO_PREFIX):
            raise HeaderError(name, "unsupported age format version")
        raise HeaderError(name, "not an age file (missing 'age-encryption.org/v1' intro)")
    stanzas: list[Stanza] = []
    lineno = 1
    while True:
        line = lines.readline()
        lineno += 1
        if line is None:
            raise HeaderError(name, f"line {lineno}: header ends before its closing line")
        if line.startswith(b"---"):
            parts = line[:-1].split(b" ")
            if parts[0] != b"---" or len(parts) != 2:
                raise HeaderError(name, f"line {lineno}: malformed closing line")
            try:
                mac = _b64decode(parts[1])
            except ValueError as e:
                raise HeaderError(name, f"line {lineno}: malformed header MAC: {e}") from None
            if len(mac) != _MAC_SIZE:
                raise HeaderError(name, f"line {lineno}: header MAC has the wrong length")
            mac_input = b"".join(lines.raw[:-1]) + b"---"
            return _Header(stanzas, mac, mac_input)
        if not line.startswith(b"->"):
            raise HeaderError(name, f"line {lineno}: expected a stanza or the closing line")
        parts = line[:-1].split(b" ")
        if parts[0] != b"->" or len(parts) < 2:
            raise HeaderError(name, f"line {lineno}: malformed stanza opening line")
        if not all(_ARG_RE.fullmatch(a) for a in parts[1:]):
            raise HeaderError(
                name, f"line {lineno}: stanza argument is empty or has invalid characters"
            )
        body = bytearray()
        while True:
            bline = lines.readline()
            lineno += 1
            if bline is None:
                raise HeaderError(name, f"line {lineno}: header ends inside a stanza body")
            try:
                piece = _b64decode(bline[:-1])
            except ValueError as e:
                if bline.startswith((b"->", b"---")):
                    raise HeaderError(
                        name, f"line {lineno}: stanza body does not end with a short line"
                    ) from None
                raise HeaderError(name, f"line {lineno}: malformed stanza body: {e}") from None
            if len(piece) > _BYTES_PER_LINE:
                raise HeaderError(name, f"line {lineno}: stanza body line is too long")
            body += piece
            if len(piece) < _BYTES_PER_LINE:
                break
        words = [a.decode("ascii") for a in parts[1:]]
        stanzas.append(Stanza(words[0], tuple(words[1:]), bytes(body)))


def _unwrap(stanzas: list[Stanza], identities: Sequence[Identity], name: str) -> bytes:
    if len(stanzas) != 1 and any(s.type == "scrypt" for s in stanzas):
        raise HeaderError(name, "an scrypt stanza must be the only stanza in the header")
    for identity in identities:
        try:
            file_key = identity.unwrap(list(stanzas))
        except ValueError as e:
            raise HeaderError(name, str(e)) from None
        if file_key is None:
            continue
        if len(file_key) != _FILE_KEY_SIZE:
            raise HeaderError(name, "identity returned a file key of the wrong size")
        return file_key
    raise NoIdentityMatch(name)


def header_of(data: bytes, *, name: str = "<bytes>") -> bytes:
    """The header of an age file: its intro, stanzas and MAC line.

    The header holds no secret (the stanzas are the file key wrapped to each recipient), and
    with it alone :func:`prove_identity` tells whether an identity can decrypt the file.

    Raises:
        HeaderError: ``data`` does not start with a well-formed age header.
    """
    lines = _HeaderLines(io.BytesIO(data), name)
    _parse_header(lines, name)
    return b"".join(lines.raw)


def prove_identity(header: bytes, identities: Sequence[Identity], *, name: str) -> None:
    """Prove that one of ``identities`` decrypts the file whose header is ``header``: the
    file key is unwrapped and authenticates the header, exactly as decrypting it would start.

    Raises:
        HeaderError, NoIdentityMatch, HMACError: as AgeReader.
    """
    _file_key(_parse_header(_HeaderLines(io.BytesIO(header), name), name), identities, name)


def _file_key(header: _Header, identities: Sequence[Identity], name: str) -> bytes:
    """Returns: the file key one of ``identities`` unwraps from ``header``, once it has
    authenticated the header (its MAC)."""
    if not identities:
        raise AgeError(f"no identities given to decrypt {name}")
    file_key = _unwrap(header.stanzas, identities, name)
    mac = hmac.digest(_hkdf(file_key, b"", b"header"), header.mac_input, "sha256")
    if not hmac.compare_digest(mac, header.mac):
        raise HMACError(name)
    return file_key


class AgeReader(io.RawIOBase):
    """Streaming age decryption as a read-only raw binary stream.

    The constructor parses the header, unwraps the file key and verifies the header MAC.
    Reads then return authenticated plaintext, at most one chunk per call. ``src`` is
    never closed here.
    """

    def __init__(
        self,
        src: _Source,
        identities: Sequence[Identity],
        *,
        name: str = "<stream>",
        armor: bool | None = None,
    ) -> None:
        """Read and check the header.

        Args:
            src: a binary stream with ``read`` (``readinto`` is used when present).
            identities: identities to try, in order; at least one.
            name: what to call the file in error messages (a path, an archive id).
            armor: True for an ASCII-armored file, False for a binary one, None to tell
                from its first bytes (armor starts with ``-----`` after any whitespace).

        Raises:
            HeaderError: the header is malformed, or a stanza for one of the identities is.
            NoIdentityMatch: no identity can unwrap the file key.
            HMACError: the header MAC does not verify.
            ArmorError: the armor (of an armored file) is malformed.
            AgeError: no identities were given.
        """
        super().__init__()
        # Every attribute exists before anything can raise: IOBase.__del__ calls close().
        self._name = name
        self._src = src
        self._readinto: Callable[[memoryview], int | None] | None = getattr(src, "readinto", None)
        self._head = b""
        self._src_eof = False
        self._ct = memoryview(bytearray(_ENC_CHUNK_SIZE))
        self._counter = 0
        self._plain = b""
        self._pos = 0
        self._done = True  # until the header checks out, there is nothing to read
        self._error: PayloadError | ArmorError | None = None
        initial = b""
        if armor is None:
            # Enough bytes to see past leading whitespace, however the source delivers them
            # (a pipe may hand out a few bytes at a time).
            while len(initial.lstrip(_ARMOR_SPACE)) < 5 and len(initial) <= _MAX_HEADER_SIZE:
                block = src.read(_HEADER_READ_SIZE)
                if not block:
                    break
                initial += block
            armor = initial.lstrip(_ARMOR_SPACE).startswith(b"-----")
        if armor:
            src = ArmorReader(src, name=name, initial=initial)
            self._src = src
            self._readinto = src.readinto
            initial = b""
        lines = _HeaderLines(src, name, initial)
        # The header is checked first, so a malformed file reads as one whatever the
        # identities.
        file_key = _file_key(_parse_header(lines, name), identities, name)
        self._head = lines.leftover()
        nonce = bytearray(_PAYLOAD_NONCE_SIZE)
        if self._read_full(memoryview(nonce)) != _PAYLOAD_NONCE_SIZE:
            raise HeaderError(name, "file ends before the payload nonce")
        self._aead = ChaCha20Poly1305(_hkdf(file_key, bytes(nonce), b"payload"))
        self._done = False

    def readable(self) -> bool:
        """Report that the stream supports reading.

        Returns:
            True.
        """
        return True

    def _read_full(self, view: memoryview) -> int:
        """Fill ``view`` from the header leftover then ``src``; short only at EOF."""
        n = 0
        if self._head:
            n = min(len(self._head), len(view))
            view[:n] = self._head[:n]
            self._head = self._head[n:]
        while n < len(view) and not self._src_eof:
            if self._readinto is not None:
                got = self._readinto(view[n:])
                if got is None:
                    raise BlockingIOError(f"{self._name}: non-blocking source has no data")
            else:
                data = self._src.read(len(view) - n)
                got = len(data)
                view[n : n + got] = data
            if not got:
                self._src_eof = True
            n += got
        return n

    def _fail(self, detail: str) -> PayloadError:
        self._error = PayloadError(self._name, detail)
        self._done = True
        return self._error

    def _open_chunk(self, dest: memoryview | None) -> bytes | int:
        """Authenticate and decrypt the next chunk, into ``dest`` if given (which must
        hold CHUNK_SIZE bytes). Returns the plaintext, or its length when ``dest`` is
        used. Mirrors filippo.io/age's stream.Reader chunk logic."""
        n = self._read_full(self._ct)
        index = self._counter
        if n == 0:
            raise self._fail(f"truncated: the file ends after {index} chunk(s), none final")
        last = n < _ENC_CHUNK_SIZE
        if last and index > 0 and n == _TAG_SIZE:
            raise self._fail(f"final chunk {index} is empty")
        if n < _TAG_SIZE:
            raise self._fail(f"chunk {index} is truncated")
        ct = self._ct[:n]
        out = None if dest is None else dest[: n - _TAG_SIZE]
        result: bytes | int | None
        try:
            result = self._decrypt(ct, last, out)
        except InvalidTag:
            result = None
        if result is None and not last:
            # A full-length chunk may be the final one.
            try:
                result = self._decrypt(ct, True, out)
                last = True
            except InvalidTag:
                pass
        if result is None:
            if out is not None:
                # decrypt_into leaves unauthenticated plaintext behind; wipe it.
                out[:] = bytes(len(out))
            raise self._fail(
                f"chunk {index} (plaintext offset {index * CHUNK_SIZE}) fails authentication"
            )
        self._counter += 1
        if last:
            self._done = True
            probe = memoryview(bytearray(1))
            try:
                trailing = self._read_full(probe)
            except ArmorError as e:
                trailing, self._error = 0, e
            if trailing:
                # The final chunk's plaintext is still released, like age does; the
                # error surfaces on the next read.
                self._error = PayloadError(self._name, "trailing data after the final chunk")
        return result

    def _decrypt(self, ct: memoryview, last: bool, out: memoryview | None) -> bytes | int:
        nonce = _STREAM_NONCE.pack(self._counter, last)
        if out is None:
            return self._aead.decrypt(nonce, ct, None)
        return self._aead.decrypt_into(nonce, ct, None, out)

    def _fill(self) -> bool:
        """Make the next chunk's plaintext current; False at clean EOF."""
        if self._error is not None:
            raise self._error
        if self._done:
            return False
        result = self._open_chunk(None)
        assert isinstance(result, bytes)
        self._plain = result
        self._pos = 0
        return True

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on a closed AgeReader")

    def read(self, size: int | None = -1, /) -> bytes:
        """Read up to ``size`` bytes of authenticated plaintext (all with -1).

        Args:
            size: maximum number of bytes; negative or None reads to EOF.

        Returns:
            At most one chunk's worth of plaintext; ``b""`` only at a clean EOF.

        Raises:
            PayloadError: a chunk fails authentication, the file is truncated, or data
                follows the final chunk.
        """
        self._check_open()
        if size is None or size < 0:
            return self.readall()
        if size == 0:
            return b""
        while self._pos >= len(self._plain):
            if not self._fill():
                return b""
        plain, pos = self._plain, self._pos
        end = min(pos + size, len(plain))
        self._pos = end
        if pos == 0 and end == len(plain):
            return plain  # whole chunk: hand out the bytes object without copying
        return plain[pos:end]

    def readall(self) -> bytes:
        """Read to EOF.

        Returns:
            All remaining plaintext.

        Raises:
            PayloadError: as :meth:`read`.
        """
        self._check_open()
        parts = [self._plain[self._pos :]]
        self._pos = len(self._plain)
        while self._fill():
            parts.append(self._plain)
            self._pos = len(self._plain)
        return b"".join(parts)

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        """Read plaintext into ``buffer``.

        Args:
            buffer: a writable bytes-like object.

        Returns:
            Bytes written (at most one chunk's worth); 0 only at a clean EOF.

        Raises:
            PayloadError: as :meth:`read`.
        """
        self._check_open()
        mv = memoryview(buffer).cast("B")
        want = len(mv)
        if not want:
            return 0
        while self._pos >= len(self._plain):
            if self._error is not None:
                raise self._error
            if self._done:
                return 0
            if want >= CHUNK_SIZE:
                # Decrypt straight into the caller's buffer, skipping one copy.
                got = self._open_chunk(mv)
                assert isinstance(got, int)
                if got:
                    return got
                continue
            self._fill()
        n = min(want, len(self._plain) - self._pos)
        mv[:n] = self._plain[self._pos : self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        """Mark the reader closed and drop buffers; ``src`` is left open."""
        if not self.closed:
            self._plain = b""
            self._head = b""
        super().close()

    def __repr__(self) -> str:
        return f"<AgeReader {self._name}>"


def encrypt_bytes(data: bytes, recipients: Sequence[Recipient], *, armor: bool = False) -> bytes:
    """Encrypt a byte string.

    Args:
        data: the plaintext.
        recipients: who can decrypt.
        armor: ASCII-armor the result.

    Returns:
        The age file.
    """
    out = io.BytesIO()
    if armor:
        with ArmorWriter(out) as a, AgeWriter(a, recipients) as w:
            w.write(data)
    else:
        with AgeWriter(out, recipients) as w:
            w.write(data)
    return out.getvalue()


def decrypt_bytes(data: bytes, identities: Sequence[Identity], *, name: str = "<bytes>") -> bytes:
    """Decrypt an age file held in memory.

    Args:
        data: the age file.
        identities: identities to try.
        name: what to call it in error messages.

    Returns:
        The plaintext.

    Raises:
        HeaderError, NoIdentityMatch, HMACError, PayloadError: as AgeReader.
    """
    with AgeReader(io.BytesIO(data), identities, name=name) as r:
        return r.readall()
