from __future__ import annotations

import threading
import time

import pytest

from backup.archive.fsjobs import JOB_COST, FSJobs


def test_jobs_on_one_path_run_in_order() -> None:
    # one job per batch, so the jobs land on different workers
    jobs = FSJobs(threads=4, batch=1)
    order: list[bytes] = []
    lock = threading.Lock()
    y_ran = threading.Event()

    def record(rel: bytes) -> None:
        if rel == b"x1":
            # held until the job on another path has run: it must not wait for this one
            y_ran.wait(timeout=5)
        with lock:
            order.append(rel)
        if rel == b"y":
            y_ran.set()

    # jobs on one path run in submission order even when the first one is held up
    jobs.submit(b"x", record, b"x1")
    jobs.submit(b"y", record, b"y")
    jobs.submit(b"x", record, b"x2")
    jobs.submit(b"x", record, b"x3")
    jobs.drain()
    jobs.close()
    assert order == [b"y", b"x1", b"x2", b"x3"]


def test_wait_covers_jobs_on_the_path() -> None:
    jobs = FSJobs(threads=2, batch=64)
    done: list[str] = []
    jobs.submit(b"a", lambda: (time.sleep(0.1), done.append("a")))
    jobs.submit(b"b", lambda: done.append("b"))
    jobs.wait(b"a")  # the batch still filling is sent, then waited for
    assert "a" in done
    jobs.drain()
    jobs.close()


def test_close_drops_queued_jobs() -> None:
    jobs = FSJobs(threads=1, batch=1)
    gate = threading.Event()
    ran: list[int] = []
    jobs.submit(b"a", gate.wait)
    for i in range(5):
        jobs.submit(b"b%d" % i, ran.append, i)
    closer = threading.Thread(target=jobs.close)
    closer.start()
    while not jobs._cancel:  # close has begun
        time.sleep(0.001)
    gate.set()
    closer.join(timeout=5)
    assert not closer.is_alive()
    assert ran == []


def test_link_waits_for_its_target() -> None:
    jobs = FSJobs(threads=2, batch=1)
    done: list[str] = []
    jobs.submit(b"a", lambda: (time.sleep(0.1), done.append("a")))
    jobs.submit(b"b", lambda: done.append("b-link"), after=b"a")
    jobs.drain()
    jobs.close()
    assert done == ["a", "b-link"]


def test_first_error_reaches_the_submitter() -> None:
    jobs = FSJobs(threads=1, batch=1)  # one worker: the batches run in submission order
    after: list[int] = []

    def boom() -> None:
        raise OSError(28, "No space left on device")

    jobs.submit(b"f", boom)
    with pytest.raises(OSError, match="No space"):
        for i in range(1000):
            jobs.submit(b"g%d" % i, after.append, i)
        jobs.drain()
    jobs.close()
    assert after == []  # jobs queued after the failure are skipped


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


def test_jobs_without_data_are_bounded_too() -> None:
    """Tiny files: the bound counts each job's own objects (JOB_COST), not only its data, so
    a stalled pool holds thousands of queued jobs, not every file of the archive."""
    jobs = FSJobs(threads=1, max_bytes=64 * JOB_COST)
    gate = threading.Event()
    jobs.submit(b"first", gate.wait)
    submitted = 0

    def submit_many() -> None:
        nonlocal submitted
        for i in range(10_000):
            jobs.submit(b"f%d" % i, lambda: None, nbytes=10)
            submitted += 1

    t = threading.Thread(target=submit_many)
    t.start()
    time.sleep(0.3)
    assert t.is_alive() and submitted < 200, submitted  # held back, not 10,000 queued
    gate.set()
    t.join(timeout=30)
    assert not t.is_alive() and submitted == 10_000
    jobs.drain()
    jobs.close()


def test_many_queued_paths_cost_a_constant_per_job() -> None:
    """The map of each path's latest batch is pruned of finished batches; with more paths
    queued than the pruning threshold, pruning again on every batch made each submission
    cost the whole map (a 200k tiny-file restore spent 40 s of CPU there)."""
    jobs = FSJobs(threads=1, max_bytes=1 << 40)  # nothing held back: all queued at once
    gate = threading.Event()
    jobs.submit(b"first", gate.wait)
    t0 = time.process_time()
    for i in range(200_000):
        jobs.submit(b"f%d" % i, lambda: None)
    spent = time.process_time() - t0
    gate.set()
    jobs.drain()
    jobs.close()
    assert spent < 5, spent  # pruned on every batch: some 40 s
