"""What the command lines of qvedit's tools share (``python -m qvedit.bench``, ``.accept``, ``.diff``, ``.selftest``
and the scripts under ``benchmarks/``): bad arguments refused as ``python -m qvedit`` refuses a bad override (one
line ``qvedit: error: ...`` naming the option and what it takes, exit code 2, before any work), a problem found
later said the same way, and output whose reader stops early (``| head``) ending quietly."""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, NoReturn, Optional, Sequence

from qvedit.core.errors import QveditError

BAD_INPUT = 2  # the exit code of a refusal, as python -m qvedit's
BROKEN_PIPE = 128 + 13  # what a shell reports for a process its reader left (SIGPIPE)


class OneLineParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose refusal is one line (argparse's own prints its usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(BAD_INPUT, f"qvedit: error: {self.prog}: {message} ({self.prog} --help says what each option "
                             "takes)\n")

    def _print_message(self, message: str, file=None) -> None:  # --help into a reader that stopped early: quiet
        try:
            super()._print_message(message, file)
        except BrokenPipeError:
            quiet_stdout()


def whole(low: Optional[int] = None, high: Optional[int] = None, multiple: int = 1) -> Callable[[str], int]:
    """An argparse ``type``: a whole number in ``low``..``high`` that is a multiple of ``multiple``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is out of range: give {_span(low, high)}")
        if value % multiple:
            raise argparse.ArgumentTypeError(f"{value} is not a multiple of {multiple}: give "
                                             f"{max(multiple, value // multiple * multiple)}, for example")
        return value

    parse.__name__ = "whole number"
    return parse


def number(low: Optional[float] = None, high: Optional[float] = None) -> Callable[[str], float]:
    """An argparse ``type``: a finite number in ``low``..``high``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is out of range: give a number {_span(low, high)}")
        return value

    parse.__name__ = "number"
    return parse


def _span(low: Optional[float], high: Optional[float]) -> str:
    """``0..1``, ``1 or more``, ``1 or less``, or ``any value``: the range of an option in words."""
    if low is not None and high is not None:
        return f"{low:g}..{high:g}"
    if low is not None or high is not None:
        return f"{low:g} or more" if low is not None else f"{high:g} or less"
    return "that is finite"


def folder(text: str) -> Path:
    """An argparse ``type``: a folder the tool may create and write into (no part of it is a file)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: give a folder")
    path = Path(text).expanduser()
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise argparse.ArgumentTypeError(f"{part} is a file, not a folder: give another folder")
            break
    return path


def file(text: str) -> Path:
    """An argparse ``type``: a file the tool writes (not a folder; its folder can be made)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: give a file name")
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder: give a file name")
    folder(str(path.parent))
    return path


def quiet_stdout() -> None:
    """The reader of stdout left (``| head``): whatever is printed from now on goes nowhere, and Python's own flush at
    exit raises nothing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def emit(text: str = "") -> None:
    """Print ``text`` on stdout; a reader that stopped early ends the output, not the tool (it goes on, and writes
    its files as it would without the pipe)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        quiet_stdout()


def run_tool(main: Callable[[], Optional[int]]) -> int:
    """``main()``'s exit code; a QveditError said in one line (exit 2), a reader that left ending the tool quietly."""
    try:
        return main() or 0
    except QveditError as err:
        print(f"qvedit: error: {err}", file=sys.stderr)
        return BAD_INPUT
    except BrokenPipeError:
        quiet_stdout()
        return BROKEN_PIPE


def child_error(output: str) -> str:
    """The one line that says why a qvedit command failed: its ``qvedit: error:`` line, else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line.removeprefix("qvedit: error: ") for line in lines if line.startswith("qvedit: error:")]
    return (errors or lines or ["it printed nothing"])[-1]


def run_step(command: Sequence[str], what: str, log: Optional[Path] = None, **options) -> subprocess.CompletedProcess:
    """Run one step of a benchmark (a ``python -m qvedit`` command), its output captured; a failure is a QveditError
    naming ``what``, the exit code and the command's own error line. ``log``: where its whole output is kept when it
    fails (named in the error)."""
    result = subprocess.run(list(command), capture_output=True, text=True, **options)
    if result.returncode != 0:
        kept = ""
        if log is not None:
            try:
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_text(f"$ {' '.join(map(str, command))}\n{result.stdout}\n{result.stderr}")
                kept = f"; its whole output: {log}"
            except OSError:
                pass
        raise QveditError(f"{what} failed (exit {result.returncode}): {child_error(result.stderr)}{kept}")
    return result
