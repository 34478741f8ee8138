"""Notifications through Apprise URLs (``mailto://``, ``json://``, ``ntfy://``, Slack, ...).

Invariants:

- **A notification never fails a backup or a restore.** :func:`send` never raises: every
  URL is tried on its own, retried with exponential backoff, and whatever happens is
  returned as a :class:`NotifyResult` and logged.
- **Secrets in Apprise URLs never reach a log or a result.** Apprise URLs carry passwords
  and tokens in the user info, the host (``tgram://BOT_TOKEN/...``), the path
  (``discord://ID/TOKEN``) and the query. Only :func:`privacy_url`'s form of a URL is logged
  or returned (Apprise's own privacy form for the scheme, with every part that may be a
  token masked as well), and while a URL is being sent its secret parts are scrubbed from
  every record of Apprise's ``apprise`` logger and of the HTTP client's loggers, whichever
  handler the application attached.
- **Messages take plain values** (strings, numbers, datetimes), never ORM rows, so they can
  be built anywhere: in a worker, in a test, in the CLI.
- **Secrets never enter the inventory.** A restore request's targets are stored with the
  request so any worker can send them: a URL that carries a credential
  (:func:`credentials_in`) is refused there and given instead as a *named target*, a name
  (``--notify ops``) that each process resolves from its own environment
  (``BACKUP_NOTIFY_OPS``, :func:`backup.settings.notify_target`) when it sends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qsl

from .errors import NotifyTargetError
from .redact import (
    MASK,
    PLAIN_PARAMS,
    hide_password,
    public_host,
    redact_url,
    split_url,
    url_secrets,
)
from .settings import is_notify_target_name as is_target_name
from .settings import notify_target, notify_target_variable
from .units import human_bytes, human_duration, short_bytes

__all__ = [
    "NotifyResult",
    "RetryLater",
    "UrlOutcome",
    "check_request_targets",
    "credentials_in",
    "format_backup_message",
    "format_restore_message",
    "human_bytes",
    "human_duration",
    "is_target_name",
    "privacy_url",
    "redact_url",
    "resolve_targets",
    "send",
    "shown_target",
]

log = logging.getLogger(__name__)

Level = Literal["info", "success", "warning", "failure"]

# Query parameters that name addresses or people, not credentials: a URL may be stored with
# these (and the plain ones); any other query value may be a key, so it may not.
_ADDRESS_PARAMS = PLAIN_PARAMS | {"to", "from", "cc", "bcc", "name", "reply", "smtp", "user"}
# Schemes whose path is where to deliver (an HTTP endpoint, a mail recipient), not a token as
# it is for ``discord://ID/TOKEN``, ``gotify://host/TOKEN`` or ``ntfy://host/topic``
_ADDRESS_PATH_SCHEMES = frozenset(
    {"json", "jsons", "xml", "xmls", "form", "forms", "mailto", "mailtos"}
)

# -- redaction ---------------------------------------------------------------------------------


def credentials_in(url: str) -> list[str]:
    """What in an Apprise URL is (or may be) a credential.

    Args:
        url: an Apprise URL.

    Returns:
        Descriptions such as ``"a password"`` or ``"a host part that may be a token"``; empty
        when the URL holds nothing but addresses (``json://host:port/path``,
        ``mailto://host?to=a@b.c&mode=starttls``).
    """
    p = split_url(url)
    if p is None:
        return ["text that is not a URL"]
    found = []
    if p.userinfo is not None and ":" in p.userinfo:
        found.append("a password")
    if not public_host(p.host):
        found.append("a host part that may be a token")
    if p.scheme.lower() not in _ADDRESS_PATH_SCHEMES and p.path.strip("/"):
        found.append(f"path segments, which are tokens for {p.scheme}://")
    keys = sorted({k for k, _ in p.query if k.lower() not in _ADDRESS_PARAMS})
    if keys:
        found.append(f"the query value(s) of {', '.join(keys)}")
    if p.fragment:
        found.append("a fragment")
    return found


def _instantiate(url: str) -> Any:
    """Returns: Apprise's plugin for ``url`` (its secrets kept in memory only), or None
    when Apprise does not understand it."""
    import apprise

    asset = apprise.AppriseAsset(storage_mode="memory")
    return apprise.Apprise.instantiate(url, asset=asset, suppress_exceptions=True)


def privacy_url(url: str) -> str:
    """An Apprise URL fit for logs, as Apprise's plugin for its scheme writes it with privacy
    on (each scheme's passwords and tokens masked as that plugin knows them), keeping of the
    query only what the URL gave; then, because a plugin may take a secret for an address
    (``json://host/TOKEN``'s path), every part :func:`backup.redact.redact_url` would mask
    is masked too. A URL Apprise cannot parse gets :func:`~backup.redact.redact_url`'s form.

    Args:
        url: an Apprise URL.

    Returns:
        e.g. ``discord://1...6/***/`` for ``discord://112233445566/TokenAbCdEf``.
    """
    _install_filter()  # Apprise logs the URL it loads: scrubbed like a send's records
    with _active.active(url_secrets(url)):
        try:
            plugin = _instantiate(url)
            shown = str(plugin.url(privacy=True)) if plugin is not None else ""
        except Exception:  # a plugin bug: the generic form is always safe
            shown = ""
    if not shown:
        return redact_url(url)
    given = split_url(url)
    keys = {k.lower() for k, _ in given.query} if given else set()
    base, _, query = shown.partition("?")
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k.lower() in keys]
    shown = base + ("?" + "&".join(f"{k}={v}" for k, v in kept) if kept else "")
    for secret in sorted(url_secrets(url), key=len, reverse=True):
        shown = shown.replace(secret, MASK)
    return shown


def shown_target(entry: str) -> str:
    """Returns: a target as shown to users: a name as it is, a URL as :func:`privacy_url`."""
    return entry if is_target_name(entry) else privacy_url(entry)


def check_request_targets(entries: Sequence[str], *, here: bool) -> list[str]:
    """Check the targets of a restore request (``--notify``), which are stored with it.

    Args:
        entries: Apprise URLs without credentials, and names of targets.
        here: whether this process sends the notification (no broker): then every name
            must be defined in its environment.

    Returns:
        The names not defined in this process's environment (left for the workers' own).

    Raises:
        NotifyTargetError: for a URL with a credential (it would be stored as it is), text
            that is neither a URL nor a name, or (``here``) a name not defined.
    """
    undefined = []
    for entry in entries:
        if is_target_name(entry):
            if notify_target(entry) is None:
                if here:
                    raise NotifyTargetError(
                        entry,
                        f"no such target: set {notify_target_variable(entry)} to its "
                        "Apprise URL(s)",
                    )
                undefined.append(entry)
            continue
        if "://" not in entry:
            raise NotifyTargetError(
                "(not shown)",
                "neither an Apprise URL (scheme://...) nor a target name (a letter, then "
                "letters, digits or _)",
            )
        found = credentials_in(entry)
        if found:
            raise NotifyTargetError(
                privacy_url(entry),
                f"it holds {' and '.join(found)}, and a request's targets are stored in the "
                "inventory: define it as a named target instead, BACKUP_NOTIFY_<NAME>=URL in "
                "the environment of the processes that send it, and pass --notify <NAME>",
            )
    return undefined


def resolve_targets(entries: Sequence[str]) -> tuple[list[str], list[str]]:
    """Turn target names into their URLs, from this process's environment.

    Args:
        entries: Apprise URLs and names of targets.

    Returns:
        ``(urls, undefined)``: the URLs (each once, in order) and the names this process
        does not define (each logged at ERROR).
    """
    urls: list[str] = []
    undefined: list[str] = []
    for entry in entries:
        if not is_target_name(entry):
            urls.append(entry)
            continue
        named = notify_target(entry)
        if named is None:
            log.error(
                "notification target %s is not defined here: set %s to its Apprise URL(s)",
                entry, notify_target_variable(entry),
            )  # fmt: skip
            undefined.append(entry)
        else:
            urls += named
    return list(dict.fromkeys(urls)), undefined


class _Secrets:
    """Secrets of the URLs being sent right now, in any thread (reference counted)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count: dict[str, int] = {}

    @contextmanager
    def active(self, secrets: set[str]) -> Iterator[None]:
        with self._lock:
            for s in secrets:
                self._count[s] = self._count.get(s, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                for s in secrets:
                    self._count[s] -= 1
                    if not self._count[s]:
                        del self._count[s]

    def scrub(self, text: str) -> str:
        with self._lock:
            current = sorted(self._count, key=len, reverse=True)
        for s in current:
            text = text.replace(s, MASK)
        return text


_active = _Secrets()


class _ScrubFilter(logging.Filter):
    """Rewrites every record of the loggers it is on with active secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = _active.scrub(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = _active.scrub(text)
        return True


class _Collect(logging.Handler):
    """Keeps the warnings Apprise logs from one thread: the reason a delivery failed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


_filter_lock = threading.Lock()
_scrub_filter = _ScrubFilter()


# Loggers that see a URL's parts while Apprise sends: Apprise's own, and the HTTP client's
# (urllib3 logs each request's path at DEBUG). A logger's filter does not apply to its
# children's records, so each is named.
_SCRUBBED_LOGGERS = ("apprise", "urllib3.connectionpool", "urllib3.connection", "requests")


def _install_filter() -> logging.Logger:
    with _filter_lock:
        for name in _SCRUBBED_LOGGERS:
            logger = logging.getLogger(name)
            if _scrub_filter not in logger.filters:
                logger.addFilter(_scrub_filter)
    return logging.getLogger("apprise")


# -- sending -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UrlOutcome:
    """What became of one URL.

    Attributes:
        url: the URL, redacted.
        ok: whether it took the message.
        attempts: how many times it was tried.
        error: why the last attempt failed (secrets masked), or None.
        retryable: it failed in a way a later try may not (not a URL Apprise cannot parse).
    """

    url: str
    ok: bool
    attempts: int
    error: str | None = None
    retryable: bool = False


@dataclass(frozen=True)
class NotifyResult:
    """The outcome of :func:`send`, per URL in the order given.

    Attributes:
        outcomes: one per URL.
    """

    outcomes: list[UrlOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Returns: True when every URL took the message (also when there were none)."""
        return all(o.ok for o in self.outcomes)

    @property
    def failed(self) -> list[UrlOutcome]:
        """Returns: the URLs that did not take the message."""
        return [o for o in self.outcomes if not o.ok]

    @property
    def retryable(self) -> list[int]:
        """Returns: the positions (in the URLs sent, duplicates dropped) of the URLs that
        failed in a way a later try may not."""
        return [i for i, o in enumerate(self.outcomes) if o.retryable]

    def __bool__(self) -> bool:
        return self.ok


class RetryLater(Exception):
    """Some URLs failed and are to be tried again later, by the task queue's retry.

    Attributes:
        pending: the positions of those URLs in the job's list of URLs (no URL itself: the
            retry travels through the broker).
    """

    def __init__(self, pending: list[int]) -> None:
        super().__init__(f"{len(pending)} notification URL(s) to try again")
        self.pending = pending


class _Unusable(Exception):
    """A URL no retry can help: Apprise does not understand it."""


def _attempt(url: str, title: str, body: str, level: Level, timeout: float) -> str | None:
    """One delivery.

    Returns:
        None on success, else the reason (secrets not yet masked).

    Raises:
        _Unusable: the URL is not one Apprise can send to.
    """
    plugin = _instantiate(url)
    if plugin is None:
        raise _Unusable("not a URL Apprise understands (unknown scheme or missing parts)")
    plugin.socket_connect_timeout = timeout
    plugin.socket_read_timeout = timeout
    logger = _install_filter()
    collect = _Collect()
    logger.addHandler(collect)
    try:
        ok = plugin.notify(body=body, title=title, notify_type=level, body_format="text")
    except Exception as e:  # a plugin bug must not fail the caller
        return f"{type(e).__name__}: {e}"
    finally:
        logger.removeHandler(collect)
    if ok:
        return None
    return collect.messages[-1] if collect.messages else "delivery failed"


def send(
    urls: Sequence[str],
    title: str,
    body: str,
    *,
    attempts: int = 3,
    backoff: float = 1.0,
    timeout: float = 15,
    level: Level = "info",
    on_sent: Callable[[int], None] | None = None,
) -> NotifyResult:
    """Send one message to every URL; never raises.

    Each URL is tried on its own, up to ``attempts`` times, waiting ``backoff``, then twice
    that, and so on between tries (a URL Apprise cannot parse is not retried): the bounded
    retry of a send in the process that asked for it (a command's ``--notify``). A worker
    tries once (``attempts=1``) and leaves the rest to the task queue's retry with backoff
    (:class:`RetryLater`, ``workers/tasks.py``), so no worker process sleeps. Failed tries
    are logged at WARNING and a URL given up on at ERROR, always with the URL redacted.

    Args:
        urls: Apprise URLs (duplicates are sent once).
        title: the message's title (an email's subject).
        body: the message's text.
        attempts: tries per URL, at least 1.
        backoff: seconds before the first retry; doubled for each further one.
        timeout: seconds for connecting and for each read, per try.
        level: Apprise's notification type (``json://`` sends it as ``type``).
        on_sent: called with a URL's position (duplicates dropped) as soon as it took the
            message, before the next URL is tried (to record it; its errors are logged).

    Returns:
        The outcome per URL; ``.ok`` is True when every URL took the message.
    """
    outcomes: list[UrlOutcome] = []
    tries = max(1, attempts)
    for pos, url in enumerate(dict.fromkeys(urls)):
        shown = privacy_url(url)
        secrets = url_secrets(url)
        error: str | None = None
        unusable = False
        n = 0
        with _active.active(secrets):
            for n in range(1, tries + 1):
                try:
                    error = _attempt(url, title, body, level, timeout)
                except _Unusable as e:
                    error, unusable = str(e), True
                    break
                except Exception as e:  # never raise, whatever Apprise does
                    error = f"{type(e).__name__}: {e}"
                if error is None:
                    break
                error = _active.scrub(error)
                if n < tries:
                    wait = backoff * 2 ** (n - 1)
                    log.warning(
                        "notification to %s failed (try %d of %d, again in %.3g s): %s",
                        shown, n, tries, wait, error,
                    )  # fmt: skip
                    time.sleep(wait)
        if error is None:
            log.info("notification sent to %s", shown)
            if on_sent is not None:
                try:
                    on_sent(pos)
                except Exception as e:  # sent all the same: the record is what failed
                    log.error("notification to %s sent, but not recorded: %s", shown, e)
        else:
            log.error("notification to %s failed after %d tries: %s", shown, n, error)
        outcomes.append(
            UrlOutcome(shown, error is None, n, error, error is not None and not unusable)
        )
    return NotifyResult(outcomes)


# -- messages ----------------------------------------------------------------------------------


def _when(t: datetime) -> str:
    t = t if t.tzinfo else t.replace(tzinfo=UTC)
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _timing(started: datetime | None, finished: datetime | None) -> list[str]:
    lines = []
    if started:
        lines.append(f"Started:   {_when(started)}")
    if finished:
        lines.append(f"Finished:  {_when(finished)}")
    if started and finished:
        a = started if started.tzinfo else started.replace(tzinfo=UTC)
        b = finished if finished.tzinfo else finished.replace(tzinfo=UTC)
        lines.append(f"Took:      {human_duration(max(0.0, (b - a).total_seconds()))}")
    return lines


def format_backup_message(
    *,
    policy: str,
    ok: bool,
    target: str | None = None,
    archive_id: str | None = None,
    kind: str | None = None,
    size_bytes: int | None = None,
    source_bytes: int | None = None,
    files: int | None = None,
    unreadable: int = 0,
    started: datetime | None = None,
    finished: datetime | None = None,
    error: str | None = None,
    host: str | None = None,
) -> tuple[str, str]:
    """The title and body telling how a backup run ended.

    Args:
        policy: the policy's name.
        ok: whether the run recorded an archive.
        target: where the archive is stored (a target URL).
        archive_id: the archive's id.
        kind: ``"full"`` or ``"incremental"``.
        size_bytes: the archive's stored (compressed, encrypted) size.
        source_bytes: the bytes of file data read.
        files: how many entries the archive holds.
        unreadable: how many files could not be read (the run still succeeded).
        started, finished: when the run started and ended (naive means UTC).
        error: why the run failed.
        host: the machine that ran it.

    Returns:
        ``(title, body)``: plain text, one fact per line.
    """
    if ok:
        facts = [x for x in (kind, size_bytes is not None and short_bytes(size_bytes)) if x]
        files_part = f"{files:,} files" if files is not None else None
        facts += [files_part] if files_part else []
        title = f"Backup {policy}: done" + (f" ({', '.join(map(str, facts))})" if facts else "")
        if unreadable:
            title += f", {unreadable} unreadable"
    else:
        title = f"Backup {policy}: FAILED"
    lines = [f"Policy:    {policy}"]
    if host:
        lines.append(f"Host:      {host}")
    if ok:
        result = "succeeded"
        if unreadable:
            result += f", but {unreadable:,} file(s) could not be read (listed in the archive)"
        lines.append(f"Result:    {result}")
    else:
        lines.append("Result:    failed")
        lines.append(f"Error:     {error or 'unknown error'}")
    if archive_id:
        lines.append(f"Archive:   {archive_id}" + (f" ({kind})" if kind else ""))
    if files is not None:
        lines.append(f"Files:     {files:,}")
    if source_bytes is not None:
        lines.append(f"Read:      {human_bytes(source_bytes)}")
    if size_bytes is not None:
        lines.append(f"Stored:    {human_bytes(size_bytes)}")
    lines += _timing(started, finished)
    if target:
        lines.append(f"Target:    {hide_password(target, keep_user=False)}")
    return title, "\n".join(lines) + "\n"


def format_restore_message(
    *,
    ok: bool,
    destination: str,
    policy: str | None = None,
    request_id: str | None = None,
    archive_id: str | None = None,
    point_in_time: datetime | None = None,
    size_bytes: int | None = None,
    files: int | None = None,
    started: datetime | None = None,
    finished: datetime | None = None,
    error: str | None = None,
    source: str | None = None,
) -> tuple[str, str]:
    """The title and body telling how a restore request ended.

    Args:
        ok: whether everything was restored.
        destination: the directory restored into.
        policy: the policy restored from, if any.
        request_id: the restore request's id.
        archive_id: the (last) archive restored.
        point_in_time: the ``--at`` time asked for.
        size_bytes: bytes of file data written.
        files: entries restored.
        started, finished: when the restore started and ended (naive means UTC).
        error: why it failed.
        source: where the archives came from (a target URL or a file).

    Returns:
        ``(title, body)``: plain text, one fact per line.
    """
    what = policy or archive_id or "archive"
    if ok:
        facts = [
            x
            for x in (
                files is not None and f"{files:,} files",
                size_bytes is not None and short_bytes(size_bytes),
            )
            if x
        ]
        title = f"Restore of {what}: done" + (f" ({', '.join(map(str, facts))})" if facts else "")
    else:
        title = f"Restore of {what}: FAILED"
    lines = []
    if request_id:
        lines.append(f"Request:   {request_id}")
    if policy:
        lines.append(f"Policy:    {policy}")
    lines.append("Result:    " + ("succeeded" if ok else "failed"))
    if not ok:
        lines.append(f"Error:     {error or 'unknown error'}")
    if archive_id:
        lines.append(f"Archive:   {archive_id}")
    if point_in_time:
        lines.append(f"As of:     {_when(point_in_time)}")
    if files is not None:
        lines.append(f"Files:     {files:,}")
    if size_bytes is not None:
        lines.append(f"Restored:  {human_bytes(size_bytes)}")
    lines += _timing(started, finished)
    if source:
        lines.append(f"From:      {hide_password(source, keep_user=False)}")
    lines.append(
        f"Into:      {destination}" if ok else f"Into:      {destination} (left as it was)"
    )
    return title, "\n".join(lines) + "\n"
