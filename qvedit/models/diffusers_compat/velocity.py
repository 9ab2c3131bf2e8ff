"""Part of ``qvedit.models.diffusers_compat`` (its ``ADAPTATIONS`` list holds the check, "record_velocity"): the
velocity of each scheduler step, which ``callback_on_step_end`` does not see, recorded for the guidance's x0
estimate."""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator, Optional

import torch

from qvedit.models.modifications import modifications_of


class VelocityRecorder:
    """Holds the model output (velocity v) of the scheduler's latest ``step`` call, and the call's sigmas on the
    CPU (``sigmas``: what ``scheduler.sigmas`` holds on the pipeline's device, final 0 included)."""

    def __init__(self):
        self.velocity: Optional[torch.Tensor] = None
        self.sigmas: Optional[torch.Tensor] = None


@contextlib.contextmanager
def record_velocity(scheduler) -> Iterator[VelocityRecorder]:
    """Record what ``scheduler.step`` is given, for the duration of one pipeline call.

    ``callback_on_step_end`` only sees x_{t-1}; the velocity the step used turns it into an x0
    estimate. Wrapping the instance's ``step`` leaves the class and the pipeline untouched. The call's
    ``set_timesteps`` is wrapped too: it runs once more on the CPU first (the same float32 sigmas: they are
    computed in numpy, then moved), so that ``step_sigma`` reads a sigma without waiting for the device. Both are
    the modification ``record_velocity`` of the scheduler (``qvedit.models.modifications``: one recorder at a time),
    undone after the block, also when it raises.
    """
    recorder = VelocityRecorder()

    def wrap(change) -> None:
        original, set_timesteps = scheduler.step, scheduler.set_timesteps

        def step(model_output, *args, **kwargs):
            recorder.velocity = model_output
            return original(model_output, *args, **kwargs)

        @functools.wraps(set_timesteps)  # retrieve_timesteps reads its signature (does it take sigmas?)
        def set_timesteps_recording(*args, **kwargs):
            set_timesteps(*args, **{**kwargs, "device": None})
            recorder.sigmas = scheduler.sigmas.clone()
            return set_timesteps(*args, **kwargs)

        change.set(scheduler, "step", step)
        change.set(scheduler, "set_timesteps", set_timesteps_recording)

    with modifications_of(scheduler).applied("record_velocity", wrap):
        yield recorder


def step_sigma(scheduler, recorder: Optional[VelocityRecorder] = None) -> float:
    """sigma of the latents the scheduler's last ``step`` returned (0 after the final step). With the call's
    ``recorder`` it is read from the CPU copy of the sigmas (``step_index`` is a Python int): no device sync,
    which on a GPU would wait for every queued transformer pass (0.49 s of a 2.26 s frame on an H200)."""
    if recorder is not None and recorder.sigmas is not None:
        return float(recorder.sigmas[scheduler.step_index])
    return float(scheduler.sigmas[scheduler.step_index])
