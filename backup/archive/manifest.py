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

import codecs
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, Protocol

import zstandard

from ..errors import ArchiveCorrupt

__all__ = [
    "FORMAT_VERSION",
    "ManifestReader",
    "ManifestWriter",
    "decode_index_chunk",
    "decode_manifest",
    "encode_index_chunk",
    "encode_manifest",
    "path_from_json",
    "path_to_json",
]

FORMAT_VERSION = 1


def path_to_json(p: bytes) -> str:
    """Raw path bytes as a JSON-safe string."""
    return os.fsdecode(p)


def path_from_json(s: str) -> bytes:
    """The inverse of :func:`path_to_json`."""
    return os.fsencode(s)


class JSONEntry(Protocol):
    """An entry that encodes itself (as :class:`~backup.archive.pack.Record` does)."""

    def to_json(self) -> str: ...


def encode_manifest(
    manifest: dict[str, Any], entries: Iterable[dict[str, Any] | JSONEntry] = ()
) -> bytes:
    """Encode a manifest as compressed JSON (not yet encrypted).

    Args:
        manifest: every field but ``entries``.
        entries: the entries (dicts, or objects with ``to_json()``), encoded one at a time
            into the compressor, so a tree of millions of paths never exists as one JSON
            string in memory.

    Returns:
        zstd-compressed JSON.
    """
    # level 1: on the benchmark tree's 70,882 entries it was both smaller and faster than 3
    # (2.75 against 2.91 MB, 0.03 against 0.065 s), and encoding the manifest is part of
    # what a backup does after its last archive byte. The checksum lets a damaged copy in
    # the inventory (backup/inventory/packed.py), which age does not guard, be noticed.
    c = zstandard.ZstdCompressor(level=1, write_checksum=True).compressobj()
    head = json.dumps(manifest, ensure_ascii=True, separators=(",", ":"))
    out = [c.compress(head[:-1].encode("ascii") + b',"entries":[')]
    batch: list[str] = []
    first = True
    for e in entries:
        batch.append(
            json.dumps(e, ensure_ascii=True, separators=(",", ":"))
            if isinstance(e, dict)
            else e.to_json()
        )
        if len(batch) >= 1000:
            out.append(
                c.compress(("" if first else ",").encode() + ",".join(batch).encode("ascii"))
            )
            first, batch = False, []
    if batch:
        out.append(c.compress(("" if first else ",").encode() + ",".join(batch).encode("ascii")))
    out.append(c.compress(b"]}"))
    out.append(c.flush())
    return b"".join(out)


class ManifestWriter:
    """A manifest whose entries arrive one at a time, while the archive is packed, and whose
    other fields are known only at the end: the same bytes' content as :func:`encode_manifest`
    of all of it, without holding an object per entry.

    The entries' JSON is compressed (zstd level 1, ~10x) into a temporary file as it comes
    (in memory up to ``spool_in_memory`` compressed bytes, then on disk); :meth:`stream`
    writes the head, then streams the spooled entries back through the manifest's
    compressor into a sink (the age writer of the manifest's object), cutting the file
    index's chunks (:func:`decode_index_chunk`) from the same pass. The JSON keeps the order
    every reader has seen (fields, then ``entries``), so nothing about the format changes:
    only what the writer holds, which is one batch of entries and one chunk of the index.
    """

    def __init__(
        self, *, spool_in_memory: int = 8 << 20, index_chunk_entries: int = 10_000
    ) -> None:
        # closed by stream() or close(), not a with: it lives across the whole pack
        self._spool = tempfile.SpooledTemporaryFile(max_size=spool_in_memory)  # noqa: SIM115
        self._z = zstandard.ZstdCompressor(level=1).stream_writer(self._spool, closefd=False)
        self._batch: list[str] = []
        # entries are spooled in batches; the file index's chunks are cut at batch ends, so
        # each batch's length in the spooled text is kept (one int per batch: 10,000 at 10M)
        self._batch_size = max(1, min(1000, index_chunk_entries))
        self._chunk_batches = max(1, index_chunk_entries // self._batch_size)
        self._lengths: list[int] = []
        self.count = 0

    def add(self, entry: dict[str, Any] | JSONEntry) -> None:
        """Append one entry (a dict, or an object with ``to_json()``)."""
        self._batch.append(
            json.dumps(entry, ensure_ascii=True, separators=(",", ":"))
            if isinstance(entry, dict)
            else entry.to_json()
        )
        if len(self._batch) >= self._batch_size:
            self._flush_batch()

    def _flush_batch(self) -> None:
        if self._batch:
            lead = "," if self.count else ""
            text = (lead + ",".join(self._batch)).encode("ascii")
            self._z.write(text)
            self._lengths.append(len(text))
            self.count += len(self._batch)
            self._batch = []

    def finish(self, manifest: dict[str, Any]) -> bytes:
        """Returns: the manifest (``manifest``'s fields, then the entries added), compressed
        as :func:`encode_manifest` compresses it, whole in memory; the spool is gone
        afterwards. (A backup streams it instead: :meth:`stream`.)"""
        out = io.BytesIO()
        self.stream(manifest, out.write)
        return out.getvalue()

    def stream(
        self,
        manifest: dict[str, Any],
        write: Callable[[bytes], object],
        on_chunk: Callable[[int, bytes], object] | None = None,
    ) -> None:
        """Write the manifest (``manifest``'s fields, then the entries added), compressed as
        :func:`encode_manifest` compresses it, to ``write`` a piece at a time; the spool is
        gone afterwards.

        Args:
            manifest: every field but ``entries``.
            write: takes the compressed manifest, piece by piece.
            on_chunk: when given, takes the file index's chunks as ``(seq, blob)``: seq 0
                is ``manifest`` alone (its deleted paths among its fields), then one per
                ``index_chunk_entries`` entries (:func:`decode_index_chunk` reads them).
        """
        self._flush_batch()
        self._z.flush(zstandard.FLUSH_FRAME)
        self._spool.seek(0)
        c = zstandard.ZstdCompressor(level=1, write_checksum=True).compressobj()
        head = json.dumps(manifest, ensure_ascii=True, separators=(",", ":"))
        write(c.compress(head[:-1].encode("ascii") + b',"entries":['))
        if on_chunk is not None:
            on_chunk(0, encode_index_chunk(head.encode("ascii")))
        reader = zstandard.ZstdDecompressor().stream_reader(self._spool, closefd=False)
        chunk: list[bytes] = []
        seq = 0
        for i, n in enumerate(self._lengths):
            text = _read_exactly(reader, n)
            if piece := c.compress(text):
                write(piece)
            if on_chunk is None:
                continue
            chunk.append(text[1:] if text[:1] == b"," else text)
            if len(chunk) >= self._chunk_batches or i == len(self._lengths) - 1:
                seq += 1
                on_chunk(seq, encode_index_chunk(b'{"entries":[' + b",".join(chunk) + b"]}"))
                chunk = []
        if reader.read(1):
            raise AssertionError("manifest spool longer than its batches")  # a bug, not data
        write(c.compress(b"]}") + c.flush())
        self.close()

    def close(self) -> None:
        """Drop the spool (also when the backup fails before :meth:`stream`)."""
        self._spool.close()


def _read_exactly(reader: Any, n: int) -> bytes:
    parts = [reader.read(n)]
    got = len(parts[0])
    while got < n:
        more = reader.read(n - got)
        if not more:
            raise AssertionError("manifest spool shorter than its batches")  # a bug, not data
        parts.append(more)
        got += len(more)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def encode_index_chunk(text: bytes) -> bytes:
    """A file index chunk: one JSON object (``{"entries": [...]}``, or the manifest's
    fields), compressed like the manifest (zstd level 1 with a checksum: the inventory's
    copy is not guarded by age)."""
    return zstandard.ZstdCompressor(level=1, write_checksum=True).compress(text)


def decode_index_chunk(blob: bytes, name: str) -> dict[str, Any]:
    """Parse a file index chunk (:func:`encode_index_chunk`).

    Raises:
        ArchiveCorrupt: not zstd-compressed JSON of an object.
    """
    try:
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
        m = json.loads(raw)
    except (zstandard.ZstdError, ValueError) as e:
        raise ArchiveCorrupt(name, f"file index chunk unreadable: {e}") from None
    if not isinstance(m, dict):
        raise ArchiveCorrupt(name, "file index chunk is not a JSON object")
    return m


_ENTRY_FIELDS = ("path", "type", "size", "sha256", "link")


def _slim(d: dict[str, Any]) -> dict[str, Any]:
    # entries (the only objects with an "offset") keep what restore and verify read
    if "offset" in d:
        return {k: d[k] for k in _ENTRY_FIELDS if k in d}
    return d


def decode_manifest(data: bytes, name: str, *, slim: bool = False) -> dict[str, Any]:
    """Parse a decrypted manifest.

    Args:
        data: compressed JSON.
        name: archive id, for errors.
        slim: keep only each entry's path, type, size, sha256 and link (what restore and
            verify need), dropping the rest as entries are parsed, to bound memory.

    Returns:
        The manifest.
    """
    try:
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        m = json.loads(raw, object_hook=_slim if slim else None)
    except (zstandard.ZstdError, ValueError) as e:
        raise ArchiveCorrupt(name, f"manifest unreadable: {e}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT_VERSION:
        raise ArchiveCorrupt(
            name, f"manifest format {m.get('format') if isinstance(m, dict) else '?'} not supported"
        )
    return m


# -- reading a manifest as a stream -------------------------------------------------------

_READ_TEXT = 1 << 20
# one JSON value never needs this much text (an entry's path is at most a few KiB even
# escaped); more without a complete value means a damaged manifest, not a long entry
_MAX_VALUE = 64 << 20
# between two entries of the compact JSON every writer produced: the `"` after `{` cannot
# be inside a string (it would be escaped), so this splits the entries array safely
_BOUNDARY = '},{"'


class _Text:
    """Decompressed manifest text, read a piece at a time, with a cursor."""

    def __init__(self, reader: Any, name: str) -> None:
        self._r = reader
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self.name = name
        self.buf = ""
        self.pos = 0
        self.base = 0  # where buf starts in the whole text
        self.eof = False

    def more(self) -> bool:
        """Read another piece; returns False at the end of the text."""
        if self.eof:
            return False
        try:
            raw = self._r.read(_READ_TEXT)
            text = self._utf8.decode(raw, final=not raw)
        except (zstandard.ZstdError, UnicodeDecodeError) as e:
            raise ArchiveCorrupt(self.name, f"manifest unreadable: {e}") from None
        if not raw:
            self.eof = True
        if len(self.buf) - self.pos > _MAX_VALUE:
            raise ArchiveCorrupt(self.name, "manifest unreadable: a value without an end")
        self.base += self.pos
        self.buf = self.buf[self.pos :] + text
        self.pos = 0
        return not self.eof or bool(text)

    def char(self) -> str:
        """The next character that is not white space (not consumed), or "" at the end."""
        while True:
            n = len(self.buf)
            while self.pos < n and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < n:
                return self.buf[self.pos]
            if not self.more():
                return ""

    def expect(self, chars: str) -> str:
        c = self.char()
        if not c or c not in chars:
            found = repr(c) if c else "the end"
            raise ArchiveCorrupt(
                self.name, f"manifest unreadable: expected {' or '.join(chars)}, found {found}"
            )
        self.pos += 1
        return c

    def value(self, decoder: json.JSONDecoder) -> Any:
        """One JSON value at the cursor."""
        self.char()
        while True:
            try:
                v, end = decoder.raw_decode(self.buf, self.pos)
            except ValueError as e:
                if self.more():
                    continue
                raise ArchiveCorrupt(self.name, f"manifest unreadable: {e}") from None
            # a number or a literal may go on in the next piece
            if end < len(self.buf) or not self.more():
                self.pos = end
                return v


_PLAIN = json.JSONDecoder()
_SLIM = json.JSONDecoder(object_hook=_slim)


class ManifestReader:
    """A decrypted manifest read as a stream, as often as needed, from its compressed text
    (a spool the caller fills): its fields in one pass that stops at the entries where it
    can, its entries in batches. What it holds is a piece of text and one batch of entries,
    whatever the number of paths; :func:`decode_manifest` holds all of them.

    Every writer put the entries in the order of the archive's tar members. Fields may come
    before or after them (before, since 2026-11-21; ``deleted`` after, in the first writer).
    """

    def __init__(self, compressed: IO[bytes], name: str) -> None:
        self._f = compressed
        self.name = name
        self._fields: dict[str, Any] | None = None

    def _text(self) -> _Text:
        self._f.seek(0)
        reader = zstandard.ZstdDecompressor().stream_reader(self._f, closefd=False)
        return _Text(reader, self.name)

    @property
    def fields(self) -> dict[str, Any]:
        """Every field but ``entries``.

        Raises:
            ArchiveCorrupt: not a manifest, or of a format this version does not read.
        """
        if self._fields is None:
            t = self._text()
            fields: dict[str, Any] = {}
            t.expect("{")
            if t.char() != "}":
                while True:
                    key = t.value(_PLAIN)
                    if not isinstance(key, str):
                        raise ArchiveCorrupt(self.name, "manifest unreadable: a key not a string")
                    t.expect(":")
                    if key != "entries":
                        fields[key] = t.value(_PLAIN)
                    elif "deleted" in fields:
                        break  # the entries come last: every field is known
                    else:
                        for _ in self._entries_at(t):
                            pass
                    if t.expect(",}") == "}":
                        break
            if fields.get("format") != FORMAT_VERSION:
                raise ArchiveCorrupt(
                    self.name, f"manifest format {fields.get('format', '?')} not supported"
                )
            self._fields = fields
        return self._fields

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def entries(self) -> Iterator[dict[str, Any]]:
        """The entries in archive order, each with what restore and verify read (path,
        type, size, sha256, link)."""
        self.fields  # noqa: B018  # the format is checked before any entry is used
        t = self._text()
        t.expect("{")
        while t.char() != "}":
            key = t.value(_PLAIN)
            t.expect(":")
            if key == "entries":
                yield from self._entries_at(t)
                # what follows them is read too: the document must end where it should
                while t.expect(",}") == ",":
                    t.value(_PLAIN)
                    t.expect(":")
                    t.value(_PLAIN)
                if t.char():
                    raise ArchiveCorrupt(self.name, "manifest unreadable: text after its end")
                return
            t.value(_PLAIN)
            t.expect(",")
        raise ArchiveCorrupt(self.name, "manifest unreadable: no entries")

    def _entries_at(self, t: _Text) -> Iterator[dict[str, Any]]:
        t.expect("[")
        if t.char() == "]":
            t.pos += 1
            return
        # no boundary worth trying starts before this offset (in the whole text): searched
        # already, or where a batch parse failed; so no text is searched or parsed twice
        tried = 0
        while True:
            # fast path: every whole entry in the text read so far, in one parse
            k = t.buf.rfind(_BOUNDARY, max(t.pos, tried - t.base))
            if k < 0:
                tried = t.base + max(t.pos, len(t.buf) - len(_BOUNDARY) + 1)
            elif k > t.pos:
                tried = t.base + k + 1
                try:
                    batch = _SLIM.decode("[" + t.buf[t.pos : k + 1] + "]")
                except ValueError:
                    pass  # the split fell beyond the entries (fields after them): one at a time
                else:
                    t.pos = k + 2
                    for e in batch:
                        self._check(e)
                    yield from batch
                    if len(t.buf) - t.pos < _READ_TEXT:
                        t.more()
                    continue
            e = t.value(_SLIM)
            self._check(e)
            yield e
            if t.expect(",]") == "]":
                return

    def _check(self, e: Any) -> None:
        if not isinstance(e, dict) or not isinstance(e.get("path"), str):
            raise ArchiveCorrupt(self.name, "manifest unreadable: an entry without a path")

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> ManifestReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
