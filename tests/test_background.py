"""The loop's own overhead off its critical path: frames and metrics rows written in the background, in order, with
a failure said in the main thread; the step's sigma read without touching the device's copy."""

import threading
import time

import pytest
import torch

from qvedit.core.background_writer import Background
from qvedit.core.errors import QveditError
from qvedit.models.diffusers_compat import record_velocity, step_sigma


def test_jobs_run_in_order_beside_the_caller_and_close_waits_for_them():
    done, caller = [], threading.get_ident()
    writer = Background("test-writer")
    started = time.perf_counter()
    for k in range(4):
        writer.submit(lambda k=k: (time.sleep(0.05), done.append((k, threading.get_ident()))))
    assert time.perf_counter() - started < 0.15  # the caller went on (at most one job waits)
    writer.close()
    assert [k for k, _ in done] == [0, 1, 2, 3] and all(thread != caller for _, thread in done)


def test_a_failed_job_stops_the_ones_after_it_and_its_error_comes_back_in_the_caller():
    done = []
    writer = Background("test-writer")
    writer.submit(lambda: done.append(1))

    def full_disk():
        raise QveditError("cannot write 00002.png in frames: No space left on device")

    writer.submit(full_disk)
    writer.submit(lambda: done.append(3))  # never runs: frame 3 must not follow a frame that is not there
    with pytest.raises(QveditError, match="No space left on device"):
        for _ in range(50):  # the error comes back at a later submit (or at close)
            writer.submit(lambda: done.append("later"))
            time.sleep(0.01)
        writer.close()
    writer.close()  # said once
    assert done == [1]


def test_close_quietly_keeps_the_callers_error_the_one_said(caplog):
    writer = Background("test-writer")
    writer.submit(lambda: 1 / 0)
    with caplog.at_level("WARNING"):
        writer.close_quietly()
    assert "writing in the background also failed" in caplog.text


def test_the_steps_sigma_is_read_from_the_cpu_copy_not_the_device(tiny_pipe):
    """On a GPU, reading scheduler.sigmas[i] waits for every queued transformer pass (0.49 s of a 2.26 s frame on an
    H200): the call's sigmas are recorded on the CPU as the pipeline sets them, and read from there."""
    scheduler = tiny_pipe.scheduler
    with record_velocity(scheduler) as recorder:
        scheduler.set_timesteps(sigmas=[1.0, 0.75, 0.5, 0.25], mu=0.5, device="cpu")
        assert torch.equal(recorder.sigmas, scheduler.sigmas)
        expected = float(scheduler.sigmas[2])
        scheduler._step_index = 2
        scheduler.sigmas = torch.empty(5, device="meta")  # a value read from it would fail
        assert step_sigma(scheduler, recorder) == expected
        with pytest.raises(Exception):
            step_sigma(scheduler)  # what the guidance did before
    assert "set_timesteps" not in vars(scheduler) and "step" not in vars(scheduler)
    scheduler.set_timesteps(4, mu=0.5)  # the pipeline's own scheduler is whole again
