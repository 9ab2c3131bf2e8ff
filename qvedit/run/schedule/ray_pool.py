"""``schedule.workers=N``: N Ray actors, each holding one loaded pipeline (one GPU each with ``device=cuda``, one
CPU thread each with ``device=cpu``), on a local Ray or an existing cluster (``schedule.ray_address``).

What a user can get wrong is said in one line before Ray starts where it can be (``ray_problem``: Ray missing, more
workers than GPUs, an address nothing answers at) and right after it connects otherwise (``connect``: a cluster
with fewer GPUs than workers). Losing a worker loses only its task: ``RayPool.wait`` reports it as ``Lost`` and
the driver hands the task to another worker; Ray restarts the actor (``max_restarts``) and it comes back into the
pool once its pipeline is loaded again. An error of qvedit's own in a worker (a full disk, NaN in a frame) is the
run's error, one line.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import time
from typing import Callable, Optional

from qvedit.core.errors import QveditError
from qvedit.run.schedule.pool import Lost, Task
from qvedit.run.schedule.worker import WorkerSet
from qvedit.settings.schedule import ScheduleSettings

log = logging.getLogger(__name__)

MAX_RESTARTS = 4  # times Ray starts a lost worker again (its pipeline loaded again) before its slot is given up
CONNECT_TIMEOUT_S = 5.0  # an address that does not answer in this long is refused (not a hang)
WAIT_S = 1.0  # the driver looks up from Ray this often (signals, progress)
WAITING_NOTE_S = 60.0  # how long without any ready worker before saying what is waited for
OBJECT_STORE_BYTES = 256 * 2**20  # a local Ray's object store: tasks carry frame numbers and metrics rows only


def ray_problem(settings: ScheduleSettings, device: str, visible_gpus: int) -> Optional[str]:
    """Why ``schedule.workers`` workers could not run here (one line), found without starting Ray; or None.
    ``visible_gpus``: the CUDA devices this process sees."""
    if importlib.util.find_spec("ray") is None:
        return (f"schedule.workers={settings.workers} runs the segments on Ray, which is not installed: "
                "pip install -e '.[distributed]', or schedule.workers=1 (in this process)")
    workers = settings.workers
    if settings.ray_address is None:
        if device.startswith("cuda") and workers > visible_gpus:
            shown = os.environ.get("CUDA_VISIBLE_DEVICES")
            return (f"schedule.workers={workers} asks for {workers} GPUs (one per worker) but the local Ray has "
                    f"{visible_gpus}{f' (CUDA_VISIBLE_DEVICES={shown})' if shown is not None else ''}: use "
                    f"schedule.workers={max(1, visible_gpus)} or fewer, or join a cluster with schedule.ray_address")
        cores = os.cpu_count() or 1
        if device == "cpu" and workers > cores:
            return (f"schedule.workers={workers} CPU workers (one core each) but this machine has {cores} cores: use "
                    f"schedule.workers={cores} or fewer")
        return None
    if settings.ray_address != "auto":
        return unreachable(settings.ray_address)
    return None


def unreachable(address: str) -> Optional[str]:
    """Why nothing answers at a Ray ``address`` (``HOST:PORT`` or ``ray://HOST:PORT``) within a few seconds, or
    None when something does."""
    hostport = address.removeprefix("ray://").rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return (f"schedule.ray_address={address} is not an address: use HOST:PORT (the head node's GCS port, 6379 by "
                "default), ray://HOST:PORT (Ray Client, 10001) or auto (a cluster started on this machine)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            return None
    except OSError as err:
        why = "no answer" if isinstance(err, TimeoutError) else err.strerror or str(err)
        return (f"schedule.ray_address={address}: nothing answers there ({why} within {CONNECT_TIMEOUT_S:g} s): "
                "start the cluster (ray start --head on its head node) or correct the address")


def connect(settings: ScheduleSettings, device: str) -> None:
    """Start a local Ray (``ray_address`` null) or join the cluster; refuse a cluster without enough GPUs."""
    import ray

    if ray.is_initialized():
        return
    # The workers' own output (import warnings, once per worker) stays in Ray's logs (session_latest/logs in Ray's
    # temp folder): the driver says how the clip goes, and a worker's error comes back with its task.
    quiet = {"logging_level": logging.WARNING, "include_dashboard": False, "log_to_driver": False}
    try:
        if settings.ray_address is None:
            cpu = device == "cpu"
            ray.init(address="local", num_cpus=settings.workers if cpu else None, num_gpus=0 if cpu else None,
                     object_store_memory=OBJECT_STORE_BYTES, **quiet)
        else:
            quiet.pop("include_dashboard")
            ray.init(address=settings.ray_address, **quiet)
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise QveditError(f"cannot join the Ray cluster at schedule.ray_address={settings.ray_address} "
                          f"({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}): "
                          "start it or correct the address") from None
    if settings.ray_address is not None and device.startswith("cuda"):
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus < settings.workers:
            ray.shutdown()
            raise QveditError(f"schedule.workers={settings.workers} asks for {settings.workers} GPUs (one per "
                              f"worker) but the Ray cluster at {settings.ray_address} has {gpus}: use "
                              f"schedule.workers={max(1, gpus)} or fewer, or add nodes")


class FrameActor:
    """A Ray actor holding one loaded pipeline; ``build()`` (run once, in the actor) loads it and returns the object
    whose ``segment_worker(variant)`` makes a clip's frames and whose ``pipe`` is the pipeline."""

    def __init__(self, build: Callable[[], object], threads: Optional[int]):
        import torch

        if threads:
            torch.set_num_threads(threads)
        logging.getLogger("qvedit").setLevel(logging.WARNING)  # the driver says what is going on, once
        self.problem = None
        try:
            self.parts = build()
            self.workers = WorkerSet(self.parts.segment_worker)
        except QveditError as err:
            self.problem = str(err)

    def ready(self) -> str:
        """Where this worker runs (raises the problem that kept it from loading)."""
        if self.problem:
            raise QveditError(self.problem)
        return f"{socket.gethostname()} (process {os.getpid()})"

    def run(self, variant: str, task: str, index: int):
        return self.workers.run(variant, task, index)

    def with_pipe(self, function: Callable):
        """``function(pipe)`` on this worker's pipeline (frame 0's edit, ``first_frame.prompt``)."""
        return function(self.parts.pipe)


def qvedit_error(err: BaseException) -> BaseException:
    """The error a worker's task raised, as the run's own: a QveditError stays one line."""
    cause = getattr(err, "cause", None)
    return QveditError(str(cause)) if isinstance(cause, QveditError) else err


class RayPool:
    """``size`` Ray actors of ``FrameActor``; a lost one is ``Lost`` to the driver and rejoins when Ray has started
    it again. ``build``: what each actor runs once to load its pipeline (picklable)."""

    def __init__(self, build: Callable[[], object], settings: ScheduleSettings, device: str):
        import ray

        self.ray, self.size = ray, settings.workers
        self.cpu = cpu = device == "cpu"
        actor = ray.remote(FrameActor).options(num_cpus=1, num_gpus=0 if cpu else 1, max_restarts=MAX_RESTARTS,
                                               max_task_retries=0)
        self.actors = [actor.remote(build, 1 if cpu else None) for _ in range(self.size)]
        self.probes = {a.ready.remote(): slot for slot, a in enumerate(self.actors)}  # ref -> slot coming up
        self.tasks: dict = {}  # ref -> slot
        self.free: set[int] = set()
        self.gone: set[int] = set()
        self.started = time.monotonic()
        self.noted = self.started

    def idle(self) -> list[int]:
        return sorted(self.free)

    def running(self) -> int:
        return len(self.tasks)

    def submit(self, slot: int, task: Task) -> None:
        self.free.discard(slot)
        self.tasks[self.actors[slot].run.remote(*task)] = slot

    def on_one(self, function: Callable):
        """``function(pipe)`` on the first worker to be ready (frame 0's edit); on the next one if that one is lost."""
        for _ in range(MAX_RESTARTS + 1):
            while not self.free:
                self.wait()
            slot = min(self.free)
            try:
                return self.ray.get(self.actors[slot].with_pipe.remote(function))
            except self.ray.exceptions.RayTaskError as err:
                raise qvedit_error(err) from None
            except self.ray.exceptions.RayActorError as err:
                self.free.discard(slot)
                self.probes[self.actors[slot].ready.remote()] = slot
                log.warning("Ray worker %d was lost while editing frame 0 (%s): it goes to the next free worker",
                            slot, short(err))
        raise QveditError(f"frame 0's edit was lost with its Ray worker {MAX_RESTARTS + 1} times: it may be what "
                          "kills them (out of memory?)")

    def wait(self) -> list[tuple[int, object]]:
        """Every outcome there is once one is: (slot, result or ``Lost``); empty when only workers came (back) up."""
        ray = self.ray
        while True:
            refs = [*self.tasks, *self.probes]
            if not refs:
                raise QveditError(f"every one of the {self.size} Ray workers was lost and none could be started "
                                  "again (Ray's logs say why: session_latest/logs in its temp folder): the finished "
                                  "frames are kept; run the same command again to go on")
            ready, _ = ray.wait(refs, num_returns=1, timeout=WAIT_S)
            if ready:  # and whatever else is done by now: hundreds of workers finish frames every second
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                return [event for ref in ready if (event := self._outcome(ref)) is not None]
            self._note_waiting()

    def _outcome(self, ref) -> Optional[tuple[int, object]]:
        """What a finished ``ref`` says: a task's (slot, result or ``Lost``), or None for a worker (back) up."""
        ray = self.ray
        if ref in self.probes:
            slot = self.probes.pop(ref)
            try:
                where = ray.get(ref)
            except ray.exceptions.RayTaskError as err:
                raise qvedit_error(err) from None
            except ray.exceptions.RayActorError as err:
                self.gone.add(slot)
                log.warning("Ray worker %d is gone for good (%s); %d workers left", slot, short(err),
                            self.size - len(self.gone))
                return None
            self.free.add(slot)
            log.info("Ray worker %d is ready on %s", slot, where)
            return None
        slot = self.tasks.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            raise qvedit_error(err) from None
        except ray.exceptions.RayActorError as err:
            self.probes[self.actors[slot].ready.remote()] = slot  # back once Ray has started it again
            return slot, Lost(f"Ray worker {slot}", short(err))
        self.free.add(slot)
        return slot, result

    def _note_waiting(self) -> None:
        now = time.monotonic()
        if self.probes and not self.free and not self.tasks and now - self.noted > WAITING_NOTE_S:
            self.noted = now
            log.warning("waiting for Ray to start %d workers (each asks for 1 %s); none is ready after %.0f s",
                        len(self.probes), "CPU" if self.cpu else "GPU", now - self.started)

    def close(self) -> None:
        for actor in self.actors:
            try:
                self.ray.kill(actor)
            except Exception:  # already gone
                pass
        self.ray.shutdown()


def short(err: BaseException) -> str:
    """The first line of a Ray error (its messages run to many lines)."""
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__
