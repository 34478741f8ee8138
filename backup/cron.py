"""Cron expressions evaluated in an IANA time zone.

A schedule is five fields, ``minute hour day-of-month month day-of-week``, or one of the
shorthands ``@hourly @daily @midnight @weekly @monthly @yearly @annually``. Each field takes
``*``, numbers, ranges ``a-b``, steps ``*/n``, ``a-b/n`` and ``a/n`` (``a`` to the field's
maximum), and comma-separated lists of those. Months take ``jan``-``dec`` and weekdays
``sun``-``sat`` (any case); weekday ``0`` and ``7`` are both Sunday.

Invariants:

- **Day matching follows Vixie cron.** When both day-of-month and day-of-week are
  restricted (neither field starts with ``*``) a day matches if *either* matches
  (``0 0 13 * fri`` runs on every 13th and every Friday); otherwise both must match.
- **A schedule that can never run is refused** at parse time (``0 0 30 2 *``), so the
  search for the next run always ends; it looks at most 400 years (one Gregorian cycle)
  ahead, day by day only inside months the schedule allows, never minute by minute.
- **Every wall-clock slot runs at most once, at one well-defined instant**, and run
  instants never go backwards as wall-clock slots go forwards:

  * *Spring forward* (a gap: Berlin 02:00-03:00 on the last Sunday of March): a slot that
    falls in the gap runs once at the first valid instant after it, the moment the clocks
    jump (03:00 local). Several skipped slots (``*/15 2 * * *``), and a slot at the gap's
    end, collapse into that one run.
  * *Fall back* (a repeated hour: Berlin 02:00-03:00 on the last Sunday of October): a slot
    in the repeated hour runs once, at its *first* occurrence (summer time). Schedules
    finer than an hour therefore pause during the second pass of the repeated hour rather
    than run twice; ``30 2 * * *`` runs once, as a nightly job should.

- **Results are aware UTC datetimes**; inputs must be aware (any zone). A slot is a whole
  minute; ``next_after`` is strictly after its argument, ``prev_at_or_before`` at or before.
"""

from __future__ import annotations

import bisect
import calendar
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["SHORTHANDS", "Cron", "get_zone", "parse_cron"]

SHORTHANDS: dict[str, str] = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}

_MONTHS = {m.lower(): i for i, m in enumerate(calendar.month_abbr) if m}
_DAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}

# (name, low, high, names)
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 7, _DAYS),
)
_MAX_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # Feb 29 exists in leap years
_SEARCH_YEARS = 400
_MINUTE = timedelta(minutes=1)


@functools.lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def get_zone(tz: str | ZoneInfo) -> ZoneInfo:
    """Look up an IANA time zone.

    Args:
        tz: a zone name such as ``"Europe/Berlin"`` or ``"UTC"``, or a ZoneInfo.

    Returns:
        The zone.

    Raises:
        ValueError: the name is not a known IANA zone.
    """
    if isinstance(tz, ZoneInfo):
        return tz
    try:
        return _zone(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(
            f"{tz!r} is not an IANA time zone name (such as 'UTC' or 'Europe/Berlin')"
        ) from None


def _parse_value(token: str, lo: int, hi: int, names: dict[str, int]) -> int:
    key = token.lower()
    if key in names:
        return names[key]
    if not token.isdigit():
        raise ValueError(f"{token!r} is not a number" + (" or a name" if names else ""))
    value = int(token)
    if not lo <= value <= hi:
        raise ValueError(f"{value} is out of range {lo}-{hi}")
    return value


def _parse_field(text: str, lo: int, hi: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ValueError("empty list item")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"step {step_text!r} in {part!r} is not a positive number")
            step = int(step_text)
        if base == "*":
            start, end = lo, hi
        elif "-" in base:
            a, _, b = base.partition("-")
            start = _parse_value(a, lo, hi, names)
            end = _parse_value(b, lo, hi, names)
            if start > end:
                raise ValueError(f"range {base!r} runs backwards")
        else:
            start = _parse_value(base, lo, hi, names)
            end = hi if slash else start  # "a/n" means a, a+n, ... up to the maximum
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression. Build it with :func:`parse_cron`.

    Attributes:
        text: the expression as written.
        minutes, hours: the matching minutes (0-59) and hours (0-23), sorted.
        days: the matching days of the month (1-31).
        months: the matching months (1-12), sorted.
        weekdays: the matching weekdays, 0 = Sunday ... 6 = Saturday (7 is folded into 0).
        dom_star, dow_star: whether day-of-month / day-of-week start with ``*``: when
            neither does, a day matches if either matches (the Vixie cron rule).
    """

    text: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: tuple[int, ...]
    weekdays: frozenset[int]
    dom_star: bool
    dow_star: bool

    def __str__(self) -> str:
        return self.text

    # -- matching on local wall-clock time -----------------------------------------------

    def matches_day(self, day: date) -> bool:
        """Args: day: a calendar date. Returns: whether the schedule runs on that day."""
        dom = day.day in self.days
        dow = (day.weekday() + 1) % 7 in self.weekdays  # Python: Monday = 0; cron: Sunday = 0
        if self.dom_star or self.dow_star:
            return dom and dow
        return dom or dow

    def matches(self, wall: datetime) -> bool:
        """Args: wall: a local wall-clock time (its tzinfo is ignored).
        Returns: whether the schedule has a slot at that minute."""
        return (
            wall.minute in self.minutes
            and wall.hour in self.hours
            and wall.month in self.months
            and self.matches_day(wall.date())
        )

    def _days_from(self, start: date, backwards: bool) -> Iterator[date]:
        """Matching days from ``start`` (inclusive), forwards or backwards, within the search
        horizon, visiting only the schedule's months."""
        step = -1 if backwards else 1
        months = self.months[::-1] if backwards else self.months
        for year in range(start.year, start.year + step * _SEARCH_YEARS, step):
            if not 1 <= year <= 9999:
                return
            for month in months:
                if year == start.year and (
                    month > start.month if backwards else month < start.month
                ):
                    continue
                last = calendar.monthrange(year, month)[1]
                if year == start.year and month == start.month:
                    first_day = start.day
                else:
                    first_day = last if backwards else 1
                stop = 0 if backwards else last + 1
                for d in range(first_day, stop, step):
                    day = date(year, month, d)
                    if self.matches_day(day):
                        yield day

    def _next_wall(self, start: datetime) -> datetime:
        """The first matching wall-clock minute at or after ``start`` (naive, whole minute)."""
        for day in self._days_from(start.date(), backwards=False):
            if day == start.date():
                hm = self._time_at_or_after(start.hour, start.minute)
                if hm is None:
                    continue
            else:
                hm = (self.hours[0], self.minutes[0])
            return datetime(day.year, day.month, day.day, *hm)
        raise ValueError(f"cron {self.text!r}: no run within {_SEARCH_YEARS} years of {start}")

    def _prev_wall(self, start: datetime) -> datetime:
        """The last matching wall-clock minute at or before ``start`` (naive, whole minute)."""
        for day in self._days_from(start.date(), backwards=True):
            if day == start.date():
                hm = self._time_at_or_before(start.hour, start.minute)
                if hm is None:
                    continue
            else:
                hm = (self.hours[-1], self.minutes[-1])
            return datetime(day.year, day.month, day.day, *hm)
        raise ValueError(f"cron {self.text!r}: no run within {_SEARCH_YEARS} years before {start}")

    def _time_at_or_after(self, hour: int, minute: int) -> tuple[int, int] | None:
        i = bisect.bisect_left(self.hours, hour)
        if i == len(self.hours):
            return None
        if self.hours[i] == hour:
            j = bisect.bisect_left(self.minutes, minute)
            if j < len(self.minutes):
                return hour, self.minutes[j]
            i += 1
            if i == len(self.hours):
                return None
        return self.hours[i], self.minutes[0]

    def _time_at_or_before(self, hour: int, minute: int) -> tuple[int, int] | None:
        i = bisect.bisect_right(self.hours, hour) - 1
        if i < 0:
            return None
        if self.hours[i] == hour:
            j = bisect.bisect_right(self.minutes, minute) - 1
            if j >= 0:
                return hour, self.minutes[j]
            i -= 1
            if i < 0:
                return None
        return self.hours[i], self.minutes[-1]

    # -- instants ------------------------------------------------------------------------

    def next_after(self, after: datetime, tz: str | ZoneInfo) -> datetime:
        """The first run strictly after an instant.

        Args:
            after: an aware datetime (any zone).
            tz: the IANA zone the schedule's wall-clock times are in.

        Returns:
            The run's instant, an aware UTC datetime.

        Raises:
            ValueError: ``after`` is naive, ``tz`` is unknown, or no run exists before
                year 10000.
        """
        zone = get_zone(tz)
        now = _utc(after)
        wall = _floor_minute(now.astimezone(zone)) + _MINUTE
        # Run instants rise with wall-clock slots but not strictly (gaps collapse, repeated
        # hours map to their first pass): skip slots whose instant is not after `now`.
        # Bounded by the minutes of one repeated period.
        while True:
            wall = self._next_wall(wall)
            at = _instant(wall, zone)
            if at > now:
                return at
            wall += _MINUTE

    def next_runs(self, after: datetime, tz: str | ZoneInfo, n: int) -> list[datetime]:
        """The next ``n`` runs strictly after an instant.

        Args:
            after: an aware datetime.
            tz: the schedule's IANA zone.
            n: how many runs (0 or more).

        Returns:
            ``n`` strictly increasing aware UTC datetimes.
        """
        out: list[datetime] = []
        at = after
        for _ in range(n):
            at = self.next_after(at, tz)
            out.append(at)
        return out

    def prev_at_or_before(self, at: datetime, tz: str | ZoneInfo) -> datetime:
        """The last run at or before an instant: the slot a catch-up run stands in for.

        Args:
            at: an aware datetime (usually now).
            tz: the schedule's IANA zone.

        Returns:
            The run's instant, an aware UTC datetime, ``<= at``.

        Raises:
            ValueError: ``at`` is naive, ``tz`` is unknown, or no run exists within 400
                years before ``at``.
        """
        zone = get_zone(tz)
        now = _utc(at)
        wall = self._prev_wall(_floor_minute(now.astimezone(zone)))
        best = _instant(wall, zone)
        # In the second pass of a repeated hour, later wall-clock slots (whose first
        # occurrence has passed) also ran at or before `now`: walk forward over them.
        while True:
            try:
                later = self._next_wall(wall + _MINUTE)
            except ValueError:
                return best
            at_later = _instant(later, zone)
            if at_later > now:
                return best
            wall, best = later, at_later


def _utc(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"{dt.isoformat()} has no time zone; pass an aware datetime")
    return dt.astimezone(UTC)


def _floor_minute(local: datetime) -> datetime:
    """The naive wall-clock minute of a local aware datetime."""
    return local.replace(tzinfo=None, fold=0, second=0, microsecond=0)


def _instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The instant a wall-clock slot runs: itself; the first pass of a repeated time; or,
    for a time skipped by a gap, the moment the gap ends (the first valid instant after)."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first <= second:  # unambiguous (equal) or repeated (first pass is the earlier)
        return first
    # A gap: PEP 495 gives fold=0 the offset before the jump and fold=1 the one after, so
    # the jump lies in (second, first]. Find it to the second by bisection.
    after_offset = wall.replace(tzinfo=zone, fold=1).utcoffset()
    lo, hi = int(second.timestamp()), int(first.timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == after_offset:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


@functools.lru_cache(maxsize=1024)
def parse_cron(text: str) -> Cron:
    """Parse a cron expression (cached: a :class:`Cron` is immutable, and a file of many
    policies repeats a few schedules).

    Args:
        text: five fields (``"30 2 * * mon-fri"``) or a shorthand (``"@daily"``).

    Returns:
        The parsed schedule.

    Raises:
        ValueError: naming the field at fault and why, or saying the schedule can never run.
    """
    if not isinstance(text, str):
        raise ValueError(f"cron expression must be text, not {type(text).__name__}")
    stripped = text.strip()
    if stripped.startswith("@"):
        expanded = SHORTHANDS.get(stripped.lower())
        if expanded is None:
            raise ValueError(f"cron {text!r}: unknown shorthand; known: {', '.join(SHORTHANDS)}")
        stripped = expanded
    parts = stripped.split()
    if len(parts) != 5:
        raise ValueError(
            f"cron {text!r}: expected 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(parts)}"
        )
    sets: list[frozenset[int]] = []
    for part, (field, lo, hi, names) in zip(parts, _FIELDS, strict=True):
        try:
            sets.append(_parse_field(part, lo, hi, names))
        except ValueError as e:
            raise ValueError(f"cron {text!r}: {field} field {part!r}: {e}") from None
    minutes, hours, days, months, weekdays = sets
    weekdays = frozenset(d % 7 for d in weekdays)
    dom_star, dow_star = parts[2].startswith("*"), parts[4].startswith("*")
    # Under the "and" rule a day needs an allowed (month, day-of-month) pair, which then falls
    # on every weekday over the years; under the "or" rule every week has a matching day.
    if (dom_star or dow_star) and not any(d <= _MAX_DAYS[m - 1] for m in months for d in days):
        raise ValueError(
            f"cron {text!r}: day-of-month {parts[2]!r} never occurs in month {parts[3]!r}"
        )
    return Cron(
        text=text.strip(),
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        days=days,
        months=tuple(sorted(months)),
        weekdays=weekdays,
        dom_star=dom_star,
        dow_star=dow_star,
    )
