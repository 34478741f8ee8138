"""References to vault archives, without the Glacier client: ``KEY#ARCHIVE_ID#TREE_HASH``.

A vault names each archive itself (the archive id it returns on upload), so a reference
carries the key it was written under, that id, and the archive's tree hash (to verify what a
retrieval returns). Light on purpose (no botocore): planning and job listings read
references without opening a vault.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..errors import TargetError

__all__ = ["VaultRefs", "format_ref", "parse_ref"]

#: what a vault's archive ids are made of (keys have a "/" and a ".")
_ARCHIVE_ID = re.compile(r"[A-Za-z0-9_-]+")


def format_ref(key: str, archive_id: str, tree_hash: str) -> str:
    """Returns: the reference of an archive: ``KEY#ARCHIVE_ID#TREE_HASH``."""
    return f"{key}#{archive_id}#{tree_hash}"


def parse_ref(url: str, ref: str) -> tuple[str, str, str | None]:
    """Split a reference.

    Args:
        url: the target's URL (for errors).
        ref: ``KEY#ARCHIVE_ID#TREE_HASH``, ``KEY#ARCHIVE_ID``, or a bare archive id.

    Returns:
        (key or "", archive id, tree hash or None).

    Raises:
        TargetError: for an empty id, or an object key with no archive id (what inventories
            recorded for vault archives before they kept the vault's ids).
    """
    parts = ref.split("#")
    if len(parts) == 1 and ref and not _ARCHIVE_ID.fullmatch(ref):
        raise TargetError(
            url,
            f"{ref!r} is an object key, not a vault archive id: its archive id was never "
            f"recorded (run 'backup inventory sync {url}' to record it)",
        )
    if len(parts) == 1:
        key, aid, th = "", parts[0], None
    elif len(parts) == 2:
        key, aid, th = parts[0], parts[1], None
    else:
        key, aid, th = "#".join(parts[:-2]), parts[-2], parts[-1] or None
    if not aid:
        raise TargetError(url, f"{ref!r} is not a vault archive reference (KEY#ARCHIVE_ID)")
    return key, aid, th


class VaultRefs(set[str]):
    """Archive ids of a vault that events name, as references (a bare archive id is one).

    A job-completion message names the archive, not the key nor the tree hash the
    inventory's reference (``KEY#ARCHIVE_ID#TREE_HASH``) also carries: ``ref in refs`` is
    therefore true for any reference to a named archive, whatever its form. Only ``in``
    looks at archive ids; other set operations compare the ids as strings.
    """

    def __init__(self, url: str, archive_ids: Iterable[str] = ()) -> None:
        super().__init__(archive_ids)
        self.url = url

    def __contains__(self, ref: object) -> bool:
        if not isinstance(ref, str):
            return False
        if super().__contains__(ref):
            return True
        try:
            return super().__contains__(parse_ref(self.url, ref)[1])
        except TargetError:
            return False
