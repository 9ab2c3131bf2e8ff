"""``perf/``: speed and memory settings that do not change what the method computes.

Applied once to the loaded pipeline: an attention kernel, regional ``torch.compile`` of the
repeated transformer blocks, and keeping the 7B text encoder in CPU memory while the transformer
runs (it is needed once per frame, for the prompt). Measured effects are in the README.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

from qvedit.errors import QveditError

log = logging.getLogger(__name__)


@dataclass
class PerfSettings:
    """The ``perf/`` config group; see conf/perf/*.yaml."""

    attention_backend: Optional[str] = None
    compile: bool = False
    offload_text_encoder: bool = False

    def apply(self, pipe) -> None:
        """Set up ``pipe`` (once per pipeline and setting: a sweep reuses the pipeline)."""
        applied = pipe.__dict__.setdefault("_qvedit_perf", set())
        if self.attention_backend and ("attention", self.attention_backend) not in applied:
            try:
                pipe.transformer.set_attention_backend(self.attention_backend)
            except (ValueError, RuntimeError, ImportError) as err:
                raise QveditError(f"perf.attention_backend={self.attention_backend!r} is not usable here "
                                  f"({str(err).splitlines()[0]}): use null (PyTorch SDPA) or another backend") from None
            applied.add(("attention", self.attention_backend))
        if self.compile and "compile" not in applied:
            pipe.transformer.compile_repeated_blocks(fullgraph=True)
            applied.add("compile")
        if self.offload_text_encoder and "offload" not in applied:
            offload_text_encoder(pipe)
            applied.add("offload")


class PinnedSwap:
    """Keeps one of two frozen modules on the GPU at a time; the other waits in pinned CPU memory.

    Weights never change, so a module leaves the GPU by dropping its GPU copies (no copy back) and
    comes back with one pinned host-to-device copy. Buffers swap the same way.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.host: dict[torch.nn.Module, list] = {}
        self.on_gpu: Optional[torch.nn.Module] = None

    def add(self, module: torch.nn.Module) -> None:
        tensors = list(module.parameters()) + list(module.buffers())
        self.host[module] = [(t, t.detach().to("cpu").pin_memory()) for t in tensors]
        self.on_gpu = None  # several modules may still be on the GPU: the next load() settles it

    def load(self, module: torch.nn.Module) -> None:
        if self.on_gpu is module:
            return
        for other in self.host:
            if other is not module:
                for tensor, pinned in self.host[other]:
                    tensor.data = pinned
        for tensor, pinned in self.host[module]:
            tensor.data = pinned.to(self.device, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        self.on_gpu = module


def offload_text_encoder(pipe) -> None:
    """Keep the 7B text encoder and the transformer on the GPU by turns.

    The text encoder is needed once per frame (the prompts); the transformer for every step. The
    one not in use waits in pinned CPU memory: per frame one 15 GiB and one 38 GiB host-to-device
    copy, and a peak of about the transformer's size. The VAE stays (guidance decodes every step).
    """
    device = pipe._execution_device
    if device.type != "cuda":
        raise QveditError("perf.offload_text_encoder needs a CUDA device: it saves GPU memory only")
    swap = PinnedSwap(device)
    swap.add(pipe.text_encoder)
    swap.add(pipe.transformer)
    swap.load(pipe.transformer)
    encode_prompt = pipe.encode_prompt

    def encode_prompt_on_gpu(*args, **kwargs):
        swap.load(pipe.text_encoder)
        return encode_prompt(*args, **kwargs)

    pipe.encode_prompt = encode_prompt_on_gpu
    pipe.transformer.register_forward_pre_hook(lambda module, args: swap.load(module))
