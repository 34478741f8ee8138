"""A loopback HTTP endpoint that answers the Tigris snapshot API as Tigris documents it and
records every request, so tests can check the exact headers on the wire and that each one
is covered by the SigV4 signature.

It models what the snapshot provider uses: buckets with history (every write and delete
kept with a nanosecond time), CreateBucket with ``X-Tigris-Enable-Snapshot``,
``X-Tigris-Snapshot`` (take) and ``X-Tigris-Fork-Source-Bucket(-Snapshot)`` (fork),
ListBuckets with ``X-Tigris-Snapshot: BUCKET``, reads and listings with
``X-Tigris-Snapshot-Version``, HeadBucket's ``x-tigris-*`` headers, DeleteBucket with
``X-Tigris-Snapshot-Version`` (delete a snapshot), CopyObject with ``X-Tigris-Rename``, and
POST ``?bundle`` (a tar stream, ``__bundle_errors.json`` in skip mode).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape


@dataclass
class Request:
    """One request as it arrived."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def signed_headers(self) -> set[str]:
        """Returns: the header names the Authorization header says were signed."""
        auth = self.headers.get("authorization", "")
        for part in auth.split(","):
            part = part.strip()
            if part.startswith("SignedHeaders="):
                return set(part[len("SignedHeaders=") :].split(";"))
        return set()

    def tigris(self) -> dict[str, str]:
        """Returns: the x-tigris-* headers sent."""
        return {k: v for k, v in self.headers.items() if k.startswith("x-tigris-")}


@dataclass
class Bucket:
    snapshots_enabled: bool = False
    fork_source: str | None = None
    fork_snapshot: str | None = None
    #: (ns, key, body or None for a delete)
    events: list[tuple[int, str, bytes | None]] = field(default_factory=list)
    snapshots: list[tuple[str, str | None]] = field(default_factory=list)

    def state(self, at: int | None) -> dict[str, tuple[int, bytes]]:
        out: dict[str, tuple[int, bytes]] = {}
        for ns, key, body in sorted(self.events, key=lambda e: e[0]):
            if at is not None and ns > at:
                break
            if body is None:
                out.pop(key, None)
            else:
                out[key] = (ns, body)
        return out


def _etag(body: bytes) -> str:
    return hashlib.md5(body).hexdigest()


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class FakeTigris:
    """The server. ``url`` is its endpoint; ``requests`` what it received."""

    def __init__(self) -> None:
        self.buckets: dict[str, Bucket] = {}
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self._last_ns = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _handle(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n) if n else b""
                parts = urlsplit(self.path)
                req = Request(
                    self.command,
                    unquote(parts.path),
                    parse_qs(parts.query, keep_blank_values=True),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                with fake.lock:
                    fake.requests.append(req)
                status, headers, payload = fake.answer(req)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        host, port = self.server.server_address[:2]
        self.url = f"http://{host}:{port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # state helpers for tests ------------------------------------------------------------

    def now(self) -> int:
        with self.lock:
            self._last_ns = max(self._last_ns + 1, time.time_ns())
            return self._last_ns

    def put(self, bucket: str, key: str, body: bytes | None, ns: int | None = None) -> int:
        """Write (or, with ``body=None``, delete) ``key`` at ``ns`` (default now)."""
        ns = ns if ns is not None else self.now()
        self.buckets.setdefault(bucket, Bucket(snapshots_enabled=True)).events.append(
            (ns, key, body)
        )
        return ns

    def of(self, method: str, path_prefix: str = "") -> list[Request]:
        with self.lock:
            return [
                r for r in self.requests if r.method == method and r.path.startswith(path_prefix)
            ]

    # the API ----------------------------------------------------------------------------

    def answer(self, r: Request) -> tuple[int, dict[str, str], bytes]:
        if not r.headers.get("authorization", "").startswith("AWS4-HMAC-SHA256 "):
            return self.error(403, "AccessDenied")
        segs = r.path.lstrip("/").split("/", 1)
        bucket = segs[0]
        key = segs[1] if len(segs) > 1 else ""
        h = r.headers
        version = h.get("x-tigris-snapshot-version")
        at = int(version) if version else None
        if not bucket:
            return self.list_buckets(h.get("x-tigris-snapshot"))
        b = self.buckets.get(bucket)
        if not key:
            if r.method == "PUT":
                return self.create_bucket(bucket, h)
            if b is None:
                return self.error(404, "NoSuchBucket")
            if r.method == "HEAD":
                out = {}
                if b.snapshots_enabled:
                    out["x-tigris-enable-snapshot"] = "true"
                if b.fork_source:
                    out["x-tigris-fork-source-bucket"] = b.fork_source
                if b.fork_snapshot:
                    out["x-tigris-fork-source-bucket-snapshot"] = b.fork_snapshot
                return 200, out, b""
            if r.method == "DELETE":
                if version:
                    before = len(b.snapshots)
                    b.snapshots = [s for s in b.snapshots if s[0] != version]
                    if len(b.snapshots) == before:
                        return self.error(404, "NoSuchSnapshot")
                    return 204, {}, b""
                if any(x.fork_source == bucket for x in self.buckets.values()):
                    return self.error(409, "BucketHasForks")
                del self.buckets[bucket]
                return 204, {}, b""
            if r.method == "POST" and "bundle" in r.query:
                return self.bundle(b, r)
            if r.method == "GET" and r.query.get("list-type") == ["2"]:
                prefix = r.query.get("prefix", [""])[0]
                items = "".join(
                    f"<Contents><Key>{escape(k)}</Key><LastModified>{_iso(ns)}</LastModified>"
                    f'<ETag>"{_etag(data)}"</ETag><Size>{len(data)}</Size>'
                    "<StorageClass>STANDARD</StorageClass></Contents>"
                    for k, (ns, data) in sorted(b.state(at).items())
                    if k.startswith(prefix)
                )
                return self.xml(
                    f"<ListBucketResult><Name>{bucket}</Name><Prefix>{escape(prefix)}</Prefix>"
                    f"<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>{items}"
                    "</ListBucketResult>"
                )
            return self.error(400, "NotImplemented")
        if b is None:
            return self.error(404, "NoSuchBucket")
        if r.method in ("GET", "HEAD"):
            obj = b.state(at).get(key)
            if obj is None:
                return self.error(404, "NoSuchKey")
            ns, data = obj
            return (
                200,
                {
                    "ETag": f'"{_etag(data)}"',
                    "Last-Modified": formatdate(ns / 1e9, usegmt=True),
                    "Content-Type": "application/octet-stream",
                },
                data,  # the handler sends no body for HEAD, but its length
            )
        if r.method == "PUT" and "x-amz-copy-source" in h:
            src = unquote(h["x-amz-copy-source"]).lstrip("/")
            sb, _, sk = src.partition("/")
            sbucket = self.buckets.get(sb)
            obj = sbucket.state(at).get(sk) if sbucket else None
            if obj is None:
                return self.error(404, "NoSuchKey")
            now = self.now()
            b.events.append((now, key, obj[1]))
            if h.get("x-tigris-rename") == "true":
                b.events.append((now + 1, sk, None))
            return self.xml(
                f'<CopyObjectResult><ETag>"{_etag(obj[1])}"</ETag>'
                f"<LastModified>{_iso(now)}</LastModified></CopyObjectResult>"
            )
        return self.error(400, "NotImplemented")

    def create_bucket(self, name: str, h: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        b = self.buckets.get(name)
        snap = h.get("x-tigris-snapshot")
        if snap is not None:
            if b is None:
                return self.error(404, "NoSuchBucket")
            if not b.snapshots_enabled:
                return self.error(400, "SnapshotNotEnabled")
            sname = None
            for part in snap.split(";")[1:]:
                k, _, v = part.strip().partition("=")
                if k == "name":
                    sname = v
            version = str(self.now())
            b.snapshots.append((version, sname))
            return 200, {"x-tigris-snapshot-version": version}, b""
        if b is not None:
            return self.error(409, "BucketAlreadyOwnedByYou")
        src = h.get("x-tigris-fork-source-bucket")
        if src is not None:
            sb = self.buckets.get(src)
            if sb is None:
                return self.error(404, "NoSuchBucket")
            at_v = h.get("x-tigris-fork-source-bucket-snapshot")
            state = sb.state(int(at_v) if at_v else None)
            now = self.now()
            self.buckets[name] = Bucket(
                snapshots_enabled=True,
                fork_source=src,
                fork_snapshot=at_v,
                events=[(now, k, data) for k, (_, data) in state.items()],
            )
            return 200, {}, b""
        self.buckets[name] = Bucket(snapshots_enabled=h.get("x-tigris-enable-snapshot") == "true")
        return 200, {}, b""

    def list_buckets(self, snapshot_of: str | None) -> tuple[int, dict[str, str], bytes]:
        if snapshot_of is not None:
            b = self.buckets.get(snapshot_of)
            if b is None:
                return self.error(404, "NoSuchBucket")
            rows = [(f"{v}; name={n}" if n else v, _iso(int(v))) for v, n in b.snapshots]
        else:
            rows = [(n, _iso(self.now())) for n in sorted(self.buckets)]
        items = "".join(
            f"<Bucket><Name>{escape(n)}</Name><CreationDate>{d}</CreationDate></Bucket>"
            for n, d in rows
        )
        return self.xml(
            "<ListAllMyBucketsResult><Owner><ID>o</ID></Owner>"
            f"<Buckets>{items}</Buckets></ListAllMyBucketsResult>"
        )

    def bundle(self, b: Bucket, r: Request) -> tuple[int, dict[str, str], bytes]:
        keys = json.loads(r.body)["keys"]
        skip = r.headers.get("x-tigris-bundle-on-error", "skip") == "skip"
        state = b.state(None)
        missing = [k for k in keys if k not in state]
        if missing and not skip:
            return self.error(404, "NoSuchKey")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for k in keys:
                if k in state:
                    data = state[k][1]
                    info = tarfile.TarInfo(k)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            if missing:
                data = json.dumps(
                    {"errors": [{"key": k, "code": "NoSuchKey"} for k in missing]}
                ).encode()
                info = tarfile.TarInfo("__bundle_errors.json")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return 200, {"Content-Type": "application/x-tar"}, buf.getvalue()

    @staticmethod
    def xml(body: str) -> tuple[int, dict[str, str], bytes]:
        return (
            200,
            {"Content-Type": "application/xml"},
            ('<?xml version="1.0" encoding="UTF-8"?>' + body).encode(),
        )

    @staticmethod
    def error(status: int, code: str) -> tuple[int, dict[str, str], bytes]:
        return (
            status,
            {"Content-Type": "application/xml"},
            (f"<Error><Code>{code}</Code><Message>{code}</Message></Error>").encode(),
        )
