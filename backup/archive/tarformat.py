"""POSIX tar (pax) header encoding and a streaming tar reader.

The archive pipeline writes tar headers itself and copies file data itself, because
``tarfile``'s stream mode is several times slower than a loop of header writes and 1 MiB
copies. This module owns the byte format; it does no file-system access.

Design invariants:

- Every byte string produced is a whole number of 512-byte blocks: ``encode_header`` returns
  the blocks that precede a member's data, the caller writes ``size`` data bytes then
  ``padding(size)``, and finishes the stream with ``END_OF_ARCHIVE``.
- Values go into the ustar header whenever they fit the ustar field exactly; anything that does
  not (long or unsplittable names, long link targets, sizes >= 8 GiB, large uid/gid, long or
  non-ASCII user/group names, sub-second or out-of-range mtimes) goes into a pax ``x`` header,
  so no value is ever silently truncated. The ustar field then holds a truncated or zero
  placeholder that pax-aware readers ignore.
- Names are bytes end to end: the reader never decodes a path, so every name survives a
  round trip exactly, including names that are not UTF-8.
- The reader never guesses: a bad checksum, a malformed number or pax record, a number
  outside what a restore can apply (a negative size, a uid beyond 32 bits, ...), a NUL in a
  pax name, or a stream that ends anywhere except after an end-of-archive block raises
  ``ArchiveCorrupt``, in one line naming the entry (or the one it follows); member
  kinds it cannot restore faithfully (GNU sparse or multi-volume members, unknown types)
  raise ``ArchiveError`` rather than yielding a wrong file.

GNU tar findings (GNU tar 1.34, verified by the tests):

- GNU tar does not know the pax ``hdrcharset`` keyword: every ``hdrcharset=BINARY`` record
  makes ``tar -t``/``tar -x`` print "Ignoring unknown extended header keyword 'hdrcharset'".
  It does, however, restore a ``path``/``linkpath`` value that is not valid UTF-8 as its raw
  bytes (its UTF-8-to-locale conversion fails and it falls back to the bytes as given), in any
  locale, and GNU tar's own pax writer emits such raw values without ``hdrcharset``. So this
  module writes raw bytes and no ``hdrcharset`` record: the name round-trips exactly through
  GNU tar with no warning. Python's ``tarfile`` also reads such names back exactly with
  ``errors="surrogateescape"``. The reader accepts ``hdrcharset=BINARY`` from other writers;
  it changes nothing here because names are never decoded.
- GNU tar restores nanosecond mtimes from a pax ``mtime`` record with a fraction, and writes
  negative fractional times in the same signed-decimal form as here (``mtime=-1.5`` for
  -1.5 s). Extracting a negative mtime prints an "implausibly old time stamp" warning but
  sets the time exactly. Symlink mtimes are restored too.
- GNU tar sets a directory's mtime as soon as it meets a member outside that directory, so a
  member written later inside it changes the time again: writers must emit each directory's
  entries contiguously after it (tree-walk order) for directory mtimes to survive a restore.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from backup.errors import ArchiveCorrupt, ArchiveError

__all__ = [
    "BLKTYPE",
    "BLOCK",
    "CHRTYPE",
    "DIRTYPE",
    "END_OF_ARCHIVE",
    "FIFOTYPE",
    "LNKTYPE",
    "REGTYPE",
    "SYMTYPE",
    "Member",
    "TarReader",
    "encode_header",
    "padding",
]

BLOCK = 512
END_OF_ARCHIVE = bytes(2 * BLOCK)

REGTYPE = b"0"
LNKTYPE = b"1"
SYMTYPE = b"2"
CHRTYPE = b"3"
BLKTYPE = b"4"
DIRTYPE = b"5"
FIFOTYPE = b"6"

_MEMBER_TYPES = frozenset((REGTYPE, LNKTYPE, SYMTYPE, CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE))
_AREGTYPE = b"\0"  # pre-POSIX regular file
_CONTTYPE = b"7"  # contiguous file: a regular file everywhere that matters
_PAX_LOCAL = b"x"
_PAX_GLOBAL = b"g"
_GNU_LONGNAME = b"L"
_GNU_LONGLINK = b"K"
_UNSUPPORTED_TYPES = {
    b"S": "GNU sparse file",
    b"M": "GNU multi-volume continuation",
    b"V": "GNU volume label",
    b"D": "GNU incremental dump directory",
    b"N": "GNU old-style long name",
}
# pax keys whose values are names: text that a NUL byte would cut short
_PAX_TEXT_KEYS = frozenset((b"path", b"linkpath", b"uname", b"gname"))
# Keys of a pax member that continues a file from a previous volume.
_PAX_MULTIVOLUME_KEYS = frozenset(
    (b"GNU.volume.filename", b"GNU.volume.size", b"GNU.volume.offset")
)
# every key the reader acts on (besides the GNU.sparse.* family)
_PAX_READ_KEYS = (
    _PAX_TEXT_KEYS | _PAX_MULTIVOLUME_KEYS | frozenset((b"size", b"mtime", b"uid", b"gid"))
)

_ZERO_BLOCK = bytes(BLOCK)
_POSIX_MAGIC = b"ustar\x0000"
_OCTAL_7 = 8**7  # first value that no longer fits a 7-digit octal field
_OCTAL_11 = 8**11
_NS = 10**9
_PAX_DIR = b"./PaxHeaders/"
# Extended headers are read into memory; real ones are at most a few KiB (long paths, xattrs),
# so anything near this size is a corrupt size field, not metadata.
_MAX_META = 16 << 20
# Ranges a member's numbers must lie in, whatever their encoding (octal, base-256, pax
# decimal): what the file system calls restoring them take (off_t sizes, 32-bit uid_t/gid_t,
# 64-bit time_t seconds, the int os.makedev takes). Anything outside is a corrupt header, not
# a value to pass on: a negative size would move the reader backwards (a loop that never
# ends), the others would overflow where the restore applies them.
_MAX_SIZE = 2**63 - 1
_MAX_ID = 2**32 - 1
_MIN_MTIME_NS = -(2**63) * 10**9
_MAX_MTIME_NS = 2**63 * 10**9 - 1
_MAX_DEV = 2**31 - 1
# more digits than any value in those ranges has (and far below int()'s 4300-digit limit)
_MAX_DIGITS = 30
_READ_CHUNK = 64 << 10
# the buffer refills in large pieces: a decompressor or prefetcher then hands out whole
# chunks without copying, and headers are parsed from one buffer for many members
_FILL_CHUNK = 1 << 20
_SKIP_CHUNK = 1 << 20

# name mode uid gid size mtime chksum typeflag linkname magic+version uname gname
# devmajor devminor prefix (12 bytes of padding): exactly one 512-byte block.
_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")
_CHKSUM_SPACES = b"        "
_CHKSUM_SPACES_SUM = 8 * 0x20
# Maps each byte to 1 if it is negative as a signed char, for the signed-checksum fallback.
_HIGH_BIT_TABLE = bytes(int(b >= 0x80) for b in range(256))


c_encode_header: Callable[..., bytes | None] | None
c_decode_header: Callable[[bytes], tuple[Any, ...] | None] | None
try:  # encode_header's and the reader's common cases in C (_speedups.c), when it was built
    from ._speedups import decode as _c_decode  # type: ignore[import-not-found]
    from ._speedups import encode as _c_encode
except ImportError:
    c_encode_header = c_decode_header = None
else:
    c_encode_header, c_decode_header = _c_encode, _c_decode


def _block_sum(block: bytes | memoryview) -> int:
    """Sum of the 512 bytes of ``block``, computed in C.

    Adler-32's low half is 1 + the byte sum modulo 65521; 256 bytes sum to at most 65280,
    so per half the modulo never wraps and the value is exact.
    """
    view = memoryview(block)
    return (zlib.adler32(view[:256]) & 0xFFFF) + (zlib.adler32(view[256:]) & 0xFFFF) - 2


def padding(size: int) -> bytes:
    """Zero bytes that pad member data of ``size`` bytes to a whole block.

    Args:
        size: number of data bytes written for the member.

    Returns:
        Between 0 and 511 zero bytes.
    """
    return _ZERO_BLOCK[: -size % BLOCK]


def _ustar_block(
    name: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    typeflag: bytes,
    linkname: bytes,
    uname: bytes,
    gname: bytes,
    devmajor: int,
    devminor: int,
    prefix: bytes,
) -> bytes:
    # Callers guarantee every number fits its field: struct's "s" silently truncates.
    block = _USTAR.pack(
        name,
        b"%07o\0" % mode,
        b"%07o\0" % uid,
        b"%07o\0" % gid,
        b"%011o\0" % size,
        b"%011o\0" % mtime,
        _CHKSUM_SPACES,
        typeflag,
        linkname,
        _POSIX_MAGIC,
        uname,
        gname,
        b"%07o\0" % devmajor,
        b"%07o\0" % devminor,
        prefix,
    )
    return block[:148] + b"%06o\0 " % _block_sum(block) + block[156:]


# A pax header block differs from one member to the next only in its name, size and mtime
# fields, so it is built from this template (its checksum field holding spaces).
_PAX_TEMPLATE = _USTAR.pack(
    b"", b"0000644\0", b"0000000\0", b"0000000\0", b"", b"", _CHKSUM_SPACES, _PAX_LOCAL,
    b"", _POSIX_MAGIC, b"", b"", b"0000000\0", b"0000000\0", b"",
)  # fmt: skip
_PAX_IDS = _PAX_TEMPLATE[100:124]  # mode, uid, gid
_PAX_REST = _PAX_TEMPLATE[156:]  # type flag onwards
_PAX_FIXED_SUM = sum(_PAX_IDS) + sum(_PAX_REST) + _CHKSUM_SPACES_SUM


def _pax_block(name: bytes, size: int, mtime: int) -> bytes:
    """What ``_ustar_block(name, 0o644, 0, 0, size, mtime, _PAX_LOCAL, ...)`` returns, built
    from the template: one per member, so it is worth the shortcut."""
    fields = b"%011o\0%011o\0" % (size, mtime)
    # Adler-32's low half is 1 + the byte sum modulo 65521: exact for these <= 124 bytes
    chksum = _PAX_FIXED_SUM + (zlib.adler32(name + fields) & 0xFFFF) - 1
    return b"".join(
        (name, bytes(100 - len(name)), _PAX_IDS, fields, b"%06o\0 " % chksum, _PAX_REST)
    )


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" %s=%s\n" % (key, value)
    n = len(body)
    length = n + len(str(n))
    # The length counts its own digits; adding them can carry into one more digit (98 -> 101),
    # and one correction is always enough because n + digits stays far from the next power.
    if len(str(length)) != len(str(n)):
        length = n + len(str(length))
    return b"%d%s" % (length, body)


def _format_pax_time(mtime_ns: int) -> bytes:
    # Signed decimal of the exact value (-1.5 s is "-1.5"), as GNU tar writes and reads it;
    # formatting the magnitude avoids the floor-division surprise for negative times.
    sign = b"-" if mtime_ns < 0 else b""
    seconds, fraction = divmod(abs(mtime_ns), _NS)
    if not fraction:
        return b"%s%d" % (sign, seconds)
    return b"%s%d.%s" % (sign, seconds, (b"%09d" % fraction).rstrip(b"0"))


def _split_name(name: bytes) -> tuple[bytes, bytes] | None:
    """Split ``name`` into ustar (prefix, name) at a '/', or None when it cannot be."""
    length = len(name)
    # The separator index i needs: prefix name[:i] of 1..155 bytes, remainder name[i+1:] of
    # 1..100 bytes (so a directory's trailing '/' is never the split point).
    i = name.find(b"/", max(1, length - 101), min(156, length - 1))
    if i < 0:
        return None
    return name[:i], name[i + 1 :]


def _pax_header_name(name: bytes) -> bytes:
    base = name.rstrip(b"/").rpartition(b"/")[2][: 100 - len(_PAX_DIR)]
    return _PAX_DIR + base


def encode_header(
    *,
    name: bytes,
    type: bytes,
    size: int = 0,
    mode: int = 0o644,
    mtime_ns: int = 0,
    uid: int = 0,
    gid: int = 0,
    uname: str = "",
    gname: str = "",
    linkname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
) -> bytes:
    """Encode the header blocks written before one member's data.

    Args:
        name: relative path as raw bytes with '/' separators; a directory's trailing '/' is
            added when missing.
        type: one of the member type constants (``REGTYPE`` ... ``FIFOTYPE``).
        size: number of data bytes that follow (regular files; 0 for other types).
        mode: permission bits; only ``mode & 0o7777`` is stored, so ``st_mode`` may be passed.
        mtime_ns: modification time in nanoseconds since the epoch, may be negative.
        uid: numeric owner.
        gid: numeric group.
        uname: owner name; stored in pax when not ASCII or longer than 31 bytes.
        gname: group name; same rule as ``uname``.
        linkname: raw target of a symlink, or archive name of a hard link's first occurrence.
        devmajor: device major number for ``CHRTYPE``/``BLKTYPE``.
        devminor: device minor number for ``CHRTYPE``/``BLKTYPE``.

    Returns:
        An optional pax extended header (header block plus padded records) followed by the
        ustar header block; always a multiple of 512 bytes.

    Raises:
        ValueError: the member cannot be represented (unknown type, empty or absolute name,
            NUL bytes in a name, negative size/uid/gid, device numbers beyond 7 octal digits).
    """
    return header(
        name, type, size, mode, mtime_ns, uid, gid, uname, gname, linkname, devmajor, devminor
    )


def header(*fields: Any) -> bytes:
    """:func:`encode_header` with positional arguments in its order (name, type, size, mode,
    mtime_ns, uid, gid, uname, gname, linkname, devmajor, devminor), for the packing loop: one
    call per path, where keyword arguments cost more than the C encoder itself."""
    if c_encode_header is not None and (fast := c_encode_header(*fields)) is not None:
        return fast
    return _encode_header(*fields)


def _encode_header(
    name: bytes,
    type: bytes,
    size: int,
    mode: int,
    mtime_ns: int,
    uid: int,
    gid: int,
    uname: str,
    gname: str,
    linkname: bytes,
    devmajor: int,
    devminor: int,
) -> bytes:
    """encode_header in Python: the whole definition of the format (the C version does the
    common case and is tested against this)."""
    if type not in _MEMBER_TYPES:
        raise ValueError(f"unknown tar member type {type!r}")
    if not name or name.startswith(b"/") or b"\0" in name:
        raise ValueError(f"tar member name must be relative, non-empty, without NUL: {name!r}")
    if b"\0" in linkname:
        raise ValueError(f"tar link name contains NUL: {linkname!r}")
    if size < 0 or uid < 0 or gid < 0:
        raise ValueError("tar size, uid and gid must not be negative")
    if not (0 <= devmajor < _OCTAL_7 and 0 <= devminor < _OCTAL_7):
        raise ValueError(f"device numbers out of range: {devmajor}, {devminor}")
    if type == DIRTYPE and not name.endswith(b"/"):
        name += b"/"

    records: list[bytes] = []
    prefix = b""
    if len(name) > 100:
        split = _split_name(name)
        if split is None:
            records.append(_pax_record(b"path", name))
            ustar_name = name[:100]
        else:
            prefix, ustar_name = split
    else:
        ustar_name = name
    if len(linkname) > 100:
        records.append(_pax_record(b"linkpath", linkname))
        linkname = linkname[:100]
    if size >= _OCTAL_11:
        records.append(_pax_record(b"size", b"%d" % size))
        size = 0
    if uid >= _OCTAL_7:
        records.append(_pax_record(b"uid", b"%d" % uid))
        uid = 0
    if gid >= _OCTAL_7:
        records.append(_pax_record(b"gid", b"%d" % gid))
        gid = 0
    if uname.isascii() and len(uname) < 32:
        uname_field = uname.encode("ascii")
    else:
        records.append(_pax_record(b"uname", uname.encode("utf-8", "surrogateescape")))
        uname_field = b""
    if gname.isascii() and len(gname) < 32:
        gname_field = gname.encode("ascii")
    else:
        records.append(_pax_record(b"gname", gname.encode("utf-8", "surrogateescape")))
        gname_field = b""
    seconds, fraction = divmod(mtime_ns, _NS)
    if fraction or not 0 <= seconds < _OCTAL_11:
        records.append(_pax_record(b"mtime", _format_pax_time(mtime_ns)))
        seconds = min(max(seconds, 0), _OCTAL_11 - 1)

    header = _ustar_block(
        ustar_name,
        mode & 0o7777,
        uid,
        gid,
        size,
        seconds,
        type,
        linkname,
        uname_field,
        gname_field,
        devmajor,
        devminor,
        prefix,
    )
    if not records:
        return header
    data = b"".join(records)
    pax_header = _pax_block(_pax_header_name(name), len(data), seconds)
    return b"".join((pax_header, data, padding(len(data)), header))


@dataclass(slots=True)
class Member:
    """One archive member as read by ``TarReader``.

    ``name`` and ``linkname`` are the raw bytes from the archive (a directory's trailing '/'
    stripped); ``type`` is one of the member type constants. ``offset`` is where the member's
    first header block starts (including pax ``x`` and GNU ``L``/``K`` blocks that belong to
    it, excluding pax ``g`` global headers, which belong to the whole stream); ``data_offset``
    is where its data starts.
    """

    name: bytes
    type: bytes
    size: int
    mode: int
    mtime_ns: int
    uid: int
    gid: int
    uname: str
    gname: str
    linkname: bytes
    devmajor: int
    devminor: int
    offset: int
    data_offset: int


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


def _cstr(field: bytes) -> bytes:
    end = field.find(0)
    return field if end < 0 else field[:end]


def _parse_number(field: bytes) -> int:
    """Parse a numeric header field: octal with NUL/space terminators, or GNU base-256."""
    first = field[0]
    if first & 0x80:
        # GNU base-256: 0x80 marks a positive big-endian number in the remaining bytes,
        # 0xff a negative one in two's complement over the whole field.
        if first == 0xFF:
            return int.from_bytes(field, "big", signed=True)
        return int.from_bytes(field[1:], "big")
    digits = _cstr(field).strip(b" ")
    if not digits:
        return 0
    # isdigit() rejects what int() would wrongly accept: signs, '_', "0o", inner spaces.
    if not digits.isdigit():
        raise ValueError(f"invalid octal field {field!r}")
    return int(digits, 8)


def _clip(value: bytes) -> str:
    """``value`` for an error message: a hostile header may hold megabytes."""
    return repr(value) if len(value) <= 40 else repr(value[:40])[:-1] + "...'"


def _parse_decimal(value: bytes, key: bytes) -> int:
    if not value.isdigit():
        raise ValueError(f"invalid pax {key.decode('ascii', 'replace')} value {_clip(value)}")
    if len(value.lstrip(b"0")) > _MAX_DIGITS:
        raise ValueError(f"pax {key.decode('ascii', 'replace')} value {_clip(value)} out of range")
    return int(value)


def _parse_pax_time(value: bytes) -> int:
    """Parse a pax time ("-1.5", "1700000000.123456789") to integer nanoseconds, exactly."""
    negative = value.startswith(b"-")
    digits = value[1:] if negative else value
    whole, dot, fraction = digits.partition(b".")
    if not whole.isdigit() or (dot and not fraction.isdigit()):
        raise ValueError(f"invalid pax time {_clip(value)}")
    if len(whole.lstrip(b"0")) > _MAX_DIGITS:
        raise ValueError(f"pax time {_clip(value)} out of range")
    # Digits beyond nanoseconds are dropped: the file system cannot store them anyway.
    ns = int(whole) * _NS + int(fraction[:9].ljust(9, b"0") if dot else b"0")
    return -ns if negative else ns


def _parse_pax_records(data: bytes) -> dict[bytes, bytes]:
    records: dict[bytes, bytes] = {}
    pos = 0
    end = len(data)
    while pos < end:
        if data[pos] == 0 and not data[pos:].strip(b"\0"):
            break  # NUL padding some writers leave after the last record
        space = data.find(b" ", pos, pos + 21)
        length_digits = data[pos:space]
        if space < 0 or not length_digits.isdigit():
            raise ValueError(f"malformed pax record length at byte {pos}")
        record_end = pos + int(length_digits)
        if record_end > end or record_end <= space + 1 or data[record_end - 1] != 0x0A:
            raise ValueError(f"malformed pax record at byte {pos}")
        key, eq, value = data[space + 1 : record_end - 1].partition(b"=")
        if not eq or not key:
            raise ValueError(f"malformed pax record at byte {pos}")
        records[key] = value
        pos = record_end
    return records


def _out_of_range(
    size: int, uid: int, gid: int, mtime_ns: int, devmajor: int, devminor: int
) -> str:
    """Which of a member's numbers is outside the range restoring it can apply."""
    for what, value, low, high in (
        ("size", size, 0, _MAX_SIZE),
        ("uid", uid, 0, _MAX_ID),
        ("gid", gid, 0, _MAX_ID),
        ("devmajor", devmajor, 0, _MAX_DEV),
        ("devminor", devminor, 0, _MAX_DEV),
    ):
        if not low <= value <= high:
            return f"{what} {value} out of range ({low} to {high})"
    return f"mtime {mtime_ns // _NS} s out of range (a 64-bit time_t)"


def _show(name: bytes) -> str:
    return repr(name.decode("utf-8", "backslashreplace"))


class TarReader:
    """Streaming reader of tar archives (POSIX pax/ustar, GNU, and V7 headers).

    Iterate to get members in order; while a member is current, its data can be read with
    ``read_data``/``readinto_data``; advancing skips whatever was not read. The stream is
    read in large chunks and never seeked, so it may be a pipe or a decompressor.
    """

    def __init__(self, stream: _Readable, *, name: str = "<stream>") -> None:
        """Wrap ``stream``, positioned at the start of a tar archive.

        Args:
            stream: object with ``read(n)``; ``readinto`` is used for large reads when present.
            name: archive name used in error messages.
        """
        self._read = stream.read
        readinto = getattr(stream, "readinto", None)
        self._readinto: Callable[[memoryview], int | None] | None = readinto
        self._name = name
        self._buf = b""
        self._view = memoryview(self._buf)
        self._pos = 0
        self._base = 0  # stream offset of self._buf[0]
        self._remaining = 0  # unread data bytes of the current member
        self._padding = 0  # padding bytes after the current member's data
        self._member_name = b""
        self._global: dict[bytes, bytes] = {}
        self._done = False

    # -- buffer primitives -------------------------------------------------------------------

    def _tell(self) -> int:
        return self._base + self._pos

    def _corrupt(
        self, what: str, offset: int, entry: bytes | None = None, *, after: bool = False
    ) -> ArchiveCorrupt:
        """The error for ``what`` at ``offset``, naming the member it belongs to (``entry``);
        a header that names none yet (``after``) is placed after the last member read."""
        if entry is not None:
            return ArchiveCorrupt(self._name, f"entry {_show(entry)}: {what} at offset {offset}")
        if after and self._member_name:
            what = f"{what} at offset {offset}, after entry {_show(self._member_name)}"
            return ArchiveCorrupt(self._name, what)
        return ArchiveCorrupt(self._name, f"{what} at offset {offset}")

    def _fill(self, n: int) -> int:
        """Make at least ``n`` bytes available in the buffer unless the stream ends first.

        Returns:
            Number of bytes available from ``self._pos``.
        """
        avail = len(self._buf) - self._pos
        if avail >= n:
            return avail
        chunks = [self._buf[self._pos :]] if avail else []
        self._base += self._pos
        while avail < n:
            chunk = self._read(max(_FILL_CHUNK, n - avail))
            if not chunk:
                break
            chunks.append(chunk)
            avail += len(chunk)
        self._buf = b"".join(chunks)
        self._view = memoryview(self._buf)
        self._pos = 0
        return avail

    def _take(self, n: int, what: str) -> bytes:
        """Consume exactly ``n`` bytes, or raise ArchiveCorrupt naming ``what``."""
        offset = self._tell()
        if self._fill(n) < n:
            raise self._corrupt(f"unexpected end of stream in {what}", offset, after=True)
        pos = self._pos
        self._pos = pos + n
        return self._buf[pos : pos + n]

    def _block_or_eof(self, what: str) -> bytes | None:
        """Consume one block; None at a clean end of stream, ArchiveCorrupt at a partial one."""
        offset = self._tell()
        avail = self._fill(BLOCK)
        if avail == 0:
            return None
        if avail < BLOCK:
            raise self._corrupt(f"unexpected end of stream in {what}", offset, after=True)
        pos = self._pos
        self._pos = pos + BLOCK
        return self._buf[pos : pos + BLOCK]

    def _drop_buffer(self) -> None:
        self._base += len(self._buf)
        self._buf = b""
        self._view = memoryview(self._buf)
        self._pos = 0

    def _skip(self, n: int, what: str, *, after: bool = False) -> None:
        avail = len(self._buf) - self._pos
        if n <= avail:
            self._pos += n
            return
        n -= avail
        self._drop_buffer()
        while n:
            chunk = self._read(min(n, _SKIP_CHUNK))
            if not chunk:
                what = f"unexpected end of stream in {what}"
                raise self._corrupt(what, self._tell(), after=after)
            self._base += len(chunk)
            n -= len(chunk)

    # -- member data -------------------------------------------------------------------------

    def _data_eof(self) -> ArchiveCorrupt:
        what = f"unexpected end of stream in data of {_show(self._member_name)}"
        return self._corrupt(what, self._tell())

    def read_data(self, n: int) -> bytes:
        """Read up to ``n`` bytes of the current member's remaining data.

        Args:
            n: maximum number of bytes to return.

        Returns:
            Between 1 and ``n`` bytes, or b"" once the member's data is exhausted.

        Raises:
            ArchiveCorrupt: the stream ends inside the data.
        """
        n = min(n, self._remaining)
        if n <= 0:
            return b""
        avail = len(self._buf) - self._pos
        if not avail:
            if n >= _READ_CHUNK:
                # Large read: straight from the stream, no detour through the buffer.
                data = self._read(n)
                if not data:
                    raise self._data_eof()
                self._base += len(data)
                self._remaining -= len(data)
                return data
            avail = self._fill(1)
            if not avail:
                raise self._data_eof()
        take = min(n, avail)
        pos = self._pos
        self._pos = pos + take
        self._remaining -= take
        return self._buf[pos : pos + take]

    def readinto_data(self, buf: memoryview) -> int:
        """Read up to ``len(buf)`` bytes of the current member's remaining data into ``buf``.

        Args:
            buf: writable byte buffer; large reads go straight from the stream into it.

        Returns:
            Number of bytes stored, 0 once the member's data is exhausted.

        Raises:
            ArchiveCorrupt: the stream ends inside the data.
        """
        n = min(len(buf), self._remaining)
        if n <= 0:
            return 0
        avail = len(self._buf) - self._pos
        if not avail:
            if n >= _READ_CHUNK:
                got = self._read_direct(buf, n)
                self._base += got
                self._remaining -= got
                return got
            avail = self._fill(1)
            if not avail:
                raise self._data_eof()
        take = min(n, avail)
        pos = self._pos
        buf[:take] = self._view[pos : pos + take]
        self._pos = pos + take
        self._remaining -= take
        return take

    def _read_direct(self, buf: memoryview, n: int) -> int:
        if self._readinto is not None:
            got = self._readinto(buf[:n])
        else:
            data = self._read(n)
            got = len(data)
            buf[:got] = data
        if not got:
            raise self._data_eof()
        return got

    def skip_data(self) -> None:
        """Skip the rest of the current member's data and its padding.

        Raises:
            ArchiveCorrupt: the stream ends inside the data or padding.
        """
        if self._remaining or self._padding:
            what = f"data of {_show(self._member_name)}"
            self._skip(self._remaining, what)
            self._remaining = 0
            self._skip(self._padding, f"padding after {what}")
            self._padding = 0

    # -- headers -----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Member]:
        """Yield the archive's members in order, skipping unread data between them.

        Raises:
            ArchiveCorrupt: bad checksum, malformed field, or the stream ends early.
            ArchiveError: a member kind this reader cannot restore faithfully.
        """
        while True:
            member = self._next_member()
            if member is None:
                return
            yield member

    def _next_member(self) -> Member | None:
        if self._done:
            return None
        self.skip_data()
        local: dict[bytes, bytes] = {}
        long_name: bytes | None = None
        long_link: bytes | None = None
        start: int | None = None
        # a malformed pax record is reported once the header it belongs to names the member
        bad_records: tuple[str, int] | None = None
        while True:
            offset = self._tell()
            block = self._block_or_eof("header")
            if block is None:
                what = "missing end-of-archive marker (stream ends)"
                raise self._corrupt(what, offset, after=True)
            if block == _ZERO_BLOCK:
                if start is not None:
                    what = "end-of-archive marker after an extended header"
                    raise self._corrupt(what, offset, after=True)
                following = self._block_or_eof("end-of-archive marker")
                if following is not None and following != _ZERO_BLOCK:
                    raise self._corrupt("lone zero block followed by data", offset, after=True)
                self._done = True
                return None
            fields = c_decode_header(block) if c_decode_header is not None else None
            if fields is None:
                self._verify_checksum(block, offset)
            typeflag = block[156:157]
            if typeflag not in (_PAX_LOCAL, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK):
                break
            if start is None and typeflag != _PAX_GLOBAL:
                start = offset
            if fields is None:
                size = self._number(block[124:136], "size", offset, None)
            else:
                size = fields[6]
            if not 0 <= size <= _MAX_META:
                what = f"extended header size {size} out of range (0 to {_MAX_META})"
                raise self._corrupt(what, offset, after=True)
            data = self._take(size, "extended header")
            self._skip(-size % BLOCK, "extended header padding", after=True)
            if typeflag == _GNU_LONGNAME:
                long_name = _cstr(data)
            elif typeflag == _GNU_LONGLINK:
                long_link = _cstr(data)
            else:
                try:
                    records = _parse_pax_records(data)
                except ValueError as e:
                    if typeflag == _PAX_GLOBAL:  # belongs to no one member
                        raise self._corrupt(
                            f"{e} of pax global header", offset, after=True
                        ) from None
                    bad_records = bad_records or (f"{e} of pax header", offset)
                    continue
                if typeflag == _PAX_GLOBAL:
                    # kept for every later member: only the keys read, or a global header
                    # of a million unknown keys would be copied once per member
                    self._global.update(
                        (k, v)
                        for k, v in records.items()
                        if k in _PAX_READ_KEYS or k.startswith(b"GNU.sparse.")
                    )
                else:
                    local.update(records)
        return self._decode_member(
            block,
            offset,
            offset if start is None else start,
            local,
            long_name,
            long_link,
            fields,
            bad_records,
        )

    def _verify_checksum(self, block: bytes, offset: int) -> None:
        field = block[148:156]
        digits = field[:6]
        try:
            if field[6:] == b"\0 " and digits.isdigit():
                recorded = int(digits, 8)  # the form every POSIX writer uses, parsed quickly
            else:
                recorded = _parse_number(field)
        except ValueError:
            raise self._corrupt("invalid header checksum field", offset, after=True) from None
        unsigned = _block_sum(block) - sum(field) + _CHKSUM_SPACES_SUM
        if recorded == unsigned:
            return
        # Some old tars summed signed chars; GNU tar accepts either, and so do we.
        high = block.translate(_HIGH_BIT_TABLE).count(1) - field.translate(_HIGH_BIT_TABLE).count(1)
        if recorded != unsigned - 256 * high:
            raise self._corrupt("bad header checksum (not a tar header)", offset, after=True)

    def _number(self, field: bytes, what: str, offset: int, entry: bytes | None) -> int:
        try:
            if field[-1] == 0:
                # digits then one NUL, as POSIX writers end numbers: the quick path
                digits = field[:-1]
                if digits.isdigit():
                    return int(digits, 8)
            return _parse_number(field)
        except ValueError:
            what = f"invalid {what} field {field!r} in header"
            raise self._corrupt(what, offset, entry, after=True) from None

    def _decode_member(
        self,
        block: bytes,
        offset: int,
        start: int,
        local: dict[bytes, bytes],
        long_name: bytes | None,
        long_link: bytes | None,
        fields: tuple[Any, ...] | None = None,
        bad_records: tuple[str, int] | None = None,
    ) -> Member:
        records = {**self._global, **local} if self._global else local
        if fields is not None:  # decoded in C (the common case; see c_decode_header)
            typeflag, name, linkname, mode, uid, gid, size, mtime, uname, gname = fields[:10]
            devmajor, devminor = fields[10:]
            mtime_ns = mtime * _NS
            if long_name is not None:
                name = long_name
            if long_link is not None:
                linkname = long_link
            entry = records.get(b"path") or name  # the member's name, for errors
            if bad_records is not None:
                raise self._corrupt(*bad_records, entry)
        else:
            typeflag = block[156:157]
            name = _cstr(block[0:100])
            if block[257:265] == _POSIX_MAGIC:
                # Only POSIX ustar has a prefix field; GNU headers use those bytes otherwise.
                prefix = _cstr(block[345:500])
                if prefix:
                    name = prefix + b"/" + name
            if long_name is not None:
                name = long_name
            entry = records.get(b"path") or name
            if bad_records is not None:
                raise self._corrupt(*bad_records, entry)
            linkname = _cstr(block[157:257]) if long_link is None else long_link
            mode = self._number(block[100:108], "mode", offset, entry) & 0o7777
            uid = self._number(block[108:116], "uid", offset, entry)
            gid = self._number(block[116:124], "gid", offset, entry)
            size = self._number(block[124:136], "size", offset, entry)
            mtime_ns = self._number(block[136:148], "mtime", offset, entry) * _NS
            uname = _cstr(block[265:297]).decode("utf-8", "surrogateescape")
            gname = _cstr(block[297:329]).decode("utf-8", "surrogateescape")
            devmajor = devminor = 0
            if typeflag in (CHRTYPE, BLKTYPE):
                devmajor = self._number(block[329:337], "devmajor", offset, entry)
                devminor = self._number(block[337:345], "devminor", offset, entry)

        for key, value in records.items():
            if not value:
                continue  # an empty value deletes the key: the header field stands
            try:
                if key in _PAX_TEXT_KEYS and b"\0" in value:
                    # no header field can hold one: a name would be cut short at it
                    raise ValueError(f"NUL byte in pax {key.decode()} value {_clip(value)}")
                if key == b"path":
                    name = value
                elif key == b"linkpath":
                    linkname = value
                elif key == b"size":
                    size = _parse_decimal(value, key)
                elif key == b"mtime":
                    mtime_ns = _parse_pax_time(value)
                elif key == b"uid":
                    uid = _parse_decimal(value, key)
                elif key == b"gid":
                    gid = _parse_decimal(value, key)
                elif key == b"uname":
                    uname = value.decode("utf-8", "surrogateescape")
                elif key == b"gname":
                    gname = value.decode("utf-8", "surrogateescape")
                elif key.startswith(b"GNU.sparse."):
                    raise ArchiveError(
                        self._name,
                        f"unsupported tar member type (GNU pax sparse file) for {_show(entry)}",
                    )
                elif key in _PAX_MULTIVOLUME_KEYS:
                    raise ArchiveError(
                        self._name,
                        f"unsupported tar member type (GNU multi-volume) for {_show(entry)}",
                    )
            except ValueError as e:
                raise self._corrupt(f"{e} in pax header", start, entry) from None
        if not (
            0 <= size <= _MAX_SIZE
            and 0 <= uid <= _MAX_ID
            and 0 <= gid <= _MAX_ID
            and _MIN_MTIME_NS <= mtime_ns <= _MAX_MTIME_NS
            and 0 <= devmajor <= _MAX_DEV
            and 0 <= devminor <= _MAX_DEV
        ):
            what = _out_of_range(size, uid, gid, mtime_ns, devmajor, devminor)
            raise self._corrupt(what, start, entry)

        if typeflag == _AREGTYPE and name.endswith(b"/"):
            typeflag = DIRTYPE  # pre-POSIX tars mark directories only by the trailing slash
        elif typeflag in (_AREGTYPE, _CONTTYPE):
            typeflag = REGTYPE
        if typeflag not in _MEMBER_TYPES:
            kind = _UNSUPPORTED_TYPES.get(typeflag, "unknown")
            raise ArchiveError(
                self._name, f"unsupported tar member type {typeflag!r} ({kind}) for {_show(name)}"
            )
        if typeflag == DIRTYPE:
            # A directory's size field never announces data blocks (GNU tar skips none).
            size = 0
            name = name.rstrip(b"/") or name
        if not name:
            raise self._corrupt("member with an empty name", start, after=True)

        self._member_name = name
        self._remaining = size
        self._padding = -size % BLOCK
        return Member(
            name=name,
            type=typeflag,
            size=size,
            mode=mode,
            mtime_ns=mtime_ns,
            uid=uid,
            gid=gid,
            uname=uname,
            gname=gname,
            linkname=linkname,
            devmajor=devmajor,
            devminor=devminor,
            offset=start,
            data_offset=offset + BLOCK,
        )
