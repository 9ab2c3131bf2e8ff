"""The workers a segment schedule hands its tasks to: ``LocalPool`` (one, in this process) or ``RayPool``
(``qvedit.run.schedule.ray_pool``: N Ray actors). Both run a task ``(variant, task, index)`` on a ``WorkerSet``.

The driver asks which workers are ``idle()``, ``submit``s a task to one, and ``wait()``s for the next outcomes:
``(slot, result)``, ``(slot, Lost(...))`` when the worker was lost with its task (the task is the driver's to hand
out again); none when only the workers changed (one came back): then it hands out tasks again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

from qvedit.run.schedule.worker import WorkerSet

Task = tuple[str, str, int]  # (variant: "guided" / "unguided", task: "make" / "seam", frame index)


@dataclass
class Lost:
    """A worker lost with its task (killed, out of memory, its node gone)."""

    worker: str  # which, in words
    reason: str


class Pool(Protocol):
    size: int

    def idle(self) -> list[int]:
        """The slots with a live worker and no task."""

    def submit(self, slot: int, task: Task) -> None:
        """Start ``task`` on the worker of ``slot``."""

    def wait(self) -> list[tuple[int, object]]:
        """The outcomes there are once one is: (slot, result or ``Lost``); none when workers came back up."""

    def running(self) -> int:
        """How many tasks are out."""

    def close(self) -> None:
        """Stop the workers this pool started."""


class LocalPool:
    """One worker, in this process, on the run's own loaded pipeline: a task runs when the driver waits for it."""

    size = 1

    def __init__(self, workers: WorkerSet):
        self.workers = workers
        self.task: Optional[Task] = None

    def idle(self) -> list[int]:
        return [] if self.task is not None else [0]

    def submit(self, slot: int, task: Task) -> None:
        self.task = task

    def wait(self) -> list[tuple[int, object]]:
        task, self.task = self.task, None
        return [(0, self.workers.run(*task))]

    def running(self) -> int:
        return int(self.task is not None)

    def close(self) -> None:
        pass
