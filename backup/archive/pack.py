"""Pack: turn scanned entries into one ``tar -> zstd -> age`` stream written to a target.

Invariants:

- Compression before encryption: ciphertext does not compress, and compressing first keeps
  the archive a standard ``.tar.zst`` inside a standard age file, so
  ``age -d | zstd -d | tar -x`` restores it without this project.
- One pass over the data: each file is read once, in 1 MiB pieces into one reused buffer;
  its SHA-256 (for the manifest) is computed from the same buffer while it streams, so
  memory stays bounded whatever the file sizes.
- A file that changes while it is read is still archived consistently with its tar header
  (truncated or zero-padded to the size the header promised) and flagged in the record;
  a file that cannot be opened is skipped and reported, never silently dropped.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import queue
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any, BinaryIO, Protocol

import zstandard

from ..crypto.age import AgeWriter, Recipient
from ..progress import Progress
from ..threads import start_thread
from . import tarformat as tf
from .scan import BLK, CHR, DIR, FIFO, FILE, HARDLINK, SYMLINK, Entry, Unreadable
from .tarformat import header

__all__ = ["PackResult", "Record", "pack"]

_BUF = 1 << 20

_c_entry_json: Callable[[Any], str | None] | None
try:  # Record.to_json's common case in C, when it was built
    from ._speedups import entry_json as _c_json  # type: ignore[import-not-found]
except ImportError:
    _c_entry_json = None
else:
    _c_entry_json = _c_json

_TYPES = {
    FILE: tf.REGTYPE,
    DIR: tf.DIRTYPE,
    SYMLINK: tf.SYMTYPE,
    FIFO: tf.FIFOTYPE,
    CHR: tf.CHRTYPE,
    BLK: tf.BLKTYPE,
}


class Record:
    """One packed entry, as the manifest and the file index record it.

    Reads like a dict (``r["path"]``, ``r.get("sha256")``, ``"link" in r``) but is a slotted
    object: a full backup holds one per path until its manifest is written, and a dict per
    path cost a third of the peak memory. Optional fields are None until set, and a field
    that is None reads as absent.
    """

    __slots__ = (  # noqa: RUF023  # this order is the order of fields in the manifest
        "path",
        "type",
        "size",
        "mode",
        "mtime_ns",
        "ctime_ns",
        "ino",
        "uid",
        "gid",
        "offset",
        "data_offset",
        "sha256",
        "link",
        "file_size",
        "devmajor",
        "devminor",
    )

    path: bytes
    type: str
    size: int
    mode: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    uid: int
    gid: int
    offset: int
    data_offset: int | None
    sha256: str | None
    link: bytes | None
    file_size: int | None
    devmajor: int | None
    devminor: int | None

    def __init__(
        self,
        path: bytes,
        type: str,
        mode: int,
        mtime_ns: int,
        ctime_ns: int,
        ino: int,
        uid: int,
        gid: int,
        offset: int,
    ) -> None:
        self.path = path
        self.type = type
        self.size = 0
        self.mode = mode
        self.mtime_ns = mtime_ns
        self.ctime_ns = ctime_ns
        self.ino = ino
        self.uid = uid
        self.gid = gid
        self.offset = offset
        # set, not left unset: reading an unset slot raises, and that costs more per path
        # than everything else the manifest's encoder does with it
        self.data_offset = self.sha256 = self.link = None
        self.file_size = self.devmajor = self.devminor = None

    def __getitem__(self, key: str) -> Any:
        v = getattr(self, key) if key in self.__slots__ else None
        if v is None:
            raise KeyError(key)
        return v

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and getattr(self, key, None) is not None

    def get(self, key: str, default: Any = None) -> Any:
        v = getattr(self, key, None)
        return default if v is None else v

    def update(self, **fields: Any) -> None:
        for k, v in fields.items():
            setattr(self, k, v)

    def as_dict(self) -> dict[str, Any]:
        """Returns: the fields that are set."""
        return {k: v for k in self.__slots__ if (v := getattr(self, k)) is not None}

    def to_json(self) -> str:
        """The manifest's JSON object for this entry: the fields that are set, in slot
        order, paths decoded with ``surrogateescape`` (as ``json.dumps`` of the dict, with
        ``ensure_ascii`` and no spaces, would write it, at a fraction of its cost)."""
        if _c_entry_json is not None:
            fast = _c_entry_json(self)
            if fast is not None:
                return fast
        return self._to_json()

    def _to_json(self) -> str:
        """to_json in Python: the definition (the C version in _speedups.c does the common
        case and is tested against this)."""
        head = (
            f'{{"path":{_json_str(os.fsdecode(self.path))},"type":{_json_str(self.type)},'
            f'"size":{self.size},"mode":{self.mode},"mtime_ns":{self.mtime_ns},'
            f'"ctime_ns":{self.ctime_ns},"ino":{self.ino},"uid":{self.uid},"gid":{self.gid},'
            f'"offset":{self.offset}'
        )
        tail = []
        for k in _OPTIONAL:
            v = getattr(self, k)
            if v is not None:
                if k == "link":
                    tail.append(f',"link":{_json_str(os.fsdecode(v))}')
                elif k == "sha256":
                    tail.append(f',"sha256":{_json_str(v)}')
                else:
                    tail.append(f',"{k}":{int(v)}')
        return head + "".join(tail) + "}" if tail else head + "}"

    def __repr__(self) -> str:
        return f"Record({self.as_dict()!r})"


# fields after "offset", set only on some records; all ints but sha256 (hex) and link
_OPTIONAL = Record.__slots__[Record.__slots__.index("offset") + 1 :]


@dataclass(slots=True)
class PackResult:
    """What was packed.

    Attributes:
        entries: one record per entry packed (``path`` and ``link`` are bytes), unless
            the caller took each record as it was made (``on_record``): then empty.
        count: the entries packed.
        unreadable: files skipped because they could not be read.
        changed: paths that changed while they were read.
        size_in: file content bytes read.
        size_tar: tar stream bytes.
        size_stored: bytes written to the target.
        sha256: SHA-256 of the stored bytes.
    """

    entries: list[Record] = field(default_factory=list)
    count: int = 0
    unreadable: list[Unreadable] = field(default_factory=list)
    changed: list[bytes] = field(default_factory=list)
    size_in: int = 0
    size_tar: int = 0
    size_stored: int = 0
    sha256: str = ""


class Writable(Protocol):
    """Where a packed stream goes: a target's object writer, or any file (the packer writes
    only; committing is the caller's). A protocol, so the packer needs no storage layer."""

    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...


class _Sink:
    """Hashes and counts the stored bytes on their way to the target."""

    __slots__ = ("h", "n", "out")

    def __init__(self, out: Writable) -> None:
        self.out = out
        self.h = hashlib.sha256()
        self.n = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.h.update(data)
        self.n += len(data)
        return self.out.write(data)


class _Pipe:
    """Hands compressed bytes to a thread that encrypts, hashes and stores them.

    The packing thread reads, hashes and compresses; this thread encrypts and writes. Both
    spend most of their time in code that releases the GIL (file I/O, hashlib, zstd,
    ChaCha20-Poly1305), so on two cores the stages overlap like a shell pipeline. The queue
    is bounded, so memory stays bounded however fast the source is.
    """

    def __init__(self, age: AgeWriter, depth: int = 8) -> None:
        self.age = age
        self.q: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.t = start_thread(self._run, "pack-writer")

    def _run(self) -> None:
        try:
            while (data := self.q.get()) is not None:
                self.age.write(data)
            self.age.close()
        except BaseException as e:
            self.error = e
            # drain so the producer never blocks on a dead consumer
            while self.q.get() is not None:
                pass

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.error is not None:
            raise self.error
        self.q.put(bytes(data) if not isinstance(data, bytes) else data)
        return len(data)

    def close(self) -> None:
        """Flush, finish the age stream, and re-raise any error of the writer thread."""
        self.q.put(None)
        self.t.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        if self.t.is_alive():
            self.q.put(None)
            self.t.join()


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


def _readinto(stream: BinaryIO, buf: memoryview) -> int:
    data = stream.read(len(buf))
    buf[: len(data)] = data
    return len(data)


#: how far the packer asks the kernel to read ahead of itself: files and bytes (a file's
#: first _HINT_BYTES only: a large file is read in order, where the kernel reads ahead anyway)
_AHEAD_FILES = 256
_AHEAD_BYTES = 32 << 20
_HINT_BYTES = 1 << 20
#: one file with content in this many is not hinted but probed: its first read says whether
#: the cache held it unasked
_PROBE_EVERY = 64
_WILLNEED = getattr(os, "POSIX_FADV_WILLNEED", None)
_NOWAIT = getattr(os, "RWF_NOWAIT", None)


class Hints:
    """Whether the packer asks the kernel for files ahead (:func:`read_ahead`), decided as it
    goes. A hint costs three system calls on the packer's thread, worth it only when the
    files are not in the page cache: so a probe file, read first with ``RWF_NOWAIT``, turns
    the hints on when the cache missed it and off when it held it. Where that flag is not
    supported, the hints stay on."""

    __slots__ = ("wanted",)

    def __init__(self) -> None:
        self.wanted = True  # a nightly full reads a cold cache

    def first_read(self, fd: int, buf: memoryview) -> int:
        """Read the start of a probe file into ``buf``; returns the bytes read."""
        if _NOWAIT is not None:
            try:
                n = os.preadv(fd, [buf], 0, _NOWAIT)
            except BlockingIOError:
                self.wanted = True
            except OSError:  # this filesystem cannot say: keep asking ahead
                self.wanted = True
            else:
                self.wanted = False
                return n
        return os.preadv(fd, [buf], 0)


def read_ahead(entries: Iterable[Entry], hints: Hints) -> Iterator[tuple[Entry, bool]]:
    """``entries`` as they are, each with whether it is a probe file (see :class:`Hints`).
    While ``hints.wanted``, every other file's content is first asked of the kernel
    (``posix_fadvise(WILLNEED)``, which starts the reads and returns) up to
    :data:`_AHEAD_FILES` files and :data:`_AHEAD_BYTES` ahead of the one being packed. Reading
    small files one after another from a cold cache waits for each read in turn; asked ahead,
    the disk has many in flight. A hint that fails is ignored: the packer's own open reports
    what is wrong. Where the call does not exist, nothing is asked or probed."""
    if _WILLNEED is None:
        for e in entries:
            yield e, False
        return
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    ahead: deque[tuple[Entry, int, bool]] = deque()
    held = 0
    files = 0
    for e in entries:
        hint = 0
        probe = False
        if e.kind == FILE and e.opener is None and e.size > 0:
            probe = files % _PROBE_EVERY == 0
            files += 1
            if hints.wanted and not probe:
                hint = min(e.size, _HINT_BYTES)
                try:
                    fd = os.open(e.abspath, flags)
                    try:
                        os.posix_fadvise(fd, 0, hint, _WILLNEED)
                    finally:
                        os.close(fd)
                except OSError:
                    hint = 0
        ahead.append((e, hint, probe))
        held += hint
        while len(ahead) > _AHEAD_FILES or held > _AHEAD_BYTES:
            first, n, was_probe = ahead.popleft()
            held -= n
            yield first, was_probe
    for e, _, was_probe in ahead:
        yield e, was_probe


def pack(
    entries: Iterable[Entry],
    out: Writable,
    recipients: Sequence[Recipient],
    *,
    level: int = 3,
    threads: int = -1,
    progress: Progress | None = None,
    on_record: Callable[[Record], None] | None = None,
) -> PackResult:
    """Write entries as one encrypted, compressed tar stream.

    Args:
        entries: what to pack, parents before children; may be a lazy walk (see
            :func:`~backup.archive.scan.scan_iter`), consumed as it is packed.
        out: the target's writer; not committed here.
        recipients: age recipients.
        level: zstd level.
        threads: zstd worker threads (-1: one per CPU).
        progress: told of every byte of file content packed.
        on_record: given each record as it is made, in order, instead of collecting them
            in ``PackResult.entries``: a backup streams them into its manifest and tree cache,
            so its memory does not grow with the number of paths.

    Returns:
        What was packed, with the stored object's size and SHA-256.
    """
    progress = progress or Progress()
    res = PackResult()
    sink = _Sink(out)
    pipe = _Pipe(AgeWriter(sink, recipients))
    try:
        _pack_into(entries, pipe, res, level, threads, progress, on_record)
    except BaseException:
        pipe.abort()
        raise
    pipe.close()
    res.size_stored = sink.n
    res.sha256 = sink.h.hexdigest()
    return res


def _pack_into(
    entries: Iterable[Entry],
    pipe: _Pipe,
    res: PackResult,
    level: int,
    threads: int,
    progress: Progress,
    on_record: Callable[[Record], None] | None,
) -> None:
    add = on_record if on_record is not None else res.entries.append
    # 4 MiB jobs: zstd's default (four windows) holds ~50 MiB more in flight on two workers
    # for the same ratio (measured on the benchmark tree: 724.38 MB against 724.44 MB)
    params = zstandard.ZstdCompressionParameters.from_level(
        level, threads=threads, job_size=4 << 20
    )
    cctx = zstandard.ZstdCompressor(compression_params=params)
    z = cctx.stream_writer(pipe, closefd=False, write_size=_BUF)  # type: ignore[arg-type]
    buf = bytearray(_BUF)
    mv = memoryview(buf)
    users: dict[int, str] = {}
    groups: dict[int, str] = {}
    links: dict[tuple[int, int], bytes] = {}
    offset = 0
    # small writes (headers, small files) are batched: each write into zstd has a fixed cost
    pending = bytearray()

    def emit(data: bytes | bytearray | memoryview) -> None:
        nonlocal pending
        pending += data
        if len(pending) >= _BUF:
            z.write(pending)
            pending = bytearray()

    hints = Hints()
    for e, probe in read_ahead(entries, hints):
        uname = users.get(e.uid)
        if uname is None:
            uname = users[e.uid] = _user(e.uid)
        gname = groups.get(e.gid)
        if gname is None:
            gname = groups[e.gid] = _group(e.gid)
        perm = e.mode & 0o7777
        rec = Record(e.path, e.kind, perm, e.mtime_ns, e.ctime_ns, e.ino, e.uid, e.gid, offset)
        if e.kind == FILE:
            if e.nlink > 1:
                first = links.get((e.dev, e.ino))
                if first is not None:
                    hdr = header(
                        e.path, tf.LNKTYPE, 0, perm, e.mtime_ns, e.uid, e.gid, uname, gname,
                        first, 0, 0,
                    )  # fmt: skip
                    emit(hdr)
                    offset += len(hdr)
                    rec.type, rec.link, rec.file_size = HARDLINK, first, e.size
                    add(rec)
                    res.count += 1
                    continue
            stream: BinaryIO | None = None  # content from an opener (an object in a bucket)
            fd = -1
            try:
                if e.opener is not None:
                    stream = e.opener()
                else:
                    # O_NONBLOCK: a FIFO that replaced the file since the scan would
                    # otherwise block this open until some writer appears; regular files
                    # ignore the flag
                    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
                    fd = os.open(e.abspath, flags)
            except FileNotFoundError:
                continue  # deleted since the scan: not there to back up
            except OSError as err:
                res.unreadable.append(Unreadable(e.path, err.strerror or str(err)))
                continue
            try:
                if stream is None and not stat.S_ISREG(os.fstat(fd).st_mode):
                    res.changed.append(e.path)
                    continue
                size = e.size
                hdr = header(
                    e.path, tf.REGTYPE, size, perm, e.mtime_ns, e.uid, e.gid, uname, gname,
                    b"", 0, 0,
                )  # fmt: skip
                emit(hdr)
                offset += len(hdr)
                rec.data_offset = offset
                h = hashlib.sha256()
                remaining = size
                pos = 0
                while remaining:
                    piece_mv = mv[: min(remaining, _BUF)]
                    if stream is not None:
                        n = _readinto(stream, piece_mv)
                    elif probe and not pos:
                        n = hints.first_read(fd, piece_mv)
                    else:
                        n = os.preadv(fd, [piece_mv], pos)
                    if n <= 0:
                        break
                    pos += n
                    chunk = mv[:n]
                    h.update(chunk)
                    if n < 65536:
                        emit(chunk)
                    else:
                        if pending:
                            z.write(pending)
                            pending = bytearray()
                        z.write(chunk)
                    remaining -= n
                    progress.advance(n)
                # a file's growth shows in st2's size (or, had it shrunk back, in its times),
                # so only a stream, which has no fstat, needs a probe read
                grew = stream is not None and remaining == 0 and stream.read(1) != b""
                if remaining:
                    # shrank while read: the header promised `size` bytes, so pad with zeros
                    zeros = bytes(min(remaining, _BUF))
                    while remaining:
                        piece = zeros[: min(remaining, len(zeros))]
                        h.update(piece)
                        emit(piece)
                        remaining -= len(piece)
                st2 = os.fstat(fd) if stream is None else None
            finally:
                if stream is None:
                    os.close(fd)
                else:
                    stream.close()
            emit(tf.padding(size))
            offset += size + len(tf.padding(size))
            res.size_in += size
            if grew or (
                st2 is not None
                and (
                    st2.st_size != size
                    or st2.st_mtime_ns != e.mtime_ns
                    or st2.st_ctime_ns != e.ctime_ns
                )
            ):
                res.changed.append(e.path)
            if e.nlink > 1:
                links[(e.dev, e.ino)] = e.path
            # attributes, not the dict-like update: this runs once per file
            rec.size, rec.sha256 = size, h.hexdigest()
        else:
            link, major, minor = b"", 0, 0
            if e.kind == SYMLINK:
                link = e.link
                rec.link = link
            elif e.kind in (CHR, BLK):
                try:
                    rdev = os.lstat(e.abspath).st_rdev
                except OSError:
                    rdev = 0
                major, minor = os.major(rdev), os.minor(rdev)
                rec.devmajor, rec.devminor = major, minor
            hdr = header(
                e.path, _TYPES[e.kind], 0, perm, e.mtime_ns, e.uid, e.gid, uname, gname,
                link, major, minor,
            )  # fmt: skip
            emit(hdr)
            offset += len(hdr)
        add(rec)
        res.count += 1

    emit(tf.END_OF_ARCHIVE)
    offset += len(tf.END_OF_ARCHIVE)
    if pending:
        z.write(pending)
    z.close()  # type: ignore[no-untyped-call]  # flushes the frame; closefd=False leaves the pipe open
    res.size_tar = offset
