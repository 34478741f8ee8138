"""An archive's file index, packed: its manifest, compressed and not encrypted.

A full backup indexes every path of the tree: 70,882 rows for the benchmark's tree, whose
insert took 0.5-0.6 s after the archive's last byte, a tenth of the whole backup. Every one
of those rows is already in the archive's manifest, which the backup has just encoded (the
compressed JSON that is then encrypted into the vault). So the backup stores that same blob
in the inventory, one insert of a few MB, and the inventory unpacks it into ``file_index``
the first time anything reads that archive's index (``Inventory.records``,
``Inventory.replay_tree``), in the transaction that deletes the packed row: every row is in
exactly one of the two places at any time.

The manifest's format is versioned and documented (docs/format.md) because archives must
stay readable for as long as they are kept; that makes it a safe format for the inventory's
own truth too. It holds no more than the file index does (paths, sizes, times, hashes).
"""

from __future__ import annotations

from typing import Any

from ..errors import ArchiveCorrupt, FileIndexCorrupt

__all__ = ["CHUNK_FORMAT", "FORMAT", "rows_from_chunk", "rows_from_manifest"]

#: stored beside each packed index; a reader refuses a format it does not know
FORMAT = "manifest-json-zstd"
#: a chunk of a packed index (``ManifestWriter.stream``): one zstd-compressed JSON object,
#: the manifest's fields without ``entries`` (seq 0), or ``{"entries": [...]}``
CHUNK_FORMAT = "manifest-chunk-json-zstd"


def rows_from_manifest(archive_id: str, blob: bytes, fmt: str) -> list[tuple[Any, ...]]:
    """The file index rows a packed index stands for.

    Args:
        archive_id: the archive the rows belong to.
        blob: the archive's manifest as ``encode_manifest`` returned it.
        fmt: the format recorded with it.

    Returns:
        Tuples in ``FILE_INDEX_COLUMNS`` order: one per entry, then one per deleted path.

    Raises:
        FileIndexCorrupt: an unknown format, or a manifest that cannot be read.
    """
    # here, not at the top: the inventory is imported by commands that never pack or unpack
    from ..archive.manifest import decode_manifest

    if fmt != FORMAT:
        raise FileIndexCorrupt(
            archive_id, f"unknown format {fmt!r} (this version reads {FORMAT!r})"
        )
    try:
        m = decode_manifest(blob, archive_id)
    except ArchiveCorrupt as err:
        raise FileIndexCorrupt(archive_id, err.args[-1]) from None
    return _rows(archive_id, m)


def rows_from_chunk(archive_id: str, blob: bytes, fmt: str) -> list[tuple[Any, ...]]:
    """The file index rows one chunk of a packed index stands for (its entries, or the
    deleted paths of the manifest's fields).

    Raises:
        FileIndexCorrupt: an unknown format, or a chunk that cannot be read.
    """
    from ..archive.manifest import decode_index_chunk

    if fmt != CHUNK_FORMAT:
        raise FileIndexCorrupt(
            archive_id, f"unknown format {fmt!r} (this version reads {CHUNK_FORMAT!r})"
        )
    try:
        m = decode_index_chunk(blob, archive_id)
    except ArchiveCorrupt as err:
        raise FileIndexCorrupt(archive_id, err.args[-1]) from None
    # seq 0 has the deleted paths and no entries, the others entries alone
    return _rows(archive_id, {"entries": m.get("entries", ()), "deleted": m.get("deleted", ())})


def _rows(archive_id: str, m: dict[str, Any]) -> list[tuple[Any, ...]]:
    from ..archive.manifest import path_from_json

    rows: list[tuple[Any, ...]] = []
    try:
        for e in m["entries"]:
            link = e.get("link")
            rows.append(
                (
                    archive_id,
                    path_from_json(e["path"]),
                    e["type"],
                    e.get("file_size", e["size"]),  # a hard link's index row has its file's size
                    e["mode"],
                    e["mtime_ns"],
                    e["ctime_ns"],
                    e["ino"],
                    e["uid"],
                    e["gid"],
                    e.get("sha256"),
                    None if link is None else path_from_json(link),
                    e["offset"],
                )
            )
        for p in m["deleted"]:
            rows.append((archive_id, path_from_json(p), "deleted") + (0,) * 7 + (None, None, 0))
    except KeyError as err:
        raise FileIndexCorrupt(archive_id, f"an entry lacks {err}") from None
    except (TypeError, AttributeError) as err:
        raise FileIndexCorrupt(archive_id, f"not a manifest's layout: {err}") from None
    return rows
