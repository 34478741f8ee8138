"""Storage prices of the S3 classes and the Glacier vault API: USD per GB-month, minimum
storage durations, per-object overhead, request prices, and early-deletion fees.

Prices are AWS us-east-1 list prices (https://aws.amazon.com/s3/pricing/, "Storage pricing"
and "Requests & data retrievals"; the minimum durations and the per-object overhead of the
Glacier classes are in the same page's footnotes), overridable in the settings for other
regions and S3-compatible stores (Tigris, MinIO: no minimums, see docs/cold-storage.md).

Arithmetic conventions (AWS bills GB-months from byte-hours; these use the same units in
days):

- GB is 2^30 bytes; a month is 30 days (daily price = monthly price / 30).
- GLACIER, DEEP_ARCHIVE and the vault API bill each object 40 KB more: 8 KB at the
  STANDARD price (its name and metadata) and 32 KB at the class's price (its index).
- STANDARD_IA, ONEZONE_IA and GLACIER_IR bill an object smaller than 128 KB as 128 KB.
- An object deleted before its class's minimum storage duration is billed for the rest of
  it: the early-deletion fee is its size billed at the class's price times the days left.

Pure computations: nothing here talks to a target or writes anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

from .settings import Settings

__all__ = [
    "DEFAULT_MIN_STORAGE_DAYS",
    "DEFAULT_PUT_PRICES",
    "DEFAULT_STORAGE_PRICES",
    "Prices",
    "billable_bytes",
    "class_of",
    "early_delete_fee",
    "free_to_delete_at",
    "monthly_storage_usd",
]

GiB = 1024**3
KiB = 1024
MONTH_DAYS = 30

#: USD per GB-month, AWS us-east-1 list prices ("VAULT" is the legacy Glacier vault API;
#: INTELLIGENT_TIERING at its frequent-access tier)
DEFAULT_STORAGE_PRICES: dict[str, float] = {
    "STANDARD": 0.023,
    "INTELLIGENT_TIERING": 0.023,
    "STANDARD_IA": 0.0125,
    "ONEZONE_IA": 0.01,
    "GLACIER_IR": 0.004,
    "GLACIER": 0.0036,
    "DEEP_ARCHIVE": 0.00099,
    "VAULT": 0.0036,
}
#: days an object is billed for at least
DEFAULT_MIN_STORAGE_DAYS: dict[str, int] = {
    "STANDARD_IA": 30,
    "ONEZONE_IA": 30,
    "GLACIER_IR": 90,
    "GLACIER": 90,
    "DEEP_ARCHIVE": 180,
    "VAULT": 90,
}
#: USD per 1,000 PUT, COPY, POST or LIST requests
DEFAULT_PUT_PRICES: dict[str, float] = {
    "STANDARD": 0.005,
    "INTELLIGENT_TIERING": 0.005,
    "STANDARD_IA": 0.01,
    "ONEZONE_IA": 0.01,
    "GLACIER_IR": 0.02,
    "GLACIER": 0.03,
    "DEEP_ARCHIVE": 0.05,
    "VAULT": 0.05,
}
#: classes whose objects carry 8 KB (STANDARD) + 32 KB (class) of billed overhead
OVERHEAD_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE", "VAULT"})
#: classes that bill a smaller object as 128 KB
MIN_OBJECT_CLASSES = frozenset({"STANDARD_IA", "ONEZONE_IA", "GLACIER_IR"})
MIN_OBJECT_BYTES = 128 * KiB


@dataclass(frozen=True, slots=True)
class Prices:
    """The price table in use: the defaults with the settings' overrides on top."""

    storage: Mapping[str, float]
    min_days: Mapping[str, int]
    put: Mapping[str, float]
    retrieval: Mapping[str, tuple[float, float]]
    transfer_out_per_gb: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Prices:
        s = settings or Settings()
        return cls(
            {**DEFAULT_STORAGE_PRICES, **s.storage_prices},
            {**DEFAULT_MIN_STORAGE_DAYS, **s.min_storage_days},
            {**DEFAULT_PUT_PRICES, **s.put_prices},
            dict(s.retrieval_prices),
            s.transfer_out_per_gb,
        )

    def per_gb_month(self, storage_class: str) -> float:
        return float(self.storage.get(storage_class, 0.0))

    def minimum(self, storage_class: str) -> timedelta:
        return timedelta(days=int(self.min_days.get(storage_class, 0)))


def class_of(target_url: str) -> str | None:
    """Returns: the storage class a target writes archives in (``VAULT`` for ``glacier://``),
    or None for a target nobody bills (a directory)."""
    u = urlsplit(target_url)
    if u.scheme == "glacier":
        return "VAULT"
    if u.scheme == "s3":
        return (parse_qs(u.query).get("storage_class") or ["STANDARD"])[0].upper()
    return None


def billable_bytes(storage_class: str, size: int) -> tuple[float, float]:
    """Returns: (bytes billed at the class's price, bytes billed at STANDARD's) for one
    object of ``size`` bytes."""
    if storage_class in OVERHEAD_CLASSES:
        return float(size + 32 * KiB), float(8 * KiB)
    if storage_class in MIN_OBJECT_CLASSES:
        return float(max(size, MIN_OBJECT_BYTES)), 0.0
    return float(size), 0.0


def monthly_storage_usd(storage_class: str, sizes: Sequence[int], prices: Prices) -> float:
    """Returns: USD a month to keep objects of these sizes in a class (with overhead)."""
    total = 0.0
    for n in sizes:
        at_class, at_standard = billable_bytes(storage_class, n)
        total += at_class / GiB * prices.per_gb_month(storage_class)
        total += at_standard / GiB * prices.per_gb_month("STANDARD")
    return total


def free_to_delete_at(storage_class: str, created: datetime, prices: Prices) -> datetime:
    """Returns: when an object stored at ``created`` has been billed its minimum."""
    return _utc(created) + prices.minimum(storage_class)


def early_delete_fee(
    storage_class: str, size: int, created: datetime, now: datetime, prices: Prices
) -> float:
    """Returns: USD billed for deleting an object now instead of at its class's minimum
    storage duration (0 once that has passed, or for a class without one)."""
    left = free_to_delete_at(storage_class, created, prices) - _utc(now)
    if left <= timedelta(0):
        return 0.0
    # the 8 KB billed at STANDARD has no minimum: only the class's part is prorated
    at_class, _ = billable_bytes(storage_class, size)
    days = left.total_seconds() / 86400
    return at_class / GiB * prices.per_gb_month(storage_class) / MONTH_DAYS * days


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)
