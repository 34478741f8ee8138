"""The Glacier vault target: the tree hash (against botocore's and AWS's documented
construction), multipart uploads against a loopback server that checks ranges and hashes as
the service does (moto has no vault multipart upload), and single uploads, retrieval jobs
(reused, polled until moto finishes them in seconds) and verified job output against moto's
server."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.utils import calculate_tree_hash

from backup.errors import TargetError
from backup.targets import Readiness, WriteOptions, open_target
from backup.targets.glacier import (
    MAX_DESCRIPTION,
    GlacierTarget,
    describe_archive,
    format_ref,
    parse_description,
    parse_ref,
)
from backup.targets.treehash import TreeHasher, tree_hash, tree_hash_of_hashes

from .glacier_fixture import FakeVaults

MiB = 1024 * 1024


def h(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


# the tree hash -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [0, 1, MiB - 1, MiB, MiB + 1, 2 * MiB, 3 * MiB + 200 * 1024, 5 * MiB, 8 * MiB + 3]
)
def test_tree_hash_matches_botocore(size: int) -> None:
    data = os.urandom(size)
    expected = calculate_tree_hash(io.BytesIO(data))
    assert tree_hash(data) == expected
    hasher = TreeHasher()
    for i in range(0, size, 333_333):  # pieces that straddle the 1 MiB leaves
        hasher.update(data[i : i + 333_333])
    assert hasher.hexdigest() == expected and hasher.size == size


def test_tree_hash_follows_the_documented_construction() -> None:
    # AWS's example: a 3.2 MB upload has four leaves (three of 1 MiB and one of 0.2 MB),
    # combined in pairs, then the pair hashes combined
    c = [os.urandom(MiB), os.urandom(MiB), os.urandom(MiB), os.urandom(200 * 1024)]
    assert tree_hash(b"".join(c)) == h(h(h(c[0]) + h(c[1])) + h(h(c[2]) + h(c[3]))).hex()
    # an odd leaf is carried up unchanged
    assert tree_hash(b"".join(c[:3])) == h(h(h(c[0]) + h(c[1])) + h(c[2])).hex()
    # below 1 MiB the tree hash is the SHA-256
    assert tree_hash(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert tree_hash(b"") == hashlib.sha256(b"").hexdigest()
    # 2 MiB of zeros (a published value)
    assert tree_hash(bytes(2 * MiB)) == (
        "861890b487038d840e9d71d43bbc0fd4571453fb9d9b1f370caa3582a29b0ec7"
    )


def test_part_tree_hashes_combine_into_the_archive_tree_hash() -> None:
    # power-of-two MiB parts are subtrees: the archive's hash is the tree of the parts'
    parts = [os.urandom(4 * MiB), os.urandom(4 * MiB), os.urandom(MiB + 5)]
    whole = tree_hash(b"".join(parts))
    assert tree_hash_of_hashes([bytes.fromhex(tree_hash(p)) for p in parts]).hex() == whole


# descriptions and references -----------------------------------------------------------------


def test_description_is_short_printable_ascii_and_parses_back() -> None:
    d = describe_archive("home/20261121T020000Z-9f2c41d7.tar.zst.age", {"policy": "home"})
    assert parse_description(d) == {
        "key": "home/20261121T020000Z-9f2c41d7.tar.zst.age",
        "tags": {"policy": "home"},
    }
    big = describe_archive("k/" + "é" * 900, {f"t{i}": "v" * 200 for i in range(10)})
    assert len(big) <= MAX_DESCRIPTION and big.isascii() and big.isprintable()
    assert parse_description(big) is not None and "tags" not in json.loads(big)
    assert parse_description("someone else's archive") is None
    assert parse_description(None) is None


def test_refs_carry_key_archive_id_and_tree_hash() -> None:
    ref = format_ref("p/a.tar.zst.age", "AID-123_x", "ab" * 32)
    assert parse_ref("glacier://v", ref) == ("p/a.tar.zst.age", "AID-123_x", "ab" * 32)
    assert parse_ref("glacier://v", "AID") == ("", "AID", None)
    with pytest.raises(TargetError, match="not a vault archive reference"):
        parse_ref("glacier://v", "key#")


def test_url_is_checked() -> None:
    t = open_target("glacier://my-vault?part_size=64&tier=bulk&region=eu-west-1")
    assert isinstance(t, GlacierTarget)
    assert (t.vault, t.part_size, t.tier) == ("my-vault", 64 * MiB, "Bulk")
    for bad, msg in [
        ("glacier://v?part_size=3", "power of two"),
        ("glacier://v?part_size=8192", "power of two"),
        ("glacier://v?tier=Now", "tier 'Now'"),
        ("glacier://v?x=1", "unknown parameter"),
        ("glacier://v/sub", "glacier://vault"),
    ]:
        with pytest.raises(TargetError, match=msg):
            open_target(bad)


# multipart against the loopback vault ----------------------------------------------------------


@pytest.fixture
def vaults(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeVaults]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with FakeVaults() as fv:
        monkeypatch.setenv("BACKUP_GLACIER_ENDPOINT_URL", fv.endpoint)
        yield fv


def test_multipart_upload_sends_checked_parts(vaults: FakeVaults) -> None:
    t = GlacierTarget("glacier://v?part_size=1", workers=2)
    data = os.urandom(5 * MiB + 512 * 1024)
    w = t.open_write("p/a.tar.zst.age", WriteOptions(tags={"policy": "p"}))
    for i in range(0, len(data), 300_001):
        w.write(data[i : i + 300_001])
    ref = w.commit()
    assert vaults.errors == []
    assert vaults.requests == {"initiate": 1, "part": 6, "complete": 1}
    assert w.parts == 6 and w.peak_parts_buffered <= 3  # workers + 1: memory stays bounded
    key, aid, th = parse_ref(t.url, ref)
    assert key == "p/a.tar.zst.age" and th == calculate_tree_hash(io.BytesIO(data))
    desc, stored = vaults.archives[aid]
    assert stored == data
    assert parse_description(desc) == {"key": "p/a.tar.zst.age", "tags": {"policy": "p"}}
    assert vaults.uploads == {}


def test_small_archives_go_up_in_one_request(vaults: FakeVaults) -> None:
    t = GlacierTarget("glacier://v?part_size=1")
    with t.open_write("p/m") as w:
        w.write(b"manifest")
        ref = w.commit()
    assert vaults.requests == {"upload_archive": 1}
    assert vaults.archives[parse_ref(t.url, ref)[1]][1] == b"manifest"


def test_a_refused_part_aborts_the_upload(vaults: FakeVaults) -> None:
    vaults.fail_part = 2
    t = GlacierTarget("glacier://v?part_size=1")
    with pytest.raises(TargetError, match="injected failure") as e, t.open_write("p/x") as w:
        for _ in range(6):
            w.write(os.urandom(MiB))
        w.commit()
    assert "p/x" in str(e.value)
    assert vaults.uploads == {} and vaults.archives == {}
    assert vaults.requests.get("abort") == 1


def test_abandon_and_sweep_abort_our_stale_uploads(vaults: FakeVaults) -> None:
    t = GlacierTarget("glacier://v?part_size=1")
    dead = t.open_write("p/dead")
    dead.write(os.urandom(MiB + 1))  # a part went up; the writer was killed
    live = t.open_write("p/live")
    live.write(os.urandom(MiB))
    assert len(vaults.uploads) == 2
    assert t.abandon_partial("p/dead") == 1
    assert t.abandon_partial("p/dead") == 0
    assert t.sweep_partial() == 0  # the live one is young
    from datetime import timedelta

    assert t.sweep_partial(timedelta(0)) == 1
    assert vaults.uploads == {}


# retrieval jobs against moto ---------------------------------------------------------------------


@pytest.fixture
def vault(aws_env: Any, monkeypatch: pytest.MonkeyPatch) -> GlacierTarget:
    monkeypatch.setenv("BACKUP_GLACIER_ENDPOINT_URL", aws_env.endpoint)
    name = f"v-{os.urandom(4).hex()}"
    aws_env.client("glacier").create_vault(vaultName=name)
    return GlacierTarget(f"glacier://{name}")


def wait_ready(t: GlacierTarget, ref: str, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if t.retrieval_status(ref).state is Readiness.READY:
            return
        time.sleep(0.5)
    raise AssertionError("moto's job did not finish")


def test_retrieval_job_is_reused_polled_and_its_output_verified(vault: GlacierTarget) -> None:
    data = os.urandom(300_000)
    with vault.open_write("p/a.tar.zst.age") as w:
        w.write(data)
        ref = w.commit()
    assert vault.retrieval_status(ref).state is Readiness.NOT_REQUESTED
    with pytest.raises(TargetError, match="no finished retrieval job"):
        vault.open_read(ref)
    first = vault.request_retrieval(ref, tier="Expedited")
    assert first.state is Readiness.PENDING and first.job_id
    # asked again (another worker, a restart): the running job is reused, not started again
    fresh = GlacierTarget(vault.url)
    again = fresh.request_retrieval(ref, tier="Expedited")
    assert again.job_id == first.job_id
    wait_ready(fresh, ref)
    st = fresh.retrieval_status(ref)
    assert st.job_id == first.job_id and st.expires is not None
    with fresh.open_read(ref) as f:
        assert f.read() == data
    # a finished job is reused too
    assert fresh.request_retrieval(ref).state is Readiness.READY
    # output that does not match the archive's tree hash fails the read
    key, aid, _th = parse_ref(vault.url, ref)
    with (
        pytest.raises(TargetError, match="does not match its tree hash"),
        fresh.open_read(format_ref(key, aid, "00" * 32)) as f,
    ):
        f.read()
    vault.delete(ref)  # (moto answers 500 to deleting an absent archive, AWS 404: not tested)


def test_vaults_cannot_be_listed_at_once(vault: GlacierTarget) -> None:
    with pytest.raises(TargetError, match="inventory sync"):
        list(vault.list())
    with pytest.raises(TargetError, match="invalid object key"):
        vault.open_write("a#b")


def test_a_failing_vault_answer_is_one_line_without_its_html(vault: GlacierTarget) -> None:
    # moto starts a job for an archive id it does not hold, then answers the job's output
    # with a 500 and its HTML error page (AWS refuses at once, with JSON): either way the
    # error is one line naming the status
    ref = format_ref("p/gone.tar.zst.age", "A" * 138, "00" * 32)
    vault.request_retrieval(ref, tier="Expedited")
    wait_ready(vault, ref)
    with pytest.raises(TargetError) as e:
        vault.open_read(ref)
    msg = e.value.get_message()
    assert "HTTP 500 Internal Server Error" in msg
    assert "\n" not in msg and "<" not in msg and "html" not in msg.lower()


def test_an_object_key_is_not_taken_for_an_archive_id() -> None:
    with pytest.raises(TargetError, match="object key, not a vault archive id") as e:
        parse_ref("glacier://v", "p/20261121T020000Z-9f2c41d7.tar.zst.age")
    assert "backup inventory sync glacier://v" in str(e.value)
