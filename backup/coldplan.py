"""Restore planning for cold storage: what a restore needs, how long it takes, what it costs,
and when to look again.

A restore of a point in time needs every archive of its chain (the full archive and each
incremental up to it). Before anything is requested, :func:`plan_restore` shows per object
its bytes, storage class (asked of the target, not assumed), the tier that will be used,
when it is expected to be ready, and the estimated retrieval cost from the price table in
the settings (:data:`backup.settings.DEFAULT_RETRIEVAL_PRICES`, overridable).

While retrievals run, :func:`next_check` says when to ask again: not before the earliest time
the class and tier can be ready, then at a pace that fits the window they are expected in,
backing off once they are late, so a Bulk restore from DEEP_ARCHIVE costs a few dozen status
requests over two days instead of thousands. :func:`poll_times` and
:func:`requests_per_hour` count them (the benchmark reports those counts).

Optionally, S3 tells of finished restores at once: :func:`read_restore_events` reads
``s3:ObjectRestore:Completed`` notifications from the SQS queue the settings name
(``BACKUP_RESTORE_EVENTS_QUEUE``), directly or wrapped by SNS. The same queue can carry a
Glacier vault's job-completion messages (jobs started with ``BACKUP_GLACIER_SNS_TOPIC``,
the topic subscribed by the queue), and :func:`refs_ready` maps both to a target's refs.

Expected times are AWS's documented typical times: GLACIER (Flexible Retrieval) Expedited 1-5
minutes, Standard 3-5 hours, Bulk 5-12 hours; DEEP_ARCHIVE Standard within 12 hours, Bulk
within 48 hours (AWS gives no lower bound there: we assume half the upper one); GLACIER_IR,
STANDARD and the IA classes are read directly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote_plus

from .errors import ArchiveNotFound, NoArchiveAt, TargetError
from .inventory import Archive, Inventory
from .settings import DEFAULT_RETRIEVAL_PRICES
from .targets import Readiness, Target, open_target
from .targets.vaultrefs import VaultRefs
from .times import parse_service_time

__all__ = [
    "COLD_CLASSES",
    "EXPECTED_READY",
    "VAULT_OUTPUT_KEPT",
    "PlannedObject",
    "RestoreEvent",
    "RestorePlan",
    "VaultRefs",
    "archives_for_restore",
    "effective_tier",
    "estimate_cost",
    "expected_ready",
    "next_check",
    "plan_restore",
    "poll_times",
    "read_restore_events",
    "refs_ready",
    "requests_per_hour",
]

GiB = 1024**3
H = timedelta(hours=1)
M = timedelta(minutes=1)
#: storage classes (and the legacy vault, ``VAULT``) that need a retrieval before a read
COLD_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE", "VAULT"})
#: (class, tier) -> (earliest, latest) expected time from request to readable
EXPECTED_READY: dict[tuple[str, str], tuple[timedelta, timedelta]] = {
    ("GLACIER", "Expedited"): (1 * M, 5 * M),
    ("GLACIER", "Standard"): (3 * H, 5 * H),
    ("GLACIER", "Bulk"): (5 * H, 12 * H),
    ("DEEP_ARCHIVE", "Standard"): (6 * H, 12 * H),
    ("DEEP_ARCHIVE", "Bulk"): (24 * H, 48 * H),
    ("VAULT", "Expedited"): (1 * M, 5 * M),
    ("VAULT", "Standard"): (3 * H, 5 * H),
    ("VAULT", "Bulk"): (5 * H, 12 * H),
}
_TIERS = ("Expedited", "Standard", "Bulk")
#: never poll one object more often than this, however fast its tier
MIN_INTERVAL = timedelta(seconds=30)
#: once late, the wait between checks grows up to this
MAX_INTERVAL = timedelta(hours=6)


def effective_tier(storage_class: str, tier: str) -> str:
    """The tier a request will really use: DEEP_ARCHIVE has no Expedited (Standard is used),
    and classes read directly have no tiers at all (``Standard`` stands for them).

    Args:
        storage_class: e.g. ``DEEP_ARCHIVE``.
        tier: the tier asked for.

    Returns:
        The tier.

    Raises:
        ValueError: for an unknown tier.
    """
    t = tier.capitalize()
    if t not in _TIERS:
        raise ValueError(f"tier {tier!r} is not one of {', '.join(_TIERS)}")
    if storage_class not in COLD_CLASSES:
        return "Standard"
    if storage_class == "DEEP_ARCHIVE" and t == "Expedited":
        return "Standard"
    return t


def expected_ready(storage_class: str, tier: str) -> tuple[timedelta, timedelta]:
    """Args:
        storage_class: the object's class (``VAULT`` for the Glacier vault API).
        tier: the retrieval tier.

    Returns:
        (earliest, latest) expected time from request to readable; zero for classes that are
        read directly.
    """
    return EXPECTED_READY.get(
        (storage_class, effective_tier(storage_class, tier)), (timedelta(0), timedelta(0))
    )


def estimate_cost(
    storage_class: str,
    tier: str,
    size: int,
    *,
    requests: int = 1,
    prices: Mapping[str, tuple[float, float]] | None = None,
    transfer_out_per_gb: float = 0.0,
) -> float:
    """Estimated USD to retrieve and download ``size`` bytes.

    Args:
        storage_class: the object's class.
        tier: the retrieval tier.
        size: bytes.
        requests: retrieval requests (one per object).
        prices: ``"CLASS/Tier"`` -> (USD per GB, USD per 1,000 requests), merged over the
            defaults.
        transfer_out_per_gb: USD per GB downloaded out of the provider's network.

    Returns:
        The estimate in USD (0 for a class the table does not know, e.g. a local directory).
    """
    table = {**DEFAULT_RETRIEVAL_PRICES, **(prices or {})}
    per_gb, per_k = table.get(
        f"{storage_class}/{effective_tier(storage_class, tier)}",
        table.get(f"{storage_class}/Standard", (0.0, 0.0)),
    )
    gb = size / GiB
    return gb * per_gb + requests * per_k / 1000 + gb * transfer_out_per_gb


@dataclass(frozen=True, slots=True)
class PlannedObject:
    """One object a restore needs.

    Attributes:
        archive_id: the archive it belongs to.
        ref: its reference in the target (the inventory's ``location``).
        size: bytes.
        storage_class: as the target reports it (``STANDARD`` where there are no classes).
        tier: the tier its retrieval uses.
        state: its readiness now (READY objects need no request).
        ready_in: (earliest, latest) time from request to readable.
        cost: estimated USD.
    """

    archive_id: str
    ref: str
    size: int
    storage_class: str
    tier: str
    state: Readiness
    ready_in: tuple[timedelta, timedelta]
    cost: float

    @property
    def needs_request(self) -> bool:
        """True when a retrieval must be requested before the object can be read."""
        return self.state is Readiness.NOT_REQUESTED


@dataclass(slots=True)
class RestorePlan:
    """What a restore needs from one target, before anything is requested.

    Attributes:
        target: the target URL.
        tier: the tier asked for.
        objects: per archive of the chain, full first.
    """

    target: str
    tier: str
    objects: list[PlannedObject] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        """Bytes of all the objects."""
        return sum(o.size for o in self.objects)

    @property
    def total_cost(self) -> float:
        """Estimated USD of the whole restore."""
        return sum(o.cost for o in self.objects)

    @property
    def ready_in(self) -> tuple[timedelta, timedelta]:
        """(earliest, latest) until every object is readable, for objects still to request
        (a pending one may finish sooner)."""
        waits = [o.ready_in for o in self.objects if o.state is not Readiness.READY]
        if not waits:
            return timedelta(0), timedelta(0)
        return max(w[0] for w in waits), max(w[1] for w in waits)

    def as_dict(self) -> dict[str, Any]:
        """Returns: the plan as JSON-ready data (times in seconds, cost in USD)."""
        return {
            "target": self.target,
            "tier": self.tier,
            "total_bytes": self.total_bytes,
            "total_cost_usd": round(self.total_cost, 4),
            "ready_in_seconds": [int(t.total_seconds()) for t in self.ready_in],
            "objects": [
                {
                    "archive_id": o.archive_id,
                    "ref": o.ref,
                    "size": o.size,
                    "storage_class": o.storage_class,
                    "tier": o.tier,
                    "state": o.state.value,
                    "ready_in_seconds": [int(t.total_seconds()) for t in o.ready_in],
                    "cost_usd": round(o.cost, 4),
                }
                for o in self.objects
            ],
        }


def archives_for_restore(
    inventory: Inventory,
    *,
    policy: str | None = None,
    at: datetime | None = None,
    archive_ids: Sequence[str] = (),
) -> list[Archive]:
    """The archives a restore reads: the chain of each named archive, or of the policy's
    newest archive at ``at`` (default now); each archive once, oldest first.

    Args:
        inventory: the inventory.
        policy: the policy, when no archive ids are given.
        at: the point in time.
        archive_ids: archives (ids or unique prefixes).

    Returns:
        The archives.

    Raises:
        NoArchiveAt: the policy has no complete archive at that time.
        ArchiveNotFound: an id matches nothing, or neither policy nor ids were given.
    """
    heads: list[Archive] = []
    if archive_ids:
        heads = [inventory.get(i) for i in archive_ids]
    elif policy is not None:
        when = at or datetime.now(UTC)
        head = inventory.at(policy, when)
        if head is None:
            raise NoArchiveAt(policy, when.isoformat())
        heads = [head]
    else:
        raise ArchiveNotFound("", " (name a policy or archive ids)")
    seen: dict[str, Archive] = {}
    for h in heads:
        for a in inventory.chain(h.id):
            seen.setdefault(a.id, a)
    return sorted(seen.values(), key=lambda a: (a.created, a.id))


def plan_restore(
    archives: Sequence[Archive],
    target: Target | None = None,
    *,
    tier: str = "Standard",
    prices: Mapping[str, tuple[float, float]] | None = None,
    transfer_out_per_gb: float = 0.0,
) -> RestorePlan:
    """Plan the retrieval of the archives of a chain from their target.

    Asks the target about each archive object (one HEAD request on S3: its size, class and
    retrieval status). Manifests are not listed: they are kept hot and read directly.

    Args:
        archives: the chain (see :func:`archives_for_restore`); all in one target.
        target: that target, if already open.
        tier: ``Expedited``, ``Standard`` or ``Bulk`` (a policy's ``restore_tier``).
        prices: overrides of the price table (``Settings.retrieval_prices``).
        transfer_out_per_gb: ``Settings.transfer_out_per_gb`` (0 inside the provider).

    Returns:
        The plan.

    Raises:
        TargetError: the archives are in several targets, or the target cannot answer.
        ObjectNotFound: an archive object is missing from the target.
    """
    urls = {a.target for a in archives}
    if len(urls) > 1:
        raise TargetError(", ".join(sorted(urls)), "one restore plan covers one target")
    url = urls.pop() if urls else (target.url if target else "")
    if target is None:
        target = open_target(url)
    t = tier.capitalize()
    effective_tier("STANDARD", t)  # validates the tier
    plan = RestorePlan(url, t)
    for a in archives:
        info, status = target.describe(a.location)
        size = info.size or a.size_stored  # a vault cannot tell sizes at once: the inventory's
        cls = status.storage_class or info.storage_class or "STANDARD"
        used = effective_tier(cls, t)
        plan.objects.append(
            PlannedObject(
                archive_id=a.id,
                ref=a.location,
                size=size,
                storage_class=cls,
                tier=used,
                state=status.state,
                ready_in=expected_ready(cls, used)
                if status.state is not Readiness.READY
                else (timedelta(0), timedelta(0)),
                cost=estimate_cost(
                    cls,
                    used,
                    size,
                    requests=1 if status.state is Readiness.NOT_REQUESTED else 0,
                    prices=prices,
                    transfer_out_per_gb=transfer_out_per_gb,
                ),
            )
        )
    return plan


def next_check(
    storage_class: str,
    tier: str,
    requested_at: datetime,
    now: datetime,
    *,
    min_interval: timedelta = MIN_INTERVAL,
) -> datetime:
    """When to ask again whether a pending retrieval is ready.

    Not before the earliest time the class and tier can be ready; within the expected window
    every eighth of it; once late, the wait grows with the lateness (a quarter of it, up to
    six hours), since a late restore is rarely minutes from done. Never sooner than
    ``min_interval`` from ``now``.

    Args:
        storage_class: the object's class (``VAULT`` for a vault job).
        tier: the tier requested.
        requested_at: when the retrieval was requested (aware).
        now: the current time (aware).
        min_interval: the least wait (e.g. ``Settings.poll_seconds``).

    Returns:
        The time of the next status check.
    """
    earliest, latest = expected_ready(storage_class, tier)
    if latest == timedelta(0):
        return now  # read directly: nothing to wait for
    first = requested_at + earliest
    if now < first:
        return max(first, now + min_interval)
    window = latest - earliest
    step = window / 8
    late = now - (requested_at + latest)
    if late > timedelta(0):
        step = step + late / 4
    step = min(max(step, min_interval), max(MAX_INTERVAL, min_interval))
    return now + step


def poll_times(
    storage_class: str,
    tier: str,
    ready_after: timedelta | None = None,
    *,
    min_interval: timedelta = MIN_INTERVAL,
) -> list[timedelta]:
    """Simulate the checks :func:`next_check` makes for one retrieval.

    Args:
        storage_class: the object's class.
        tier: the tier.
        ready_after: when the object becomes ready (default: the latest expected time).
        min_interval: as for :func:`next_check`.

    Returns:
        The time of every status check after the request, the last being the one that
        finds it ready.
    """
    latest = expected_ready(storage_class, tier)[1]
    ready = latest if ready_after is None else ready_after
    t0 = datetime(2000, 1, 1, tzinfo=UTC)
    now = t0
    out: list[timedelta] = []
    while True:
        now = next_check(storage_class, tier, t0, now, min_interval=min_interval)
        out.append(now - t0)
        if now - t0 >= ready or len(out) > 100_000:
            return out


def requests_per_hour(
    storage_class: str,
    tier: str,
    ready_after: timedelta | None = None,
    *,
    min_interval: timedelta = MIN_INTERVAL,
) -> float:
    """Status requests per pending object per hour, from request to readiness.

    Args:
        storage_class: the object's class.
        tier: the tier.
        ready_after: when it becomes ready (default: the latest expected time).
        min_interval: as for :func:`next_check`.

    Returns:
        Requests divided by hours waited (0 for classes read directly).
    """
    times = poll_times(storage_class, tier, ready_after, min_interval=min_interval)
    hours = times[-1] / H
    return len(times) / hours if hours > 0 else 0.0


@dataclass(frozen=True, slots=True)
class RestoreEvent:
    """A finished restore S3 told of, or a finished archive-retrieval job a Glacier vault
    told of (then ``bucket`` and ``key`` are empty and ``archive_id`` is set).

    Attributes:
        bucket: the bucket.
        key: the object's key in the bucket (decoded).
        expires: when the restored copy (a vault job's output) goes away, if known.
        storage_class: the object's class, if the event says (``VAULT`` for a vault job).
        archive_id: the vault archive the job retrieved.
        job_id: the vault job.
        vault_arn: the vault, ``arn:aws:glacier:REGION:ACCOUNT:vaults/NAME``.
        status: the vault job's ``StatusCode``, ``Succeeded`` or ``Failed`` (S3 only tells
            of restores that completed: None).
    """

    bucket: str
    key: str
    expires: datetime | None = None
    storage_class: str | None = None
    archive_id: str | None = None
    job_id: str | None = None
    vault_arn: str | None = None
    status: str | None = None

    @property
    def vault(self) -> tuple[str, str, str] | None:
        """(region, account, vault name) from ``vault_arn``; None for an S3 event."""
        parts = (self.vault_arn or "").split(":", 5)
        if len(parts) != 6 or parts[2] != "glacier" or not parts[5].startswith("vaults/"):
            return None
        return parts[3], parts[4], parts[5][len("vaults/") :]


#: a finished vault job's output can be read for about this long (as GlacierTarget assumes)
VAULT_OUTPUT_KEPT = timedelta(hours=24)


def _message(body: str) -> dict[str, Any] | None:
    """The notification in an SQS message body: as sent, or unwrapped from SNS's
    envelope (``{"Type": "Notification", "Message": "<the notification as JSON>"}``)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if isinstance(doc, dict) and doc.get("Type") == "Notification" and "Message" in doc:
        try:  # delivered through an SNS topic
            doc = json.loads(doc["Message"])
        except (TypeError, ValueError):
            return None
    return doc if isinstance(doc, dict) else None


def _s3_events(doc: dict[str, Any]) -> list[RestoreEvent]:
    recs = doc.get("Records")
    out: list[RestoreEvent] = []
    for r in recs if isinstance(recs, list) else []:
        if not isinstance(r, dict):
            continue
        if not str(r.get("eventName", "")).startswith("ObjectRestore:Completed"):
            continue
        s3 = r.get("s3", {})
        restore = r.get("glacierEventData", {}).get("restoreEventData", {})
        out.append(
            RestoreEvent(
                bucket=str(s3.get("bucket", {}).get("name", "")),
                key=unquote_plus(str(s3.get("object", {}).get("key", ""))),
                expires=parse_service_time(restore.get("lifecycleRestorationExpiryTime")),
                storage_class=restore.get("lifecycleRestoreStorageClass"),
            )
        )
    return out


def _vault_event(doc: dict[str, Any]) -> RestoreEvent | None:
    """A Glacier job-completion message: the job's description as ``DescribeJob`` gives it
    (``Action``, ``ArchiveId``, ``JobId``, ``StatusCode``, ``Completed``, ``CompletionDate``,
    ``VaultARN``, ...). Only finished archive retrievals count (inventory jobs: None)."""
    if doc.get("Action") != "ArchiveRetrieval" or not doc.get("ArchiveId"):
        return None
    status = doc.get("StatusCode")
    if status not in ("Succeeded", "Failed"):
        return None
    done = parse_service_time(doc.get("CompletionDate"))
    return RestoreEvent(
        bucket="",
        key="",
        expires=done + VAULT_OUTPUT_KEPT if done and status == "Succeeded" else None,
        storage_class="VAULT",
        archive_id=str(doc["ArchiveId"]),
        job_id=str(doc["JobId"]) if doc.get("JobId") else None,
        vault_arn=str(doc["VaultARN"]) if doc.get("VaultARN") else None,
        status=str(status),
    )


def _events(body: str) -> list[RestoreEvent]:
    doc = _message(body)
    if doc is None:
        return []
    if "Records" in doc:
        return _s3_events(doc)
    ev = _vault_event(doc)
    return [ev] if ev is not None else []


def read_restore_events(
    queue: str | None = None,
    *,
    client: Any = None,
    wait_seconds: int = 0,
    max_batches: int = 10,
) -> list[RestoreEvent]:
    """Read ``s3:ObjectRestore:Completed`` events, and Glacier vault archive-retrieval
    job-completion messages, from an SQS queue (each sent directly or through SNS).

    Messages are deleted once read (every message: test events, inventory jobs and other
    event types are of no use to anyone else reading this queue). Polling stays the source
    of truth: an event only makes the next check of that object happen now.

    Args:
        queue: queue URL or name; default ``Settings.restore_events_queue``.
        client: an SQS client (default: :func:`backup.targets.s3client.sqs_client`).
        wait_seconds: long-poll wait for the first batch (0 returns at once).
        max_batches: read at most this many batches of 10 messages.

    Returns:
        The restores that completed and the vault jobs that finished (succeeded or
        failed), in the order read.

    Raises:
        TargetError: no queue is configured, or SQS refused.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from .settings import Settings
    from .targets.s3client import sqs_client

    queue = queue or Settings().restore_events_queue
    if not queue:
        raise TargetError("sqs", "no restore events queue (set BACKUP_RESTORE_EVENTS_QUEUE)")
    sqs = client or sqs_client()
    out: list[RestoreEvent] = []
    try:
        url = queue if "://" in queue else sqs.get_queue_url(QueueName=queue)["QueueUrl"]
        for i in range(max_batches):
            resp = sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds if i == 0 else 0
            )
            msgs = resp.get("Messages", [])
            if not msgs:
                break
            for m in msgs:
                out.extend(_events(m.get("Body", "")))
            sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(msgs)
                ],
            )
    except (ClientError, BotoCoreError) as e:
        raise TargetError(f"sqs queue {queue}", f"cannot read restore events: {e}") from e
    return out


def refs_ready(target: Target, events: Iterable[RestoreEvent]) -> set[str]:
    """The references in ``target`` that events say are restored (S3), or whose retrieval
    job finished (a vault: succeeded or failed, either way worth checking now; a failed
    job's archive is requested again by the check): :meth:`Target.restored_refs`.

    Args:
        target: any target (one whose retrievals are never announced: nothing).
        events: from :func:`read_restore_events`.

    Returns:
        For S3, target references (keys without the target's prefix) in the target's bucket.
        For a vault, a :class:`VaultRefs` of the archives jobs of this vault finished for:
        ``ref in`` it matches on the archive id.
    """
    return target.restored_refs(list(events))
