"""Archives: scan a tree, pack it into ``tar -> zstd -> age``, describe it in a manifest,
and extract it back safely."""

from .extract import Extractor, normalize_member_name
from .manifest import FORMAT_VERSION, decode_manifest, encode_manifest
from .pack import PackResult, pack
from .scan import Entry, ScanResult, Unreadable, scan

__all__ = [
    "FORMAT_VERSION",
    "Entry",
    "Extractor",
    "PackResult",
    "ScanResult",
    "Unreadable",
    "decode_manifest",
    "encode_manifest",
    "normalize_member_name",
    "pack",
    "scan",
]
