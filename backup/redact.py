"""URL redaction: one place that decides what of a URL may be shown.

Two strengths, for two kinds of URL:

- :func:`hide_password` for infrastructure URLs (the inventory's database, the broker, a
  target): only the user info's password is a secret; the user, host and path help whoever
  reads the message.
- :func:`redact_url` for URLs whose every part may be a secret (notification URLs carry
  tokens in the host, the path and the query): only the scheme, a real host name or address,
  the port and a few harmless query parameters are kept.

Invariant: neither ever raises nor returns its input's secret parts; text that cannot be
parsed as a URL is masked whole. This module imports nothing from the package, so every
layer may use it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

__all__ = [
    "MASK",
    "PLAIN_PARAMS",
    "UrlParts",
    "hide_password",
    "public_host",
    "redact_url",
    "split_url",
    "url_secrets",
]

MASK = "***"

#: query parameters whose values say how to deliver, never who may: shown as they are
PLAIN_PARAMS = frozenset(
    {"mode", "format", "overflow", "verify", "cto", "rto", "method", "priority", "port"}
)
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,63}$")
_MIN_SECRET = 3  # shorter strings are not scrubbed from text (it would garble it)


@dataclass(frozen=True)
class UrlParts:
    """A URL as :func:`split_url` reads it."""

    scheme: str
    userinfo: str | None
    host: str
    port: str | None
    path: str
    query: list[tuple[str, str]]
    fragment: str


def split_url(url: str) -> UrlParts | None:
    """Split a URL by hand: tokens make ``urllib`` choke (a bot token's ``:`` is not a port),
    so the only structure trusted is ``scheme://[userinfo@]host[:port][/path][?q][#f]``.

    Returns:
        The parts, or None for text that is not ``scheme://...``.
    """
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", url.strip(), re.S)
    if not m:
        return None
    scheme, rest = m.group(1), m.group(2)
    rest, _, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    slash = rest.find("/")
    netloc, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    userinfo: str | None = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
    host, port = netloc, None
    if netloc.startswith("[") and "]" in netloc:  # [IPv6]:port
        end = netloc.index("]") + 1
        host, tail = netloc[:end], netloc[end:]
        port = tail[1:] if tail.startswith(":") and tail[1:].isdigit() else None
        if tail and port is None:
            host = netloc
    elif ":" in netloc:
        h, _, p = netloc.rpartition(":")
        if p.isdigit() and ":" not in h:
            host, port = h, p
    pairs = parse_qsl(query, keep_blank_values=True)
    return UrlParts(scheme, userinfo, host, port, path, pairs, fragment)


def public_host(host: str) -> bool:
    """Whether a host is a real host name or address (kept) rather than a token (masked)."""
    if host.lower() == "localhost" or _HOSTNAME.match(host):
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def redact_url(url: str) -> str:
    """A URL fit for logs when any part of it may be a secret: the scheme, and the host when
    it is a real host name or address, with every user name, password, path segment, query
    value (but a few harmless ones such as ``mode``) and fragment masked.

    Args:
        url: any URL.

    Returns:
        e.g. ``mailto://***:***@smtp.example.com:587?to=***&mode=starttls`` for
        ``mailto://me:pw@smtp.example.com:587?to=a@b.c&mode=starttls``, and ``tgram://***/***``
        for ``tgram://123456:ABC-token/4242``. Text that is not a URL becomes ``***``.
    """
    p = split_url(url)
    if p is None:
        return MASK
    out = f"{p.scheme}://"
    if p.userinfo is not None:
        out += ":".join(MASK for _ in p.userinfo.split(":", 1)) + "@"
    out += p.host if public_host(p.host) else MASK
    if p.port is not None:
        out += f":{p.port}"
    segments = [s for s in p.path.split("/") if s]
    if segments:
        out += "/" + "/".join(MASK for _ in segments)
    if p.query:
        out += "?" + "&".join(f"{k}={v if k.lower() in PLAIN_PARAMS else MASK}" for k, v in p.query)
    if p.fragment:
        out += "#" + MASK
    return out


def url_secrets(url: str) -> set[str]:
    """The strings of a URL that :func:`redact_url` masks, raw and percent-decoded (those
    long enough to be scrubbed from free text without garbling it)."""
    p = split_url(url)
    if p is None:
        return {url.strip()} if url.strip() else set()
    found: set[str] = set()
    if p.userinfo:
        found.update(p.userinfo.split(":", 1))
    if not public_host(p.host):
        found.add(p.host)
        found.update(p.host.split(":"))
    found.update(s for s in p.path.split("/") if s)
    found.update(v for k, v in p.query if k.lower() not in PLAIN_PARAMS)
    if p.fragment:
        found.add(p.fragment)
    found |= {unquote(s) for s in found}
    return {s for s in found if len(s) >= _MIN_SECRET}


def hide_password(url: str, *, keep_user: bool = True) -> str:
    """An infrastructure URL (database, broker, target) fit for a message.

    Args:
        url: the URL.
        keep_user: show the user name (``user:***@host``); else the whole user info is
            masked (``***@host``).

    Returns:
        The URL with its password (or user info) masked, the rest as it was; a URL
        ``urllib`` cannot split becomes ``<unparseable URL>``.
    """
    try:
        parts = urlsplit(url)
        userinfo, at, host = parts.netloc.rpartition("@")
    except ValueError:
        return "<unparseable URL>"
    if not at:
        return url
    if keep_user:
        user, colon, _password = userinfo.partition(":")
        shown = f"{user}:{MASK}" if colon else user
    else:
        shown = MASK
    return urlunsplit(parts._replace(netloc=f"{shown}@{host}"))
