"""The Glacier vault target, ``glacier://vault`` (the legacy vault API).

AWS closed the vault API to new customers on 15 December 2025; new setups use the S3
storage classes (``s3://bucket?storage_class=DEEP_ARCHIVE``). This target serves existing
vaults. Query parameters: ``region``, ``tier`` (default retrieval tier, ``Standard``),
``part_size`` (MiB, a power of two, default 32: archives up to 312 GiB in 10,000 parts),
``account`` (default ``-``, the credentials' own). The endpoint is
``BACKUP_GLACIER_ENDPOINT_URL`` when set.

A vault has no keys and no listing at once: an archive is known by the id the vault gives
it. The reference :meth:`GlacierWriter.commit` returns (and the inventory stores as an
archive's location) is ``KEY#ARCHIVE_ID#TREE_HASH``; the archive's description carries its
key and tags as compact JSON (at most 1,024 printable ASCII characters), so an inventory
rebuilt from the vault (``backup inventory sync``) can name what each archive is.

Writes stream: bodies shorter than one part go up in one ``upload_archive`` request; longer
ones as a multipart upload of fixed power-of-two parts, each sent with its SHA-256 tree hash
(ours, :mod:`backup.targets.treehash`) by a small thread pool, the buffered parts bounded,
and the upload completed with the whole archive's tree hash (or aborted on any failure).

Reading is a job: :meth:`GlacierTarget.request_retrieval` starts an ``archive-retrieval``
job with a tier (reusing a running or finished job for the same archive), its status comes
from the vault's job list, and :meth:`GlacierTarget.open_read` streams the job's output,
checking it against the archive's tree hash as it goes (a mismatch fails the read at its
end). Job output stays available about 24 hours after the job completes.

With ``BACKUP_GLACIER_SNS_TOPIC`` set (an SNS topic ARN), every job this target's client
starts names the topic (``SNSTopic`` in the job parameters: archive retrievals here, inventory
retrievals started by ``backup inventory sync`` through :attr:`GlacierTarget.client`), and the
vault publishes the job's description to it when the job finishes. With the topic subscribed
by the restore events queue, :func:`backup.coldplan.read_restore_events` reads those messages
and pending retrievals are checked at once. A job reused rather than started (another
process started it) notifies only if it was started with a topic; polling stays the source
of truth either way.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import parse_qs, urlparse

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import ObjectNotFound, TargetError
from ..threads import leave_signals_to_main
from ..times import parse_service_time
from .awserrors import error_code
from .base import ObjectInfo, Readiness, RetrievalStatus, Target, WriteOptions, check_key
from .s3client import glacier_client
from .streams import BodyReader, PartWriter
from .treehash import TreeHasher, chunk_hashes, tree_hash_of_hashes
from .vaultrefs import VaultRefs, format_ref, parse_ref

if TYPE_CHECKING:
    from mypy_boto3_glacier import GlacierClient

    from .base import RestoreNotice

__all__ = [
    "MAX_DESCRIPTION",
    "GlacierTarget",
    "GlacierWriter",
    "describe_archive",
    "format_ref",
    "parse_description",
    "parse_ref",
    "vault_error",
]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MAX_PARTS = 10_000
#: the longest archive description the vault accepts
MAX_DESCRIPTION = 1024
#: job output is kept this long after the job completes
OUTPUT_KEPT = timedelta(hours=24)
_TIERS = ("Expedited", "Standard", "Bulk")
_MARK = "backup/1"


def describe_archive(key: str, tags: dict[str, str] | None = None) -> str:
    """The archive description: compact JSON of the key and tags, printable ASCII, at most
    1,024 characters (tags are dropped, then the key cut, to fit).

    Args:
        key: the object key.
        tags: the write's tags.

    Returns:
        The description.
    """
    doc: dict[str, Any] = {"m": _MARK, "k": key}
    if tags:
        doc["t"] = dict(tags)
    text = json.dumps(doc, ensure_ascii=True, separators=(",", ":"))
    if len(text) > MAX_DESCRIPTION:
        doc.pop("t", None)
        text = json.dumps(doc, ensure_ascii=True, separators=(",", ":"))
    while len(text) > MAX_DESCRIPTION:
        doc["k"] = doc["k"][: len(doc["k"]) - (len(text) - MAX_DESCRIPTION) - 8]
        text = json.dumps(doc, ensure_ascii=True, separators=(",", ":"))
    return text


def parse_description(text: str | None) -> dict[str, Any] | None:
    """Returns: the key and tags of a description this product wrote, else None."""
    try:
        doc = json.loads(text or "")
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("m") != _MARK or not isinstance(doc.get("k"), str):
        return None
    return {"key": doc["k"], "tags": doc.get("t", {})}


def vault_error(e: BaseException) -> str:
    """Returns: one line telling what the vault (or the way to it) answered. An answer that
    is not the API's JSON (a proxy's or a failing server's HTML page) is named by its HTTP
    status, never quoted."""
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        code = str(err.get("Code") or "error")
        message = " ".join(str(err.get("Message") or "").split())
        if code.isdigit():  # botocore found no error code: the body was not the API's
            status = int(code)
            try:
                phrase = HTTPStatus(status).phrase
            except ValueError:
                phrase = "unexpected status"
            return f"the vault answered HTTP {status} {phrase}"
        if "<" in message and ">" in message:
            message = ""
        return f"{code}: {message[:300]}".rstrip(": ")
    return " ".join(f"{type(e).__name__}: {e}".split())[:300]


def _missing(e: ClientError) -> bool:
    return error_code(e) == "ResourceNotFoundException"


class _Verified(BodyReader):
    """Job output, tree-hashed as it is read; the read that reaches the end raises if the
    hash differs from the archive's."""

    def __init__(self, url: str, ref: str, body: Any, expected: str | None) -> None:
        super().__init__(body)
        self._url, self._ref, self._expected = url, ref, expected
        self._hasher = TreeHasher()
        self._checked = False

    def _seen(self, data: bytes) -> None:
        if data:
            self._hasher.update(data)
        elif not self._checked:
            self._checked = True
            got = self._hasher.hexdigest()
            if self._expected and got != self._expected:
                raise TargetError(
                    self._url,
                    f"retrieved {self._ref!r} does not match its tree hash "
                    f"({got} != {self._expected}): download corrupted",
                )


class GlacierWriter(PartWriter):
    """A streamed upload of one archive (see the module's description).

    Attributes:
        parts: how many multipart parts were sent (0 for a single-request upload).
        peak_parts_buffered: the most parts held at once (tests).
    """

    def __init__(self, target: GlacierTarget, key: str, options: WriteOptions) -> None:
        super().__init__(target.url, key)
        self._t = target
        self._desc = describe_archive(key, dict(options.tags))
        self._buf = bytearray()
        self._hashes: list[bytes] = []
        self._size = 0
        self.parts = 0
        self._upload_id: str | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future[None]] = []
        self._slots = threading.Semaphore(target.workers + 1)
        self._held = 0
        self.peak_parts_buffered = 0

    _why = staticmethod(vault_error)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._check()
        view = memoryview(data).cast("B")
        size = self._t.part_size
        pos, n = 0, len(view)
        while pos < n:
            take = min(size - len(self._buf), n - pos)
            self._buf += view[pos : pos + take]
            pos += take
            if len(self._buf) == size:
                self._send_part()
        self._size += n
        return n

    def _start(self) -> None:
        t = self._t
        try:
            resp = t.client.initiate_multipart_upload(
                accountId=t.account,
                vaultName=t.vault,
                archiveDescription=self._desc,
                partSize=str(t.part_size),
            )
        except (ClientError, BotoCoreError) as e:
            raise self._fail(e) from e
        self._upload_id = resp["uploadId"]
        self._pool = ThreadPoolExecutor(
            t.workers, thread_name_prefix="glacier-part", initializer=leave_signals_to_main
        )

    def _send_part(self) -> None:
        if self.parts >= MAX_PARTS:
            self.abort()
            raise TargetError(
                self._t.url,
                f"cannot store {self._key!r}: more than {MAX_PARTS} parts of "
                f"{self._t.part_size // MiB} MiB (raise part_size)",
            )
        if self._upload_id is None:
            self._start()
        assert self._pool is not None
        buf, self._buf = self._buf, bytearray()
        start = self.parts * self._t.part_size
        self.parts += 1
        hashes = chunk_hashes(buf)
        self._hashes.extend(hashes)
        self._slots.acquire()  # bounded: at most workers + 1 parts held
        with self._cond:
            self._held += 1
            self.peak_parts_buffered = max(self.peak_parts_buffered, self._held)
        self._futures.append(
            self._pool.submit(self._upload, start, buf, tree_hash_of_hashes(hashes).hex())
        )
        self._check()

    def _upload(self, start: int, buf: bytearray, checksum: str) -> None:
        t = self._t
        try:
            if self._error is None:
                t.client.upload_multipart_part(
                    accountId=t.account,
                    vaultName=t.vault,
                    uploadId=self._upload_id or "",
                    range=f"bytes {start}-{start + len(buf) - 1}/*",
                    checksum=checksum,
                    body=bytes(buf),
                )
        except BaseException as e:
            self._keep(e)
        finally:
            with self._cond:
                self._held -= 1
            self._slots.release()

    def commit(self) -> str:
        self._check()
        t = self._t
        if self._upload_id is None:
            body = bytes(self._buf)
            self._buf = bytearray()
            checksum = tree_hash_of_hashes(chunk_hashes(body)).hex()
            try:
                resp = t.client.upload_archive(
                    accountId=t.account,
                    vaultName=t.vault,
                    archiveDescription=self._desc,
                    checksum=checksum,
                    body=body,
                )
            except (ClientError, BotoCoreError) as e:
                self._finished = True
                raise self._fail(e) from e
            self._finished = True
            return format_ref(self._key, resp["archiveId"], checksum)
        if self._buf:
            self._send_part()
        for f in self._futures:
            f.result()
        self._check()
        checksum = tree_hash_of_hashes(self._hashes).hex()
        try:
            resp = t.client.complete_multipart_upload(
                accountId=t.account,
                vaultName=t.vault,
                uploadId=self._upload_id,
                archiveSize=str(self._size),
                checksum=checksum,
            )
        except (ClientError, BotoCoreError) as e:
            self.abort()
            raise self._fail(e) from e
        self._finished = True
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        return format_ref(self._key, resp["archiveId"], checksum)

    def abort(self) -> None:
        if not self._end():
            return
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._buf = bytearray()
        if self._upload_id is not None:
            try:
                self._t.client.abort_multipart_upload(
                    accountId=self._t.account, vaultName=self._t.vault, uploadId=self._upload_id
                )
            except (ClientError, BotoCoreError) as e:
                self._abort_failed(e)


class GlacierTarget(Target):
    """One Glacier vault.

    Args:
        url: ``glacier://vault[?region=...&tier=...&part_size=MiB&account=...]``.
        client: a boto3 Glacier client to use instead of building one (tests).
        workers: parts uploaded at once.
        sns_topic: SNS topic ARN every job started through :attr:`client` names; default
            ``Settings.glacier_sns_topic`` (``BACKUP_GLACIER_SNS_TOPIC``); ``""`` for none.

    Raises:
        TargetError: for a malformed URL or a bad parameter.
    """

    def __init__(
        self,
        url: str,
        *,
        client: GlacierClient | None = None,
        workers: int = 2,
        sns_topic: str | None = None,
    ) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "glacier" or not parsed.netloc or parsed.path.strip("/"):
            raise TargetError(url, "a Glacier vault target is written glacier://vault")
        self.url = url
        self.vault = parsed.netloc
        q = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        unknown = set(q) - {"region", "tier", "part_size", "account"}
        if unknown:
            raise TargetError(
                url,
                f"unknown parameter(s) {', '.join(sorted(unknown))}; known: region, tier, "
                "part_size, account",
            )
        self.tier = q.get("tier", "Standard").capitalize()
        if self.tier not in _TIERS:
            raise TargetError(url, f"tier {self.tier!r} is not one of {', '.join(_TIERS)}")
        try:
            mib = int(q.get("part_size", "32"))
        except ValueError:
            mib = 0
        if mib < 1 or mib > 4096 or mib & (mib - 1):
            raise TargetError(url, "part_size must be a power of two from 1 to 4096 (MiB)")
        self.part_size = mib * MiB
        self.account = q.get("account", "-")
        self.workers = max(1, workers)
        self.region = q.get("region") or None
        self._jobs: dict[str, str] = {}  # archive id -> retrieval job id started here
        if sns_topic is None:
            from ..settings import Settings

            sns_topic = Settings().glacier_sns_topic
        self.sns_topic = sns_topic or None
        self._client: GlacierClient | None = None
        self._client_lock = threading.Lock()
        if client is not None:
            self._hook(client)

    @property
    def client(self) -> GlacierClient:
        """The boto3 client, built on first use: reading a policy file opens every policy's
        target, and a client costs about 0.2 s and 3 MB to build."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._hook(glacier_client(self.region))
        assert self._client is not None
        return self._client

    def _hook(self, client: GlacierClient) -> None:
        if self.sns_topic:
            # on the client, so jobs others start through it (inventory sync) name it too
            client.meta.events.register(
                "before-parameter-build.glacier.InitiateJob", self._name_topic
            )
        self._client = client

    def _name_topic(self, params: dict[str, Any], **_kwargs: Any) -> None:
        job = params.get("jobParameters")
        if isinstance(job, dict) and self.sns_topic:
            job.setdefault("SNSTopic", self.sns_topic)

    reads_need_retrieval = True  # an archive is read from a retrieval job's output
    lists_at_once = False  # listing a vault is an inventory job (backup inventory sync)
    refs_are_keys = False  # KEY#ARCHIVE_ID#TREE_HASH: the vault names archives itself

    def restored_refs(self, notices: Iterable[RestoreNotice]) -> VaultRefs:
        """The archives of this vault whose job-completion messages are among ``notices``
        (the vault's name, and its region and account where the target names them, match
        the message's ``VaultARN``)."""
        region = getattr(getattr(self.client, "meta", None), "region_name", None)
        ids = []
        for n in notices:
            vault = n.vault
            if n.archive_id is None or vault is None:
                continue
            v_region, v_account, v_name = vault
            if v_name != self.vault:
                continue
            if self.account != "-" and v_account != self.account:
                continue
            if region and v_region and v_region != region:
                continue
            ids.append(n.archive_id)
        return VaultRefs(self.url, ids)

    def _fail(self, ref: str, doing: str, e: BaseException) -> TargetError:
        """Returns: the error for a failed request about ``ref``: ObjectNotFound when the
        vault has no such archive (or job), else what the vault answered."""
        if isinstance(e, ClientError) and _missing(e):
            return ObjectNotFound(self.url, ref)
        return TargetError(self.url, f"{doing} {ref!r}: {vault_error(e)}")

    def _aid(self, ref: str) -> str:
        return parse_ref(self.url, ref)[1]

    def open_write(self, key: str, options: WriteOptions | None = None) -> GlacierWriter:
        """Start an upload. Of the options, tags go into the archive description; ``hot``
        and Object Lock do not apply to a vault (vault lock policies are set on the vault)."""
        check_key(self.url, key)
        if "#" in key:
            raise TargetError(self.url, f"invalid object key {key!r}: '#' is not allowed")
        return GlacierWriter(self, key, options or WriteOptions())

    # jobs --------------------------------------------------------------------------------

    def jobs(self) -> list[dict[str, Any]]:
        """Returns: the vault's jobs (``list_jobs``, all pages), as the API describes them."""
        return self._job_list()

    def _job_list(self, **filters: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        try:
            pages = self.client.get_paginator("list_jobs").paginate(
                accountId=self.account,
                vaultName=self.vault,
                **filters,  # type: ignore[arg-type]
            )
            for page in pages:
                out.extend(dict(j) for j in page.get("JobList", []))
        except (ClientError, BotoCoreError) as e:
            raise TargetError(self.url, f"cannot list jobs: {vault_error(e)}") from e
        return out

    def _archive_jobs(self, aid: str) -> list[dict[str, Any]]:
        jobs = [
            j
            for j in self._job_list()
            if j.get("Action") == "ArchiveRetrieval" and j.get("ArchiveId") == aid
        ]
        return sorted(jobs, key=lambda j: str(j.get("CreationDate", "")), reverse=True)

    def _status_of(self, job: dict[str, Any]) -> RetrievalStatus:
        code = job.get("StatusCode")
        tier = job.get("Tier")
        if code == "InProgress":
            return RetrievalStatus(
                Readiness.PENDING, job_id=job["JobId"], storage_class="VAULT", tier=tier
            )
        if code == "Succeeded":
            done = parse_service_time(job.get("CompletionDate"))
            expires = done + OUTPUT_KEPT if done else None
            if expires is None or expires > datetime.now(UTC):
                return RetrievalStatus(
                    Readiness.READY,
                    job_id=job["JobId"],
                    storage_class="VAULT",
                    tier=tier,
                    expires=expires,
                )
        return RetrievalStatus(Readiness.NOT_REQUESTED, storage_class="VAULT", tier=tier)

    def _best_job(self, aid: str) -> RetrievalStatus:
        known = self._jobs.get(aid)
        if known is not None:
            try:
                job = dict(
                    self.client.describe_job(
                        accountId=self.account, vaultName=self.vault, jobId=known
                    )
                )
                st = self._status_of(job)
                if st.state is not Readiness.NOT_REQUESTED:
                    return st
            except (ClientError, BotoCoreError) as e:
                if not (isinstance(e, ClientError) and _missing(e)):
                    raise TargetError(self.url, f"cannot describe job: {vault_error(e)}") from e
        best = RetrievalStatus(Readiness.NOT_REQUESTED, storage_class="VAULT")
        for job in self._archive_jobs(aid):  # newest first: a ready one wins, then a running
            st = self._status_of(job)
            if st.state is Readiness.READY:
                self._jobs[aid] = str(job["JobId"])
                return st
            if st.state is Readiness.PENDING and best.state is Readiness.NOT_REQUESTED:
                best = st
        if best.job_id:
            self._jobs[aid] = best.job_id
        return best

    def request_retrieval(self, ref: str, *, tier: str | None = None) -> RetrievalStatus:
        """Start an ``archive-retrieval`` job, unless one for this archive is running or
        finished with its output still kept (then that job is reused).

        Args:
            ref: the archive's reference.
            tier: ``Expedited``, ``Standard`` or ``Bulk``; default the URL's ``tier``.

        Returns:
            PENDING with the job id, or READY if a finished job's output can be read.

        Raises:
            ObjectNotFound: the vault has no such archive.
            TargetError: the vault refused (e.g. no Expedited capacity).
        """
        current = self._best_job(self._aid(ref))
        if current.state is not Readiness.NOT_REQUESTED:
            return current
        return self.start_retrieval(ref, tier=tier)

    def start_retrieval(self, ref: str, *, tier: str | None = None) -> RetrievalStatus:
        """Start an ``archive-retrieval`` job without looking for one to reuse: for a caller
        that has just read the vault's job list (:meth:`retrieval_jobs`) and knows there is
        none, so many archives cost one listing rather than one each.

        Returns:
            PENDING with the job id.

        Raises:
            ObjectNotFound: the vault has no such archive.
            TargetError: the vault refused, or the tier is unknown.
        """
        aid = self._aid(ref)
        t = (tier or self.tier).capitalize()
        if t not in _TIERS:
            raise TargetError(self.url, f"tier {t!r} is not one of {', '.join(_TIERS)}")
        try:
            resp = self.client.initiate_job(
                accountId=self.account,
                vaultName=self.vault,
                jobParameters={
                    "Type": "archive-retrieval",
                    "ArchiveId": aid,
                    "Tier": t,
                    "Description": f"backup restore of {parse_ref(self.url, ref)[0]}"[:1024],
                },
            )
        except (ClientError, BotoCoreError) as e:
            raise self._fail(ref, "cannot start retrieval of", e) from e
        self._jobs[aid] = resp["jobId"]
        # the class lets pollers ask on the vault's schedule (hours), not every minute
        return RetrievalStatus(
            Readiness.PENDING, job_id=resp["jobId"], storage_class="VAULT", tier=t
        )

    def retrieval_jobs(self) -> dict[str, RetrievalStatus]:
        """The usable archive-retrieval job of every archive that has one, from one listing
        of the vault's jobs: a finished job whose output is still kept wins over a running
        one, and a newer over an older.

        Returns:
            Archive id to PENDING or READY (with the job id).
        """
        jobs = [j for j in self._job_list() if j.get("Action") == "ArchiveRetrieval"]
        best: dict[str, RetrievalStatus] = {}
        for job in sorted(jobs, key=lambda j: str(j.get("CreationDate", "")), reverse=True):
            aid = str(job.get("ArchiveId") or "")
            st = self._status_of(job)
            if not aid or st.state is Readiness.NOT_REQUESTED:
                continue
            have = best.get(aid)
            if have is None or (have.state is Readiness.PENDING and st.state is Readiness.READY):
                best[aid] = st
        for aid, st in best.items():
            if st.job_id:
                self._jobs[aid] = st.job_id
        return best

    def retrieval_status(self, ref: str) -> RetrievalStatus:
        """The state of the newest usable job for the archive (READY carries ``expires``,
        the end of the output's 24 hours)."""
        st = self._best_job(self._aid(ref))
        return RetrievalStatus(
            st.state,
            job_id=st.job_id,
            storage_class="VAULT",
            expires=st.expires,
            tier=st.tier,
        )

    def open_read(self, ref: str) -> BinaryIO:
        _key, aid, expected = parse_ref(self.url, ref)
        st = self._best_job(aid)
        if st.state is not Readiness.READY or st.job_id is None:
            raise TargetError(
                self.url, f"{ref!r} has no finished retrieval job: request one and wait for it"
            )
        return self.open_job_output(st.job_id, ref, expected)

    def open_job_output(self, job_id: str, ref: str, tree_hash: str | None = None) -> BinaryIO:
        """Stream a finished job's output, verified against the tree hash (the job's own
        when the vault gives it, else ``tree_hash``).

        Args:
            job_id: the retrieval job.
            ref: the archive's reference (for messages).
            tree_hash: the expected tree hash, hex.

        Returns:
            A reader whose final read raises TargetError on a mismatch.
        """
        try:
            job = dict(
                self.client.describe_job(accountId=self.account, vaultName=self.vault, jobId=job_id)
            )
            resp = self.client.get_job_output(
                accountId=self.account, vaultName=self.vault, jobId=job_id
            )
        except (ClientError, BotoCoreError) as e:
            raise self._fail(ref, "cannot read job output of", e) from e
        expected = str(job.get("SHA256TreeHash") or tree_hash or "") or None
        raw = _Verified(self.url, ref, resp["body"], expected)
        return io.BufferedReader(raw, MiB)

    # the rest of the contract --------------------------------------------------------------

    def delete(self, ref: str) -> None:
        try:
            self.client.delete_archive(
                accountId=self.account, vaultName=self.vault, archiveId=self._aid(ref)
            )
        except (ClientError, BotoCoreError) as e:
            err = self._fail(ref, "cannot delete", e)
            if not isinstance(err, ObjectNotFound):  # deleting an absent archive is not an error
                raise err from e

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        raise TargetError(
            self.url,
            "a vault cannot be listed at once: run 'backup inventory sync' (an inventory job)",
        )

    def exists(self, ref: str) -> bool:
        """A vault cannot tell at once; a reference with an archive id is taken to exist
        (``backup inventory sync`` checks for real)."""
        self._aid(ref)
        return True

    def describe(self, ref: str) -> tuple[ObjectInfo, RetrievalStatus]:
        """The vault cannot say an archive's size without an inventory job: size is 0 here
        (planners use the inventory's size); status as :meth:`retrieval_status`."""
        key = parse_ref(self.url, ref)[0]
        info = ObjectInfo(key, 0, datetime.fromtimestamp(0, UTC), "VAULT")
        return info, self.retrieval_status(ref)

    def stat(self, ref: str) -> ObjectInfo:
        return self.describe(ref)[0]

    def _uploads(self) -> Iterator[dict[str, Any]]:
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                accountId=self.account, vaultName=self.vault
            )
            for page in pages:
                yield from (dict(u) for u in page.get("UploadsList", []))
        except (ClientError, BotoCoreError) as e:
            raise TargetError(self.url, f"cannot list uploads: {vault_error(e)}") from e

    def _abort(self, up: dict[str, Any]) -> bool:
        try:
            self.client.abort_multipart_upload(
                accountId=self.account, vaultName=self.vault, uploadId=up["MultipartUploadId"]
            )
        except ClientError as e:
            if _missing(e):
                return False
            raise TargetError(self.url, f"cannot abort an upload: {vault_error(e)}") from e
        return True

    def partial_uploads(self, prefix: str = "") -> tuple[str, ...]:
        """Returns: the keys of this product's multipart uploads under ``prefix`` that were
        never completed nor aborted (from their descriptions)."""
        out = []
        for u in self._uploads():
            key = (parse_description(u.get("ArchiveDescription")) or {}).get("key")
            if isinstance(key, str) and key.startswith(prefix):
                out.append(key)
        return tuple(sorted(out))

    def abandon_partial(self, key: str) -> int:
        """Abort multipart uploads whose description names ``key``.

        Returns:
            How many were aborted.
        """
        mine = [
            u
            for u in self._uploads()
            if (parse_description(u.get("ArchiveDescription")) or {}).get("key") == key
        ]
        return sum(self._abort(u) for u in mine)

    def sweep_partial(self, older_than: timedelta = timedelta(hours=24)) -> int:
        """Abort this product's multipart uploads started more than ``older_than`` ago.

        Returns:
            How many were aborted.
        """
        cutoff = datetime.now(UTC) - older_than
        stale = []
        for u in self._uploads():
            if parse_description(u.get("ArchiveDescription")) is None:
                continue
            when = parse_service_time(u.get("CreationDate"))
            if when is not None and when < cutoff:
                stale.append(u)
        return sum(self._abort(u) for u in stale)
