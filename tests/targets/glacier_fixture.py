"""A loopback HTTP server speaking the Glacier vault API's multipart upload (which moto lacks),
checking what the service checks: the part size is a power of two MiB; every part's range
starts on a part boundary and is exactly one part long (only the last may be shorter); each
part's ``x-amz-sha256-tree-hash`` and ``x-amz-content-sha256`` match its bytes; completion
covers the archive without gaps, with the right size and whole-archive tree hash. Hashes are
computed with botocore's ``calculate_tree_hash``, independently of the code under test."""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from botocore.utils import calculate_tree_hash

__all__ = ["FakeVaults", "Upload"]

MiB = 1024 * 1024
_UP = re.compile(r"^/([^/]+)/vaults/([^/]+)/multipart-uploads(?:/([^/?]+))?$")
_ARCH = re.compile(r"^/([^/]+)/vaults/([^/]+)/archives$")


@dataclass
class Upload:
    vault: str
    description: str
    part_size: int
    created: datetime
    parts: dict[int, bytes] = field(default_factory=dict)


class FakeVaults:
    """Start with ``with FakeVaults() as fv``; ``fv.endpoint`` is the URL.

    Attributes:
        uploads: open multipart uploads by id.
        archives: completed archives by id: (description, bytes).
        errors: what the server refused, in order (tests assert on it).
        fail_part: a 0-based part index the server refuses (fault injection).
        requests: request counts by kind.
    """

    def __init__(self) -> None:
        self.uploads: dict[str, Upload] = {}
        self.archives: dict[str, tuple[str, bytes]] = {}
        self.errors: list[str] = []
        self.fail_part: int | None = None
        self.requests: dict[str, int] = {}
        self.lock = threading.Lock()
        fv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _send(self, code: int, headers: dict[str, str], body: bytes = b"") -> None:
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _error(self, code: int, kind: str, msg: str) -> None:
                with fv.lock:
                    fv.errors.append(msg)
                body = json.dumps({"code": kind, "message": msg, "type": "Client"}).encode()
                self._send(code, {"Content-Type": "application/json"}, body)

            def _count(self, kind: str) -> None:
                with fv.lock:
                    fv.requests[kind] = fv.requests.get(kind, 0) + 1

            def do_POST(self) -> None:
                body = self._body()
                path = self.path.split("?")[0]
                m = _ARCH.match(path)
                if m:
                    self._count("upload_archive")
                    th = calculate_tree_hash(io.BytesIO(body))
                    if self.headers.get("x-amz-sha256-tree-hash") != th:
                        return self._error(400, "InvalidParameterValueException", "bad tree hash")
                    aid = uuid.uuid4().hex
                    with fv.lock:
                        fv.archives[aid] = (self.headers.get("x-amz-archive-description", ""), body)
                    return self._send(
                        201,
                        {"x-amz-archive-id": aid, "x-amz-sha256-tree-hash": th, "Location": "/"},
                    )
                m = _UP.match(path)
                if not m:
                    return self._error(404, "ResourceNotFoundException", f"no route {path}")
                vault, upload_id = m.group(2), m.group(3)
                if upload_id is None:
                    self._count("initiate")
                    size = int(self.headers.get("x-amz-part-size") or 0)
                    if size < MiB or size > 4096 * MiB or size & (size - 1):
                        return self._error(
                            400, "InvalidParameterValueException", f"bad part size {size}"
                        )
                    uid = uuid.uuid4().hex
                    with fv.lock:
                        fv.uploads[uid] = Upload(
                            vault,
                            self.headers.get("x-amz-archive-description", ""),
                            size,
                            datetime.now(UTC),
                        )
                    return self._send(
                        201, {"x-amz-multipart-upload-id": uid, "Location": f"/{uid}"}
                    )
                self._count("complete")
                up = fv.uploads.get(upload_id)
                if up is None:
                    return self._error(404, "ResourceNotFoundException", "no such upload")
                total = int(self.headers.get("x-amz-archive-size") or -1)
                data = b"".join(up.parts[i] for i in sorted(up.parts))
                n = len(up.parts)
                if sorted(up.parts) != list(range(n)):
                    return self._error(400, "InvalidParameterValueException", "parts missing")
                if any(len(up.parts[i]) != up.part_size for i in range(n - 1)):
                    return self._error(400, "InvalidParameterValueException", "short inner part")
                if len(data) != total:
                    return self._error(
                        400, "InvalidParameterValueException", f"size {total} != {len(data)}"
                    )
                th = calculate_tree_hash(io.BytesIO(data))
                if self.headers.get("x-amz-sha256-tree-hash") != th:
                    return self._error(400, "InvalidParameterValueException", "archive tree hash")
                aid = uuid.uuid4().hex
                with fv.lock:
                    fv.archives[aid] = (up.description, data)
                    del fv.uploads[upload_id]
                return self._send(
                    201, {"x-amz-archive-id": aid, "x-amz-sha256-tree-hash": th, "Location": "/"}
                )

            def do_PUT(self) -> None:
                body = self._body()
                m = _UP.match(self.path.split("?")[0])
                if not m or not m.group(3):
                    return self._error(404, "ResourceNotFoundException", "no route")
                self._count("part")
                up = fv.uploads.get(m.group(3))
                if up is None:
                    return self._error(404, "ResourceNotFoundException", "no such upload")
                r = re.match(r"^bytes (\d+)-(\d+)/\*$", self.headers.get("Content-Range", ""))
                if not r:
                    return self._error(400, "InvalidParameterValueException", "bad range")
                start, end = int(r.group(1)), int(r.group(2))
                if start % up.part_size or end - start + 1 != len(body):
                    return self._error(400, "InvalidParameterValueException", "range/body")
                if len(body) > up.part_size:
                    return self._error(400, "InvalidParameterValueException", "part too long")
                index = start // up.part_size
                if index == fv.fail_part:
                    return self._error(400, "InvalidParameterValueException", "injected failure")
                if self.headers.get("x-amz-content-sha256") != hashlib.sha256(body).hexdigest():
                    return self._error(400, "InvalidParameterValueException", "content sha256")
                th = calculate_tree_hash(io.BytesIO(body))
                if self.headers.get("x-amz-sha256-tree-hash") != th:
                    return self._error(400, "InvalidParameterValueException", "part tree hash")
                with fv.lock:
                    up.parts[index] = body
                self._send(204, {"x-amz-sha256-tree-hash": th})

            def do_DELETE(self) -> None:
                self._body()
                m = _UP.match(self.path.split("?")[0])
                if not m or not m.group(3):
                    return self._error(404, "ResourceNotFoundException", "no route")
                self._count("abort")
                with fv.lock:
                    fv.uploads.pop(m.group(3), None)
                self._send(204, {})

            def do_GET(self) -> None:
                m = _UP.match(self.path.split("?")[0])
                if not m or m.group(3):
                    return self._error(404, "ResourceNotFoundException", "no route")
                with fv.lock:
                    ups = [
                        {
                            "MultipartUploadId": uid,
                            "ArchiveDescription": u.description,
                            "CreationDate": u.created.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                            "PartSizeInBytes": u.part_size,
                            "VaultARN": f"arn:aws:glacier:us-east-1:1:vaults/{u.vault}",
                        }
                        for uid, u in fv.uploads.items()
                    ]
                body = json.dumps({"UploadsList": ups, "Marker": None}).encode()
                self._send(200, {"Content-Type": "application/json"}, body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeVaults:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
