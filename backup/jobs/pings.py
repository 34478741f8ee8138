"""Dead-man pings: tell a monitoring service that a policy's run started and how it ended.

Two protocols, chosen by the URL:

- healthchecks.io (and services that speak it: Cronitor's, Healthchecks self-hosted, ...):
  ``URL/start`` when the run starts, ``URL`` on success, ``URL/fail`` on failure, and
  ``URL/3`` for a partial run (exit code 3: some files could not be read), which
  healthchecks.io counts as a failure with that exit status.
- Uptime Kuma push monitors (a path holding ``/api/push/``): ``status=up`` on success,
  ``status=down`` with a message otherwise; no start ping (a push monitor has no "started").

Invariants:
- A ping never fails or delays a backup beyond its bounded retries: every error is caught,
  retried (3 tries, 0.5 s then 1 s apart, 10 s timeout each) and logged.
- The URL is a secret (its token is the whole credential): logs and events name it only as
  :func:`backup.redact.redact_url` shows it.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Callable
from enum import StrEnum

from ..redact import redact_url

__all__ = ["Outcome", "ping", "ping_url_for"]

log = logging.getLogger("backup.pings")

TRIES = 3
TIMEOUT_S = 10.0


class Outcome(StrEnum):
    """What a ping says."""

    START = "start"
    SUCCESS = "success"
    PARTIAL = "partial"
    FAILURE = "failure"


def _is_kuma(url: str) -> bool:
    return "/api/push/" in urllib.parse.urlsplit(url).path


def ping_url_for(url: str, outcome: Outcome, message: str = "") -> str | None:
    """The URL to request for an outcome, or None when the protocol has no such ping.

    Args:
        url: the policy's ``ping_url``.
        outcome: what happened.
        message: a short reason (Uptime Kuma shows it; healthchecks.io gets none in the URL).
    """
    parts = urllib.parse.urlsplit(url)
    if _is_kuma(url):
        if outcome is Outcome.START:
            return None
        query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        query["status"] = "up" if outcome is Outcome.SUCCESS else "down"
        query["msg"] = message or outcome.value
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
    suffix = {Outcome.START: "/start", Outcome.SUCCESS: "", Outcome.PARTIAL: "/3"}.get(
        outcome, "/fail"
    )
    return urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + suffix))


def _get(url: str) -> None:
    import urllib.request  # 10 ms of every run's start-up, for a policy without a monitor

    req = urllib.request.Request(url, headers={"User-Agent": "backup-ping"})
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
        r.read(1024)


def ping(
    url: str | None,
    outcome: Outcome,
    message: str = "",
    *,
    log_event: Callable[[str, str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Send one ping; never raises.

    Args:
        url: the policy's ``ping_url`` (None: nothing to do).
        outcome: what to say.
        message: a short reason, for protocols that carry one.
        log_event: told ``(level, text)`` when the ping fails for good (the inventory's log).
        sleep: how to wait between tries.

    Returns:
        True when the service answered with a 2xx (or there was nothing to send).
    """
    if not url:
        return True
    target = ping_url_for(url, outcome, message)
    if target is None:
        return True
    shown = redact_url(url)
    why = ""
    for attempt in range(TRIES):
        try:
            _get(target)
            return True
        except (OSError, ValueError) as e:  # urllib's URLError and HTTPError are OSErrors
            why = f"{type(e).__name__}: {getattr(e, 'reason', None) or getattr(e, 'code', '') or e}"
            # the error text may carry the URL itself: name the host only
            why = why.replace(target, shown).replace(url, shown)
            log.warning(
                "ping %s (%s) failed, try %d of %d: %s", shown, outcome, attempt + 1, TRIES, why
            )
        if attempt + 1 < TRIES:
            sleep(0.5 * 2**attempt)
    if log_event is not None:
        log_event("warning", f"monitor ping {outcome.value} to {shown} failed: {why}")
    return False
