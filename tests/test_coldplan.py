"""Restore planning: expected times and costs per class and tier, the poll schedule and its
request counts, plans of real chains on moto's S3 server (DEEP_ARCHIVE), and restore-completed
events read from moto's SQS (emitted by moto's S3 itself when a restore finishes)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backup.coldplan import (
    archives_for_restore,
    effective_tier,
    estimate_cost,
    expected_ready,
    next_check,
    plan_restore,
    poll_times,
    read_restore_events,
    refs_ready,
    requests_per_hour,
)
from backup.engine import run_backup
from backup.errors import NoArchiveAt, TargetError
from backup.inventory import Inventory
from backup.policy import load_policies
from backup.settings import Settings
from backup.targets import Readiness, open_target
from tests.conftest import Key
from tests.targets.s3util import new_bucket, set_restore_transition

H = timedelta(hours=1)
T0 = datetime(2026, 11, 21, 2, tzinfo=UTC)


def test_expected_times_follow_class_and_tier() -> None:
    assert expected_ready("GLACIER", "Expedited") == (timedelta(minutes=1), timedelta(minutes=5))
    assert expected_ready("GLACIER", "Standard") == (3 * H, 5 * H)
    assert expected_ready("GLACIER", "bulk") == (5 * H, 12 * H)
    assert expected_ready("DEEP_ARCHIVE", "Standard")[1] == 12 * H
    assert expected_ready("DEEP_ARCHIVE", "Bulk")[1] == 48 * H
    # DEEP_ARCHIVE has no Expedited tier: Standard is what S3 can do
    assert effective_tier("DEEP_ARCHIVE", "Expedited") == "Standard"
    assert expected_ready("DEEP_ARCHIVE", "Expedited")[1] == 12 * H
    for cls in ("GLACIER_IR", "STANDARD", "STANDARD_IA"):
        assert expected_ready(cls, "Bulk") == (timedelta(0), timedelta(0))
    with pytest.raises(ValueError, match="tier 'Fast'"):
        effective_tier("GLACIER", "Fast")


def test_costs_come_from_the_price_table() -> None:
    gib = 1024**3
    # DEEP_ARCHIVE Bulk: $0.0025/GB + $0.025 per 1,000 requests
    assert estimate_cost("DEEP_ARCHIVE", "Bulk", 100 * gib) == pytest.approx(0.250025)
    assert estimate_cost("GLACIER", "Bulk", 100 * gib) == 0.0  # free
    assert estimate_cost("GLACIER", "Expedited", gib, requests=2) == pytest.approx(0.05)
    assert estimate_cost("GLACIER", "Standard", gib, transfer_out_per_gb=0.09) == pytest.approx(
        0.01 + 0.00005 + 0.09
    )
    cheaper = {"DEEP_ARCHIVE/Bulk": (0.001, 0.0)}
    assert estimate_cost("DEEP_ARCHIVE", "Bulk", gib, prices=cheaper) == pytest.approx(0.001)
    assert estimate_cost("LOCAL", "Standard", gib) == 0.0


def test_price_table_is_overridable_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKUP_RETRIEVAL_PRICES", json.dumps({"GLACIER/Bulk": [0.004, 0.03]}))
    monkeypatch.setenv("BACKUP_TRANSFER_OUT_PER_GB", "0")
    s = Settings()
    assert s.retrieval_prices == {"GLACIER/Bulk": (0.004, 0.03)}
    assert s.transfer_out_per_gb == 0.0
    cost = estimate_cost("GLACIER", "Bulk", 1024**3, prices=s.retrieval_prices)
    assert cost == pytest.approx(0.004 + 0.00003)


def test_first_check_waits_for_the_earliest_ready_time() -> None:
    req = T0
    assert next_check("DEEP_ARCHIVE", "Bulk", req, req) == req + 24 * H
    assert next_check("GLACIER", "Standard", req, req + H) == req + 3 * H
    assert next_check("GLACIER", "Expedited", req, req) == req + timedelta(minutes=1)
    assert next_check("GLACIER_IR", "Standard", req, req + H) == req + H  # read now


def test_checks_space_out_in_the_window_and_back_off_when_late() -> None:
    req = T0
    # inside the window: an eighth of it (DEEP_ARCHIVE Bulk: 24 h window -> 3 h)
    assert next_check("DEEP_ARCHIVE", "Bulk", req, req + 30 * H) == req + 33 * H
    # late by 8 h: 3 h + 8 h / 4 = 5 h; very late: capped at 6 h
    assert next_check("DEEP_ARCHIVE", "Bulk", req, req + 56 * H) == req + 61 * H
    assert next_check("DEEP_ARCHIVE", "Bulk", req, req + 200 * H) == req + 206 * H
    # never more often than min_interval, however fast the tier
    now = req + timedelta(minutes=2)
    assert next_check("GLACIER", "Expedited", req, now) == now + timedelta(seconds=30)
    slow = next_check("GLACIER", "Expedited", req, now, min_interval=timedelta(minutes=2))
    assert slow == now + timedelta(minutes=2)


def test_poll_request_counts_fit_the_class_and_tier() -> None:
    bulk = poll_times("DEEP_ARCHIVE", "Bulk")
    assert bulk[0] == 24 * H and bulk[-1] == 48 * H and len(bulk) <= 10
    assert requests_per_hour("DEEP_ARCHIVE", "Bulk") < 0.25  # not every minute for 48 h
    assert requests_per_hour("GLACIER", "Expedited") > requests_per_hour("GLACIER", "Standard")
    assert requests_per_hour("GLACIER", "Standard") > requests_per_hour("DEEP_ARCHIVE", "Bulk")
    assert requests_per_hour("GLACIER_IR", "Standard") == 0.0
    # a restore 12 h late is still found, with a few more checks only
    late = poll_times("DEEP_ARCHIVE", "Bulk", ready_after=60 * H)
    assert late[-1] >= 60 * H and len(late) - len(bulk) <= 4
    # every check is after the previous one
    assert all(b > a for a, b in itertools.pairwise(late))


# plans of real chains on moto's S3 -------------------------------------------------------


@pytest.fixture
def chain(tmp_path: Path, key: Key, aws_env: Any) -> tuple[Any, Inventory, list[Any], str]:
    bucket = new_bucket(aws_env, prefix="plan")
    src = tmp_path / "src"
    src.mkdir()
    cfg = tmp_path / "p.toml"
    cfg.write_text(
        f'[[policy]]\nname = "p"\nsources = ["{src}"]\n'
        f'target = "s3://{bucket}/v?storage_class=DEEP_ARCHIVE"\n'
        f'recipients = ["{key.recipient}"]\nrestore_tier = "bulk"\n'
    )
    pol = load_policies(cfg)["p"]
    inv = Inventory(f"sqlite:///{tmp_path / 'inv.db'}")
    archives = []
    for i in range(3):
        (src / f"f{i}").write_bytes(bytes([i]) * (1000 * (i + 1)))
        archives.append(run_backup(pol, inv, now=T0 + i * H).archive)
    return pol, inv, archives, bucket


def test_plan_of_a_deep_archive_chain(chain: Any, aws_env: Any) -> None:
    pol, inv, archives, _bucket = chain
    assert pol.restore_tier == "Bulk"
    picked = archives_for_restore(inv, policy="p", at=T0 + 90 * timedelta(minutes=1))
    assert [a.id for a in picked] == [archives[0].id, archives[1].id]  # full + first inc
    with pytest.raises(NoArchiveAt):
        archives_for_restore(inv, policy="p", at=T0 - H)
    every = archives_for_restore(inv, archive_ids=[archives[2].id, archives[1].id])
    assert [a.id for a in every] == [a.id for a in archives]

    plan = plan_restore(every, tier=pol.restore_tier)
    assert [o.archive_id for o in plan.objects] == [a.id for a in archives]
    assert [o.size for o in plan.objects] == [a.size_stored for a in archives]
    assert {o.storage_class for o in plan.objects} == {"DEEP_ARCHIVE"}
    assert {o.tier for o in plan.objects} == {"Bulk"}
    assert all(o.needs_request for o in plan.objects)
    assert plan.ready_in == (24 * H, 48 * H)
    expected = sum(estimate_cost("DEEP_ARCHIVE", "Bulk", a.size_stored) for a in archives)
    assert plan.total_cost == pytest.approx(expected) and plan.total_cost > 0
    d = plan.as_dict()
    assert d["total_bytes"] == sum(a.size_stored for a in archives)
    assert d["objects"][0]["state"] == "not-requested"

    # once one retrieval is running, the plan says so and no longer counts its request
    set_restore_transition(aws_env.endpoint, {"progression": "manual", "times": 1})
    try:
        t = open_target(pol.target)
        assert t.request_retrieval(archives[0].location, tier="Bulk").state is Readiness.PENDING
        again = plan_restore(every, t, tier="Expedited")
    finally:
        set_restore_transition(aws_env.endpoint, None)
    assert again.objects[0].state is Readiness.PENDING and not again.objects[0].needs_request
    assert {o.tier for o in again.objects} == {"Standard"}  # no Expedited for DEEP_ARCHIVE
    size = archives[0].size_stored
    assert again.objects[0].cost == pytest.approx(
        estimate_cost("DEEP_ARCHIVE", "Standard", size, requests=0)
    )
    assert again.objects[1].cost == pytest.approx(
        estimate_cost("DEEP_ARCHIVE", "Standard", archives[1].size_stored, requests=1)
    )


def test_plan_refuses_archives_from_several_targets(chain: Any) -> None:
    _pol, inv, archives, _bucket = chain
    other = inv.get(archives[0].id)
    other.target = "file:///elsewhere"
    with pytest.raises(TargetError, match="one restore plan covers one target"):
        plan_restore([other, archives[1]])


def test_restore_completed_events_from_sqs(aws_env: Any, bucket_with_events: Any) -> None:
    bucket, queue_url, sqs = bucket_with_events
    t = open_target(f"s3://{bucket}/v?storage_class=GLACIER")
    for k in ("p/a b.tar.zst.age", "p/c.tar.zst.age"):
        with t.open_write(k) as w:
            w.write(b"x")
            w.commit()
    set_restore_transition(aws_env.endpoint, {"progression": "immediate"})
    try:
        t.request_retrieval("p/a b.tar.zst.age", tier="Expedited")
        # moto decides a restore is finished when the object is next read, and only then
        # sends s3:ObjectRestore:Completed to the queue
        assert t.retrieval_status("p/a b.tar.zst.age").state is Readiness.READY
    finally:
        set_restore_transition(aws_env.endpoint, None)
    # an SNS-wrapped event and S3's test event, as AWS delivers them, sent by hand
    wrapped = {
        "Records": [
            {
                "eventName": "ObjectRestore:Completed",
                "s3": {"bucket": {"name": bucket}, "object": {"key": "v/p/c.tar.zst.age"}},
                "glacierEventData": {
                    "restoreEventData": {
                        "lifecycleRestorationExpiryTime": "2026-11-28T00:00:00.000Z",
                        "lifecycleRestoreStorageClass": "GLACIER",
                    }
                },
            }
        ]
    }
    sqs.send_message(
        QueueUrl=queue_url,
        MessageBody=json.dumps({"Type": "Notification", "Message": json.dumps(wrapped)}),
    )
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"Event": "s3:TestEvent"}))
    events = read_restore_events(queue_url.rsplit("/", 1)[1])  # by name
    assert sorted(e.key for e in events) == ["v/p/a b.tar.zst.age", "v/p/c.tar.zst.age"]
    by_key = {e.key: e for e in events}
    assert by_key["v/p/c.tar.zst.age"].expires == datetime(2026, 11, 28, tzinfo=UTC)
    assert refs_ready(t, events) == {"p/a b.tar.zst.age", "p/c.tar.zst.age"}
    assert refs_ready(open_target(f"s3://{bucket}/other"), events) == set()
    assert read_restore_events(queue_url) == []  # read messages were deleted


def test_restore_events_need_a_queue() -> None:
    with pytest.raises(TargetError, match="BACKUP_RESTORE_EVENTS_QUEUE"):
        read_restore_events()


@pytest.fixture
def bucket_with_events(aws_env: Any) -> tuple[str, str, Any]:
    bucket = new_bucket(aws_env, prefix="events")
    sqs = aws_env.client("sqs")
    q = sqs.create_queue(QueueName=f"{bucket}-restores")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=q, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    aws_env.client().put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {"QueueArn": arn, "Events": ["s3:ObjectRestore:Completed"]},
            ]
        },
    )
    # S3 sends a test event when notifications are configured; drain it
    read_restore_events(q)
    return bucket, q, sqs
