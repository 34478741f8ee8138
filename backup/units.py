"""How sizes and durations are written for people: one spelling everywhere (binary units,
``KiB`` not ``KB``; ``2 min 5 s``). Pure functions of their arguments; imports nothing from
the package, so every layer may use it."""

from __future__ import annotations

__all__ = ["compact_bytes", "human_bytes", "human_duration", "short_bytes"]

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: int) -> str:
    """Args: n: a byte count. Returns: e.g. ``"1.5 MiB (1,572,864 bytes)"``, ``"12 bytes"``."""
    if abs(n) < 1024:
        return f"{n:,} bytes" if n != 1 else "1 byte"
    value = float(n)
    for unit in _UNITS:
        value /= 1024
        if abs(value) < 1024 or unit == _UNITS[-1]:
            break
    return f"{value:.1f} {unit} ({n:,} bytes)"


def short_bytes(n: int) -> str:
    """Args: n: a byte count. Returns: e.g. ``"1.5 MiB"``, ``"12 bytes"``."""
    return human_bytes(n).split(" (")[0]


def compact_bytes(n: int) -> str:
    """Args: n: a byte count. Returns: e.g. ``"12 B"``, ``"1.5 KiB"``, ``"3.0 TiB"`` (for
    tables: no byte count, TiB at most)."""
    f = float(n)
    for unit in ("B", *_UNITS[:4]):
        if f < 1024 or unit == "TiB":
            return f"{f:.0f} {unit}" if unit == "B" else f"{f:.1f} {unit}"
        f /= 1024
    return str(n)  # pragma: no cover (the loop always returns)


def human_duration(seconds: float) -> str:
    """Args: seconds: a duration. Returns: e.g. ``"0.4 s"``, ``"2 min 5 s"``, ``"1 h 0 min"``,
    ``"2 d 3 h"``."""
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    s = round(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d} d {h} h"
    if h:
        return f"{h} h {m} min"
    return f"{m} min {s} s"
