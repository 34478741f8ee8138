"""Notifications against real local servers: an SMTP server (aiosmtpd) for ``mailto://`` and
an HTTP receiver (http.server in a thread) for ``json://``; retries, failures that never
raise, URL redaction, and the backup and restore messages."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from backup.errors import NotifyTargetError
from backup.notify import (
    check_request_targets,
    credentials_in,
    format_backup_message,
    format_restore_message,
    human_bytes,
    human_duration,
    privacy_url,
    redact_url,
    resolve_targets,
    send,
    shown_target,
)
from tests.servers import Mailbox, Receiver, free_port, text_of

# -- delivery ----------------------------------------------------------------------------------


def test_email_reaches_the_smtp_server(smtp: Mailbox) -> None:
    title, body = format_backup_message(
        policy="home",
        ok=True,
        target="file:///mnt/vault",
        archive_id="a-123",
        kind="incremental",
        size_bytes=3 * 1024 * 1024,
        files=42,
        started=datetime(2026, 6, 10, 2, 0, tzinfo=UTC),
        finished=datetime(2026, 6, 10, 2, 1, 5, tzinfo=UTC),
    )
    res = send([smtp.url()], title, body, attempts=1)
    assert res.ok and bool(res)
    assert [(o.ok, o.attempts, o.error) for o in res.outcomes] == [(True, 1, None)]
    assert len(smtp.messages) == 1
    sender, rcpts, msg = smtp.messages[0]
    assert sender == "backup@example.com" and rcpts == ["ops@example.com"]
    assert msg["Subject"] == "Backup home: done (incremental, 3.0 MiB, 42 files)"
    text = text_of(msg)
    for needle in ("a-123 (incremental)", "Files:     42", "1 min 5 s", "file:///mnt/vault"):
        assert needle in text


def test_json_reaches_the_http_receiver(receiver: Receiver) -> None:
    res = send([receiver.url("/hooks/backup")], "T1", "B1", level="success", attempts=1)
    assert res.ok
    ((path, headers, payload),) = receiver.requests
    assert path == "/hooks/backup"
    assert headers["Content-Type"].startswith("application/json")
    assert payload["title"] == "T1" and payload["message"] == "B1" and payload["type"] == "success"


def test_failing_receiver_is_retried_with_backoff(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.statuses = [500, 500]
    caplog.set_level(logging.DEBUG)
    t0 = time.monotonic()
    res = send([receiver.url()], "T", "B", attempts=3, backoff=0.05)
    elapsed = time.monotonic() - t0
    assert res.ok
    assert [(o.ok, o.attempts) for o in res.outcomes] == [(True, 3)]
    assert len(receiver.requests) == 3
    assert elapsed >= 0.05 + 0.1  # waited backoff, then twice backoff
    retries = [r for r in caplog.records if r.name == "backup.notify" and "try" in r.message]
    assert [r.levelno for r in retries] == [logging.WARNING, logging.WARNING]
    assert "try 1 of 3" in retries[0].message and "500" in retries[0].message


def test_receiver_failing_every_time_returns_the_failure(receiver: Receiver) -> None:
    receiver.statuses = [500, 503]
    res = send([receiver.url()], "T", "B", attempts=2, backoff=0)
    assert not res.ok and not bool(res)
    (o,) = res.failed
    assert o.attempts == 2 and o.error is not None and "503" in o.error
    assert len(receiver.requests) == 2


def test_unreachable_urls_fail_without_raising(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens here
    urls = [
        f"json://127.0.0.1:{port}/x",
        f"mailto://127.0.0.1:{port}?from=a@example.com&to=b@example.com&mode=insecure",
        "nosuchscheme://host/path",
    ]
    res = send(urls, "T", "B", attempts=2, backoff=0, timeout=2)
    assert not res.ok
    assert [(o.ok, o.attempts) for o in res.outcomes] == [(False, 2), (False, 2), (False, 1)]
    assert all(o.error for o in res.outcomes)
    assert "not a URL Apprise understands" in (res.outcomes[2].error or "")
    gave_up = [
        r for r in caplog.records if r.name == "backup.notify" and r.levelno == logging.ERROR
    ]
    assert len(gave_up) == 3


def test_each_url_independent_and_duplicates_sent_once(smtp: Mailbox, receiver: Receiver) -> None:
    dead = f"json://127.0.0.1:{free_port()}/dead"
    res = send([dead, receiver.url(), smtp.url(), receiver.url()], "T", "B", attempts=1)
    assert [o.ok for o in res.outcomes] == [False, True, True]
    assert len(receiver.requests) == 1 and len(smtp.messages) == 1
    assert [o.url for o in res.failed] == [privacy_url(dead)]
    assert send([], "T", "B").ok  # nothing to tell is not a failure


def test_apprise_raising_is_a_failure_not_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    import apprise

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("plugin bug")

    monkeypatch.setattr(apprise.Apprise, "instantiate", staticmethod(boom))
    res = send(["json://127.0.0.1:1/x"], "T", "B", attempts=2, backoff=0)
    assert not res.ok and res.outcomes[0].attempts == 2
    assert res.outcomes[0].error == "RuntimeError: plugin bug"


def test_secrets_never_reach_logs_or_results(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver.statuses = [500]
    url = f"json://hookuser:Pa55w0rdXYZ@127.0.0.1:{receiver.port}/t0kenSECRET?key=qSecretVal"
    res = send([url], "T", "B", attempts=2, backoff=0)
    assert res.ok and len(receiver.requests) == 2
    # the receiver did get the credentials (so the URL was really used)...
    path, headers, _ = receiver.requests[0]
    assert path.startswith("/t0kenSECRET") and headers["Authorization"].startswith("Basic ")
    # ...but nothing logged or returned shows them, even Apprise's own debug records
    assert any(r.name == "apprise" for r in caplog.records)
    for secret in ("Pa55w0rdXYZ", "hookuser", "t0kenSECRET", "qSecretVal"):
        assert secret not in caplog.text
        assert secret not in repr(res)
    # Apprise's privacy form (the password masked by its json plugin), the path token masked
    # too; the query Apprise drops (it does not send ``key``) is not shown
    assert res.outcomes[0].url == f"json://***:****@127.0.0.1:{receiver.port}/***"

    # a dead endpoint's connection error (which names the URL's path) is scrubbed too
    dead = f"json://u:Pa55w0rdXYZ@127.0.0.1:{free_port()}/t0kenSECRET"
    res = send([dead], "T", "B", attempts=1)
    assert not res.ok and "t0kenSECRET" not in caplog.text and "Pa55w0rdXYZ" not in caplog.text
    assert "t0kenSECRET" not in (res.outcomes[0].error or "")


# -- redaction ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "mailto://me:hunter22@smtp.example.com:587?to=a@b.c&mode=starttls",
            "mailto://***:***@smtp.example.com:587?to=***&mode=starttls",
        ),
        ("mailtos://user@gmail.com", "mailtos://***@gmail.com"),
        ("json://127.0.0.1:8080/hooks/abc123", "json://127.0.0.1:8080/***/***"),
        ("jsons://hooks.example.org", "jsons://hooks.example.org"),
        ("tgram://123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/987654", "tgram://***/***"),
        ("discord://112233445566/TokenAbCdEf", "discord://***/***"),
        ("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ", "slack://***/***/***"),
        ("ntfy://my-secret-topic", "ntfy://***"),
        ("ntfy://ntfy.sh/topic?priority=high", "ntfy://ntfy.sh/***?priority=high"),
        ("json://[::1]:9000/x?token=abc#frag", "json://[::1]:9000/***?token=***#***"),
        ("json://localhost/?cto=3&rto=9", "json://localhost?cto=3&rto=9"),
        ("not a url at all", "***"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# Real-looking tokens for four schemes whose secrets sit in different places: Slack's three
# webhook tokens in the path, Telegram's bot token in the host, Discord's webhook token in the
# path, and an SMTP password in the user info.
_SECRET_URLS = {
    "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ": [
        "T1JJ3T3L2", "A1BRTD4JD", "TIiajkdnlazkcOXrIdevi7FQ"
    ],
    "tgram://123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/987654321": [
        "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw", "123456789:AAH", "987654321"
    ],
    "discord://112233445566/TokenAbCdEfGhIjKlMn": ["112233445566", "TokenAbCdEfGhIjKlMn"],
    "mailtos://backupbot:Hunter2Hunter2@smtp.example.com?to=ops@example.com": [
        "Hunter2Hunter2"
    ],
}  # fmt: skip


@pytest.mark.parametrize("url", list(_SECRET_URLS))
def test_privacy_url_uses_apprise_and_shows_no_secret(url: str) -> None:
    shown = privacy_url(url)
    assert shown.split("://")[0] in url  # Apprise parsed it (its scheme, not our "***")
    assert shown != redact_url(url)  # ...and wrote it (the generic form is only a fallback)
    for secret in _SECRET_URLS[url]:
        assert secret not in shown


def test_privacy_url_falls_back_for_what_apprise_cannot_parse() -> None:
    assert privacy_url("nosuchscheme://tok3n/s3cret") == "nosuchscheme://***/***"
    assert privacy_url("not a url") == "***"


def test_secrets_never_reach_logs_errors_or_results(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each URL is sent (the plugin fails, logging its full URL as a careless plugin might,
    and raising on the retry), refused as a stored request target, and shown: no secret
    anywhere."""
    import apprise

    calls: list[str] = []

    def failing_send(self: Any, *args: Any, **kwargs: Any) -> bool:
        full = self.url(privacy=False)
        calls.append(full)
        logging.getLogger("apprise").warning("cannot reach %s", full)
        if len(calls) % 2 == 0:
            raise RuntimeError(f"connection to {full} reset")
        return False

    for url in _SECRET_URLS:
        plugin = apprise.Apprise.instantiate(url)
        assert plugin is not None
        monkeypatch.setattr(type(plugin), "send", failing_send)
    caplog.set_level(logging.DEBUG)
    res = send(list(_SECRET_URLS), "T", "B", attempts=2, backoff=0)
    assert len(calls) == 2 * len(_SECRET_URLS)  # every URL really went to its plugin
    assert not res.ok and all(o.attempts == 2 and o.error for o in res.outcomes)
    errors = []
    for url in _SECRET_URLS:
        with pytest.raises(NotifyTargetError) as e:
            check_request_targets([url], here=False)
        errors.append(str(e.value))
    shown = [shown_target(u) for u in _SECRET_URLS]
    for secret in (s for secrets in _SECRET_URLS.values() for s in secrets):
        assert secret not in caplog.text
        assert secret not in repr(res)
        assert not any(secret in text for text in errors + shown)


# -- named targets: what a restore request may store ------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "json://127.0.0.1:8080/hooks/backup",
        "jsons://hooks.example.org",
        "mailto://127.0.0.1:2525?from=backup@example.com&to=ops@example.com&mode=insecure",
        "mailtos://smtp.example.com/ops@example.com?user=me",
        "ntfy://ntfy.example.com?priority=high",
    ],
)
def test_urls_of_addresses_only_hold_no_credentials(url: str) -> None:
    assert credentials_in(url) == []


@pytest.mark.parametrize(
    ("url", "found"),
    [
        ("mailto://me:hunter22@smtp.example.com?to=a@b.c", ["a password"]),
        ("tgram://123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/987654",
         ["a host part that may be a token", "path segments, which are tokens for tgram://"]),
        ("gotify://push.example.com/AbCdEfToken",
         ["path segments, which are tokens for gotify://"]),
        ("ntfy://ntfy.sh/my-secret-topic", ["path segments, which are tokens for ntfy://"]),
        ("json://hooks.example.org/x?token=abc&to=a", ["the query value(s) of token"]),
        ("json://u:p@[::1]:9000/x#frag", ["a password", "a fragment"]),
        ("not a url", ["text that is not a URL"]),
    ],
)  # fmt: skip
def test_credentials_in_urls_are_found(url: str, found: list[str]) -> None:
    assert credentials_in(url) == found


def test_a_request_refuses_a_url_with_credentials_without_showing_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(NotifyTargetError) as e:
        check_request_targets(["json://127.0.0.1/x", "mailto://me:hunter22@smtp.example.com"],
                              here=True)  # fmt: skip
    text = str(e.value)
    assert "hunter22" not in text and "\n" not in text
    assert text.startswith("Notification target mailto://me:****@smtp.example.com/: it holds a ")
    assert "BACKUP_NOTIFY_<NAME>=URL" in text and "--notify <NAME>" in text
    with pytest.raises(NotifyTargetError, match=r"^Notification target \(not shown\): neither"):
        check_request_targets(["AAHdqTcvCH1v:Gsaw"], here=False)
    # a name is stored instead; it must be defined where the notification is sent
    with pytest.raises(NotifyTargetError, match="ops: no such target: set BACKUP_NOTIFY_OPS"):
        check_request_targets(["ops"], here=True)
    assert check_request_targets(["ops", "json://127.0.0.1/x"], here=False) == ["ops"]
    monkeypatch.setenv("BACKUP_NOTIFY_OPS", "mailto://me:hunter22@smtp.example.com")
    assert check_request_targets(["ops"], here=True) == []


def test_named_targets_resolve_from_the_environment_when_sent(
    receiver: Receiver, smtp: Mailbox, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    hook = f"json://hookuser:Pa55w0rdXYZ@127.0.0.1:{receiver.port}/hook"
    monkeypatch.setenv("BACKUP_NOTIFY_ONCALL", f"{hook}\n {smtp.url()}")
    urls, undefined = resolve_targets(["oncall", "json://127.0.0.1:1/x", "OnCall", "nobody"])
    assert urls == [hook, smtp.url(), "json://127.0.0.1:1/x"]
    assert undefined == ["nobody"]
    assert "notification target nobody is not defined here: set BACKUP_NOTIFY_NOBODY" in (
        caplog.text
    )
    assert send(urls[:2], "T", "B").ok
    assert receiver.requests[0][1]["Authorization"].startswith("Basic ")
    assert len(smtp.messages) == 1
    assert shown_target("oncall") == "oncall"
    assert shown_target(hook) == f"json://***:****@127.0.0.1:{receiver.port}/***"


# -- messages ----------------------------------------------------------------------------------


def test_backup_failure_message() -> None:
    title, body = format_backup_message(
        policy="db",
        ok=False,
        target="s3://user:pw@bucket/prefix",
        error="Target s3://bucket: access denied",
        started=datetime(2026, 6, 10, 2, 0),  # naive means UTC
        finished=datetime(2026, 6, 10, 2, 0, 3, 500000),
        host="web1",
    )
    assert title == "Backup db: FAILED"
    assert "Error:     Target s3://bucket: access denied" in body
    assert "Started:   2026-06-10 02:00:00 UTC" in body and "Took:      3.5 s" in body
    assert "Host:      web1" in body and "Result:    failed" in body
    assert "pw" not in body and "Target:    s3://***@bucket/prefix" in body


def test_backup_message_with_unreadable_files() -> None:
    title, body = format_backup_message(
        policy="home", ok=True, kind="full", files=1000, size_bytes=512, unreadable=2,
        source_bytes=5 * 1024**3,
    )  # fmt: skip
    assert title == "Backup home: done (full, 512 bytes, 1,000 files), 2 unreadable"
    assert "2 file(s) could not be read" in body
    assert "Read:      5.0 GiB (5,368,709,120 bytes)" in body


def test_restore_messages() -> None:
    start = datetime(2026, 6, 10, 9, 0, tzinfo=UTC)
    title, body = format_restore_message(
        ok=True,
        destination="/srv/restore",
        policy="home",
        request_id="r-7",
        archive_id="a-9",
        point_in_time=datetime(2026, 6, 9, 2, 0, tzinfo=UTC),
        size_bytes=1536,
        files=12,
        started=start,
        finished=start + timedelta(hours=3, minutes=4),
        source="file:///mnt/vault",
    )
    assert title == "Restore of home: done (12 files, 1.5 KiB)"
    for needle in (
        "Request:   r-7",
        "Archive:   a-9",
        "As of:     2026-06-09 02:00:00 UTC",
        "Restored:  1.5 KiB (1,536 bytes)",
        "Took:      3 h 4 min",
        "From:      file:///mnt/vault",
        "Into:      /srv/restore",
    ):
        assert needle in body
    title, body = format_restore_message(ok=False, destination="/srv/r", error="wrong key")
    assert title == "Restore of archive: FAILED"
    assert "Error:     wrong key" in body and "/srv/r (left as it was)" in body


def test_human_units() -> None:
    assert human_bytes(0) == "0 bytes" and human_bytes(1) == "1 byte"
    assert human_bytes(1023) == "1,023 bytes"
    assert human_bytes(1024) == "1.0 KiB (1,024 bytes)"
    assert human_duration(0.42) == "0.4 s" and human_duration(59) == "59 s"
    assert human_duration(125) == "2 min 5 s" and human_duration(3600) == "1 h 0 min"
    assert human_duration(2 * 86400 + 3 * 3600) == "2 d 3 h"


# -- the worker's retry: Celery's, not sleeps -------------------------------------------------


def _notify_task_env(env: Any, urls: list[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """A finished backup job whose policy notifies ``urls``, the notify task using a runner
    on the test inventory, run with ``apply`` (eager: a retry runs at once, in this process,
    its countdown recorded)."""
    from backup.inventory import Inventory
    from backup.jobs.runner import Runner
    from backup.settings import Settings
    from workers import tasks

    listed = ", ".join(f'"{u}"' for u in urls)
    env.config.write_text(env.config.read_text() + f"[policy.notify]\non_success = [{listed}]\n")
    settings = Settings(config=env.config, inventory_url=env.inventory_url)
    runner = Runner(Inventory(env.inventory_url), settings, lambda t, j: None, "w:1")
    job = runner.store.create("backup", policy="p", state="queued")
    assert job is not None and runner.run_backup(job.id) == "done"
    monkeypatch.setattr(tasks, "runner", lambda: runner)
    waits: list[float] = []
    real_retry = tasks.notify.retry

    def spy(*args: Any, **kwargs: Any) -> Any:
        waits.append(kwargs["countdown"])
        # what goes through the broker: the job's id and the URLs' positions, never a URL
        assert set(kwargs["kwargs"]) == {"again"}
        assert all(type(i) is int for i in kwargs["kwargs"]["again"])
        return real_retry(*args, **kwargs)

    monkeypatch.setattr(tasks.notify, "retry", spy)
    return tasks, runner, job.id, waits


def test_worker_retries_only_the_failed_urls_with_celery_backoff(
    env: Any, receiver: Receiver, smtp: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.statuses = [500, 503]
    tasks, runner, job_id, waits = _notify_task_env(
        env, [receiver.url("/hook"), smtp.url()], monkeypatch
    )
    t0 = time.monotonic()
    tasks.notify.apply(args=[job_id])
    assert time.monotonic() - t0 < 2  # no sleeps in the worker: the backoff is Celery's
    assert waits == [2, 4]  # two retries, exponential backoff
    assert len(receiver.requests) == 3  # failed twice, then took it
    assert len(smtp.messages) == 1  # took it at once: not sent again on the retries
    assert runner.store.get(job_id).notify_state == "sent"
    # a second delivery of the task sends nothing
    assert tasks.notify.apply(args=[job_id]).get() is False
    assert len(receiver.requests) == 3


def test_worker_gives_up_after_its_retries(
    env: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.statuses = [500] * 20
    tasks, runner, job_id, waits = _notify_task_env(env, [receiver.url("/hook")], monkeypatch)
    tasks.notify.apply(args=[job_id])
    assert waits == [2, 4, 8, 16, 32][: tasks.NOTIFY_RETRIES]
    assert len(receiver.requests) == tasks.NOTIFY_RETRIES + 1
    assert runner.store.get(job_id).notify_state == "failed"
    assert "failed" in runner.inventory.events(1)[0].message


def test_a_send_taken_over_after_its_worker_died_tells_no_url_twice(
    env: Any, receiver: Receiver, smtp: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker that holds a send dies while Celery's retry of a failed URL waits: the sweep
    gives the ``sending`` notification back, a fresh send takes it, and only the URL that had
    not taken the message is told (it was sent to every URL again before)."""
    from sqlalchemy import select

    from backup.inventory.models import Job, NotifyDelivery
    from backup.notify import RetryLater

    receiver.statuses = [500]
    _tasks, runner, job_id, _waits = _notify_task_env(
        env, [smtp.url(), receiver.url("/hook")], monkeypatch
    )
    assert runner.store.get(job_id).notify_state == "pending"  # requested as the run ended
    # the worker's first try: the SMTP server takes it, the hook fails; then the worker dies
    with pytest.raises(RetryLater) as retry:
        runner.notify(job_id, attempts=1, final=False)
    assert retry.value.pending == [1]
    assert len(smtp.messages) == 1 and len(receiver.requests) == 1
    # the sweep takes a stale `sending` back (as after five heartbeat periods)
    with runner.inventory.session() as s:
        s.get(Job, job_id).updated = datetime(2020, 1, 1, tzinfo=UTC)  # type: ignore[union-attr]
        s.commit()
    assert runner.store.stuck_notifications(timedelta(seconds=1)) == 1
    assert runner.store.get(job_id).notify_state == "pending"
    assert runner.notify(job_id, attempts=1) is True  # the fresh send
    assert len(smtp.messages) == 1  # not told twice
    assert len(receiver.requests) == 2  # the one that failed took it now
    assert runner.store.get(job_id).notify_state == "sent"
    # what the inventory keeps of the URLs: digests, never a URL or its port
    with runner.inventory.session() as s:
        kept = [d.url_digest for d in s.scalars(select(NotifyDelivery))]
    assert len(kept) == 2 and all(len(d) == 64 for d in kept)
    assert not any(str(receiver.port) in d or "127.0.0.1" in d for d in kept)
