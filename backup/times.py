"""Reading times and durations written by people and by services: one parser for each form.

- :func:`parse_duration`: ``7d``, ``12h``, ``2w``, ``30m``, ``90s`` (policy files, options).
- :func:`parse_time`: an option's ISO 8601 time (``--at``); a time without a zone is local.
- :func:`parse_service_time`: a timestamp a service returned (``...Z``), or None.

Invariant: error messages name the accepted form (tests and users rely on their wording).
Imports nothing above :mod:`backup.errors`, so every layer may use it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import OptionError

__all__ = ["parse_duration", "parse_service_time", "parse_time"]

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """Parse ``"7d"``, ``"12h"``, ``"2w"``, ``"30m"`` or ``"90s"``.

    Args:
        text: a whole number above zero followed by one unit letter.

    Returns:
        The duration.

    Raises:
        ValueError: naming the accepted form.
    """
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration like '7d', '12h', '2w', '30m' or '90s'")
    digits = m.group(1).lstrip("0")
    if not digits:
        raise ValueError(f"{text!r} is zero; give a duration above zero, like '7d' or '12h'")
    try:
        # the length check first: int() of thousands of digits is itself an error
        if len(digits) > 12:
            raise OverflowError
        return timedelta(**{_UNITS[m.group(2)]: int(digits)})
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration") from None


def parse_time(text: str | None, option: str = "--at") -> datetime | None:
    """Parse a time option such as ``--at``: ISO 8601; a time without a zone is local time.

    Returns:
        The time, or None when the option was not given.

    Raises:
        OptionError: naming the option, for any other text; an empty one too (it does not
            mean "the newest": that is leaving the option out).
    """
    if text is None:
        return None
    try:
        t = datetime.fromisoformat(text)
        return t.astimezone() if t.tzinfo is None else t
    except (ValueError, OverflowError):
        raise OptionError(
            option, f"{text!r} is not an ISO 8601 time such as 2026-11-21T02:00:00Z"
        ) from None


def parse_service_time(text: Any) -> datetime | None:
    """Read a timestamp a service returned (ISO 8601, ``Z`` for UTC).

    Returns:
        The time in UTC, or None for nothing, or for what is not such a time (a service's
        odd answer is not worth failing over).
    """
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None
