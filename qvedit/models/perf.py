"""``perf/`` at work: speed and memory settings.

``check_perf`` refuses, before the model loads, settings that cannot work together or on the device.
``prepare_pipeline`` runs as the pipeline loads, for the settings that change its weights or where they
live for good (they are part of the loader's cache key): FP8 matmuls (``qvedit.models.fp8``), FP8 weight
storage, and streaming the transformer and text encoder from CPU memory (diffusers' group offloading).
``apply_perf`` runs on the loaded pipeline: an attention kernel, regional ``torch.compile`` of the
repeated transformer blocks (its kernels kept in qvedit's cache folder), keeping the 7B text encoder in CPU
memory while the transformer runs (it is needed once per frame, for the prompt), and diffusers' step cache
(``qvedit.models.step_cache``). Measured effects are in docs/performance.md and benchmarks/RESULTS.md.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Optional

import torch

from qvedit.core.errors import QveditError
from qvedit.core.files import cache_dir
from qvedit.models.diffusers_compat import (attention_backend, before_prompt_encoding, execution_device,
                                            use_single_frame_convolutions)
from qvedit.models.diffusers_compat.hooks import add_model_hook, before_forward
from qvedit.models.modifications import applied_to, modifications_of
from qvedit.models.step_cache import STEP_CACHE, use_step_cache, without_step_cache
from qvedit.settings.model import PerfSettings

log = logging.getLogger(__name__)


def check_perf(settings: PerfSettings, device: str, dtype: str, processes: int = 1) -> None:
    """Refuse ``perf/`` settings that cannot work together (``PerfSettings.conflict``), with ``processes``
    ranks, or on ``device`` in ``dtype``, before the model loads: a QveditError of one line."""
    refused = settings.conflict(processes)
    if refused:
        raise QveditError(refused)
    if settings.quantize == "fp8":
        from qvedit.models.fp8 import check_fp8

        check_fp8(device, dtype)
    if settings.group_offload and not device.startswith("cuda"):
        raise QveditError(f"perf.group_offload streams the model's weights from CPU memory to a CUDA GPU, but "
                          f"device={device} already holds them in CPU memory: use perf=default on the CPU")


def prepare_pipeline(pipe, settings: PerfSettings, device: str) -> None:
    """Apply the settings of ``settings.pipeline_key()`` to a pipeline just loaded; components named by
    ``settings.host_components()`` are still in CPU memory and are placed here. Each is a permanent modification
    of the pipeline (``qvedit.models.modifications``: listed, not undone; a pipeline without it is loaded afresh)."""
    changes = modifications_of(pipe)
    if settings.quantize == "fp8":
        from qvedit.models.fp8 import quantize_fp8

        changes.apply("fp8", lambda change: quantize_fp8(pipe.transformer, settings.fp8_keep_bf16, device),
                      detail=f"{len(settings.fp8_keep_bf16)} patterns kept in bf16", permanent=True)
    if settings.layerwise_fp8_storage:  # before group offloading, so the CPU copies it streams are fp8
        changes.apply("fp8_storage", lambda change: store_weights_in_fp8(pipe.transformer), permanent=True)
    if settings.group_offload:
        changes.apply("group_offload", lambda change: group_offload(pipe, device), permanent=True)
    for name in settings.host_components():
        component = getattr(pipe, name)
        if not settings.group_offload and component.device != torch.device(device):
            component.to(device)


def apply_perf(pipe, settings: PerfSettings) -> None:
    """Set up the loaded ``pipe`` as ``settings`` say: attention kernel, compile, text encoder offload, step
    cache, single-frame VAE convolutions (each a modification, ``qvedit.models.modifications``, applied once per
    pipeline and setting: a sweep reuses the pipeline).

    Args:
        pipe: the pipeline ``load_pipeline`` gave (with ``settings`` as its ``perf``).
        settings: the ``perf/`` settings.
    """
    changes = modifications_of(pipe)
    backend = changes.get("attention_backend")
    if settings.attention_backend and (backend is None or backend.detail != settings.attention_backend):
        changes.remove("attention_backend")
        changes.apply("attention_backend", lambda change: use_attention_backend(change, pipe.transformer,
                                                                                settings.attention_backend),
                      detail=settings.attention_backend)
    if settings.compile and "compile" not in modifications_of(pipe.transformer):
        without_step_cache(pipe.transformer)  # the blocks are compiled bare; the cache's hooks go around them below
        use_compile_cache()
        compile_blocks(pipe.transformer)
    if settings.offload_text_encoder and "offload_text_encoder" not in changes:
        offload_text_encoder(pipe)
    if settings.cache != "none" or STEP_CACHE in modifications_of(pipe.transformer):
        use_step_cache(pipe.transformer, settings)
    use_single_frame_convolutions(pipe.vae, settings.single_frame_vae)
    log.info("pipeline modifications: %s", "; ".join(applied_to(pipe)) or "none")


def use_attention_backend(change, transformer, backend: str) -> None:
    """``perf.attention_backend``: ``transformer``'s attention processors use ``backend``; undone, the one before."""
    before = attention_backend(transformer)
    try:
        transformer.set_attention_backend(backend)
    except (ValueError, RuntimeError, ImportError) as err:
        raise QveditError(f"perf.attention_backend={backend!r} is not usable here "
                          f"({str(err).splitlines()[0]}): use null (PyTorch SDPA) or another backend") from None
    change.on_undo(transformer.reset_attention_backend if before is None else
                   lambda: transformer.set_attention_backend(before))


def compile_blocks(transformer: torch.nn.Module) -> None:
    """``perf.compile``: the ``forward`` of each repeated block (the 60 ``QwenImageTransformerBlock``s, diffusers'
    ``_repeated_blocks``) compiled as one full graph, which serves every block alike.

    diffusers' ``compile_repeated_blocks`` compiles each block's whole call instead, and the step cache's hooks
    (``perf.cache``) then run inside the compiled code, where their per-step decisions break the graph. With
    ``forward`` compiled, the hooks, registered afterwards, wrap it and stay in eager Python, so the cache can be
    switched on and off without compiling again (``diffusers_compat``: "step cache around compiled blocks").
    """
    def compile_each(change) -> None:
        for module in transformer.modules():
            if type(module).__name__ in transformer._repeated_blocks:
                change.set(module, "forward", torch.compile(module.forward, fullgraph=True))

    modifications_of(transformer).apply("compile", compile_each, detail="repeated blocks' forward")


def use_compile_cache() -> Path:
    """Keep what ``torch.compile`` makes (inductor's FX graph and AOT autograd caches, Triton's kernels) in
    ``<qvedit cache>/torch-compile``, so a later process on this machine loads it instead of compiling again;
    returns the folder. A ``TORCHINDUCTOR_CACHE_DIR`` the user set is kept (PyTorch's own default is a folder
    under the system's temporary folder, which may be emptied between runs)."""
    import torch._functorch.config
    import torch._inductor.config

    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # PyTorch's own default, spelt out
        def default_cache_dir() -> str:
            import getpass
            import tempfile

            return os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")

    folder = cache_dir() / "torch-compile"
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    os.environ.setdefault("TRITON_CACHE_DIR", str(Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]) / "triton"))
    torch._inductor.config.fx_graph_cache = True
    torch._functorch.config.enable_autograd_cache = True
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


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

    def restore(self) -> None:
        """Every module on the GPU again (the swap's end)."""
        for module in self.host:
            for tensor, pinned in self.host[module]:
                tensor.data = pinned.to(self.device)
        self.host, self.on_gpu = {}, None


def offload_text_encoder(pipe) -> None:
    """Keep the 7B text encoder and the transformer on the GPU by turns (the modification ``offload_text_encoder``).

    The text encoder is needed once per frame (the prompts); the transformer for every step. The
    one not in use waits in pinned CPU memory: per frame one 15 GiB and one 38 GiB host-to-device
    copy, and a peak of about the transformer's size. The VAE stays (guidance decodes every step).
    Undone, both are on the GPU again.
    """
    device = execution_device(pipe)
    if device.type != "cuda":
        raise QveditError("perf.offload_text_encoder needs a CUDA device: it saves GPU memory only")

    def offload(change) -> None:
        swap = PinnedSwap(device)
        change.on_undo(swap.restore)
        swap.add(pipe.text_encoder)
        swap.add(pipe.transformer)
        swap.load(pipe.transformer)
        before_prompt_encoding(change, pipe, lambda: swap.load(pipe.text_encoder))
        add_model_hook(change, pipe.transformer, before_forward(swap.load), "qvedit_offload_text_encoder")

    modifications_of(pipe).apply("offload_text_encoder", offload)


def store_weights_in_fp8(transformer: torch.nn.Module) -> None:
    """``perf.layerwise_fp8_storage``: the transformer's weights wait in float8 e4m3 and each layer is cast
    to the compute dtype just before it runs (diffusers' layerwise casting; its default skip list keeps
    the Qwen transformer's ``pos_embed`` and norms as they are). Half the memory and half the
    host-to-device traffic under group offloading; the weights are rounded to 8 bits, so frames change."""
    transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=transformer.dtype)


PINNED_CHUNK = 1 << 29  # 512 MiB, a power of two: PyTorch's pinned-memory allocator rounds every block up to one
ALIGN = 512  # bytes between tensors in a chunk


def chunk_plan(sizes: list[int], chunk: int = PINNED_CHUNK) -> tuple[list[tuple[int, int]], list[int]]:
    """Pack tensors of ``sizes`` bytes into chunks, largest first, each into the first chunk with room:
    returns ((chunk index, byte offset) per tensor, each chunk's size). A chunk is ``chunk`` bytes, or the
    power of two that holds a larger tensor (the rest of it is filled like any other)."""
    places: list[tuple[int, int]] = [(0, 0)] * len(sizes)
    chunks, used = [], []
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        need = -(-sizes[i] // ALIGN) * ALIGN
        room = next((c for c in range(len(chunks)) if chunks[c] - used[c] >= need), None)
        if room is None:
            chunks.append(max(chunk, 1 << (need - 1).bit_length()))
            used.append(0)
            room = len(chunks) - 1
        places[i] = (room, used[room])
        used[room] += need
    return places, chunks


def pin_in_place(module: torch.nn.Module, allocate: Optional[Callable[[int], torch.Tensor]] = None) -> int:
    """Move every parameter and buffer of ``module`` into pinned CPU memory; returns the bytes pinned.

    Group offloading with streams keeps a pinned CPU copy of each tensor, made by ``tensor.pin_memory()``,
    which returns a tensor that is already pinned as it is. Pinned here first, that copy is the tensor
    itself, so the model is held once. And diffusers' own per-tensor pinning would round every tensor up
    to a power of two (PyTorch's pinned-memory allocator does; 38 GiB of transformer weights would take
    60 GiB): here tensors are packed into 512 MiB chunks (``chunk_plan``: 39 GiB for the transformer, 16
    for the text encoder) and become views of them. One chunk is filled at a time, and the tensors it
    takes let go of their old memory, so a model still on the GPU, or in pageable memory, leaves it a
    chunk at a time. ``allocate(nbytes)`` makes a chunk (tests pass pageable memory: pinning needs CUDA).
    """
    allocate = allocate or (lambda nbytes: torch.empty(nbytes, dtype=torch.uint8, pin_memory=True))
    tensors = list({id(t): t for t in [*module.parameters(), *module.buffers()] if t.numel()}.values())
    places, sizes = chunk_plan([t.numel() * t.element_size() for t in tensors])
    for index, size in enumerate(sizes):
        chunk = allocate(size)
        for tensor, (_, offset) in [(t, place) for t, place in zip(tensors, places) if place[0] == index]:
            nbytes = tensor.numel() * tensor.element_size()
            view = chunk[offset:offset + nbytes].view(tensor.dtype).view(tensor.shape)
            view.copy_(tensor.data)
            tensor.data = view
    return sum(sizes)


def group_offload(pipe, device: str, use_stream: bool = True) -> None:
    """``perf.group_offload``: the transformer and the text encoder live in CPU memory and reach the GPU a
    piece at a time, the next piece copied on a side CUDA stream while the current one computes.

    Transformer: diffusers' block-level group offloading, one of the 60 blocks per group (streams need
    one), ``record_stream`` on (safe from diffusers 0.36.0: see ``diffusers_compat``, "streamed group
    offload"). Text encoder (a transformers model, no ModelMixin): leaf-level group offloading, as
    diffusers documents for such components. The VAE stays on the GPU: guidance decodes and
    backpropagates through it at every guided step. ``use_stream=False`` (synchronous copies) is for
    tests on the CPU.
    """
    from diffusers.hooks import apply_group_offloading

    onload = torch.device(device)
    streams = {"use_stream": use_stream, "record_stream": use_stream}
    for component in (pipe.transformer, pipe.text_encoder):
        if use_stream:
            pin_in_place(component)
    pipe.transformer.enable_group_offload(onload, offload_device=torch.device("cpu"), offload_type="block_level",
                                          num_blocks_per_group=1, **streams)
    apply_group_offloading(pipe.text_encoder, onload_device=onload, offload_device=torch.device("cpu"),
                           offload_type="leaf_level", **streams)
    pipe.vae.to(onload)
    if onload.type == "cuda":
        torch.cuda.empty_cache()
