from __future__ import annotations

import threading
import time

import pytest

from backup.archive.fsjobs import FSJobs


def test_jobs_wait_for_parent_and_same_path() -> None:
    jobs = FSJobs(threads=4)
    order: list[bytes] = []
    lock = threading.Lock()

    def record(rel: bytes, delay: float) -> None:
        time.sleep(delay)
        with lock:
            order.append(rel)

    # the parent is slow: its children, queued after it, must still run after it
    jobs.submit(b"d", record, b"d", 0.2)
    for i in range(6):
        jobs.submit(b"d/" + bytes([97 + i]), record, b"d/" + bytes([97 + i]), 0.0)
    # two jobs on one path run in submission order even if the first is slower
    jobs.submit(b"x", record, b"x1", 0.1)
    jobs.submit(b"x", record, b"x2", 0.0)
    jobs.drain()
    jobs.close()
    assert order.index(b"d") < min(order.index(b"d/" + bytes([97 + i])) for i in range(6))
    assert order.index(b"x1") < order.index(b"x2")


def test_link_waits_for_its_target() -> None:
    jobs = FSJobs(threads=2)
    done: list[str] = []
    jobs.submit(b"a", lambda: (time.sleep(0.1), done.append("a")))
    jobs.submit(b"b", lambda: done.append("b-link"), after=b"a")
    jobs.drain()
    jobs.close()
    assert done == ["a", "b-link"]


def test_first_error_reaches_the_submitter() -> None:
    jobs = FSJobs(threads=2)

    def boom() -> None:
        raise OSError(28, "No space left on device")

    jobs.submit(b"f", boom)
    with pytest.raises(OSError, match="No space"):
        jobs.drain()
    jobs.close()


def test_queued_bytes_are_bounded() -> None:
    jobs = FSJobs(threads=1, max_bytes=10)
    gate = threading.Event()
    jobs.submit(b"a", gate.wait, nbytes=8)
    started = threading.Event()

    def submit_second() -> None:
        started.set()
        jobs.submit(b"b", lambda: None, nbytes=8)  # 8 + 8 > 10: waits for the first

    t = threading.Thread(target=submit_second)
    t.start()
    started.wait()
    time.sleep(0.1)
    assert t.is_alive()  # held back while the first job's bytes are in flight
    gate.set()
    t.join(timeout=5)
    assert not t.is_alive()
    jobs.drain()
    jobs.close()
