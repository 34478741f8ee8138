"""Run the C2SP CCTV age test vectors against backup.crypto.

One test per vector file, each giving exactly its expected result: none is skipped (a
vector with a header key this runner does not know fails, so a newer vector set is noticed).
Armored vectors are read through the armor reader, as the vectors' README says
(``armored: yes``); the auto-detecting path is checked on them too.
"""

from __future__ import annotations

import hashlib
import io
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from backup.crypto import (
    AgeReader,
    ArmorError,
    HeaderError,
    HMACError,
    Identity,
    NoIdentityMatch,
    PayloadError,
    ScryptIdentity,
    parse_identity,
)


def _cctv_dir() -> Path:
    """BACKUP_AGE_CCTV_DIR, else ../shared beside the checkout, else the workplace's
    /work/shared (a clone made elsewhere, such as /tmp, still finds the vectors)."""
    if os.environ.get("BACKUP_AGE_CCTV_DIR"):
        return Path(os.environ["BACKUP_AGE_CCTV_DIR"])
    rel = Path("shared") / "testdata" / "age-cctv"
    beside = Path(__file__).resolve().parents[2].parent / rel
    for candidate in (beside, Path("/work") / rel):
        if candidate.is_dir():
            return candidate
    return beside


CCTV_DIR = _cctv_dir()

_KNOWN_KEYS = {
    "expect",
    "payload",
    "file key",
    "identity",
    "passphrase",
    "armored",
    "compressed",
    "comment",
}
_EXPECTATIONS = {
    "success",
    "no match",
    "HMAC failure",
    "header failure",
    "payload failure",
    "armor failure",
}


@dataclass
class Vector:
    name: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def get(self, key: str) -> list[str]:
        return [v for k, v in self.headers if k == key]

    def one(self, key: str) -> str | None:
        values = self.get(key)
        return values[0] if values else None


def _load(path: Path) -> Vector:
    raw = path.read_bytes()
    head, sep, body = raw.partition(b"\n\n")
    assert sep, f"{path.name}: no blank line after the vector header"
    vec = Vector(path.name, body=body)
    for line in head.decode("utf-8").split("\n"):
        key, colon, value = line.partition(": ")
        assert colon, f"{path.name}: malformed header line"
        vec.headers.append((key, value))
    if vec.one("compressed") == "zlib":
        vec.body = zlib.decompress(vec.body)
    return vec


def _vector_files() -> list[Path]:
    if not CCTV_DIR.is_dir():
        return []
    return sorted(p for p in CCTV_DIR.iterdir() if p.is_file() and p.name != "README.md")


def _unsupported(vec: Vector) -> str | None:
    unknown = sorted({k for k, _ in vec.headers} - _KNOWN_KEYS)
    if unknown:
        return f"unknown vector header key(s): {', '.join(unknown)}"
    compressed = vec.one("compressed")
    if compressed not in (None, "zlib"):
        return f"unknown compression {compressed!r}"
    if vec.one("expect") not in _EXPECTATIONS:
        return f"unknown expectation {vec.one('expect')!r}"
    return None


def _identities(vec: Vector) -> list[Identity]:
    ids: list[Identity] = [parse_identity(s) for s in vec.get("identity")]
    ids += [ScryptIdentity(p) for p in vec.get("passphrase")]
    return ids


def _run(vec: Vector, armor: bool | None) -> tuple[str, bytes]:
    """Decrypt the vector; return (outcome, plaintext released before any failure)."""
    try:
        reader = AgeReader(io.BytesIO(vec.body), _identities(vec), name=vec.name, armor=armor)
    except ArmorError:
        return "armor failure", b""
    except NoIdentityMatch:
        return "no match", b""
    except HMACError:
        return "HMAC failure", b""
    except HeaderError:
        return "header failure", b""
    released = bytearray()
    try:
        # Odd read size so chunk boundaries and read boundaries never line up.
        while chunk := reader.read(12345):
            released += chunk
    except PayloadError:
        return "payload failure", bytes(released)
    except ArmorError:
        return "armor failure", bytes(released)
    return "success", bytes(released)


@pytest.mark.parametrize("path", _vector_files(), ids=lambda p: p.name)
def test_vector(path: Path) -> None:
    vec = _load(path)
    reason = _unsupported(vec)
    assert reason is None, f"{vec.name}: {reason}"
    expect = vec.one("expect")
    outcome, plaintext = _run(vec, armor=vec.one("armored") == "yes")
    assert outcome == expect, f"{vec.name}: expected {expect}, got {outcome}"
    # What restore does: tell armor from binary by the first bytes. Only leading garbage
    # before the BEGIN line reads differently: then the file is not an age file at all.
    auto, _ = _run(vec, armor=None)
    if vec.name == "armor_garbage_leading":
        assert auto == "header failure"
    else:
        assert auto == outcome, f"{vec.name}: auto-detected armor gives {auto}"
    if expect in ("success", "payload failure"):
        want = vec.one("payload")
        assert want is not None, f"{vec.name}: vector has no payload hash"
        assert hashlib.sha256(plaintext).hexdigest() == want


def test_vectors_present() -> None:
    files = _vector_files()
    assert files, f"no CCTV vectors found in {CCTV_DIR} (set BACKUP_AGE_CCTV_DIR)"
    # cctv-age 0.2.0 has 143 vectors, 33 armored and 18 post-quantum; all of them run.
    assert len(files) >= 143, f"only {len(files)} vectors in {CCTV_DIR}"
    vecs = [_load(p) for p in files]
    assert sum(v.one("armored") == "yes" for v in vecs) >= 33
    assert (
        sum(any(i.startswith("AGE-SECRET-KEY-PQ-") for i in v.get("identity")) for v in vecs) >= 18
    )
