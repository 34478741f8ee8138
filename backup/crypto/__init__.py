"""Encryption for archives: the age v1 format, implemented on ``cryptography``.

Archives are age files so that ``age -d -i key.txt`` decrypts them without this project;
see :mod:`backup.crypto.age` for the format's invariants.
"""

from backup.crypto.age import (
    CHUNK_SIZE,
    AgeError,
    AgeReader,
    AgeWriter,
    HeaderError,
    HMACError,
    Identity,
    NoIdentityMatch,
    PayloadError,
    Recipient,
    ScryptIdentity,
    ScryptRecipient,
    Stanza,
    X25519Identity,
    X25519Recipient,
    decrypt_bytes,
    encrypt_bytes,
    load_identities,
    parse_identities,
    parse_recipient,
)

__all__ = [
    "CHUNK_SIZE",
    "AgeError",
    "AgeReader",
    "AgeWriter",
    "HMACError",
    "HeaderError",
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
    "parse_recipient",
]
