"""Manifests: the description of an archive, stored encrypted beside it.

A manifest holds everything needed to rebuild the inventory from the vault alone and to plan
a restore without reading the archive itself (which on cold storage may take hours to thaw):
format version, policy, kind, parent, creation time, every entry with its content SHA-256
and tar offset, the paths deleted since the parent, and what could not be read.

Encoding: JSON, compressed with zstd, encrypted with age to the archive's recipients; the
file ends in ``.manifest.json.zst.age`` and reads with ``age -d | zstd -d``. Paths are raw
bytes decoded with ``surrogateescape``; a byte that is not UTF-8 appears as a ``\\udcXX``
escape in the JSON and comes back exactly.
"""

from __future__ import annotations

import json
import os
from typing import Any

import zstandard

from ..errors import ArchiveCorrupt

__all__ = ["FORMAT_VERSION", "decode_manifest", "encode_manifest", "path_from_json", "path_to_json"]

FORMAT_VERSION = 1


def path_to_json(p: bytes) -> str:
    """Raw path bytes as a JSON-safe string."""
    return os.fsdecode(p)


def path_from_json(s: str) -> bytes:
    """The inverse of :func:`path_to_json`."""
    return os.fsencode(s)


def encode_manifest(manifest: dict[str, Any]) -> bytes:
    """Returns: the manifest as compressed JSON (not yet encrypted)."""
    raw = json.dumps(manifest, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return zstandard.ZstdCompressor(level=6).compress(raw)


def decode_manifest(data: bytes, name: str) -> dict[str, Any]:
    """Parse a decrypted manifest.

    Args:
        data: compressed JSON.
        name: archive id, for errors.

    Returns:
        The manifest.
    """
    try:
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        m = json.loads(raw)
    except (zstandard.ZstdError, ValueError) as e:
        raise ArchiveCorrupt(name, f"manifest unreadable: {e}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT_VERSION:
        raise ArchiveCorrupt(
            name, f"manifest format {m.get('format') if isinstance(m, dict) else '?'} not supported"
        )
    return m
