"""What the two snapshot providers share as S3 clients: one paged-listing loop (counted, for
the benchmark), one way to turn a listing's ``Contents`` into object states, and one message
for a refused request.

Invariant: every list request goes through :meth:`S3Listing._pages`, so ``list_requests``
counts them all; a refused request becomes a :class:`SnapshotError` naming what was being
done and the service's code, never a botocore exception.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from botocore.exceptions import ClientError

from ..errors import SnapshotError
from ..targets.awserrors import error_code
from .base import ObjectState

__all__ = ["S3Listing"]


class S3Listing:
    """Mixed into a provider that has ``bucket`` and ``client``."""

    bucket: str
    client: Any
    #: list requests sent so far (for the benchmark)
    list_requests: int = 0

    def _fail(self, e: ClientError, doing: str) -> SnapshotError:
        return SnapshotError(self.bucket, f"{doing} failed: {error_code(e, or_status=True)}")

    def _pages(self, call: str, doing: str, **kw: Any) -> Iterator[dict[str, Any]]:
        """Every page of a list call (``list_objects_v2``, ``list_object_versions``),
        following its continuation token or key and version markers.

        Raises:
            SnapshotError: ``{doing} failed: CODE``.
        """
        while True:
            try:
                page: dict[str, Any] = getattr(self.client, call)(**kw)
            except ClientError as e:
                raise self._fail(e, doing) from None
            self.list_requests += 1
            yield page
            if not page.get("IsTruncated"):
                return
            if "NextContinuationToken" in page:
                kw["ContinuationToken"] = page["NextContinuationToken"]
                continue
            kw["KeyMarker"] = page["NextKeyMarker"]
            if page.get("NextVersionIdMarker"):
                kw["VersionIdMarker"] = page["NextVersionIdMarker"]
            else:
                kw.pop("VersionIdMarker", None)

    def _objects(self, hidden: str | None = None, **kw: Any) -> Iterator[ObjectState]:
        """The objects a ``list_objects_v2`` listing shows, but those under ``hidden``."""
        for page in self._pages("list_objects_v2", "listing objects", **kw):
            for o in page.get("Contents", []):
                if hidden is None or not o["Key"].startswith(hidden):
                    yield ObjectState(
                        o["Key"],
                        int(o.get("Size", 0)),
                        o.get("ETag", "").strip('"'),
                        o["LastModified"],
                    )
