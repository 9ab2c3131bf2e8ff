"""Devices and dtypes: what a run may ask for, checked before anything large is loaded."""

from __future__ import annotations

import resource
import sys

import torch

from qvedit.config import DTYPE_NAMES
from qvedit.errors import QveditError

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
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    """GPU: peak allocated since the last reset (per frame). CPU: the process's peak RSS so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
