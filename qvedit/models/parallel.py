"""One frame on several GPUs (or CPU processes), started by torchrun (settings: ``ParallelSettings``).

``torchrun --nproc-per-node N -m qvedit parallel.<degree>=N ...`` runs one process per GPU; every
process holds the whole pipeline and the scheduler, latents and decode are the same full tensors on
every rank. Two ways to share a frame's work:

- context parallelism (``ulysses_degree`` / ``ring_degree``, diffusers' ``ContextParallelConfig``):
  inside each transformer call the image and text tokens are split across the GPUs (Ulysses
  all-to-all over attention heads, or ring attention) and the output is gathered again;
- CFG parallelism (``cfg_degree=2``): true classifier-free guidance runs the transformer twice per
  step, on the prompt and on the negative prompt; rank 0 runs the first pass, rank 1 the second, at
  the same time, and the two predictions are exchanged (1.5 MiB at 1024²). Each pass is the
  single-GPU computation, so frames are the single-GPU frames. Diffusers has no CFG parallelism;
  ``CFGSplit`` adds it without touching the denoising loop (``diffusers_compat.CFGPasses`` wraps the
  transformer's forward).
- both: with ``cfg_degree=2`` and a context degree C, the ranks form a (cfg, ring, ulysses) device
  mesh: ranks 0..C-1 run the prompt pass with context parallelism among themselves, ranks C..2C-1
  the negative-prompt pass, and rank i exchanges predictions with rank i +/- C. The frames are
  those of context parallelism alone with degree C.

Rank 0 is the only one that writes (frames, metrics, previews, logs) and the only one that runs
the guidance step: it decodes x0 and takes the loss gradients on its full latents, then every rank
takes rank 0's latents (one broadcast per denoising step, 0.5 MiB at 1024²). Running the guidance
on every rank would cost every GPU the decoder's activation memory to compute the same numbers,
and any bitwise difference between ranks would then split the ranks' latents apart.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from qvedit.core.errors import QveditError
from qvedit.models.diffusers_compat import CFGPasses, attention_backend, parallel_config
from qvedit.models.modifications import Modification, modifications_of
from qvedit.settings.model import ParallelSettings

log = logging.getLogger(__name__)


def start_team(settings: ParallelSettings, device: str) -> "Team":
    """This process's place in the torchrun group: a team of one without torchrun.

    Args:
        settings: the ``parallel/`` degrees (their product must be torchrun's ``--nproc-per-node``).
        device: the run's ``device``; under torchrun on CUDA each rank takes the GPU of its local rank.

    Returns:
        The ``Team`` that shares the transformer's work as the degrees say (``team.share_work(pipe)``);
        ``team.close()`` ends the process group.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if settings.degree == 1 and world == 1:
        return Team(settings=settings)
    if world != settings.degree:
        if world == 1:
            raise QveditError(
                f"parallel.* degrees ask for {settings.degree} processes, but this is one process: "
                f"start it with torchrun --nproc-per-node {settings.degree} -m qvedit ...")
        raise QveditError(
            f"torchrun started {world} processes but the parallel.* degrees multiply to {settings.degree}: "
            f"set parallel.ulysses_degree={world} or parallel.cfg_degree={world} (or --nproc-per-node "
            f"{settings.degree})")
    if not device.startswith("cuda"):
        if settings.context_degree > 1:
            raise QveditError(f"device={device}: context parallelism splits a frame across CUDA GPUs; "
                              "use device=cuda (parallel.cfg_degree=2 alone also runs on the CPU)")
        if not dist.is_initialized():
            dist.init_process_group("gloo")
        return Team(rank=dist.get_rank(), size=dist.get_world_size(), device=device, settings=settings)
    if not torch.cuda.is_available() or torch.cuda.device_count() < int(os.environ.get("LOCAL_WORLD_SIZE", world)):
        raise QveditError(f"torchrun started {world} processes but only {torch.cuda.device_count()} CUDA GPU(s) "
                          "are visible: one GPU per process")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local_rank)
    gpu = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        # CPU tensors go through gloo: diffusers' Ulysses/ring "anything" attention exchanges the
        # ranks' sequence lengths on the CPU each call, which through NCCL would stall the GPU.
        dist.init_process_group("cpu:gloo,cuda:nccl", device_id=gpu)
    return Team(rank=dist.get_rank(), size=dist.get_world_size(), device=str(gpu), settings=settings)


def share_transformer(pipe, settings: ParallelSettings, team: "Team") -> None:
    """Share ``pipe``'s transformer work across the team (once per pipeline)."""
    changes = modifications_of(pipe.transformer)
    if settings.cfg_degree == 2 and "cfg_parallel" not in changes:
        team.check_same_weights(pipe.transformer)
        changes.apply("cfg_parallel", lambda change: CFGSplit(pipe.transformer, team, change),
                      detail=f"{team.size} ranks")
        log.info("CFG parallelism: prompt pass on ranks 0-%d, negative-prompt pass on ranks %d-%d",
                 settings.context_degree - 1, settings.context_degree, team.size - 1)
    if settings.ulysses_degree * settings.ring_degree == 1 or parallel_config(pipe.transformer) is not None:
        return
    team.check_same_weights(pipe.transformer)
    changes.apply("context_parallel", lambda change: enable_context_parallelism(pipe, settings),
                  detail=f"ulysses {settings.ulysses_degree} x ring {settings.ring_degree}", permanent=True)


def enable_context_parallelism(pipe, settings: ParallelSettings) -> None:
    """diffusers' context parallelism on ``pipe``'s transformer, as the ``parallel/`` degrees say (diffusers has no
    way back: a permanent modification)."""
    from diffusers import ContextParallelConfig

    mesh = None
    if settings.cfg_degree == 2:  # each CFG pass on its own context-parallel group of ranks
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cuda", (2, settings.ring_degree, settings.ulysses_degree),
                                mesh_dim_names=("cfg", "ring", "ulysses"))
    if settings.ring_degree > 1 and attention_backend(pipe.transformer) in (None, "native"):
        # Ring attention merges partial results by their log-sum-exp, which SDPA does not return.
        pipe.transformer.set_attention_backend("_native_cudnn")
        log.info("parallel.ring_degree > 1: attention backend _native_cudnn (SDPA returns no log-sum-exp)")
    # The "anything" variants accept token counts the degree does not divide (prompt lengths
    # vary, and so do image token counts); diffusers has them for one split dimension only.
    config = ContextParallelConfig(
        ulysses_degree=settings.ulysses_degree, ring_degree=settings.ring_degree,
        ulysses_anything=settings.ring_degree == 1, ring_anything=settings.ulysses_degree == 1, mesh=mesh)
    try:
        pipe.transformer.enable_parallelism(config=config)
    except (ValueError, RuntimeError, NotImplementedError) as err:
        raise QveditError(f"context parallelism could not be enabled ({str(err).splitlines()[0]}): "
                          "try perf.attention_backend=_native_cudnn, or parallel.ring_degree=1") from None
    log.info("context parallelism: ulysses %d x ring %d over %d GPUs%s", settings.ulysses_degree,
             settings.ring_degree, settings.context_degree, ", one group per CFG pass" if mesh is not None else "")


class Team:
    """The processes that make each frame together; rank 0 decides and writes.

    A team of one (no torchrun) passes everything through unchanged. ``settings`` say how the team
    shares the transformer's work (``share_work``).
    """

    def __init__(self, rank: int = 0, size: int = 1, device: Optional[str] = None,
                 settings: Optional[ParallelSettings] = None):
        self.rank, self.size, self.device = rank, size, device
        self.settings = settings or ParallelSettings()

    def share_work(self, pipe) -> None:
        """Share ``pipe``'s transformer work across the team (once per pipeline)."""
        share_transformer(pipe, self.settings, self)

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that decides and writes."""
        return self.rank == 0

    def broadcast(self, value: Any) -> Any:
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


class CFGSplit:
    """Runs the transformer's "cond" passes on the first half of the ranks and its "uncond" passes on
    the second half (rank 0 and rank 1 when no context parallelism shares a pass).

    A rank that does not compute a pass returns at once with an empty tensor of the prediction's
    shape. After the uncond pass, rank i and its peer i +/- C (C ranks share one pass) broadcast their
    predictions to each other, which fills the uncond output of the cond rank and, in place, the
    tensor the uncond rank returned from its cond pass (the pipeline only slices it before both are
    combined). Every rank then combines the same two tensors.
    """

    def __init__(self, transformer: torch.nn.Module, team: "Team", change: Modification):
        self.team = team
        share = team.settings.context_degree
        self.computes_cond = team.rank < share
        self.cond_rank, self.uncond_rank = team.rank % share, team.rank % share + share
        self.group = None  # the whole team when it is these two ranks
        if team.size > 2:  # every rank creates every pair's group, in the same order
            for first in range(share):
                group = dist.new_group([first, first + share])
                if first == self.cond_rank:
                    self.group = group
        self.cond: Optional[torch.Tensor] = None  # this step's cond prediction (a placeholder on uncond ranks)
        self.passes = CFGPasses(transformer, self.run_pass, change)

    def run_pass(self, name: str, compute: Callable, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """(B, S, C_in) tokens -> the (B, S, C_out) prediction of the pass ``name``."""
        if (name == "cond") == self.computes_cond:
            prediction = compute(hidden_states, *args, **kwargs)
        else:
            prediction = self.passes.placeholder(hidden_states)
        if name == "cond":
            if self.cond is not None:
                raise RuntimeError("CFG parallelism: a cond pass without its uncond pass (is true CFG on?)")
            self.cond = prediction
        else:
            if self.cond is None:
                raise RuntimeError("CFG parallelism: an uncond pass without a cond pass before it")
            dist.broadcast(self.cond, src=self.cond_rank, group=self.group)
            dist.broadcast(prediction, src=self.uncond_rank, group=self.group)
            self.cond = None
        return prediction
