"""Filesystem work for restore, spread over threads.

Creating a file or a directory costs a metadata round trip that, on network and cloud disks,
takes far longer than decrypting and decompressing its bytes. One thread reads the archive
stream; a small pool creates directories and writes files, so those round trips overlap.

Jobs travel in batches (a few dozen jobs, or about 1 MiB of file data, per batch) on a plain
queue to long-lived workers: per-job futures and locks cost the reading thread more GIL time
than the work they schedule. A batch runs in order on one worker.

Invariants:

- Jobs on the same path run in submission order, and a job submitted with ``after`` runs
  after the jobs on that path. Nothing else is ordered: jobs on a directory and on what it
  holds may run in any order or at once, so a job must create the parents it needs (and
  tolerate another worker creating them at the same moment).
- Workers take batches first in, first out, and a batch waits only on earlier batches, so a
  waiting batch never waits on one queued behind it.
- What queued batches hold is bounded (``max_bytes``), whatever the archive holds: each job
  counts its file data plus ``JOB_COST`` for its own objects, so an archive of tiny files
  queues thousands of jobs, not millions (counting the data alone let 16 MiB of 100-byte
  files queue 160,000 jobs, ~1 KiB of objects each).
- The first error raised by any job is re-raised in the reading thread at the next
  submission, :meth:`FSJobs.wait` or :meth:`FSJobs.drain`; once a job has failed, the jobs
  not yet started are skipped (the restore is failing anyway).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from ..threads import start_thread

__all__ = ["FSJobs"]

_Job = tuple[Callable[..., Any], tuple[Any, ...]]
# what one queued job holds besides its file data (its tuple, the tar member, the path),
# counted against the bound
JOB_COST = 1024
# batch number, batches it must wait for, its jobs, the file bytes it holds
_Batch = tuple[int, tuple[int, ...], list[_Job], int]


class FSJobs:
    """A pool of filesystem jobs keyed by relative path.

    Args:
        threads: worker threads.
        max_bytes: bound on what queued jobs hold (their file data, plus JOB_COST each).
        batch: jobs per batch.
    """

    def __init__(self, threads: int = 4, max_bytes: int = 16 << 20, batch: int = 64) -> None:
        self._max = max_bytes
        self._batch_jobs = batch
        # at least four batches fit under the bound, so the workers are never starved by it
        self._batch_bytes = max(1, min(1 << 20, max_bytes // 4))
        self._cond = threading.Condition()
        self._held = 0
        self._error: BaseException | None = None
        self._q: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        # batch numbers: every batch <= _low is finished; _finished holds the ones above it
        self._low = 0
        self._finished: set[int] = set()
        self._no = 1  # the batch being filled
        self._jobs: list[_Job] = []
        self._bytes = 0
        self._deps: set[int] = set()
        self._last: dict[bytes, int] = {}  # path -> batch of its latest job
        self._prune_at = 50_000  # _last is pruned of finished batches past this size
        self._cancel = False
        self._threads = [start_thread(self._work, f"restore-fs_{i}") for i in range(threads)]

    # -- workers ---------------------------------------------------------------------------

    def _work(self) -> None:
        get = self._q.get
        while (item := get()) is not None:
            no, deps, jobs, nbytes = item
            try:
                if deps:
                    self._wait_for(deps)
                for fn, args in jobs:
                    if self._error is not None or self._cancel:
                        break
                    fn(*args)
            except BaseException as e:
                with self._cond:
                    if self._error is None:
                        self._error = e
            finally:
                with self._cond:
                    self._finished.add(no)
                    while self._low + 1 in self._finished:
                        self._low += 1
                        self._finished.discard(self._low)
                    self._held -= nbytes
                    self._cond.notify_all()

    def _done(self, no: int) -> bool:
        return no <= self._low or no in self._finished

    def _wait_for(self, nos: tuple[int, ...] | list[int]) -> None:
        with self._cond:
            for no in nos:
                while not self._done(no):
                    self._cond.wait()

    # -- the reading thread ----------------------------------------------------------------

    def _check(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _flush(self) -> None:
        if not self._jobs:
            return
        n = self._bytes
        with self._cond:
            # a single batch larger than the bound runs alone rather than never
            while self._held and self._held + n > self._max and self._error is None:
                self._cond.wait()
            self._held += n
        self._q.put((self._no, tuple(self._deps), self._jobs, n))
        self._no += 1
        self._jobs = []
        self._bytes = 0
        self._deps = set()
        if len(self._last) > self._prune_at:
            low = self._low
            self._last = {k: v for k, v in self._last.items() if v > low}
            # what is still queued stays: prune again only once as much more has come, so
            # the pruning costs a constant per job however many are queued
            self._prune_at = max(50_000, 2 * len(self._last))

    def _depend(self, key: bytes) -> None:
        no = self._last.get(key)
        if no is not None and no != self._no and not self._done(no):
            self._deps.add(no)

    def submit(
        self,
        rel: bytes,
        fn: Callable[..., Any],
        *args: Any,
        nbytes: int = 0,
        after: bytes | None = None,
    ) -> None:
        """Queue ``fn(*args)``, to run after the jobs already queued on ``rel`` and on
        ``after`` (a hard link's target). It must create any missing parent of ``rel``."""
        if self._error is not None:
            self._check()
        nbytes += JOB_COST
        if self._jobs and self._bytes + nbytes > self._batch_bytes:
            self._flush()
        last = self._last
        if rel in last:
            self._depend(rel)
        if after is not None:
            self._depend(after)
        last[rel] = self._no
        self._jobs.append((fn, args))
        self._bytes += nbytes
        if len(self._jobs) >= self._batch_jobs or self._bytes >= self._batch_bytes:
            self._flush()

    def wait(self, rel: bytes) -> None:
        """Block until the jobs queued on ``rel`` (if any) are done; raise the first error
        any job raised."""
        no = self._last.get(rel)
        if no is not None and not self._done(no):
            if no == self._no:
                self._flush()
            self._wait_for((no,))
        self._check()

    def drain(self) -> None:
        """Wait for every job; raise the first error any of them raised."""
        self._flush()
        with self._cond:
            while self._low < self._no - 1:
                self._cond.wait()
        self._last.clear()
        self._check()

    def close(self) -> None:
        """Stop the threads; queued jobs not yet started are dropped, and so are errors
        (call drain first to run and check everything)."""
        self._jobs = []
        self._cancel = True
        for _ in self._threads:
            self._q.put(None)
        for t in self._threads:
            t.join()
