"""Helper threads that leave SIGINT and SIGTERM to the main thread.

Python runs signal handlers only in the main thread, but the kernel hands a signal sent to
the process to any thread that does not block it. When that is a helper blocked in a read
(the archive stream, a FIFO, a stalled download), its read is retried and the main thread,
itself waiting on a queue or a condition, is never woken: Ctrl-C and SIGTERM did nothing
until more data came. Every thread the package starts blocks both signals first, so the
kernel delivers them to the main thread, whose waits they interrupt.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["MAIN_SIGNALS", "leave_signals_to_main", "start_thread"]

MAIN_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


def leave_signals_to_main() -> None:
    """Block SIGINT and SIGTERM in the calling thread (never call it in the main thread).
    Also a ``ThreadPoolExecutor(initializer=...)``."""
    if threading.current_thread() is not threading.main_thread():
        signal.pthread_sigmask(signal.SIG_BLOCK, MAIN_SIGNALS)


def start_thread(target: Callable[..., Any], name: str, *args: Any) -> threading.Thread:
    """Start a daemon thread running ``target(*args)`` with SIGINT and SIGTERM blocked."""

    def run() -> None:
        leave_signals_to_main()
        target(*args)

    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    return t
