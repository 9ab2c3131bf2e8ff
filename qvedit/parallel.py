"""``parallel/``: one frame on several GPUs (or CPU processes), started by torchrun.

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
  ``CFGSplit`` adds it without touching the denoising loop (it wraps the transformer's forward).

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
from contextlib import contextmanager
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
    cfg_degree: int = 1

    @property
    def degree(self) -> int:
        return self.ulysses_degree * self.ring_degree * self.cfg_degree

    def start(self, device: str, true_cfg_scale: float = 4.0) -> "Team":
        """This process's place in the torchrun group (a team of one without torchrun)."""
        self.check(true_cfg_scale)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if self.degree == 1 and world == 1:
            return Team()
        if world != self.degree:
            if world == 1:
                raise QveditError(
                    f"parallel.* degrees ask for {self.degree} processes, but this is one process: "
                    f"start it with torchrun --nproc-per-node {self.degree} -m qvedit ...")
            raise QveditError(
                f"torchrun started {world} processes but the parallel.* degrees multiply to {self.degree}: "
                f"set parallel.ulysses_degree={world} or parallel.cfg_degree={world} (or --nproc-per-node "
                f"{self.degree})")
        if not device.startswith("cuda"):
            if self.cfg_degree == 1:
                raise QveditError(f"device={device}: context parallelism splits a frame across CUDA GPUs; "
                                  "use device=cuda (parallel.cfg_degree=2 also runs on the CPU)")
            if not dist.is_initialized():
                dist.init_process_group("gloo")
            return Team(rank=dist.get_rank(), size=dist.get_world_size(), device=device)
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
        return Team(rank=dist.get_rank(), size=dist.get_world_size(), device=str(gpu))

    def check(self, true_cfg_scale: float) -> None:
        """Refuse degrees that cannot work, before anything is loaded."""
        if min(self.ulysses_degree, self.ring_degree, self.cfg_degree) < 1:
            raise QveditError(f"parallel degrees must be >= 1 (1 = no splitting): ulysses_degree="
                              f"{self.ulysses_degree}, ring_degree={self.ring_degree}, cfg_degree={self.cfg_degree}")
        if self.cfg_degree > 2:
            raise QveditError(f"parallel.cfg_degree={self.cfg_degree}: there are two passes to share (prompt and "
                              "negative prompt), so 1 or 2")
        if self.cfg_degree == 2 and self.ulysses_degree * self.ring_degree > 1:
            raise QveditError("parallel.cfg_degree=2 does not combine with ulysses_degree/ring_degree > 1: "
                              "choose one (cfg_degree=2 measured faster on 2 GPUs, see README)")
        if self.cfg_degree == 2 and true_cfg_scale <= 1:
            raise QveditError(f"parallel.cfg_degree=2 shares the two passes of true CFG, but true_cfg_scale="
                              f"{true_cfg_scale} runs one: raise true_cfg_scale above 1 or use ulysses_degree=2")

    def apply(self, pipe, team: "Team") -> None:
        """Share ``pipe``'s transformer work across the team (once per pipeline)."""
        if self.cfg_degree == 2 and not isinstance(getattr(pipe.transformer, "_qvedit_cfg_split", None), CFGSplit):
            team.check_same_weights(pipe.transformer)
            pipe.transformer._qvedit_cfg_split = CFGSplit(pipe.transformer, team)
            log.info("CFG parallelism: prompt pass on rank 0, negative-prompt pass on rank 1")
        if self.ulysses_degree * self.ring_degree == 1 or pipe.transformer._parallel_config is not None:
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


class CFGSplit:
    """Runs the transformer's "cond" passes on rank 0 and its "uncond" passes on rank 1.

    The pipeline calls the transformer twice per step, inside ``cache_context("cond")`` and then
    ``cache_context("uncond")``. On rank 1 the cond call returns at once with an empty tensor
    of the output's shape; the uncond call computes. On rank 0 it is the other way round. After
    the uncond call both ranks broadcast their prediction, which fills rank 0's uncond output and,
    in place, the tensor rank 1 returned from its cond call (the pipeline only slices it before
    both are combined). Both ranks then combine the same two tensors.
    """

    def __init__(self, transformer: torch.nn.Module, team: "Team"):
        self.team = team
        self.context: Optional[str] = None
        self.cond: Optional[torch.Tensor] = None  # this step's cond prediction (a placeholder on rank 1)
        self.forward = transformer.forward
        self.cache_context = transformer.cache_context
        config = transformer.config
        self.out_features = config.patch_size ** 2 * (config.out_channels or config.in_channels)
        self.dtype = transformer.dtype  # the prediction's dtype: proj_out's
        transformer.cache_context = self.named_pass
        transformer.forward = self.split_forward

    @contextmanager
    def named_pass(self, name: str, **kwargs):
        self.context = name
        try:
            with self.cache_context(name, **kwargs):
                yield
        finally:
            self.context = None

    def split_forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        """(B, S, C_in) tokens -> the transformer's (B, S, C_out) prediction, as ``forward`` returns it."""
        if self.context not in ("cond", "uncond"):
            return self.forward(hidden_states, *args, **kwargs)
        mine = (self.context == "cond") == (self.team.rank == 0)
        if mine:
            output = self.forward(hidden_states, *args, **kwargs)
            prediction = output[0] if isinstance(output, tuple) else output.sample
        else:
            prediction = hidden_states.new_empty((*hidden_states.shape[:2], self.out_features), dtype=self.dtype)
        if self.context == "cond":
            if self.cond is not None:
                raise RuntimeError("CFG parallelism: a cond pass without its uncond pass (is true CFG on?)")
            self.cond = prediction
        else:
            if self.cond is None:
                raise RuntimeError("CFG parallelism: an uncond pass without a cond pass before it")
            dist.broadcast(self.cond, src=0)
            dist.broadcast(prediction, src=1)
            self.cond = None
        if mine:
            return output
        if kwargs.get("return_dict", True):
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=prediction)
        return (prediction,)


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
