"""What start.noise=warped costs a frame, and a resume of a long clip (its noise is carried again from frame 1).

    OMP_NUM_THREADS=1 python benchmarks/noise_warp.py                 # 1024² (128x128 latents, 16 channels), CPU
    python benchmarks/noise_warp.py --size 512 --device cuda          # another size, on a GPU
    python benchmarks/noise_warp.py --channels 64 --scale 16          # Qwen-Image 2.1's latents (64x64 at 1024²)

Times, median of ``--repeat`` runs: one warp of the noise (``qvedit.guidance.noise_warp.transport`` on the fine grid
of one cell per pixel, then the sum into latent cells) along a flow like a pan with a zoom and an occluded band, and
one frame pair's DIS optical flow (what a resume computes again for every frame before the first it makes). Prints
the per-frame figures and their extrapolation to a resume at frame ``--frames``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's qvedit

from qvedit.core.cpu_threads import use_cpu_threads  # noqa: E402
from qvedit.core.tool_parser import OneLineParser, run_tool, whole  # noqa: E402

use_cpu_threads()  # before torch is imported (in measure): OpenMP's threads wait passively on a busy machine


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="benchmarks/noise_warp.py", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=whole(16, 16384, multiple=16), default=1024,
                        help="frame side in pixels (a multiple of 16 and of --scale)")
    parser.add_argument("--channels", type=whole(1, 1024), default=16, help="latent channels (Qwen-Image: 16; 2.1: 64)")
    parser.add_argument("--scale", type=whole(1, 64), default=8,
                        help="pixels a latent cell (Qwen-Image's VAE: 8; 2.1's: 16)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--repeat", type=whole(1, 1000), default=5)
    parser.add_argument("--frames", type=whole(2, 10_000_000), default=1000, help="the frame a resume starts at")
    return parser


def main(argv=None) -> int:
    """The benchmark; a bad argument is one ``qvedit: error:`` line (exit 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.size % args.scale:
        parser.error(f"argument --size: {args.size} is not a multiple of --scale {args.scale}")
    return run_tool(lambda: measure(args))


def measure(args: argparse.Namespace) -> int:
    from qvedit.models.devices import check_device

    check_device(args.device)
    import torch

    from qvedit.guidance.optical_flow import DISFlow, FlowPair
    from qvedit.start.noise import FrameNoise

    latent = args.size // args.scale
    noise = FrameNoise("warped", 0, (args.channels, latent, latent), args.scale, args.device)
    ys, xs = torch.meshgrid(torch.arange(args.size, dtype=torch.float32), torch.arange(args.size, dtype=torch.float32),
                            indexing="ij")
    centre = (args.size - 1) / 2
    backward = torch.stack([-0.01 * (xs - centre) - 2.3, -0.01 * (ys - centre) + 0.7])[None]
    valid = torch.ones(1, 1, args.size, args.size)
    valid[..., args.size // 3: args.size // 3 + args.size // 16, :] = 0
    pair = FlowPair(backward, valid)
    noise.noise(1)
    warps = []
    for index in range(2, 2 + args.repeat):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        noise.noise(index, pair)  # returns the latent noise on the CPU: the device's work is waited for
        warps.append(time.perf_counter() - started)
    frame = (torch.rand(1, 3, args.size, args.size) * 255).round() / 255
    dis, flows = DISFlow(), []
    for _ in range(args.repeat):
        started = time.perf_counter()
        dis(frame, frame.roll(3, -1))
        dis(frame.roll(3, -1), frame)
        flows.append(time.perf_counter() - started)
    warp, flow = statistics.median(warps), statistics.median(flows)
    threads = os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))
    print(f"{args.size}² ({latent}x{latent} latents, {args.channels} channels, {args.scale} pixels a cell), "
          f"{args.device}, {threads} thread(s), load {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d')}:")
    print(f"  one warp of the noise: {warp:.3f} s; one frame pair's DIS flow (backward + forward, CPU): {flow:.3f} s")
    print(f"  a resume at frame {args.frames}: {args.frames - 2} warps and flow pairs again, about "
          f"{(args.frames - 2) * (warp + flow):.0f} s ({(args.frames - 2) * warp:.0f} s of warps, "
          f"{(args.frames - 2) * flow:.0f} s of flow)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
