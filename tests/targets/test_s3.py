"""The S3 target against moto's server on loopback (real HTTP, real botocore): multipart
streaming, part growth, bounded buffering, concurrency, checksums, failure aborts, storage
classes and tags, restores (moto's restore progress switched to manual so the in-progress
path really runs), Object Lock and legal holds. Optional tests against a real S3 store run
when BACKUP_TEST_S3_URL and credentials are set."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError, ResponseStreamingError

from backup.errors import ObjectNotFound, TargetError
from backup.targets import Readiness, WriteOptions, open_target
from backup.targets.s3 import (
    MAX_PARTS,
    S3Target,
    parse_restore_header,
    part_size_for,
    status_from_head,
)

from .s3util import ClientProxy, new_bucket, set_restore_transition, slow

MiB = 1024 * 1024
REAL_S3_URL = os.environ.get("BACKUP_TEST_S3_URL")  # read before clean_env removes it


def payload(n: int) -> bytes:
    return hashlib.shake_256(str(n).encode()).digest(n) if n < 4096 else os.urandom(n)


def put(t: Any, key: str, data: bytes, options: WriteOptions | None = None) -> Any:
    with t.open_write(key, options) as w:
        for i in range(0, len(data), 1 * MiB):
            w.write(data[i : i + 1 * MiB])
        w.commit()
        return w


def uploads(aws: Any, bucket: str) -> list[dict[str, Any]]:
    return list(aws.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []))


@pytest.fixture
def bucket(aws_env: Any) -> str:
    return new_bucket(aws_env)


# part sizes --------------------------------------------------------------------------------


def test_part_size_grows_so_ten_thousand_parts_hold_five_tib() -> None:
    sizes = [part_size_for(n, 8 * MiB) for n in range(1, MAX_PARTS + 1)]
    assert sizes[0] == sizes[999] == 8 * MiB and sizes[1000] == 16 * MiB
    assert sizes == sorted(sizes)
    assert sum(sizes) > 5 * 1024**4  # S3's largest object fits
    assert max(sizes) <= 5 * 1024 * MiB
    # from S3's smallest part the stream still reaches 4.88 TiB within 10,000 parts
    total = sum(part_size_for(n, 5 * MiB) for n in range(1, MAX_PARTS + 1))
    assert 4.85 * 1024**4 < total < 5 * 1024**4


def test_url_parameters_are_checked(aws_env: Any) -> None:
    t = open_target("s3://b/some/prefix/?storage_class=deep_archive&tier=bulk&restore_days=3")
    assert isinstance(t, S3Target)
    assert (t.bucket, t.prefix, t.storage_class, t.tier, t.restore_days) == (
        "b",
        "some/prefix/",
        "DEEP_ARCHIVE",
        "Bulk",
        3,
    )
    for bad, msg in [
        ("s3://b?storage_class=COLD", "storage_class 'COLD'"),
        ("s3://b?colour=red", "unknown parameter"),
        ("s3://b?restore_days=0", "restore_days"),
        ("s3://b?tier=Fast", "tier 'Fast'"),
        ("s3:///nobucket", "s3://bucket/prefix"),
    ]:
        with pytest.raises(TargetError, match=msg):
            open_target(bad)


def test_reading_policies_builds_no_client_until_a_target_is_used(
    aws_env: Any, bucket: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client costs about 0.2 s and 3 MB: a file of 100 S3 policies took 25 s and 386 MB
    to read. Clients are built when a command uses a target, once per target."""
    from backup.crypto.age import X25519Identity
    from backup.policy import load_policies
    from backup.targets import s3client

    built: list[str] = []
    real = s3client._client

    def counting(service: str, *args: Any) -> Any:
        built.append(service)
        return real(service, *args)

    monkeypatch.setattr(s3client, "_client", counting)
    monkeypatch.setenv("BACKUP_GLACIER_SNS_TOPIC", "arn:aws:sns:us-east-1:123456789012:t")
    rcpt = X25519Identity.generate().recipient().to_string()
    targets = [f"s3://{bucket}/p{i}?storage_class=STANDARD_IA" for i in range(20)]
    targets.append("glacier://vault?region=us-east-1")
    config = tmp_path / "policies.toml"
    config.write_text(
        "".join(
            f'[[policy]]\nname = "p{i}"\nsources = ["/srv"]\ntarget = "{t}"\n'
            f'recipients = ["{rcpt}"]\nschedule = "0 2 * * *"\n\n'
            for i, t in enumerate(targets)
        )
    )
    policies = load_policies(config)
    assert len(policies) == 21 and built == []
    t = open_target(policies["p3"].target)
    assert built == []
    put(t, "k", b"data")
    with t.open_read("k") as f:
        assert f.read() == b"data"
    assert built == ["s3"]  # one client, built on first use and kept
    assert aws_env.client().get_object(Bucket=bucket, Key="p3/k")["Body"].read() == b"data"
    vault = open_target(policies["p20"].target)
    assert built == ["s3"]
    assert vault.client.meta.events is not None and built == ["s3", "glacier"]


# streaming writes --------------------------------------------------------------------------


def test_multipart_stream_round_trips_with_growing_parts(aws_env: Any, bucket: str) -> None:
    # max_parts=20: parts double every 2 (5, 5, 10, 10, 20 MiB ...); 33 MiB takes 5 parts
    t = S3Target(f"s3://{bucket}/v", part_size=5 * MiB, max_parts=20)
    data = os.urandom(33 * MiB)
    w = put(t, "p/big", data)
    assert w.parts == 5
    with t.open_read("p/big") as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()
    head = aws_env.client().head_object(Bucket=bucket, Key="v/p/big", ChecksumMode="ENABLED")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].endswith('-5"')  # a 5-part multipart object
    assert "ChecksumSHA256" in head  # every part carried a flexible checksum
    assert uploads(aws_env, bucket) == []


def test_too_many_parts_fails_and_aborts(aws_env: Any, bucket: str) -> None:
    t = S3Target(f"s3://{bucket}", part_size=5 * MiB, max_parts=2)  # holds 5 + 10 MiB
    w = t.open_write("p/huge")
    with pytest.raises(TargetError, match="larger than 2 parts"):
        for _ in range(16):
            w.write(b"\0" * MiB)
    assert uploads(aws_env, bucket) == []
    assert not t.exists("p/huge")


def test_buffering_is_bounded_and_parts_go_concurrently(aws_env: Any, bucket: str) -> None:
    client = ClientProxy(aws_env.client(), {"upload_part": slow(0.3)})
    t = S3Target(
        f"s3://{bucket}", client=client, part_size=5 * MiB, buffer_bytes=15 * MiB, workers=3
    )
    data = os.urandom(30 * MiB)
    w = put(t, "p/x", data)
    assert w.parts == 6 and client.calls["upload_part"] == 6
    assert w.peak_buffered <= 15 * MiB  # the queue of parts never held more than its budget
    assert w.peak_uploading >= 2  # parts were uploaded at the same time
    with t.open_read("p/x") as f:
        assert f.read() == data


def test_a_failed_part_aborts_the_upload(aws_env: Any, bucket: str) -> None:
    seen = {"n": 0}

    def fail_third(kw: dict[str, Any]) -> None:
        seen["n"] += 1
        if kw["PartNumber"] == 3:
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "injected"}}, "UploadPart")

    client = ClientProxy(aws_env.client(), {"upload_part": fail_third})
    t = S3Target(f"s3://{bucket}", client=client, part_size=5 * MiB, buffer_bytes=5 * MiB)
    with pytest.raises(TargetError, match="SlowDown") as e, t.open_write("p/x") as w:
        for _ in range(25):
            w.write(os.urandom(MiB))
        w.commit()
    assert "p/x" in str(e.value)
    assert uploads(aws_env, bucket) == []
    assert not t.exists("p/x")
    assert list(t.list()) == []


def test_checksum_algorithm_is_sent_on_every_part(aws_env: Any, bucket: str) -> None:
    sent: list[str] = []
    client = ClientProxy(
        aws_env.client(), {"upload_part": lambda kw: sent.append(kw["ChecksumAlgorithm"])}
    )
    t = S3Target(f"s3://{bucket}?checksum=crc32", client=client, part_size=5 * MiB)
    put(t, "p/x", os.urandom(11 * MiB))
    assert sent == ["CRC32", "CRC32", "CRC32"]
    head = aws_env.client().head_object(Bucket=bucket, Key="p/x", ChecksumMode="ENABLED")
    assert "ChecksumCRC32" in head


def test_storage_class_tags_and_hot_manifests(aws_env: Any, bucket: str) -> None:
    t = open_target(f"s3://{bucket}/v?storage_class=DEEP_ARCHIVE")
    tags = {"policy": "home", "kind": "full", "host": "web-1.example"}
    put(t, "home/a.tar.zst.age", b"archive", WriteOptions(tags=tags))
    put(t, "home/a.manifest.json.zst.age", b"manifest", WriteOptions(tags=tags, hot=True))
    s3 = aws_env.client()
    assert s3.head_object(Bucket=bucket, Key="v/home/a.tar.zst.age")["StorageClass"] == (
        "DEEP_ARCHIVE"
    )
    head = s3.head_object(Bucket=bucket, Key="v/home/a.manifest.json.zst.age")
    assert head.get("StorageClass", "STANDARD") == "STANDARD"
    # moto refuses GetObjectTagging on DEEP_ARCHIVE objects (AWS allows it): read the
    # manifest's, written through the same code path
    got = s3.get_object_tagging(Bucket=bucket, Key="v/home/a.manifest.json.zst.age")["TagSet"]
    assert {x["Key"]: x["Value"] for x in got} == tags
    classes = {o.key: o.storage_class for o in t.list("home/")}
    assert classes == {
        "home/a.manifest.json.zst.age": "STANDARD",
        "home/a.tar.zst.age": "DEEP_ARCHIVE",
    }
    assert t.stat("home/a.tar.zst.age").storage_class == "DEEP_ARCHIVE"
    assert t.stat("home/a.tar.zst.age").size == len(b"archive")


def test_write_options_are_validated() -> None:
    with pytest.raises(ValueError, match="11 object tags"):
        WriteOptions(tags={f"k{i}": "v" for i in range(11)})
    with pytest.raises(ValueError, match="tag key"):
        WriteOptions(tags={"a&b": "v"})
    with pytest.raises(ValueError, match="both a mode and a retain-until"):
        WriteOptions(lock_mode="GOVERNANCE")
    with pytest.raises(ValueError, match="GOVERNANCE or COMPLIANCE"):
        WriteOptions(lock_mode="STRICT", retain_until=datetime.now(UTC))
    assert WriteOptions(tags={f"k{i}": "v" for i in range(10)}).tags["k9"] == "v"


def test_sweep_partial_aborts_only_stale_uploads(aws_env: Any, bucket: str) -> None:
    t = S3Target(f"s3://{bucket}/v")
    other = S3Target(f"s3://{bucket}/elsewhere")
    w = t.open_write("p/left-behind")
    w.write(b"x" * 1000)
    o = other.open_write("p/not-ours")
    o.write(b"y")
    # moto reports every upload as initiated in 2010: "younger than a century" keeps it
    assert t.sweep_partial(timedelta(days=36500)) == 0  # young: a backup may be writing it
    assert len(uploads(aws_env, bucket)) == 2
    assert t.sweep_partial(timedelta(hours=1)) == 1
    assert [u["Key"] for u in uploads(aws_env, bucket)] == ["elsewhere/p/not-ours"]
    o.abort()


def test_read_resumes_after_a_broken_connection(aws_env: Any, bucket: str) -> None:
    data = os.urandom(3 * MiB)
    state = {"broken": False}
    real = aws_env.client()

    class Breaks(io.RawIOBase):
        def __init__(self, body: Any) -> None:
            self.body, self.n = body, 0

        def read(self, n: int = -1) -> bytes:
            if self.n > MiB and not state["broken"]:
                state["broken"] = True
                raise ResponseStreamingError(error="connection reset (injected)")
            chunk: bytes = self.body.read(n)
            self.n += len(chunk)
            return chunk

        def close(self) -> None:
            self.body.close()

    class Client(ClientProxy):
        def get_object(self, **kw: Any) -> Any:
            self.calls.setdefault("get", []).append(kw.get("Range"))  # type: ignore[arg-type]
            resp = real.get_object(**kw)
            resp["Body"] = Breaks(resp["Body"])
            return resp

    client = Client(real, {})
    t = S3Target(f"s3://{bucket}", client=client)  # type: ignore[arg-type]
    put(t, "p/x", data)
    with t.open_read("p/x") as f:
        assert f.read() == data
    assert state["broken"]
    ranges: Any = client.calls["get"]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"


# restores ----------------------------------------------------------------------------------


class Restores:
    """Drives moto's restore progress (``s3::keyrestore``: no restore -> IN_PROGRESS ->
    RESTORED). With ``manual`` progression moto moves a key one state on for every
    ``times`` reads; its state is only read once a restore was requested."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def step(self) -> None:
        """The next read of a requested key moves it on by one state."""
        set_restore_transition(self.endpoint, {"progression": "manual", "times": 1})

    def hold(self) -> None:
        """Keys stay where they are."""
        set_restore_transition(self.endpoint, {"progression": "manual", "times": 10**9})

    def finish(self) -> None:
        """Every requested key is restored at its next read."""
        set_restore_transition(self.endpoint, {"progression": "immediate"})


@pytest.fixture
def restores(aws_env: Any) -> Iterator[Restores]:
    r = Restores(aws_env.endpoint)
    r.step()
    yield r
    set_restore_transition(aws_env.endpoint, None)


def test_restore_of_a_deep_archive_object(aws_env: Any, bucket: str, restores: Restores) -> None:
    t = S3Target(f"s3://{bucket}?storage_class=DEEP_ARCHIVE&restore_days=2")
    put(t, "p/a", b"cold bytes")
    st = t.retrieval_status("p/a")
    assert (st.state, st.storage_class) == (Readiness.NOT_REQUESTED, "DEEP_ARCHIVE")
    with pytest.raises(TargetError, match="cold storage class"):
        t.open_read("p/a")
    assert t.request_retrieval("p/a", tier="Bulk").state is Readiness.PENDING  # 202
    assert t.retrieval_status("p/a").state is Readiness.PENDING  # ongoing-request="true"
    restores.hold()
    assert t.retrieval_status("p/a").state is Readiness.PENDING
    with pytest.raises(TargetError, match="cold storage class"):
        t.open_read("p/a")
    # asked again while running (moto answers 200 here, AWS 409): still pending
    again = t.request_retrieval("p/a", tier="Standard")
    assert (again.state, again.tier) == (Readiness.PENDING, "Standard")
    restores.finish()
    st = t.retrieval_status("p/a")
    assert st.state is Readiness.READY and st.expires is not None
    assert timedelta(days=1) < st.expires - datetime.now(UTC) <= timedelta(days=2, minutes=1)
    with t.open_read("p/a") as f:
        assert f.read() == b"cold bytes"
    assert t.request_retrieval("p/a").state is Readiness.READY  # 200: already restored


def test_hot_classes_read_directly(aws_env: Any, bucket: str) -> None:
    for cls in ("STANDARD", "GLACIER_IR", "STANDARD_IA"):
        t = S3Target(f"s3://{bucket}/{cls}?storage_class={cls}")
        put(t, "p/a", b"x")
        st = t.request_retrieval("p/a")  # InvalidObjectState for these classes
        assert (st.state, st.storage_class) == (Readiness.READY, cls)
    with pytest.raises(ObjectNotFound):
        t.request_retrieval("p/missing")


def test_restore_already_in_progress_is_pending(aws_env: Any, bucket: str) -> None:
    """AWS answers a second request for a running restore with 409 (moto does not)."""

    def conflict(_kw: dict[str, Any]) -> None:
        raise ClientError(
            {
                "Error": {"Code": "RestoreAlreadyInProgress", "Message": "in progress"},
                "ResponseMetadata": {"HTTPStatusCode": 409},
            },
            "RestoreObject",
        )

    client = ClientProxy(aws_env.client(), {"restore_object": conflict})
    t = S3Target(f"s3://{bucket}?storage_class=GLACIER", client=client)  # type: ignore[arg-type]
    put(t, "p/a", b"x")
    st = t.request_retrieval("p/a", tier="Expedited")
    assert (st.state, st.tier) == (Readiness.PENDING, "Expedited")


def test_status_from_head_reads_the_restore_header() -> None:
    now = datetime(2026, 11, 21, 12, tzinfo=UTC)
    deep = {"StorageClass": "DEEP_ARCHIVE"}
    assert status_from_head(deep, now).state is Readiness.NOT_REQUESTED
    ongoing = {**deep, "Restore": 'ongoing-request="true"'}
    assert status_from_head(ongoing, now).state is Readiness.PENDING
    done = {
        **deep,
        "Restore": 'ongoing-request="false", expiry-date="Sun, 22 Nov 2026 00:00:00 GMT"',
    }
    st = status_from_head(done, now)
    assert st.state is Readiness.READY and st.expires == datetime(2026, 11, 22, tzinfo=UTC)
    # the restored copy expired before anyone read it: it must be requested again
    st = status_from_head(done, now + timedelta(days=2))
    assert st.state is Readiness.NOT_REQUESTED and st.expires is not None
    assert status_from_head({"StorageClass": "GLACIER_IR"}, now).state is Readiness.READY
    assert status_from_head({}, now).state is Readiness.READY  # STANDARD omits the header
    tiering = {"StorageClass": "INTELLIGENT_TIERING", "ArchiveStatus": "DEEP_ARCHIVE_ACCESS"}
    assert status_from_head(tiering, now).state is Readiness.NOT_REQUESTED
    assert parse_restore_header(None) == (None, None)
    assert parse_restore_header('ongoing-request="false", expiry-date="garbage"') == (False, None)


# Object Lock -------------------------------------------------------------------------------


def test_object_lock_and_legal_hold(aws_env: Any) -> None:
    bucket = new_bucket(aws_env, lock=True)
    t = open_target(f"s3://{bucket}/v")
    until = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    put(t, "p/locked", b"x", WriteOptions(lock_mode="GOVERNANCE", retain_until=until))
    lock = t.object_lock("p/locked")
    assert (lock.mode, lock.retain_until, lock.legal_hold) == ("GOVERNANCE", until, False)
    assert lock.blocks_delete(datetime.now(UTC))
    assert not lock.blocks_delete(until + timedelta(seconds=1))
    with pytest.raises(TargetError, match="Object Lock retention or a legal hold"):
        t.delete("p/locked")
    assert t.exists("p/locked")

    put(t, "p/held", b"y")
    assert not t.object_lock("p/held").blocks_delete(datetime.now(UTC))
    t.set_legal_hold("p/held", True)
    assert t.object_lock("p/held").legal_hold
    with pytest.raises(TargetError, match="refused"):
        t.delete("p/held")
    t.set_legal_hold("p/held", False)
    t.delete("p/held")  # every version goes: nothing left behind a delete marker
    versions = aws_env.client().list_object_versions(Bucket=bucket, Prefix="v/p/held")
    assert not versions.get("Versions") and not versions.get("DeleteMarkers")


def test_legal_hold_without_object_lock_says_so(aws_env: Any, bucket: str) -> None:
    t = open_target(f"s3://{bucket}")
    put(t, "p/a", b"x")
    with pytest.raises(TargetError, match="legal hold"):
        t.set_legal_hold("p/a", True)


def test_file_target_has_no_object_lock(tmp_path: Any) -> None:
    t = open_target(f"file://{tmp_path}/v")
    assert not t.supports_object_lock
    with pytest.raises(TargetError, match="does not support object lock"):
        t.set_legal_hold("p/a", True)


# real S3 (optional) ------------------------------------------------------------------------


@pytest.mark.skipif(not REAL_S3_URL, reason="BACKUP_TEST_S3_URL not set")
def test_real_s3_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    assert REAL_S3_URL
    t = open_target(REAL_S3_URL)
    key = f"backup-test/{os.urandom(6).hex()}"
    data = os.urandom(11 * MiB)
    try:
        put(t, key, data, WriteOptions(tags={"test": "backup"}, hot=True))
        assert t.retrieval_status(key).state is Readiness.READY
        with t.open_read(key) as f:
            assert f.read() == data
    finally:
        t.delete(key)
    assert not t.exists(key)
