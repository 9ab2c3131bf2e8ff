"""``perf/`` at work: speed and memory settings that do not change what the method computes.

Applied once to the loaded pipeline: an attention kernel, regional ``torch.compile`` of the
repeated transformer blocks, and keeping the 7B text encoder in CPU memory while the transformer
runs (it is needed once per frame, for the prompt). Measured effects are in the README.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from qvedit.errors import QveditError
from qvedit.models.diffusers_compat import before_prompt_encoding, execution_device
from qvedit.models.settings import PerfSettings

log = logging.getLogger(__name__)


def apply_perf(pipe, settings: PerfSettings) -> None:
    """Set up ``pipe`` (once per pipeline and setting: a sweep reuses the pipeline)."""
    applied = pipe.__dict__.setdefault("_qvedit_perf", set())
    if settings.attention_backend and ("attention", settings.attention_backend) not in applied:
        try:
            pipe.transformer.set_attention_backend(settings.attention_backend)
        except (ValueError, RuntimeError, ImportError) as err:
            raise QveditError(f"perf.attention_backend={settings.attention_backend!r} is not usable here "
                              f"({str(err).splitlines()[0]}): use null (PyTorch SDPA) or another backend") from None
        applied.add(("attention", settings.attention_backend))
    if settings.compile and "compile" not in applied:
        pipe.transformer.compile_repeated_blocks(fullgraph=True)
        applied.add("compile")
    if settings.offload_text_encoder and "offload" not in applied:
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
    device = execution_device(pipe)
    if device.type != "cuda":
        raise QveditError("perf.offload_text_encoder needs a CUDA device: it saves GPU memory only")
    swap = PinnedSwap(device)
    swap.add(pipe.text_encoder)
    swap.add(pipe.transformer)
    swap.load(pipe.transformer)
    before_prompt_encoding(pipe, lambda: swap.load(pipe.text_encoder))
    pipe.transformer.register_forward_pre_hook(lambda module, args: swap.load(module))
