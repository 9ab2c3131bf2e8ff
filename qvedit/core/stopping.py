"""Stopping cleanly: SIGTERM (SLURM preemption, ``docker stop``, a scheduler's cancel) and Ctrl-C.

A signal stops the run where it is: the frame being made is dropped (the same command makes it
again, with the same bytes) and every finished frame keeps its metrics row. Only the instant that
makes a frame and its row visible is shielded (``shielded()``): a signal arriving there takes
effect right after, so a frame is never on disk without its row.

Python runs a signal handler only between bytecodes of the main thread, so a signal arriving inside
one long computation (on the CPU, the VAE's attention over a 1 MP condition image: half a minute on a
busy machine) would wait for it to end. A watcher thread, woken at once through ``signal.set_wakeup_fd``,
stops the process itself when the main thread has not taken the signal within ``GRACE_S``: never while
a frame is being committed (it waits for the commit), with the same message and exit code.

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
from typing import Callable, Iterator, Optional

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal, as a shell reports it


class Terminated(BaseException):
    """SIGTERM: stop the run. A BaseException, like KeyboardInterrupt, so no ``except Exception`` keeps going."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


GRACE_S = 2.0  # how long the watcher gives the main thread to take a signal itself

_shield_depth = 0
_deferred: list[tuple[Callable, int]] = []
_committing = threading.Lock()  # held by the main thread while a shielded block runs
_stopping = threading.Event()  # the main thread took a stop signal and is unwinding
_kept: dict[str, int | str] = {}  # frames folder -> the last frame finished there (with its row), or what is
_message: Callable[[int], str] = lambda signum: f"qvedit: stopped by {signal.Signals(signum).name}"
_watcher: list = []  # the watcher thread, once started


_taken: list[int] = []  # the stop signal the main thread took, for check()


def _stop(signum: int, frame) -> None:
    _stopping.set()
    _taken[:] = [signum]
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def check() -> None:
    """Raise the stop again if one was taken and its exception lost on the way: a handler that runs while a
    ``__del__`` or a finalizer runs raises there, and Python prints such an exception and drops it. Called
    between frames, so such a stop costs at most the frame in progress."""
    if _taken:
        _stop(_taken[0], None)


def finished(folder, last: int) -> None:
    """Frames 0..``last`` of the clip in ``folder`` are on disk with their metrics rows (for the stop message)."""
    _kept[str(folder)] = last


def finished_text(folder, text: str) -> None:
    """What of the clip in ``folder`` is on disk with its metrics rows, said as ``text`` (``12 of 47 frames``): a
    segment schedule's finished frames need not be 1..N."""
    _kept[str(folder)] = text


def kept_text() -> str:
    """What a stopped run keeps: ``frames 1..3 (and their metrics rows) are kept in F`` or that none was finished."""
    made = [(folder, last) for folder, last in _kept.items() if isinstance(last, str) or last >= 1]
    if not made:
        return "no frame was finished (frame 0 is the input)"
    return "; ".join((f"{last} and their metrics rows are" if isinstance(last, str) else
                      f"frames 1..{last} and their metrics rows are" if last > 1 else "frame 1 and its metrics row is")
                     + f" kept in {folder}" for folder, last in made)


def _watch(read_fd: int) -> None:
    """The watcher thread: stop the process when the main thread cannot take a stop signal in time."""
    while True:
        for signum in os.read(read_fd, 64):
            if signum not in EXIT_CODES or getattr(signal.getsignal(signum), "qvedit_action", None) is not _stop:
                continue  # not a stop signal, or another's handler (submitit's): theirs to act on
            if _stopping.wait(GRACE_S):
                continue
            with _committing:  # a frame being committed is committed first
                if _stopping.is_set() or _deferred:  # taken meanwhile, or acted on right after the commit
                    continue
                _stopping.set()
                try:
                    from qvedit.core.files import drop_staged

                    drop_staged()
                    said = _message(signum)
                    if said:
                        print(said, file=sys.stderr, flush=True)
                finally:
                    os._exit(EXIT_CODES[signum])


def _start_watcher() -> None:
    """Have stop signals wake the watcher at once (where nothing else uses the wakeup fd)."""
    if _watcher:
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    if previous != -1:  # someone else's (an event loop): theirs it stays
        signal.set_wakeup_fd(previous)
        os.close(read_fd)
        os.close(write_fd)
        return
    thread = threading.Thread(target=_watch, args=(read_fd,), name="qvedit-stop-watcher", daemon=True)
    thread.start()
    _watcher.append(thread)


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


def install(message: Optional[Callable[[int], str]] = None) -> None:
    """Stop on SIGTERM and SIGINT, and defer whatever handles the preemption signal, in this process.
    ``message(signum)``: what the watcher prints when it stops the process itself.

    Only the main thread may set handlers; elsewhere (a library's worker thread) nothing changes.
    """
    global _shield_depth, _message
    if threading.current_thread() is not threading.main_thread():
        return
    _shield_depth = 0
    _deferred.clear()
    _kept.clear()
    _taken.clear()
    _stopping.clear()
    if message is not None:
        _message = message
    _start_watcher()
    # A stop signal its parent left blocked (the mask is inherited) would never arrive; one it set to be ignored
    # (nohup) stays ignored.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    for signum in (signal.SIGINT, signal.SIGTERM, preemption_signal()):
        current = signal.getsignal(signum)
        current = getattr(current, "qvedit_action", current)
        if current in (signal.SIG_DFL, signal.default_int_handler) and signum != preemption_signal():
            signal.signal(signum, _deferring(_stop))
        elif callable(current):  # someone else's (submitit): kept, but never inside a shielded block
            signal.signal(signum, _deferring(current))


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """A block no signal interrupts: one that arrives inside acts when the block ends.

    In another thread (the background frame writer, ``qvedit.core.background_writer``) signals never interrupt the
    block, since Python runs handlers in the main thread only: there the block only keeps the watcher from ending the
    process in the middle of it."""
    global _shield_depth
    if threading.current_thread() is not threading.main_thread():
        with _committing:
            yield
        return
    if not _shield_depth:
        _committing.acquire()
    _shield_depth += 1
    try:
        yield
    finally:
        _shield_depth -= 1
        if not _shield_depth:
            _committing.release()
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
