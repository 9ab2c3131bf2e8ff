"""Devices and dtypes: what a run may ask for, checked before anything large is loaded."""

from __future__ import annotations

import contextlib
import re
import resource
import sys
from typing import Iterator

import torch

from qvedit.core.errors import QveditError
from qvedit.models.modifications import modifications_of
from qvedit.settings.run import DTYPE_NAMES

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
assert tuple(DTYPES) == DTYPE_NAMES


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise QveditError(f"dtype={name!r} is not supported: use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def check_device(device: str) -> str:
    """Return ``device`` if torch can use it, else raise a message that says what to pass."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise QveditError(f"device={device} but no CUDA GPU is visible: pass device=cpu (slow) or run on a GPU machine")
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        raise QveditError(f"device={device!r} is not usable here ({err}): pass device=cuda or device=cpu") from None
    return device


def reset_peak_memory(device: torch.device) -> None:
    """Start measuring a new peak (each frame's): GPU memory allocated; on the CPU under Linux the process's
    resident-set high-water mark (``/proc/self/clear_refs``; elsewhere it cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # 5: reset the peak RSS (VmHWM) to the current RSS; nothing else changes


def peak_memory_mib(device: torch.device) -> float:
    """The peak since ``reset_peak_memory`` (a frame's): GPU memory allocated; CPU: resident set (Linux's VmHWM),
    where it cannot be read the process's peak RSS so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError, AttributeError):
        with open("/proc/self/status") as status:
            return int(re.search(r"^VmHWM:\s+(\d+) kB", status.read(), re.MULTILINE)[1]) / 2**10
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


# perf=low_memory's saving, measured (docs/performance.md): TTLG at 1024x1024 peaks at 43.4 GiB instead of 58.9
LOW_MEMORY_HINT = ("pass perf=low_memory (the text encoder waits in CPU memory between prompts: 43 GiB instead of 59 "
                   "at 1 MP) or perf=vram24 (weights streamed from CPU memory: 5.4 GiB at 1 MP, 1.26x the time)")


def out_of_memory_message(index: int, size: tuple[int, int], device: torch.device, offloaded: bool,
                          err: BaseException) -> str:
    """One line for a frame that ran out of memory: the frame, its size, the peak, and what fits."""
    width, height = size
    peak = f"peak {peak_memory_mib(device) / 1024:.1f} GiB"
    if device.type == "cuda":
        peak += f" of {torch.cuda.get_device_properties(device).total_memory / 2**30:.1f} GiB"
    tried = re.search(r"[Tt]ried to allocate ([\d.]+ [KMG]iB)", str(err))
    if tried:
        peak += f", then {tried[1]} more was asked"
    smaller = f"a smaller max_area (max_area={width * height // 2} halves this frame's pixels)"
    fix = f"{LOW_MEMORY_HINT}, or {smaller}" if device.type == "cuda" and not offloaded else f"use {smaller}"
    kept = f"frames 0..{index - 1} are kept" if index > 1 else "frame 0 is kept"
    where = f"GPU memory on {device}" if device.type == "cuda" else "memory"
    return (f"frame {index} (generated at {width}x{height}) ran out of {where} ({peak}): {fix}; {kept}, and the "
            f"same command goes on from frame {index}")


@contextlib.contextmanager
def frame_memory(index: int, size: tuple[int, int], pipe, device: torch.device) -> Iterator[None]:
    """Running out of memory inside frame ``index`` (generated at ``size`` = (W, H) by ``pipe`` on ``device``,
    its execution device) becomes one line (``out_of_memory_message``) instead of a traceback."""
    try:
        yield
    except (torch.cuda.OutOfMemoryError, MemoryError) as err:
        offloaded = bool({"offload_text_encoder", "group_offload"} & set(modifications_of(pipe).names()))
        raise QveditError(out_of_memory_message(index, size, device, offloaded, err)) from None
