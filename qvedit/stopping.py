"""Stopping cleanly: SIGTERM (SLURM preemption, ``docker stop``, a scheduler's cancel) and Ctrl-C.

A signal stops the run where it is: the frame being made is dropped (the same command makes it
again, with the same bytes) and every finished frame keeps its metrics row. Only the instant that
makes a frame and its row visible is shielded (``shielded()``): a signal arriving there takes
effect right after, so a frame is never on disk without its row.

Handlers installed before qvedit's keep their meaning and are deferred the same way. Under
submitit (``hydra/launcher=slurm``) that is submitit's own: SIGTERM is logged and ignored, and the
preemption signal (USR2) checkpoints the job and requeues it into the same folder, where it
resumes by itself.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
from typing import Callable, Iterator

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal, as a shell reports it


class Terminated(BaseException):
    """SIGTERM: stop the run. A BaseException, like KeyboardInterrupt, so no ``except Exception`` keeps going."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_shield_depth = 0
_deferred: list[tuple[Callable, int]] = []


def _stop(signum: int, frame) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def _deferring(action: Callable) -> Callable:
    def handler(signum: int, frame) -> None:
        if _shield_depth:
            _deferred.append((action, signum))
        else:
            action(signum, frame)

    handler.qvedit_action = action
    return handler


def preemption_signal() -> signal.Signals:
    """The signal submitit requeues on (``SUBMITIT_PREEMPT_SIGNAL``, USR2 by default)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)


def install() -> None:
    """Stop on SIGTERM and SIGINT, and defer whatever handles the preemption signal, in this process.

    Only the main thread may set handlers; elsewhere (a library's worker thread) nothing changes.
    """
    global _shield_depth
    if threading.current_thread() is not threading.main_thread():
        return
    _shield_depth = 0
    _deferred.clear()
    for signum in (signal.SIGINT, signal.SIGTERM, preemption_signal()):
        current = signal.getsignal(signum)
        current = getattr(current, "qvedit_action", current)
        if current in (signal.SIG_DFL, signal.default_int_handler) and signum != preemption_signal():
            signal.signal(signum, _deferring(_stop))
        elif callable(current):  # someone else's (submitit): kept, but never inside a shielded block
            signal.signal(signum, _deferring(current))


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """A block no signal interrupts: one that arrives inside acts when the block ends."""
    global _shield_depth
    _shield_depth += 1
    try:
        yield
    finally:
        _shield_depth -= 1
        if not _shield_depth and _deferred:
            action, signum = _deferred[0]
            _deferred.clear()
            action(signum, None)


def resume_command(hydra) -> str:
    """The command that goes on where this run stopped (``hydra``: the run's HydraConfig)."""
    from hydra.types import RunMode

    world = int(os.environ.get("WORLD_SIZE", "1"))
    launch = f"torchrun --nproc-per-node {world} -m qvedit" if world > 1 else "python -m qvedit"
    in_process_sweep = hydra.mode == RunMode.MULTIRUN and "BasicLauncher" in str(hydra.launcher.get("_target_"))
    if in_process_sweep:  # the whole sweep again: finished jobs are skipped frame by frame
        args = [a for a in sys.argv[1:] if not a.startswith("hydra.sweep.dir=")]
        return f"{launch} {shlex.join(args)} hydra.sweep.dir={shlex.quote(str(hydra.sweep.dir))}"
    overrides = [o for o in hydra.overrides.task if not o.startswith("hydra.run.dir=")]
    return f"{launch} {shlex.join(overrides)} hydra.run.dir={shlex.quote(str(hydra.runtime.output_dir))}"
