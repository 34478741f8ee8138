"""Targets: where archives go. One contract (:class:`Target`), one implementation per URL
scheme, chosen by :func:`open_target`."""

from __future__ import annotations

from urllib.parse import urlparse

from ..errors import UnknownTargetScheme
from .base import ObjectInfo, ObjectWriter, Readiness, RetrievalStatus, Target
from .file import FileTarget

__all__ = [
    "FileTarget",
    "ObjectInfo",
    "ObjectWriter",
    "Readiness",
    "RetrievalStatus",
    "Target",
    "check_target_url",
    "open_target",
]

_SCHEMES: dict[str, type[Target]] = {"file": FileTarget}


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
    cls = _SCHEMES.get(scheme)
    if cls is None:
        raise UnknownTargetScheme(url, ", ".join(f"{s}://" for s in sorted(_SCHEMES)))
    return cls(url)  # type: ignore[call-arg]
