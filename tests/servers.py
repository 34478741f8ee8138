"""Real local servers that notifications are sent to: an SMTP server (aiosmtpd) for
``mailto://`` and an HTTP receiver (http.server in a thread) for ``json://``. Their fixtures
are available to every test through tests/conftest.py."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

__all__ = ["Mailbox", "Receiver", "free_port", "receiver", "smtp", "text_of"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- a real SMTP server ------------------------------------------------------------------------


@dataclass
class Mailbox:
    port: int
    messages: list[tuple[str, list[str], EmailMessage]] = field(default_factory=list)

    def url(self, to: str = "ops@example.com") -> str:
        """Plain SMTP, no TLS, no login: ``mode=insecure`` on a ``mailto://`` URL."""
        return f"mailto://127.0.0.1:{self.port}?from=backup@example.com&to={to}&mode=insecure"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[Mailbox]:
    box = Mailbox(free_port())
    controller = Controller(box, hostname="127.0.0.1", port=box.port)
    controller.start()
    yield box
    controller.stop()


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content


# -- a real HTTP receiver ----------------------------------------------------------------------


@dataclass
class Receiver:
    port: int
    statuses: list[int] = field(default_factory=list)  # answered in turn, then 200
    requests: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)

    def url(self, path: str = "/hook") -> str:
        return f"json://127.0.0.1:{self.port}{path}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver(0)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            payload = json.loads(self.rfile.read(length) or b"null")
            with lock:
                rec.requests.append((self.path, dict(self.headers), payload))
                status = rec.statuses.pop(0) if rec.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()
