"""One pipeline call for one image (qvedit.run.pipeline_call), as the clip's frames and frame 0's edit use it."""

import numpy as np
import pytest
import torch
from PIL import Image

from qvedit.core.errors import QveditError
from qvedit.models.family import family_of
from qvedit.run.frame_plan import ClipPlan
from qvedit.run.pipeline_call import PipelineCall
from tests.test_anchor import PipeSpy

SIZE, GENERATED = (40, 24), (32, 32)


def one_call(pipe):
    plan = ClipPlan(total=2, init_size=SIZE, generation_size=GENERATED, condition_area=32 * 32,
                    family=family_of(pipe))
    return PipelineCall(pipe, plan)


def condition(seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 40, 3), dtype=np.uint8))


class Steering:
    """A step guidance that moves nothing and remembers what it saw."""

    def __init__(self, problem=None):
        self.velocities, self.checked, self.problem = [], False, problem

    def callback(self, velocity):
        def step(pipe, index, timestep, tensors):
            self.velocities.append(velocity.velocity)
            return {}
        return step

    def check(self):
        self.checked = True
        if self.problem:
            raise QveditError(self.problem)


def test_a_call_is_seeded_sized_and_guided_only_when_asked(tiny_pipe):
    spy = PipeSpy(tiny_pipe)
    call = one_call(spy)
    images = [condition(1), condition(2)]
    plain = call(3, images, "p", 2, seed=7, size=SIZE, true_cfg_scale=1.0, negative_prompt=None)
    steering = Steering()
    steered = call(3, images, "p", 2, seed=7, size=SIZE, true_cfg_scale=1.0, negative_prompt=None, guidance=steering)
    assert plain.size == steered.size == SIZE and plain.mode == "RGB"
    assert (spy.calls[0]["width"], spy.calls[0]["height"]) == GENERATED
    assert spy.calls[0]["callback_on_step_end"] is None and spy.calls[0]["image"] == images
    # the step callback saw each step's velocity; the check ran after the call; a guidance that moves nothing
    # leaves the image as the same seed makes it without one
    assert len(steering.velocities) == 2 and all(v is not None for v in steering.velocities) and steering.checked
    assert np.array_equal(np.asarray(plain), np.asarray(steered))
    assert "step" not in vars(tiny_pipe.scheduler)  # the velocity recorder undid its wrapping
    other = call(3, images, "p", 2, seed=8, size=SIZE, true_cfg_scale=1.0, negative_prompt=None)
    assert not np.array_equal(np.asarray(plain), np.asarray(other))


class NaNPipe(PipeSpy):
    def __call__(self, **kwargs):
        result = self.pipe(**kwargs)
        result.images = torch.full_like(result.images, float("nan"))
        return result


def test_a_nan_image_is_an_error_after_the_guidance_own_check(tiny_pipe):
    call = one_call(NaNPipe(tiny_pipe))
    arguments = dict(seed=0, size=SIZE, true_cfg_scale=1.0, negative_prompt=None)
    with pytest.raises(QveditError, match="frame 4: the pipeline produced NaN.*try dtype=fp32 or bf16 instead of fp16$"):
        call(4, [condition()], "p", 2, **arguments, hints=("fp16", False))
    with pytest.raises(QveditError, match="^became NaN at step 1$"):  # the guidance's own check says more
        call(4, [condition()], "p", 2, **arguments, guidance=Steering("became NaN at step 1"), hints=("fp16", True))
