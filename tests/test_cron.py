"""Cron expressions: parsing, known next/previous runs (DST in Berlin, New York and Lord
Howe's half-hour shift, Feb 29, the day-of-month/day-of-week "or" rule), a brute-force
minute-by-minute reference for the documented DST behaviour, and policy validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from backup.cron import Cron, get_zone, parse_cron
from backup.crypto.age import X25519Identity
from backup.errors import PolicyError
from backup.policy import load_policies


def u(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# -- parsing ---------------------------------------------------------------------------------


def test_fields_lists_ranges_steps_and_names() -> None:
    c = parse_cron("*/20 1-3,22 10-30/10 jan,MAR-may mon-fri")
    assert c.minutes == (0, 20, 40)
    assert c.hours == (1, 2, 3, 22)
    assert c.days == frozenset({10, 20, 30})
    assert c.months == (1, 3, 4, 5)
    assert c.weekdays == frozenset({1, 2, 3, 4, 5})
    assert parse_cron("5/20 * * * *").minutes == (5, 25, 45)  # a/n runs to the maximum
    assert parse_cron("0 0 * * 5-7").weekdays == frozenset({5, 6, 0})  # 7 is Sunday
    assert parse_cron("0 0 * * 7").weekdays == parse_cron("0 0 * * SUN").weekdays == {0}
    assert str(parse_cron("  0 2 * * *  ")) == "0 2 * * *"


@pytest.mark.parametrize(
    ("short", "long"),
    [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@ANNUALLY", "0 0 1 1 *"),
    ],
)
def test_shorthands(short: str, long: str) -> None:
    a, b = parse_cron(short), parse_cron(long)
    start = u(2026, 5, 17, 13, 7)
    assert a.next_runs(start, "UTC", 3) == b.next_runs(start, "UTC", 3)
    assert (a.minutes, a.hours, a.days, a.months, a.weekdays) == (
        b.minutes,
        b.hours,
        b.days,
        b.months,
        b.weekdays,
    )


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("0 2 * *", ["expected 5 fields", "got 4"]),
        ("0 2 * * * *", ["got 6"]),
        ("", ["got 0"]),
        ("60 2 * * *", ["minute field '60'", "out of range 0-59"]),
        ("0 24 * * *", ["hour field '24'", "0-23"]),
        ("0 0 0 * *", ["day-of-month field '0'", "1-31"]),
        ("0 0 * 13 *", ["month field '13'", "1-12"]),
        ("0 0 * * 8", ["day-of-week field '8'", "0-7"]),
        ("*/0 * * * *", ["minute field", "step '0'"]),
        ("0 5-1 * * *", ["hour field '5-1'", "backwards"]),
        ("0 0 * * fri-mon", ["day-of-week", "backwards"]),
        ("x 0 * * *", ["minute field 'x'", "not a number"]),
        ("0 0 * * jan", ["day-of-week field 'jan'", "not a number or a name"]),
        ("0 0 * mon *", ["month field 'mon'"]),
        ("0 0 L * *", ["day-of-month field 'L'"]),
        ("1,,2 * * * *", ["minute field", "empty list item"]),
        ("0 0 1-2/x * *", ["day-of-month", "step 'x'"]),
        ("@reboot", ["unknown shorthand", "@daily"]),
        ("0 0 30 2 *", ["never occurs", "'30'", "'2'"]),
        ("0 0 31 4,6,9,11 *", ["never occurs"]),
    ],
)
def test_invalid_expressions_name_the_field(text: str, needles: list[str]) -> None:
    with pytest.raises(ValueError) as e:
        parse_cron(text)
    for n in needles:
        assert n in str(e.value)


def test_day_that_never_occurs_is_fine_under_the_or_rule() -> None:
    # Feb 30 never comes, but every Monday of February does: the "or" rule runs on those.
    c = parse_cron("0 0 30 2 mon")
    assert c.next_after(u(2026, 1, 1), "UTC") == u(2026, 2, 2)


def test_non_text_and_naive_and_unknown_zone() -> None:
    with pytest.raises(ValueError, match="must be text"):
        parse_cron(5)  # type: ignore[arg-type]
    c = parse_cron("0 2 * * *")
    with pytest.raises(ValueError, match="no time zone"):
        c.next_after(datetime(2026, 1, 1), "UTC")
    with pytest.raises(ValueError, match="IANA time zone"):
        c.next_after(u(2026, 1, 1), "Mars/Olympus_Mons")
    with pytest.raises(ValueError, match="IANA time zone"):
        get_zone("../etc/passwd")
    assert get_zone("Europe/Berlin") is get_zone("Europe/Berlin")


# -- known answers ---------------------------------------------------------------------------


def test_next_after_is_strictly_after_and_utc() -> None:
    c = parse_cron("0 2 * * *")
    first = c.next_after(u(2026, 6, 10, 0, 0), "Europe/Berlin")
    assert first == u(2026, 6, 10, 0, 0) + timedelta(days=1)  # 02:00 CEST is 00:00 UTC
    assert first.tzinfo is UTC
    assert c.next_after(first, "Europe/Berlin") == u(2026, 6, 12, 0, 0)
    # any aware input zone is accepted; a second before the slot still gives the slot
    ny = datetime(2026, 6, 10, 19, 59, 59, tzinfo=ZoneInfo("America/New_York"))
    assert c.next_after(ny, "Europe/Berlin") == u(2026, 6, 11, 0, 0)
    # microseconds past a slot are past it
    assert c.next_after(u(2026, 6, 11, 0, 0) + timedelta(microseconds=1), "Europe/Berlin") == u(
        2026, 6, 12, 0, 0
    )


def test_next_runs() -> None:
    c = parse_cron("15,45 9-10 * * mon-fri")
    runs = c.next_runs(u(2026, 2, 6, 10, 30), "UTC", 4)  # a Friday
    assert runs == [u(2026, 2, 6, 10, 45), u(2026, 2, 9, 9, 15), u(2026, 2, 9, 9, 45),
                    u(2026, 2, 9, 10, 15)]  # fmt: skip
    assert c.next_runs(u(2026, 2, 6), "UTC", 0) == []


def test_day_of_month_or_day_of_week() -> None:
    start = u(2026, 2, 1)  # a Sunday
    # both restricted: the 10th (a Tuesday) or any Friday
    assert parse_cron("0 0 10 * fri").next_runs(start, "UTC", 6) == [
        u(2026, 2, 6), u(2026, 2, 10), u(2026, 2, 13), u(2026, 2, 20), u(2026, 2, 27),
        u(2026, 3, 6),
    ]  # fmt: skip
    # a day-of-month starting with "*" means "and" (Vixie cron): odd days that are Fridays
    assert parse_cron("0 0 */2 * fri").next_runs(start, "UTC", 4) == [
        u(2026, 2, 13), u(2026, 2, 27), u(2026, 3, 13), u(2026, 3, 27),
    ]  # fmt: skip
    assert parse_cron("0 0 * * mon").next_runs(start, "UTC", 3) == [
        u(2026, 2, 2), u(2026, 2, 9), u(2026, 2, 16),
    ]  # fmt: skip
    assert parse_cron("0 0 1 * *").next_runs(start, "UTC", 2) == [u(2026, 3, 1), u(2026, 4, 1)]


def test_feb_29() -> None:
    c = parse_cron("0 12 29 2 *")
    assert c.next_runs(u(2026, 1, 1), "UTC", 3) == [
        u(2028, 2, 29, 12), u(2032, 2, 29, 12), u(2036, 2, 29, 12),
    ]  # fmt: skip
    assert c.prev_at_or_before(u(2026, 1, 1), "UTC") == u(2024, 2, 29, 12)
    # 2100 is not a leap year: from 2097 the next is 2104
    assert c.next_after(u(2097, 1, 1), "UTC") == u(2104, 2, 29, 12)
    # month ends: the 31st skips the short months
    assert parse_cron("0 0 31 * *").next_runs(u(2026, 3, 31, 1), "UTC", 2) == [
        u(2026, 5, 31), u(2026, 7, 31),
    ]  # fmt: skip


def test_search_is_day_by_day_not_minute_by_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = Cron.matches_day

    def counting(self: Cron, day: object) -> bool:
        nonlocal calls
        calls += 1
        return real(self, day)  # type: ignore[arg-type]

    monkeypatch.setattr(Cron, "matches_day", counting)
    # eight years to the next Feb 29 (2104), visiting February only: 8 * 29 days at most
    assert parse_cron("0 0 29 2 *").next_after(u(2096, 3, 1), "UTC") == u(2104, 2, 29)
    assert calls <= 8 * 29


# Europe/Berlin 2026: clocks jump 02:00 CET -> 03:00 CEST on 29 March at 01:00 UTC, and fall
# back 03:00 CEST -> 02:00 CET on 25 October at 01:00 UTC.


def test_berlin_spring_forward_runs_skipped_slot_once_at_the_jump() -> None:
    c = parse_cron("30 2 * * *")
    assert c.next_runs(u(2026, 3, 27), "Europe/Berlin", 4) == [
        u(2026, 3, 27, 1, 30),  # 02:30 CET
        u(2026, 3, 28, 1, 30),
        u(2026, 3, 29, 1, 0),  # 02:30 does not exist: runs at 03:00 CEST, the jump
        u(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]
    # every slot of the skipped hour, and 03:00 itself, collapse into one run at the jump
    q = parse_cron("*/15 * * * *")
    assert q.next_runs(u(2026, 3, 29, 0, 30), "Europe/Berlin", 4) == [
        u(2026, 3, 29, 0, 45),  # 01:45 CET
        u(2026, 3, 29, 1, 0),  # 02:00, 02:15, 02:30, 02:45 (skipped) and 03:00 CEST
        u(2026, 3, 29, 1, 15),  # 03:15 CEST
        u(2026, 3, 29, 1, 30),
    ]
    assert q.prev_at_or_before(u(2026, 3, 29, 1, 10), "Europe/Berlin") == u(2026, 3, 29, 1, 0)


def test_berlin_fall_back_runs_repeated_slot_once_on_first_pass() -> None:
    c = parse_cron("30 2 * * *")
    assert c.next_runs(u(2026, 10, 24), "Europe/Berlin", 3) == [
        u(2026, 10, 24, 0, 30),
        u(2026, 10, 25, 0, 30),  # 02:30 CEST, the first pass; not again at 02:30 CET
        u(2026, 10, 26, 1, 30),  # 02:30 CET
    ]
    # during the second pass (02:10 CET = 01:10 UTC) the last run is the first-pass 02:30
    q = parse_cron("*/15 * * * *")
    assert c.prev_at_or_before(u(2026, 10, 25, 1, 10), "Europe/Berlin") == u(2026, 10, 25, 0, 30)
    assert q.prev_at_or_before(u(2026, 10, 25, 1, 10), "Europe/Berlin") == u(2026, 10, 25, 0, 45)
    # finer-than-hourly schedules pause through the second pass
    assert q.next_after(u(2026, 10, 25, 0, 45), "Europe/Berlin") == u(2026, 10, 25, 2, 0)
    assert q.next_after(u(2026, 10, 25, 1, 20), "Europe/Berlin") == u(2026, 10, 25, 2, 0)


# America/New_York 2026: 02:00 EST -> 03:00 EDT on 8 March at 07:00 UTC; 02:00 EDT -> 01:00 EST
# on 1 November at 06:00 UTC.


def test_new_york_transitions() -> None:
    ny = "America/New_York"
    c = parse_cron("30 2 * * *")
    assert c.next_runs(u(2026, 3, 7), ny, 3) == [
        u(2026, 3, 7, 7, 30),  # 02:30 EST
        u(2026, 3, 8, 7, 0),  # skipped: 03:00 EDT
        u(2026, 3, 9, 6, 30),  # 02:30 EDT
    ]
    d = parse_cron("30 1 * * *")
    assert d.next_runs(u(2026, 10, 31, 12), ny, 2) == [
        u(2026, 11, 1, 5, 30),  # 01:30 EDT, the first pass
        u(2026, 11, 2, 6, 30),  # 01:30 EST the next day
    ]
    h = parse_cron("*/30 * * * *")
    assert h.next_runs(u(2026, 11, 1, 5, 0), ny, 2) == [u(2026, 11, 1, 5, 30), u(2026, 11, 1, 7)]
    assert h.prev_at_or_before(u(2026, 11, 1, 6, 45), ny) == u(2026, 11, 1, 5, 30)
    assert parse_cron("0 * * * *").prev_at_or_before(u(2026, 11, 1, 6, 45), ny) == u(2026, 11, 1, 5)


def test_prev_at_or_before_for_catch_up() -> None:
    c = parse_cron("0 2 * * *")
    # the machine boots at 07:00 local: the 02:00 run is the one to catch up
    assert c.prev_at_or_before(u(2026, 6, 10, 5), "Europe/Berlin") == u(2026, 6, 10, 0)
    # at 01:00 local it is yesterday's
    assert c.prev_at_or_before(u(2026, 6, 9, 23), "Europe/Berlin") == u(2026, 6, 9, 0)
    # a slot exactly now is at-or-before
    assert c.prev_at_or_before(u(2026, 6, 10, 0), "Europe/Berlin") == u(2026, 6, 10, 0)
    assert c.prev_at_or_before(u(2026, 6, 10, 0, 0, 59), "Europe/Berlin") == u(2026, 6, 10, 0)
    fixed = datetime(2026, 6, 10, 9, tzinfo=timezone(timedelta(hours=9)))  # = 00:00 UTC
    assert c.prev_at_or_before(fixed, "Europe/Berlin") == u(2026, 6, 10, 0)
    # across a year boundary, for a yearly schedule
    assert parse_cron("@yearly").prev_at_or_before(u(2026, 6, 1), "UTC") == u(2026, 1, 1)


# -- a brute-force reference -----------------------------------------------------------------


def brute_runs(cron: Cron, tz: str, start: datetime, end: datetime) -> list[datetime]:
    """Runs in (start, end] found minute by minute in UTC, by the documented rules: a wall
    time fires at its first occurrence; wall times skipped by a jump fire at the jump."""
    zone = ZoneInfo(tz)
    out = []
    t = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
    prev_wall = (t - timedelta(minutes=1)).astimezone(zone).replace(tzinfo=None)
    while t <= end:
        local = t.astimezone(zone)
        wall = local.replace(tzinfo=None, fold=0)
        fires = False
        if local.fold == 0 or wall.replace(tzinfo=zone, fold=0).utcoffset() == (
            wall.replace(tzinfo=zone, fold=1).utcoffset()
        ):
            fires = cron.matches(wall)
        if wall - prev_wall > timedelta(minutes=1):  # a jump forward: skipped wall times
            w = prev_wall + timedelta(minutes=1)
            while w < wall and not fires:
                fires = cron.matches(w)
                w += timedelta(minutes=1)
        if fires:
            out.append(t)
        prev_wall = wall
        t += timedelta(minutes=1)
    return out


@pytest.mark.parametrize(
    ("tz", "around"),
    [
        ("Europe/Berlin", u(2026, 3, 29, 1)),
        ("Europe/Berlin", u(2026, 10, 25, 1)),
        ("America/New_York", u(2026, 3, 8, 7)),
        ("America/New_York", u(2026, 11, 1, 6)),
        ("Australia/Lord_Howe", u(2026, 4, 4, 15)),  # a 30-minute fall back
        ("Australia/Lord_Howe", u(2026, 10, 3, 15, 30)),  # a 30-minute spring forward
    ],
)
@pytest.mark.parametrize(
    "text", ["*/7 * * * *", "30 2 * * *", "0,10,40 1-3 * * *", "45 * * * *", "*/30 2 * * sun"]
)
def test_matches_brute_force_reference(tz: str, around: datetime, text: str) -> None:
    c = parse_cron(text)
    start, end = around - timedelta(hours=26), around + timedelta(hours=26)
    expected = brute_runs(c, tz, start, end)
    got: list[datetime] = []
    at = start
    while True:
        at = c.next_after(at, tz)
        if at > end:
            break
        got.append(at)
    assert got == expected
    # and prev_at_or_before agrees at every half hour, and at every run and just before it
    probes = [start + timedelta(minutes=30 * i) for i in range(1, 104)]
    probes += expected + [r - timedelta(seconds=1) for r in expected]
    for p in probes:
        earlier = [r for r in expected if r <= p]
        if earlier:
            assert c.prev_at_or_before(p, tz) == earlier[-1], p


# -- policies --------------------------------------------------------------------------------

RCPT = X25519Identity.generate().recipient().to_string()


def policy_file(tmp_path: Path, extra: str) -> Path:
    p = tmp_path / "policies.toml"
    p.write_text(
        f'[[policy]]\nname = "home"\nsources = ["/srv"]\ntarget = "file:///vault"\n'
        f'recipients = ["{RCPT}"]\n{extra}\n'
    )
    return p


def test_policy_schedule_and_timezone_validated(tmp_path: Path) -> None:
    pol = load_policies(
        policy_file(tmp_path, 'schedule = "30 2 * * mon-fri"\ntimezone = "Europe/Berlin"')
    )["home"]
    assert pol.schedule == "30 2 * * mon-fri" and pol.timezone == "Europe/Berlin"
    assert load_policies(policy_file(tmp_path, 'schedule = "@daily"'))["home"].timezone == "UTC"

    with pytest.raises(PolicyError) as e:
        load_policies(policy_file(tmp_path, 'schedule = "61 2 * * *"'))
    msg = str(e.value)
    assert "'home'" in msg and "schedule" in msg and "minute field '61'" in msg

    with pytest.raises(PolicyError) as e:
        load_policies(policy_file(tmp_path, 'schedule = "0 2 * * *"\ntimezone = "Europe/Berln"'))
    msg = str(e.value)
    assert "timezone" in msg and "Europe/Berln" in msg and "schedule:" not in msg
