from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from backup.crypto.age import X25519Identity
from backup.errors import PolicyError
from backup.policy import load_policies, parse_duration

RCPT = X25519Identity.generate().recipient().to_string()


def write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "policies.toml"
    p.write_text(body)
    return p


def good(name: str = "home", **extra: str) -> str:
    lines = [
        "[[policy]]",
        f'name = "{name}"',
        'sources = ["/srv/data"]',
        'target = "file:///vault"',
        f'recipients = ["{RCPT}"]',
    ]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def test_valid_file_with_defaults(tmp_path: Path) -> None:
    pols = load_policies(write(tmp_path, good() + good("other", full_every='"12h"')))
    assert list(pols) == ["home", "other"]
    assert pols["home"].full_every == timedelta(days=7)
    assert pols["other"].full_every == timedelta(hours=12)
    assert pols["home"].compression_level == 3
    assert pols["home"].source_names() == [("", Path("/srv/data"))]
    assert pols["home"].retention.is_empty()


def test_retention_and_multiple_sources(tmp_path: Path) -> None:
    body = good(sources='["/srv/a", "/etc"]').replace('sources = ["/srv/data"]\n', "")
    body += "[policy.retention]\nkeep_daily = 7\nkeep_weekly = 4\n"
    pol = load_policies(write(tmp_path, body))["home"]
    assert pol.retention.keep_daily == 7 and pol.retention.keep_last == 0
    assert pol.source_names() == [("a", Path("/srv/a")), ("etc", Path("/etc"))]


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        (
            good() + '[policy.retention]\nkeep_daily = "seven"\n',
            ["'home'", "retention.keep_daily", "integer"],
        ),
        (
            good() + "[policy.retention]\nkeep_daily = -1\n",
            ["retention.keep_daily", "greater than or equal"],
        ),
        (good(colour='"blue"'), ["'home'", "colour", "Extra inputs"]),
        (good(full_every='"weekly"'), ["full_every", "'weekly'", "7d"]),
        # a bare number has no unit: pydantic would read it as seconds
        (good(full_every="7"), ["'home'", "full_every", "7 is not a duration", '"7d"']),
        (good(full_every="7.5"), ["full_every", "7.5 is not a duration"]),
        (good(full_every='"0d"'), ["'home'", "full_every", "'0d' is zero"]),
        (good(full_every='"99999999999999w"'), ["full_every", "too long"]),
        (
            good() + '[policy.object_lock]\nmode = "GOVERNANCE"\nretain = 30\n',
            ["object_lock.retain", "30 is not a duration"],
        ),
        (good(compression_level="40"), ["compression_level"]),
        (good().replace(RCPT, "age1notarecipient"), ["'home'", "recipients"]),
        (
            good().replace('"file:///vault"', '"ftp://host/x"'),
            ["'home'", "target", "ftp://", "file://"],
        ),
        (good().replace('"/srv/data"', '"relative/dir"'), ["sources", "not an absolute path"]),
        (good().replace('"/srv/data"', '"/a/x", "/b/x"'), ["sources", "share a final name", "x"]),
        (good() + good(), ["'home'", "defined twice"]),
        (good().replace('name = "home"', 'name = "bad name!"'), ["name"]),
        ("[[policy]]\nname = 'x'\n", ["'x'", "sources", "Field required"]),
        ("this is = = not toml", ["not valid TOML"]),
        ("[other]\nx = 1\n", ["unknown top-level", "other"]),
    ],
)
def test_errors_name_file_policy_and_field(tmp_path: Path, body: str, needles: list[str]) -> None:
    path = write(tmp_path, body)
    with pytest.raises(PolicyError) as e:
        load_policies(path)
    msg = str(e.value)
    assert str(path) in msg
    for n in needles:
        assert n in msg, (n, msg)


def test_secret_key_in_recipients_is_refused_and_not_echoed(tmp_path: Path) -> None:
    secret = X25519Identity.generate().to_string()
    path = write(tmp_path, good().replace(RCPT, secret))
    with pytest.raises(PolicyError) as e:
        load_policies(path)
    assert "secret key" in str(e.value)
    assert secret not in str(e.value) and secret[20:40] not in str(e.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="policy file not found"):
        load_policies(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("text", "delta"),
    [
        ("7d", timedelta(days=7)),
        ("12h", timedelta(hours=12)),
        ("2w", timedelta(weeks=2)),
        ("30m", timedelta(minutes=30)),
        ("90s", timedelta(seconds=90)),
    ],
)
def test_parse_duration(text: str, delta: timedelta) -> None:
    assert parse_duration(text) == delta


@pytest.mark.parametrize(
    "text", ["", "7", "d", "7 days", "-1d", "1.5h", "0d", "00s", "9" * 5000 + "d"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_drill_durations_need_a_unit(tmp_path: Path) -> None:
    body = (
        good().replace('sources = ["/srv/data"]', 'source = "s3://media"')
        + 'actions = ["fork"]\n[policy.drill]\ncheck = "true"\nkeep_for = 3600\n'
    )
    with pytest.raises(PolicyError) as e:
        load_policies(write(tmp_path, body))
    assert "drill.keep_for: 3600 is not a duration" in str(e.value)
    pol = load_policies(write(tmp_path, body.replace("keep_for = 3600", 'keep_for = "1h"')))
    assert pol["home"].drill is not None and pol["home"].drill.keep_for == timedelta(hours=1)
