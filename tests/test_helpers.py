"""The low-level helpers each repeated thing now has one of (URL redaction, sizes and
durations, time parsing, AWS errors), checked against the copies the command line still
keeps until the merge swaps them in: same outputs, same messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError

from backup import cli
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

    from workers.app import redact as broker_redact

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
    "n", [0, 1, 12, 1023, 1024, 1536, 10**6, 5 * 1024**3, 3 * 1024**4, 7 * 1024**5]
)
def test_compact_bytes_is_the_cli_size(n: int) -> None:
    assert compact_bytes(n) == cli._size(n)


def test_sizes_and_durations() -> None:
    assert human_bytes(1) == "1 byte" and human_bytes(12) == "12 bytes"
    assert human_bytes(1572864) == "1.5 MiB (1,572,864 bytes)"
    assert short_bytes(1572864) == "1.5 MiB" and short_bytes(12) == "12 bytes"
    assert compact_bytes(12) == "12 B" and compact_bytes(1536) == "1.5 KiB"
    assert [human_duration(s) for s in (0.4, 12, 125, 3600, 183600)] == [
        "0.4 s", "12 s", "2 min 5 s", "1 h 0 min", "2 d 3 h",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "text", [None, "2026-11-21T02:00:00Z", "2026-11-21T02:00:00", "2026-11-21", "", "tomorrow", "9" * 40]
)  # fmt: skip
def test_parse_time_is_the_cli_parse_time(text: str | None) -> None:
    def outcome(f: object) -> object:
        try:
            return f(text, "--at")  # type: ignore[operator]
        except OptionError as e:
            return str(e)

    assert outcome(parse_time) == outcome(cli.parse_time)
    if text in ("", "tomorrow"):
        assert "is not an ISO 8601 time" in str(outcome(parse_time))


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
