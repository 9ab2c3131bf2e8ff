"""Cost of one guided step's decode + losses + backward on the full-size Qwen-Image VAE.

The VAE (``AutoencoderKLQwenImage()`` with default arguments = the 2509 architecture) is built
with random weights straight on the GPU; timing and memory do not depend on weight values.
Compares ``ttlg.decode_checkpointing`` off and on at 512² and 1024²::

    python benchmarks/guidance_decode.py --sizes 512 1024 --out bench_decode.json

Prints a markdown table (random weights, timing only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's qvedit

from qvedit.core.errors import QveditError  # noqa: E402
from qvedit.core.tool_parser import OneLineParser, file, run_tool, whole  # noqa: E402


def build_vae(device: str, dtype: torch.dtype):
    from diffusers import AutoencoderKLQwenImage

    with torch.device(device):
        vae = AutoencoderKLQwenImage().to(dtype)
    return vae.requires_grad_(False).eval()


def measure_decode(vae, vgg, size: int, checkpointing: bool, repeats: int) -> dict:
    from diffusers import QwenImageEditPlusPipeline

    from qvedit.guidance import losses
    from qvedit.models.diffusers_compat import LatentDecoder

    device = next(vae.parameters()).device
    pipe = SimpleNamespace(vae=vae, vae_scale_factor=8, _unpack_latents=QwenImageEditPlusPipeline._unpack_latents)
    decoder = LatentDecoder(pipe, size, size, checkpointing)
    tokens = (size // 16) ** 2
    target = torch.rand(1, 1, size, size, device=device)
    reference = vgg.grams(torch.rand(1, 3, size, size, device=device), 256)
    seconds = []
    peak_extra = 0
    for _ in range(repeats + 1):
        leaf = torch.randn(1, tokens, 64, device=device).requires_grad_(True)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        with torch.enable_grad():
            image = decoder.decode(leaf)
            loss = losses.edge_loss(image.float(), target, "sobel", 256) + 0.2 * losses.gram_loss(
                vgg.grams(image, 256), reference)
            (grad,) = torch.autograd.grad(loss, leaf)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
        peak_extra = max(peak_extra, torch.cuda.max_memory_allocated() - base)
        del image, loss, grad, leaf
    return {
        "size": size,
        "decode_checkpointing": checkpointing,
        "seconds_per_guided_step": statistics.median(seconds[1:]),
        "peak_extra_gib": peak_extra / 2**30,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="benchmarks/guidance_decode.py", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=whole(16, 4096, multiple=16), nargs="+", default=[512, 1024],
                        help="frame sides, each a multiple of 16 (default 512 1024)")
    parser.add_argument("--repeats", type=whole(1, 100), default=3, help="timed steps per row, after one warm-up")
    parser.add_argument("--out", type=file, default=None, help="a JSON file for the rows")
    return parser


def main(argv=None) -> int:
    """The benchmark; a bad argument, or no GPU, is one ``qvedit: error:`` line (exit 2)."""
    args = build_parser().parse_args(argv)
    return run_tool(lambda: measure(args))


def measure(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available():
        raise QveditError("no CUDA GPU is visible: this benchmark times the full-size VAE on a GPU")
    from qvedit.guidance.losses import VGGStyle

    vae = build_vae("cuda", torch.bfloat16)
    vgg = VGGStyle("random", device="cuda")
    weights_gib = torch.cuda.memory_allocated() / 2**30
    rows = [measure_decode(vae, vgg, size, ckpt, args.repeats) for size in args.sizes for ckpt in (False, True)]
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "vae_and_vgg_weights_gib": weights_gib,
              "note": "random weights, timing only", "rows": rows}
    print(f"{report['device']}, torch {report['torch']}, random weights, timing only")
    print("| size | decode_checkpointing | s per guided step | peak extra GiB |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['size']}² | {r['decode_checkpointing']} | {r['seconds_per_guided_step']:.3f} "
              f"| {r['peak_extra_gib']:.2f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
