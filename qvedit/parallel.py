"""``parallel/``: one frame on several GPUs, with diffusers' native context parallelism.

Started as ``torchrun --nproc-per-node N -m qvedit parallel.ulysses_degree=N ...``: one process per
GPU, every process holds the whole pipeline, and inside each transformer call the image and text
tokens are split across the processes (Ulysses all-to-all over attention heads, or ring attention);
the transformer's output is gathered, so the scheduler, the latents and the decode are the same
full tensors on every rank.

Rank 0 is the only one that writes (frames, metrics, previews, logs) and the only one that runs
the guidance step: it decodes x0 and takes the loss gradients on its full latents, then every rank
takes rank 0's latents (one broadcast per denoising step, 0.5 MiB at 1024²). Running the guidance
on every rank would cost every GPU the decoder's activation memory to compute the same numbers,
and any bitwise difference between ranks would then split the ranks' latents apart.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from qvedit.errors import QveditError

log = logging.getLogger(__name__)


@dataclass
class ParallelSettings:
    """The ``parallel/`` config group; see conf/parallel/default.yaml."""

    ulysses_degree: int = 1
    ring_degree: int = 1

    @property
    def degree(self) -> int:
        return self.ulysses_degree * self.ring_degree

    def start(self, device: str) -> "Team":
        """This process's place in the torchrun group (a team of one without torchrun)."""
        if self.ulysses_degree < 1 or self.ring_degree < 1:
            raise QveditError(f"parallel.ulysses_degree={self.ulysses_degree} and parallel.ring_degree="
                              f"{self.ring_degree} must be >= 1 (1 = no splitting)")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if self.degree == 1 and world == 1:
            return Team()
        if world != self.degree:
            if world == 1:
                raise QveditError(
                    f"parallel.ulysses_degree x parallel.ring_degree = {self.degree} GPUs, but this is one process: "
                    f"start it with torchrun --nproc-per-node {self.degree} -m qvedit ...")
            raise QveditError(
                f"torchrun started {world} processes but parallel.ulysses_degree x parallel.ring_degree = "
                f"{self.degree}: set parallel.ulysses_degree={world} (or --nproc-per-node {self.degree})")
        if not device.startswith("cuda"):
            raise QveditError(f"device={device}: context parallelism splits a frame across CUDA GPUs; "
                              "use device=cuda, or run without torchrun on the CPU")
        if not torch.cuda.is_available() or torch.cuda.device_count() < int(os.environ.get("LOCAL_WORLD_SIZE", world)):
            raise QveditError(f"torchrun started {world} processes but only {torch.cuda.device_count()} CUDA GPU(s) "
                              "are visible: one GPU per process")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        gpu = torch.device("cuda", local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl", device_id=gpu)
        return Team(rank=dist.get_rank(), size=dist.get_world_size(), device=str(gpu))

    def apply(self, pipe, team: "Team") -> None:
        """Split ``pipe``'s transformer across the team (once per pipeline)."""
        if self.degree == 1 or pipe.transformer._parallel_config is not None:
            return
        from diffusers import ContextParallelConfig

        team.check_same_weights(pipe.transformer)
        if self.ring_degree > 1 and attention_backend(pipe.transformer) in (None, "native"):
            # Ring attention merges partial results by their log-sum-exp, which SDPA does not return.
            pipe.transformer.set_attention_backend("_native_cudnn")
            log.info("parallel.ring_degree > 1: attention backend _native_cudnn (SDPA returns no log-sum-exp)")
        # The "anything" variants accept token counts the degree does not divide (prompt lengths
        # vary, and so do image token counts); diffusers has them for one split dimension only.
        config = ContextParallelConfig(
            ulysses_degree=self.ulysses_degree, ring_degree=self.ring_degree,
            ulysses_anything=self.ring_degree == 1, ring_anything=self.ulysses_degree == 1)
        try:
            pipe.transformer.enable_parallelism(config=config)
        except (ValueError, RuntimeError, NotImplementedError) as err:
            raise QveditError(f"context parallelism could not be enabled ({str(err).splitlines()[0]}): "
                              "try perf.attention_backend=_native_cudnn, or parallel.ring_degree=1") from None
        log.info("context parallelism: ulysses %d x ring %d over %d GPUs", self.ulysses_degree, self.ring_degree,
                 team.size)


def attention_backend(transformer) -> Optional[str]:
    """The attention backend ``transformer``'s processors were set to (None = diffusers' default)."""
    for module in transformer.modules():
        backend = getattr(getattr(module, "processor", None), "_attention_backend", None)
        if backend is not None:
            return getattr(backend, "value", backend)
    return None


class Team:
    """The processes that make each frame together; rank 0 decides and writes.

    A team of one (no torchrun) passes everything through unchanged.
    """

    def __init__(self, rank: int = 0, size: int = 1, device: Optional[str] = None):
        self.rank, self.size, self.device = rank, size, device

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def agree(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def step_callback(self, guidance: Optional[Callable]) -> Optional[Callable]:
        """A ``callback_on_step_end`` for every rank: rank 0 runs ``guidance`` (if any), then all take
        rank 0's latents. Keeps the ranks' latents identical whatever the guidance did."""
        if self.size == 1:
            return guidance

        def callback(pipe, step: int, timestep, tensors: dict) -> dict:
            out = guidance(pipe, step, timestep, tensors) if guidance is not None else {}
            latents = out.get("latents", tensors["latents"]).contiguous()
            dist.broadcast(latents, src=0)
            return {**out, "latents": latents}

        return callback

    def check_same_weights(self, module: torch.nn.Module) -> None:
        """Refuse to start when the ranks loaded different weights (another model folder, say)."""
        if self.size == 1:
            return
        params = list(module.parameters())
        probe = torch.stack([p.detach().float().sum() for p in (params[0], params[len(params) // 2], params[-1])])
        everyone = [torch.empty_like(probe) for _ in range(self.size)]
        dist.all_gather(everyone, probe)
        if not all(torch.equal(everyone[0], other) for other in everyone[1:]):
            raise QveditError("the ranks loaded different transformer weights: every process must load the "
                              "same model (same model.model_id and files on every node)")

    def close(self) -> None:
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def torchrun_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def follower_overrides() -> tuple[list[str], Optional[Path]]:
    """Hydra overrides for ranks > 0: a private scratch run folder and no log files, so only rank 0's
    run folder appears. Returns (overrides, scratch folder to remove at exit)."""
    rank = torchrun_rank()
    if rank == 0:
        return [], None
    scratch = Path(tempfile.mkdtemp(prefix=f"qvedit-rank{rank}-"))
    return [f"hydra.run.dir={scratch}", "hydra.output_subdir=null", "hydra/job_logging=disabled",
            "hydra/hydra_logging=disabled"], scratch
