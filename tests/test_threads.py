"""Helper threads leave SIGINT and SIGTERM to the main thread (backup/threads.py)."""

from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor

from backup.threads import MAIN_SIGNALS, leave_signals_to_main, start_thread


def _mask_in(run: object) -> set[signal.Signals]:
    seen: list[set[signal.Signals]] = []

    def look() -> None:
        seen.append(signal.pthread_sigmask(signal.SIG_BLOCK, []))

    run(look)  # type: ignore[operator]
    return seen[0]


def test_a_started_thread_blocks_both_and_the_main_thread_neither() -> None:
    assert _mask_in(lambda f: start_thread(f, "t").join()) >= MAIN_SIGNALS
    assert not _mask_in(lambda f: threading.Thread(target=f).run()) & MAIN_SIGNALS  # in main
    leave_signals_to_main()  # a no-op in the main thread
    assert not signal.pthread_sigmask(signal.SIG_BLOCK, []) & MAIN_SIGNALS


def test_an_executor_with_the_initializer_blocks_both() -> None:
    with ThreadPoolExecutor(1, initializer=leave_signals_to_main) as pool:
        assert pool.submit(signal.pthread_sigmask, signal.SIG_BLOCK, []).result() >= MAIN_SIGNALS
