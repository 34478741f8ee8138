"""The low-level helpers each repeated thing has one of (URL redaction, sizes and durations,
time parsing, AWS errors): their outputs and messages, and that the command line and the
broker use them rather than copies of their own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError

from backup.cli import output
from backup.errors import OptionError
from backup.redact import hide_password, redact_url, url_secrets
from backup.targets.awserrors import error_code, error_line, http_status, is_missing
from backup.times import parse_duration, parse_service_time, parse_time
from backup.units import compact_bytes, human_bytes, human_duration, short_bytes


@pytest.mark.parametrize(
    ("url", "shown", "no_user"),
    [
        (
            "postgresql+psycopg://backup:s3cret@db.example.com:5432/inv",
            "postgresql+psycopg://backup:***@db.example.com:5432/inv",
            "postgresql+psycopg://***@db.example.com:5432/inv",
        ),
        ("redis://:pw0rd@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
        ("s3://user@bucket/prefix", "s3://user@bucket/prefix", "s3://***@bucket/prefix"),
        ("sqlite:////var/lib/backup/inv.sqlite", "sqlite:////var/lib/backup/inv.sqlite", None),
        ("/srv/vault", "/srv/vault", None),
        ("http://[::1", "<unparseable URL>", None),
    ],
)  # fmt: skip
def test_hide_password(url: str, shown: str, no_user: str | None) -> None:
    assert hide_password(url) == shown
    assert hide_password(url, keep_user=False) == (no_user or shown)


def test_hide_password_is_the_inventory_and_broker_redaction() -> None:
    """The SQLAlchemy rendering the inventory used, and the broker's own: same text."""
    from sqlalchemy.engine import make_url

    from backup.jobs.dispatch import redact as broker_redact

    url = "postgresql+psycopg://backup:s3cret@db.example.com:5432/inv"
    assert hide_password(url) == make_url(url).render_as_string(hide_password=True)
    for u in (url, "redis://:pw0rd@127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"):
        assert hide_password(u) == broker_redact(u)


def test_redact_url_and_its_secrets_agree() -> None:
    url = "tgram://123456789:AAHdqTcvCH1vGWJx/987654?token=abc123&mode=x"
    shown = redact_url(url)
    assert shown == "tgram://***/***?token=***&mode=x"
    found = url_secrets(url)
    assert {"123456789:AAHdqTcvCH1vGWJx", "AAHdqTcvCH1vGWJx", "987654", "abc123"} <= found
    assert not any(s in shown for s in found)


@pytest.mark.parametrize(
    ("n", "shown"),
    [
        (0, "0 B"), (1, "1 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
        (10**6, "976.6 KiB"), (5 * 1024**3, "5.0 GiB"), (3 * 1024**4, "3.0 TiB"),
        (7 * 1024**5, "7168.0 TiB"),
    ],
)  # fmt: skip
def test_compact_bytes(n: int, shown: str) -> None:
    assert compact_bytes(n) == shown


def test_the_command_line_uses_the_shared_helpers() -> None:
    assert output.size is compact_bytes
    assert output.parse_time is parse_time


def test_sizes_and_durations() -> None:
    assert human_bytes(1) == "1 byte" and human_bytes(12) == "12 bytes"
    assert human_bytes(1572864) == "1.5 MiB (1,572,864 bytes)"
    assert short_bytes(1572864) == "1.5 MiB" and short_bytes(12) == "12 bytes"
    assert compact_bytes(12) == "12 B" and compact_bytes(1536) == "1.5 KiB"
    assert [human_duration(s) for s in (0.4, 12, 125, 3600, 183600)] == [
        "0.4 s", "12 s", "2 min 5 s", "1 h 0 min", "2 d 3 h",
    ]  # fmt: skip


def test_parse_time() -> None:
    assert parse_time(None) is None
    assert parse_time("2026-11-21T02:00:00Z") == datetime(2026, 11, 21, 2, tzinfo=UTC)
    local = parse_time("2026-11-21T02:00:00")
    assert local is not None and local.tzinfo is not None  # local time, made aware
    for text in ("", "tomorrow", "9" * 40):
        with pytest.raises(OptionError) as e:
            parse_time(text, "--at")
        assert "--at" in str(e.value) and "is not an ISO 8601 time" in str(e.value)


def test_parse_duration_messages() -> None:
    assert parse_duration(" 7d ") == timedelta(days=7)
    with pytest.raises(ValueError, match="is not a duration like '7d'"):
        parse_duration("7 days")
    with pytest.raises(ValueError, match="is zero"):
        parse_duration("0h")
    with pytest.raises(ValueError, match="too long a duration"):
        parse_duration("9" * 13 + "s")


def test_parse_service_time() -> None:
    assert parse_service_time("2026-11-21T02:00:00.000Z") == datetime(2026, 11, 21, 2, tzinfo=UTC)
    assert parse_service_time(None) is None and parse_service_time("") is None
    assert parse_service_time("not a time") is None


def _err(code: str | None, status: int, message: str = "m") -> ClientError:
    err = {"Message": message} | ({"Code": code} if code is not None else {})
    return ClientError({"Error": err, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")  # type: ignore[arg-type]


def test_aws_errors() -> None:
    assert error_code(_err("NoSuchKey", 404)) == "NoSuchKey"
    assert (
        error_code(_err(None, 403)) == "" and error_code(_err(None, 403), or_status=True) == "403"
    )
    assert http_status(_err("X", 503)) == 503
    assert is_missing(_err("NoSuchKey", 200)) and is_missing(_err("Other", 404))
    assert not is_missing(_err("AccessDenied", 403))
    assert is_missing(_err("NoSuchVersion", 400), "NoSuchKey", "NoSuchVersion")
    assert not is_missing(_err("NoSuchKey", 400), "NoSuchVersion")
    assert error_line(_err("SlowDown", 503, "Reduce your rate")) == "SlowDown: Reduce your rate"
    assert error_line(ValueError("bad")) == "ValueError: bad"
