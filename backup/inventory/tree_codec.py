"""The tree cache's encoding: every path of an archive's tree with its signature, in bytes that
are safe to load whoever wrote them.

A shared PostgreSQL inventory is written by every host, so a cached tree is input from
others: decoding it must not run anything (``marshal`` and ``pickle`` may), and a row that is
damaged or hostile is ignored -- the caller replays the file index instead -- never trusted
and never a crash. Rows in the earlier ``marshal`` format are ignored the same way (by their
format name; their bytes are never loaded).

Format ``tree1-zstd``: one zstd frame (content size and checksum in its header) holding::

    b"BKTREE1\\0"
    u64 n                       number of paths
    u8 t, then t times: u8 len, ASCII name      the type names, in code order
    u8 kind, u64 len, bytes     the paths: kind 0 = joined by NUL (no path holds one),
                                kind 1 = n u32 lengths, then the paths back to back
    n bytes                     each path's type code
    5 times: u8 kind, u64 len, bytes   size, mode, mtime_ns, ctime_ns, ino, one column each:
                                kind 0 = n int64, 1 = n uint64, 2 = decimal text joined by ","
                                (numbers beyond 64 bits; a tree can hold any int)

all little-endian. Columns, not rows: the decoder hands whole columns to C (``array``,
``bytes.split``, ``zip``), which keeps it near ``marshal``'s speed, and columns compress
better. The encoder's common case runs in C (``_speedups.tree_encode``, one pass over the
dict, the same bytes as the Python encoder here); decoding stays in Python, since the bytes
come from other hosts.

Format ``tree2-chunks`` (what a backup writes now): the tree in walk order (ascending
:func:`canonical_key`), cut into chunks of at most :data:`CHUNK_PATHS` paths (or
:data:`CHUNK_BYTES` of path bytes), each chunk a ``tree1-zstd`` frame of its own, stored as
rows ``(archive_id, seq, blob)`` of ``tree_chunks``; the ``tree_cache`` row holds the header,
``b"BKTREE2\0"``, u64 chunk count, u64 path count. So the tree is written and read a chunk
at a time, never held: a backup merges its walk against it as a stream. A chunk decodes
only if, beyond the checks below, its paths ascend strictly (no repeat) and its first comes
after the previous chunk's last; the reader checks every chunk and the counts before it
hands out the first path.

Invariants of the decoder: every length is checked against what is left, the counts against
``n``, the type codes against the table; no path may repeat and nothing may follow the last
column; the frame's declared content size is checked (known, and at most 1000x the frame)
before anything is allocated for it. Anything else is "no cache", never an exception.
"""

from __future__ import annotations

import gc
import struct
import sys
import tempfile
from array import array
from collections.abc import Callable, Iterator
from operator import itemgetter
from typing import Any, Final

import zstandard

Tree = dict[bytes, tuple[str, int, int, int, int, int]]

_c_payload: Callable[[Tree], bytes | None] | None
try:  # the encoder's common case in C (backup/archive/_speedups.c), when it was built
    from ..archive._speedups import tree_encode as _c_tree_encode  # type: ignore[import-not-found]
except ImportError:
    _c_payload = None
else:
    _c_payload = _c_tree_encode

__all__ = [
    "TREE2_FORMAT",
    "TREE_FORMAT",
    "ChunkWriter",
    "TreeBuilder",
    "canonical_key",
    "check_chunk",
    "decode_chunk",
    "decode_header2",
    "decode_tree",
    "encode_tree",
]

#: the format name stored beside each cached tree
TREE_FORMAT: Final = "tree1-zstd"

_MAGIC: Final = b"BKTREE1\0"
_U8 = struct.Struct("<B")
_U64 = struct.Struct("<Q")
_PATHS_JOINED, _PATHS_SIZED = 0, 1
_INT64, _UINT64, _DECIMAL = 0, 1, 2
_LITTLE = sys.byteorder == "little"
#: the most a frame may expand to, per compressed byte: columns of repeated values compress
#: far better than paths, but no real tree comes near this; a row claiming more is ignored
#: before its content size is allocated
_MAX_RATIO: Final = 1000
_MIN_LIMIT: Final = 1 << 20


class _Malformed(Exception):
    """The cached tree is not one this encoder wrote."""


def encode_tree(state: Tree) -> bytes:
    """Returns: ``state`` in format :data:`TREE_FORMAT`.

    Raises:
        ValueError: a type name is not ASCII of 1 to 255 bytes, or there are more than 255.
    """
    payload = _c_payload(state) if _c_payload is not None else None
    if payload is None:
        payload = _payload(state)
    return zstandard.ZstdCompressor(level=1, write_checksum=True).compress(payload)


def _payload(state: Tree) -> bytes:
    """The uncompressed payload in Python: the definition (``_speedups.tree_encode`` writes
    the same bytes for the common case in one pass, and is tested against this)."""
    n = len(state)
    out = [_MAGIC, _U64.pack(n)]
    sigs = list(state.values())
    # type codes in order of first appearance; the table is written after the pass
    codes = _Codes()
    typecodes = bytes(map(codes.__getitem__, map(itemgetter(0), sigs)))
    if len(codes) > 255:
        raise ValueError("a tree cache holds at most 255 type names")
    out.append(_U8.pack(len(codes)))
    for name in codes:
        raw = name.encode("ascii") if isinstance(name, str) else b""
        if not 1 <= len(raw) <= 255:
            raise ValueError(f"tree cache type name {name!r} is not ASCII of 1 to 255 bytes")
        out += (_U8.pack(len(raw)), raw)

    keys = list(state)
    joined = b"\0".join(keys)
    if joined.count(b"\0") == n - 1 if n else True:
        out += (_U8.pack(_PATHS_JOINED), _U64.pack(len(joined)), joined)
    else:  # a path with a NUL in it (no file system makes one, but a tree is any dict)
        lengths = _native(array("I", map(len, keys)))
        body = lengths + b"".join(keys)
        out += (_U8.pack(_PATHS_SIZED), _U64.pack(len(body)), body)

    out.append(typecodes)
    for i in range(1, 6):
        kind, data = _int_column(sigs, i)
        out += (_U8.pack(kind), _U64.pack(len(data)), data)
    return b"".join(out)


def decode_tree(fmt: str, blob: bytes) -> Tree | None:
    """Returns: the tree a cache row holds, or None when the row cannot be trusted to be one
    this encoder wrote (another format, an earlier ``marshal`` row, damaged or hostile bytes):
    the caller then replays the file index. Never raises for any ``blob``."""
    if fmt != TREE_FORMAT:
        return None
    # 300k new tuples hold no cycles: the collections their allocation would trigger are
    # waste (a third of the decode), as in the C walk (_fastwalk.c)
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _decode(bytes(blob))
    except (_Malformed, zstandard.ZstdError, ValueError, OverflowError, MemoryError):
        return None
    finally:
        if collecting:
            gc.enable()


class TreeBuilder:
    """A tree in format :data:`TREE_FORMAT`, built a path at a time (a full backup's paths, as
    they are packed), held as the format's own columns: about 60 bytes a path (the path, its
    type code, five 8-byte numbers) instead of a dict entry, a tuple and its numbers.

    :meth:`encode` returns what :func:`encode_tree` returns for the dict of the same paths,
    added in the same order. A path added twice makes a row the decoder refuses (the next
    incremental then replays the file index): callers add each path once.
    """

    __slots__ = ("_big", "_codes", "_ints", "_lengths", "_nul", "_paths", "_types")

    def __init__(self) -> None:
        self._paths = bytearray()
        self._lengths = array("I")
        self._nul = False
        self._codes = _Codes()
        self._types = bytearray()
        self._ints: list[array[int] | list[int]] = [array("q") for _ in range(5)]
        self._big = False  # some column left int64 (a list of ints from then on)

    def __len__(self) -> int:
        return len(self._types)

    def add(
        self, path: bytes, type_: str, size: int, mode: int, mtime_ns: int, ctime_ns: int, ino: int
    ) -> None:
        """Append one path and its signature (as :func:`~backup.inventory.sig_of` makes it)."""
        if b"\0" in path:
            self._nul = True
        if self._types:
            self._paths += b"\0"
        self._paths += path
        self._lengths.append(len(path))
        self._types.append(self._codes[type_])
        if not self._big:
            # unrolled: this runs once per path of a full backup
            c0, c1, c2, c3, c4 = self._ints
            try:
                c0.append(size)
                c1.append(mode)
                c2.append(mtime_ns)
                c3.append(ctime_ns)
                c4.append(ino)
                return
            except OverflowError:
                # undo the columns this path reached, and hold numbers as lists from now
                n = len(self._types) - 1
                for col in self._ints:
                    del col[n:]
                self._ints = [c.tolist() if isinstance(c, array) else c for c in self._ints]
                self._big = True
        for col, v in zip(self._ints, (size, mode, mtime_ns, ctime_ns, ino), strict=True):
            col.append(v)

    def encode(self) -> bytes:
        """Returns: the tree in format :data:`TREE_FORMAT`.

        Raises:
            ValueError: as :func:`encode_tree`.
        """
        n = len(self._types)
        if len(self._codes) > 255:
            raise ValueError("a tree cache holds at most 255 type names")
        out = [_MAGIC, _U64.pack(n), _U8.pack(len(self._codes))]
        for name in self._codes:
            raw = name.encode("ascii") if isinstance(name, str) and name.isascii() else b""
            if not 1 <= len(raw) <= 255:
                raise ValueError(f"tree cache type name {name!r} is not ASCII of 1 to 255 bytes")
            out += (_U8.pack(len(raw)), raw)
        if not self._nul:
            out += (_U8.pack(_PATHS_JOINED), _U64.pack(len(self._paths)), bytes(self._paths))
        else:  # rebuild the paths from their lengths: the joined form cannot hold a NUL
            body, at = bytearray(), 0
            for length in self._lengths:
                body += self._paths[at : at + length]
                at += length + 1
            lengths = _native(array("I", self._lengths))
            out += (
                _U8.pack(_PATHS_SIZED),
                _U64.pack(len(lengths) + len(body)),
                lengths,
                bytes(body),
            )
        out.append(bytes(self._types))
        for col in self._ints:
            if isinstance(col, array):
                kind, data = _INT64, _native(array("q", col))
            else:
                kind, data = _list_column(col)
            out += (_U8.pack(kind), _U64.pack(len(data)), data)
        return zstandard.ZstdCompressor(level=1, write_checksum=True).compress(b"".join(out))


def _list_column(values: list[int]) -> tuple[int, bytes]:
    for kind, code in ((_INT64, "q"), (_UINT64, "Q")):
        try:
            return kind, _native(array(code, values))
        except OverflowError:
            continue
    return _DECIMAL, b",".join(b"%d" % v for v in values)


def _native(a: array[int]) -> bytes:
    if not _LITTLE:
        a.byteswap()
    return a.tobytes()


def _int_column(sigs: list[tuple[str, int, int, int, int, int]], i: int) -> tuple[int, bytes]:
    for kind, code in ((_INT64, "q"), (_UINT64, "Q")):
        try:
            return kind, _native(array(code, map(itemgetter(i), sigs)))
        except OverflowError:
            continue
    return _DECIMAL, b",".join(b"%d" % v for v in map(itemgetter(i), sigs))


class _Codes(dict[str, int]):
    """A type name's code: the next free one on first sight."""

    def __missing__(self, name: str) -> int:
        code = self[name] = len(self)
        return code


def _decode(blob: bytes) -> Tree:
    keys, types, columns = _parse(blob)
    ints = [c.tolist() if isinstance(c, array) else c for c in columns]
    state = dict(zip(keys, zip(types, *ints, strict=True), strict=True))
    if len(state) != len(keys):
        raise _Malformed("a path repeats")
    return state


def _parse(blob: bytes) -> tuple[list[bytes], list[str], list[array[int] | list[int]]]:
    """Every check of the encoding but a repeated path, and the columns as read: the
    paths, their type names, and the five integer columns (an array, or a list of decimal
    ones). Raises _Malformed."""
    size = zstandard.frame_content_size(blob)
    if size < 0 or size > max(_MIN_LIMIT, _MAX_RATIO * len(blob)):
        raise _Malformed("content size unknown or out of proportion")
    data = zstandard.ZstdDecompressor().decompress(blob, max_output_size=size)
    if len(data) != size:
        raise _Malformed("content size")
    r = _Reader(memoryview(data))
    if bytes(r.take(len(_MAGIC))) != _MAGIC:
        raise _Malformed("magic")
    n = r.u64()
    if n > len(data):  # every path costs at least its type code's byte
        raise _Malformed("count")
    table = []
    for _ in range(r.u8()):
        table.append(bytes(r.take(r.u8())).decode("ascii"))

    kind = r.u8()
    paths = r.take(r.u64())
    if kind == _PATHS_JOINED:
        keys = bytes(paths).split(b"\0") if n else ([] if not paths else [b""])
    elif kind == _PATHS_SIZED:
        lengths = _column_array("I", paths[: 4 * n], n).tolist()
        if sum(lengths) != len(paths) - 4 * n:
            raise _Malformed("path lengths")
        body = bytes(paths[4 * n :])
        keys, at = [], 0
        for length in lengths:
            keys.append(body[at : at + length])
            at += length
    else:
        raise _Malformed("path kind")
    if len(keys) != n:
        raise _Malformed("path count")

    codes = bytes(r.take(n))
    if codes.translate(None, bytes(range(len(table)))):
        raise _Malformed("type code")
    types = list(map(table.__getitem__, codes))
    columns: list[array[int] | list[int]] = []
    for _ in range(5):
        kind = r.u8()
        raw = r.take(r.u64())
        if kind == _INT64:
            columns.append(_column_array("q", raw, n))
        elif kind == _UINT64:
            columns.append(_column_array("Q", raw, n))
        elif kind == _DECIMAL:
            values = [int(v) for v in bytes(raw).split(b",")] if n else []
            if len(values) != n or (not n and raw):
                raise _Malformed("decimal column")
            columns.append(values)
        else:
            raise _Malformed("column kind")
    if r.left():
        raise _Malformed("trailing bytes")
    return keys, types, columns


def _column_array(code: str, raw: memoryview, n: int) -> array[int]:
    a = array(code)
    if len(raw) != a.itemsize * n:
        raise _Malformed("column length")
    a.frombytes(raw)
    if not _LITTLE:
        a.byteswap()
    return a


class _Reader:
    """Bounds-checked reads from the decompressed bytes."""

    __slots__ = ("at", "data")

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.at = 0

    def take(self, count: int) -> memoryview:
        end = self.at + count
        if end > len(self.data):
            raise _Malformed("truncated")
        piece = self.data[self.at : end]
        self.at = end
        return piece

    def u8(self) -> int:
        return int(_U8.unpack(self.take(1))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self.take(8))[0])

    def left(self) -> int:
        return len(self.data) - self.at


# tree2: the tree as a stream of bounded chunks, in walk order ---------------------------------

#: the format name of a chunked tree's header row (its chunks are rows of ``tree_chunks``)
TREE2_FORMAT: Final = "tree2-chunks"
_MAGIC2: Final = b"BKTREE2\0"
_HEADER2 = struct.Struct("<8sQQ")
#: a chunk closes at this many paths, or at :data:`CHUNK_BYTES` of path bytes: a chunk of
#: small files' paths compresses to well under 1 MiB, and one chunk is all a reader holds
CHUNK_PATHS: Final = 16384
CHUNK_BYTES: Final = 1 << 20
#: '/' and NUL swapped: bytewise order of ``canonical_key`` is the walk's order (depth
#: first, names sorted bytewise, a directory before its contents), since '/' then sorts
#: below every byte a name may hold; a bijection, so distinct paths keep distinct keys
_SWAP: Final = bytes(0x2F if i == 0 else 0 if i == 0x2F else i for i in range(256))


def canonical_key(path: bytes) -> bytes:
    """Returns: the key whose bytewise order is the walk's order of paths (the order of a
    tree2 stream)."""
    return path.translate(_SWAP)


Item = tuple[bytes, tuple[str, int, int, int, int, int]]


def encode_header2(chunks: int, paths: int) -> bytes:
    """Returns: the header row of a tree2 stream of ``chunks`` chunks holding ``paths``."""
    return _HEADER2.pack(_MAGIC2, chunks, paths)


def decode_header2(fmt: str, blob: bytes) -> tuple[int, int] | None:
    """Returns: (chunks, paths) of a tree2 header row, or None when it is not one."""
    if fmt != TREE2_FORMAT or len(blob) != _HEADER2.size:
        return None
    magic, chunks, paths = _HEADER2.unpack(bytes(blob))
    if magic != _MAGIC2 or chunks > paths + 1:
        return None
    return int(chunks), int(paths)


def decode_chunk(blob: bytes, after: bytes | None) -> list[Item] | None:
    """Returns: one chunk's paths and signatures, in order, or None when it is not one the
    writer made: as :func:`decode_tree`'s checks, and its paths strictly ascending in
    :func:`canonical_key` order, the first after ``after`` (the previous chunk's last key).
    Never raises for any ``blob``."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        keys, types, columns = _parse(bytes(blob))
        # strictly ascending keys repeat no path: no dict is needed to find one that does
        if _ordered([k.translate(_SWAP) for k in keys], after) is None:
            return None
        ints = [c.tolist() if isinstance(c, array) else c for c in columns]
        return list(zip(keys, zip(types, *ints, strict=True), strict=True))
    except (_Malformed, zstandard.ZstdError, ValueError, OverflowError, MemoryError):
        return None
    finally:
        if collecting:
            gc.enable()


def check_chunk(blob: bytes, after: bytes | None) -> tuple[int, bytes] | None:
    """Returns: (paths, the last path's :func:`canonical_key`) of a chunk that
    :func:`decode_chunk` would decode, else None; the same checks, without building the
    signatures (the check pass before a chunked tree is trusted). Never raises."""
    try:
        keys, _types, _columns = _parse(bytes(blob))
        last = _ordered([k.translate(_SWAP) for k in keys], after)
        return None if last is None else (len(keys), last)
    except (_Malformed, zstandard.ZstdError, ValueError, OverflowError, MemoryError):
        return None


def _ordered(keys: list[bytes], after: bytes | None) -> bytes | None:
    """Returns: the last of ``keys`` when they are strictly ascending (so no path repeats:
    canonical_key is a bijection) and after ``after``, else None (also for no keys: the
    writer never stores an empty chunk)."""
    if not keys or (after is not None and not after < keys[0]):
        return None
    if not all(map(bytes.__lt__, keys, keys[1:])):
        return None
    return keys[-1]


class ChunkWriter:
    """A tree2 stream written a path at a time, in walk order: each chunk is encoded when it
    fills (:class:`TreeBuilder`, the tree1 payload in its own zstd frame) and spooled to an
    unnamed temporary file, so memory holds one chunk, never the tree.

    Paths must come in strictly ascending :func:`canonical_key` order; the first that does not
    makes :attr:`ordered` false, and the stream is then not a tree2 stream (the caller stores
    no cache: the next incremental replays the file index)."""

    __slots__ = ("_builder", "_bytes", "_last", "_sizes", "_spool", "count", "ordered")

    def __init__(self) -> None:
        self._spool: Any = None
        self._sizes: list[int] = []
        self._builder = TreeBuilder()
        self._bytes = 0
        self._last = b""
        self.count = 0
        self.ordered = True

    def add(
        self, path: bytes, type_: str, size: int, mode: int, mtime_ns: int, ctime_ns: int, ino: int
    ) -> None:
        """Append one path and its signature."""
        key = path.translate(_SWAP)
        if self.count and not self._last < key:
            self.ordered = False
        self._last = key
        self.count += 1
        self._builder.add(path, type_, size, mode, mtime_ns, ctime_ns, ino)
        self._bytes += len(path)
        if len(self._builder) >= CHUNK_PATHS or self._bytes >= CHUNK_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not len(self._builder):
            return
        blob = self._builder.encode()
        if self._spool is None:
            # closed by close(), the spool outliving this call
            self._spool = tempfile.TemporaryFile(prefix="backup-tree-")  # noqa: SIM115
        self._spool.write(blob)
        self._sizes.append(len(blob))
        self._builder = TreeBuilder()
        self._bytes = 0

    def finish(self) -> tuple[bytes, Iterator[bytes]]:
        """Returns: the header row and the chunks, read back one at a time from the spool.

        Raises:
            ValueError: as :func:`encode_tree`.
        """
        self._flush()
        spool, sizes = self._spool, self._sizes

        def chunks() -> Iterator[bytes]:
            if spool is None:
                return
            spool.seek(0)
            for n in sizes:
                yield spool.read(n)

        return encode_header2(len(sizes), self.count), chunks()

    def close(self) -> None:
        """Drop the spool."""
        if self._spool is not None:
            self._spool.close()
            self._spool = None
