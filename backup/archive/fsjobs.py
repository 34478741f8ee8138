"""Filesystem work for restore, spread over threads.

Creating a file or a directory costs a metadata round trip that, on network and cloud disks,
takes far longer than decrypting and decompressing its bytes. One thread reads the archive
stream; a small pool creates directories and writes files, so those round trips overlap.
Invariants:

- A job on a path starts only after the job on its parent directory and any earlier job on
  the same path have finished, so the tree is built in archive order where it matters.
  The pool takes jobs first in, first out, so a job waiting on an earlier one never waits on
  a job queued behind it.
- File data waiting in the queue is bounded (``max_bytes``), whatever the archive holds.
- The first error raised by any job is re-raised in the reading thread at the next
  submission or at :meth:`FSJobs.drain`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

__all__ = ["FSJobs"]


class FSJobs:
    """A pool of filesystem jobs keyed by relative path.

    Args:
        threads: worker threads.
        max_bytes: bound on the file data held by queued jobs.
    """

    def __init__(self, threads: int = 4, max_bytes: int = 16 << 20) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="restore-fs")
        self._pending: dict[bytes, Future[None]] = {}
        self._max = max_bytes
        self._held = 0
        self._cond = threading.Condition()
        self._error: BaseException | None = None

    def _check(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _hold(self, n: int) -> None:
        with self._cond:
            # a single job larger than the bound runs alone rather than never
            while self._held and self._held + n > self._max and self._error is None:
                self._cond.wait()
            self._held += n

    def _release(self, n: int) -> None:
        with self._cond:
            self._held -= n
            self._cond.notify_all()

    def wait(self, rel: bytes) -> None:
        """Block until the job on ``rel`` (if any) is done."""
        f = self._pending.get(rel)
        if f is not None:
            f.result()

    def submit(
        self,
        rel: bytes,
        fn: Callable[..., Any],
        *args: Any,
        nbytes: int = 0,
        after: bytes | None = None,
    ) -> None:
        """Run ``fn(*args)`` once the jobs on ``rel``'s parent, on ``rel`` itself and on
        ``after`` (a hard link's target) are done."""
        self._check()
        deps = []
        parent = rel.rsplit(b"/", 1)[0] if b"/" in rel else None
        for key in (parent, rel, after):
            if key is not None:
                f = self._pending.get(key)
                if f is not None and not f.done():
                    deps.append(f)
        self._hold(nbytes)

        def job() -> None:
            try:
                for d in deps:
                    if d.exception() is not None:
                        return  # the dependency's own error is the one to report
                fn(*args)
            except BaseException as e:
                with self._cond:
                    if self._error is None:
                        self._error = e
                    self._cond.notify_all()
                raise
            finally:
                self._release(nbytes)

        self._pending[rel] = self._pool.submit(job)
        if len(self._pending) > 20000:
            self._pending = {k: f for k, f in self._pending.items() if not f.done()}

    def drain(self) -> None:
        """Wait for every job; raise the first error any of them raised."""
        for f in list(self._pending.values()):
            with contextlib.suppress(BaseException):
                f.result()
        self._pending.clear()
        self._check()

    def close(self) -> None:
        """Wait for running jobs and stop the threads (errors are dropped: call drain first)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
