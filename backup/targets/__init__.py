"""Targets: where archives go. One contract (:class:`Target`), one implementation per URL
scheme, chosen by :func:`open_target`."""

from __future__ import annotations

import importlib
from urllib.parse import urlparse

from ..errors import UnknownTargetScheme
from .base import (
    ObjectInfo,
    ObjectLock,
    ObjectWriter,
    Readiness,
    RetrievalStatus,
    Target,
    WriteOptions,
)
from .file import FileTarget

__all__ = [
    "FileTarget",
    "ObjectInfo",
    "ObjectLock",
    "ObjectWriter",
    "Readiness",
    "RetrievalStatus",
    "Target",
    "WriteOptions",
    "check_target_url",
    "open_target",
]

_SCHEMES: dict[str, type[Target]] = {"file": FileTarget}
#: schemes whose module is imported on first use, into _SCHEMES (boto3 takes ~0.3 s to import)
_LAZY_SCHEMES = {
    "s3": ("backup.targets.s3", "S3Target"),
    "glacier": ("backup.targets.glacier", "GlacierTarget"),
}


def check_target_url(url: str) -> None:
    """Raise a clear error if ``url`` names no target this version can open."""
    open_target(url)


def open_target(url: str) -> Target:
    """Open the target a URL names.

    Args:
        url: e.g. ``file:///srv/vault``.

    Returns:
        The target.

    Raises:
        UnknownTargetScheme: for a scheme with no implementation.
        TargetError: for a malformed URL of a known scheme.
    """
    scheme = urlparse(url).scheme
    if scheme in _LAZY_SCHEMES and scheme not in _SCHEMES:
        module, name = _LAZY_SCHEMES[scheme]
        _SCHEMES[scheme] = getattr(importlib.import_module(module), name)
    cls = _SCHEMES.get(scheme)
    if cls is None:
        known = sorted({*_SCHEMES, *_LAZY_SCHEMES})
        raise UnknownTargetScheme(url, ", ".join(f"{s}://" for s in known))
    return cls(url)  # type: ignore[call-arg]
