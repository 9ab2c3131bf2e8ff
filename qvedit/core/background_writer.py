"""Work done beside the main thread, in order: a run's frames and metrics rows are written while the next frame
is made (PNG encoding took 0.2-0.5 s of a 2.3 s frame on an H200).

One thread takes the jobs one after another, so they happen in the order given; at most ``depth`` wait, so a
slow disk holds the caller back instead of filling memory. A job that fails stops the jobs after it (a frame
is never written after one that could not be) and its error is raised in the caller at its next ``submit`` or
at ``close``, as if the caller had raised it: a ``QveditError`` there is the run's usual one-line error. When the
caller stops on an error of its own (a stop signal, a bad frame), ``close_quietly`` lets what was submitted finish
(the frames already made are kept) before the error goes on up.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable, Optional

log = logging.getLogger(__name__)


class Background:
    """Runs submitted jobs on one thread, in order (module docstring)."""

    def __init__(self, name: str, depth: int = 1):
        self._jobs: queue.Queue = queue.Queue(maxsize=depth)
        self._error: Optional[BaseException] = None  # a job's, not yet raised in the caller
        self._failed = False  # a job failed: the ones after it are dropped
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                if not self._failed:
                    job()
            except BaseException as err:  # kept for the caller, which raises it
                self._failed, self._error = True, err
            finally:
                self._jobs.task_done()

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job`` (waits while ``depth`` jobs wait); raises the error of a job that failed before."""
        self.raise_error()
        self._jobs.put(job)

    def close(self) -> None:
        """Run what was submitted, then end the thread; raises the error of a job that failed."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        self.raise_error()

    def raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close_quietly(self) -> None:
        """``close`` on the way out of an error of the caller's: that error is the one said; a job's error is logged."""
        try:
            self.close()
        except BaseException as err:  # the caller's own error is on its way up
            log.warning("writing in the background also failed: %s", str(err).splitlines()[0] if str(err) else
                        type(err).__name__)

