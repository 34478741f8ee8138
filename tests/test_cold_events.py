"""Finished retrievals announced on the restore events queue, against moto's server (real
HTTP): Glacier vault jobs that name ``BACKUP_GLACIER_SNS_TOPIC``, their job-completion
messages read raw or through SNS and mapped to the vault's refs, and the runner's poll
checking at once exactly the pending retrievals an event names (S3 and vault).

moto (5.2.5) accepts ``SNSTopic`` in a job's parameters but ignores it: it neither records
it (``DescribeJob`` has no ``SNSTopic``) nor publishes anything when the job completes, and
it has no ``SetVaultNotifications``. So the tests check that the topic is in the request
moto receives, and publish the job-completion message themselves, built as AWS documents it
(the notification is the job's ``DescribeJob`` output: ``Action``, ``ArchiveId``, ``JobId``,
``StatusCode``, ``Completed``, ``CompletionDate``, ``VaultARN``, ...) from the real job's
description, to a real moto SNS topic that a real moto SQS queue subscribes to (so the SNS
envelope is moto's), or straight to the queue (raw message delivery).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from sqlalchemy import select

from backup.coldplan import VaultRefs, read_restore_events, refs_ready
from backup.inventory import Inventory
from backup.inventory.models import RetrievalJob
from backup.inventory.sync import start_inventory_job
from backup.jobs.runner import Runner
from backup.settings import Settings
from backup.targets import Readiness, open_target
from backup.targets.glacier import GlacierTarget, parse_ref
from tests.targets.s3util import new_bucket, set_restore_transition


@dataclass
class Events:
    """An SQS queue subscribed to an SNS topic, both in moto."""

    queue: str  # name
    url: str
    topic: str  # ARN
    sqs: Any
    sns: Any

    def publish(self, message: dict[str, Any]) -> None:
        """Through SNS: the queue receives it in SNS's envelope."""
        self.sns.publish(TopicArn=self.topic, Message=json.dumps(message))

    def send(self, message: dict[str, Any]) -> None:
        """Straight to the queue (as with raw message delivery)."""
        self.sqs.send_message(QueueUrl=self.url, MessageBody=json.dumps(message))


@pytest.fixture
def events(aws_env: Any) -> Events:
    name = f"restores-{os.urandom(4).hex()}"
    sqs, sns = aws_env.client("sqs"), aws_env.client("sns")
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    topic = sns.create_topic(Name=f"{name}-jobs")["TopicArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    return Events(name, url, topic, sqs, sns)


@pytest.fixture
def glacier_env(aws_env: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("BACKUP_GLACIER_ENDPOINT_URL", aws_env.endpoint)
    return aws_env


def new_vault(aws: Any) -> str:
    name = f"v-{os.urandom(4).hex()}"
    aws.client("glacier").create_vault(vaultName=name)
    return name


def put(t: Any, key: str, data: bytes) -> str:
    with t.open_write(key) as w:
        w.write(data)
        ref: str = w.commit()
    return ref


def sent_job_parameters(t: GlacierTarget) -> list[dict[str, Any]]:
    """Record the job parameters of every InitiateJob request as sent over HTTP."""
    sent: list[dict[str, Any]] = []

    def record(request: Any, **_kw: Any) -> None:
        sent.append(json.loads(request.body))

    t.client.meta.events.register("before-send.glacier.InitiateJob", record)
    return sent


def completion_message(t: GlacierTarget, job_id: str, status: str | None = None) -> dict[str, Any]:
    """The message Glacier publishes when a job completes: its DescribeJob output (AWS
    fills in ``SNSTopic`` and the tree hashes, moto leaves them out)."""
    job = dict(t.client.describe_job(accountId="-", vaultName=t.vault, jobId=job_id))
    job.pop("ResponseMetadata", None)
    status = status or "Succeeded"
    job.update(Completed=status != "InProgress", StatusCode=status, SNSTopic=t.sns_topic)
    if status != "InProgress":
        job.setdefault("CompletionDate", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"))
    return job


# the SNS topic in the jobs ----------------------------------------------------------------------


def test_vault_jobs_name_the_sns_topic_when_set(
    glacier_env: Any, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault = new_vault(glacier_env)
    plain = GlacierTarget(f"glacier://{vault}")  # BACKUP_GLACIER_SNS_TOPIC unset
    assert plain.sns_topic is None
    monkeypatch.setenv("BACKUP_GLACIER_SNS_TOPIC", events.topic)
    t = GlacierTarget(f"glacier://{vault}")
    assert t.sns_topic == events.topic
    a = put(t, "p/a.tar.zst.age", b"a" * 1000)
    b = put(t, "p/b.tar.zst.age", b"b" * 1000)
    sent, sent_plain = sent_job_parameters(t), sent_job_parameters(plain)

    st = t.request_retrieval(a, tier="Bulk")
    assert st.state is Readiness.PENDING and st.job_id
    inventory_job = start_inventory_job(t)  # started by inventory sync, on the target's client
    plain.request_retrieval(b, tier="Bulk")

    assert [(p["Type"], p.get("SNSTopic")) for p in sent] == [
        ("archive-retrieval", events.topic),
        ("inventory-retrieval", events.topic),
    ]
    assert sent[0]["ArchiveId"] == parse_ref(t.url, a)[1] and sent[0]["Tier"] == "Bulk"
    assert sent[1]["Format"] == "JSON"
    assert len(sent_plain) == 1 and "SNSTopic" not in sent_plain[0]  # unset: no topic
    # moto took both jobs (it ignores the topic: see the module's docstring)
    jobs = {j["JobId"]: j["Action"] for j in t.jobs()}
    assert jobs[st.job_id] == "ArchiveRetrieval" and jobs[inventory_job] == "InventoryRetrieval"
    # a topic given to the target wins over the setting; "" means none
    assert GlacierTarget(t.url, sns_topic="").sns_topic is None


# the messages -------------------------------------------------------------------------------------


def test_vault_job_completion_messages_are_read_raw_or_through_sns(
    glacier_env: Any, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKUP_GLACIER_SNS_TOPIC", events.topic)
    vault = new_vault(glacier_env)
    t = GlacierTarget(f"glacier://{vault}")
    refs = [put(t, f"p/{n}.tar.zst.age", n.encode() * 500) for n in "abcd"]
    jobs = [t.request_retrieval(r, tier="Bulk").job_id or "" for r in refs]
    inventory_job = start_inventory_job(t)
    vault_arn = completion_message(t, jobs[0])["VaultARN"]
    assert vault_arn.endswith(f":vaults/{vault}")

    events.publish(completion_message(t, jobs[0]))  # through SNS
    events.send(completion_message(t, jobs[1], "Failed"))  # raw
    events.publish(completion_message(t, inventory_job))  # not an archive: ignored
    still_running = completion_message(t, jobs[3], "InProgress")
    events.send(still_running)  # not finished: ignored
    events.send({"Records": []})  # an S3 message with no restore in it
    got = read_restore_events(events.queue)

    assert [(e.job_id, e.status) for e in got] == [(jobs[0], "Succeeded"), (jobs[1], "Failed")]
    ok, failed = got
    assert ok.archive_id == parse_ref(t.url, refs[0])[1]
    assert (ok.vault_arn, ok.vault) == (vault_arn, ("us-east-1", "123456789012", vault))
    assert (ok.bucket, ok.key, ok.storage_class) == ("", "", "VAULT")
    assert ok.expires is not None and failed.expires is None  # output kept 24 h: success only
    assert read_restore_events(events.url) == []  # every message was deleted, ignored ones too

    ready = refs_ready(t, got)
    assert isinstance(ready, VaultRefs)
    # the inventory's refs (KEY#ARCHIVE_ID#TREE_HASH) match on the archive id
    assert [r in ready for r in refs] == [True, True, False, False]
    assert parse_ref(t.url, refs[0])[1] in ready  # a bare archive id is a ref too
    assert "p/a.tar.zst.age#other-archive#00" not in ready and "" not in ready
    # another vault of the same name elsewhere, or another vault: nothing
    elsewhere = boto3.client("glacier", region_name="eu-west-1", endpoint_url=glacier_env.endpoint)

    def target(url: str, client: Any = t.client) -> GlacierTarget:
        return GlacierTarget(url, client=client, sns_topic="")

    assert refs_ready(target(t.url, elsewhere), got) == set()
    assert refs_ready(target(f"{t.url}?account=999999999999"), got) == set()
    assert refs_ready(target(f"{t.url}?account=123456789012"), got) == ready
    assert refs_ready(target(f"glacier://{vault}x"), got) == set()
    # vault events never name S3 objects
    assert refs_ready(open_target("s3://b/p"), got) == set()


# the runner ------------------------------------------------------------------------------------


@pytest.fixture
def runner(inventory_url: str, events: Events, tmp_path: Path) -> Iterator[Runner]:
    inv = Inventory(inventory_url)
    settings = Settings(
        config=tmp_path / "policies.toml",
        inventory_url=inventory_url,
        restore_events_queue=events.queue,
    )
    yield Runner(inv, settings, lambda _task, _job: None, "w:1")
    inv.close()


def pending_row(inv: Inventory, target: str, ref: str, cls: str) -> int:
    """A pending retrieval not due for a month: only an event can make the poll check it."""
    now = datetime.now(UTC)
    row = RetrievalJob(
        target=target,
        ref=ref,
        tier="Bulk",
        state="pending",
        requested=now - timedelta(minutes=1),
        next_check=now + timedelta(days=30),
        storage_class=cls,
        size=1,
        checks=0,
    )
    with inv.session() as s:
        s.add(row)
        s.flush()
        return row.id


def rows(inv: Inventory) -> dict[int, RetrievalJob]:
    with inv.session() as s:
        return {r.id: r for r in s.scalars(select(RetrievalJob))}


def test_poll_checks_at_once_the_s3_restores_an_event_names(
    aws_env: Any, events: Events, runner: Runner
) -> None:
    bucket = new_bucket(aws_env, prefix="announced")
    url = f"s3://{bucket}/v?storage_class=DEEP_ARCHIVE"
    t = open_target(url)
    for k in ("p/a b.tar.zst.age", "p/c.tar.zst.age"):
        put(t, k, b"cold")
        assert t.retrieval_status(k).state is Readiness.NOT_REQUESTED
    set_restore_transition(aws_env.endpoint, {"progression": "immediate"})
    try:
        for k in ("p/a b.tar.zst.age", "p/c.tar.zst.age"):
            t.request_retrieval(k, tier="Bulk")  # both finish in moto
        inv = runner.inventory
        named = pending_row(inv, url, "p/a b.tar.zst.age", "DEEP_ARCHIVE")
        other = pending_row(inv, url, "p/c.tar.zst.age", "DEEP_ARCHIVE")
        assert runner.poll() == 0  # nothing due, no event: no request at all
        # S3's event as AWS delivers it (key URL-encoded), for one object only
        events.send(
            {
                "Records": [
                    {
                        "eventName": "ObjectRestore:Completed",
                        "s3": {
                            "bucket": {"name": bucket},
                            "object": {"key": "v/p/a+b.tar.zst.age"},
                        },
                        "glacierEventData": {
                            "restoreEventData": {
                                "lifecycleRestorationExpiryTime": "2026-12-01T00:00:00.000Z",
                                "lifecycleRestoreStorageClass": "DEEP_ARCHIVE",
                            }
                        },
                    }
                ]
            }
        )
        assert runner.poll() == 1  # one HEAD, for the named object
    finally:
        set_restore_transition(aws_env.endpoint, None)
    now = rows(inv)
    assert (now[named].state, now[named].checks) == ("ready", 1)
    assert now[named].completed is not None and now[named].next_check is None
    # restored in moto too, but no event named it and it is not due: left alone
    assert (now[other].state, now[other].checks) == ("pending", 0)
    due = now[other].next_check
    assert due is not None and due > datetime.now(UTC) + timedelta(days=29)
    assert runner.poll() == 0  # the event was consumed
    assert t.retrieval_status("p/c.tar.zst.age").state is Readiness.READY  # a check would see it


def test_poll_checks_at_once_the_vault_jobs_a_message_names(
    glacier_env: Any, events: Events, runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKUP_GLACIER_SNS_TOPIC", events.topic)
    vault = new_vault(glacier_env)
    t = GlacierTarget(f"glacier://{vault}")
    a, b = put(t, "p/a.tar.zst.age", b"a" * 100), put(t, "p/b.tar.zst.age", b"b" * 100)
    job_a = t.request_retrieval(a, tier="Expedited").job_id or ""
    t.request_retrieval(b, tier="Expedited")
    inv = runner.inventory
    named = pending_row(inv, t.url, a, "VAULT")
    other = pending_row(inv, t.url, b, "VAULT")
    deadline = time.monotonic() + 20
    while t.retrieval_status(a).state is not Readiness.READY:  # moto: about 2 s
        assert time.monotonic() < deadline, "moto's job did not finish"
        time.sleep(0.25)
    assert t.retrieval_status(b).state is Readiness.READY
    events.publish(completion_message(t, job_a))  # names the archive, not the key
    assert runner.poll() == 1
    now = rows(inv)
    assert (now[named].state, now[named].checks) == ("ready", 1)
    assert now[named].expires is not None  # the job output's 24 hours
    assert (now[other].state, now[other].checks) == ("pending", 0)
