"""What optical flow costs per frame: DIS (CPU) and RAFT-large (GPU) at a given size.

    python benchmarks/flow_cost.py --size 1024 --repeats 5 --out flow.json

Per method: seconds for one frame's flow pair (``ClipFlow.pair``: backward and forward flow, the
occlusion check, resizing to the frame), for the warp-error metric of the frame, and for the
flow-warped temporal target of ``ttlg.temporal_mode=flow``. Frames are the demo scene drawn at the
size (a ball and a box moving), so the flow has real motion to find. RAFT runs with random weights:
the time does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's qvedit

from qvedit.core.cpu_threads import use_cpu_threads  # noqa: E402

use_cpu_threads()  # before torch is imported
import torch  # noqa: E402

from qvedit.core.tool_parser import OneLineParser, file, run_tool, whole  # noqa: E402


class DrawnScene:
    """A FrameSource-like clip of the demo scene at ``size`` x ``size``, source frames included."""

    has_source_frames = True
    fps = 8.0

    def __init__(self, size: int, frames: int):
        from PIL import Image

        from qvedit.io.demo import demo_frame

        self.images = [Image.fromarray(demo_frame(t, (size, size))) for t in range(frames)]

    def source_frame(self, i, size):
        return self.images[i]

    def init_image(self):
        return self.images[0]

    def __len__(self):
        return len(self.images) - 1


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="benchmarks/flow_cost.py", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=whole(16, 4096), default=1024, help="frame side (default %(default)s)")
    parser.add_argument("--repeats", type=whole(1, 100), default=5, help="frames timed per method, the fastest kept")
    parser.add_argument("--out", type=file, default=None, help="a JSON file for the rows")
    return parser


def main(argv=None) -> int:
    """The benchmark; a bad argument is one ``qvedit: error:`` line (exit 2)."""
    args = build_parser().parse_args(argv)
    return run_tool(lambda: measure(args))


def measure(args: argparse.Namespace) -> int:
    from qvedit.core.images import to_tensor
    from qvedit.guidance.optical_flow import warp, warp_error
    from qvedit.io.clip_flow import ClipFlow
    from qvedit.settings.guidance import FlowSettings

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scene = DrawnScene(args.size, args.repeats + 2)
    rows = []
    for method in ("dis", "raft"):
        settings = FlowSettings(method=method, raft_weights="random")
        flow = ClipFlow(settings, scene, (args.size, args.size), device)
        flow.pair(1)  # warm-up: kernels, allocator
        pair_s, metric_s, target_s = [], [], []
        for t in range(2, args.repeats + 2):
            holder = {}
            pair_s.append(timed(lambda: holder.setdefault("pair", flow.pair(t)), device))
            now, before = to_tensor(scene.images[t]).to(device), to_tensor(scene.images[t - 1]).to(device)
            metric_s.append(timed(lambda: warp_error(now, before, holder["pair"]), device))
            target_s.append(timed(lambda: warp(before, holder["pair"].backward.to(device)), device))
        rows.append({"method": method, "size": args.size, "device": str(device) if method == "raft" else "cpu",
                     "pair_s": min(pair_s), "pair_s_median": sorted(pair_s)[len(pair_s) // 2],
                     "warp_error_s": min(metric_s), "temporal_target_s": min(target_s),
                     "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None})
        print(json.dumps(rows[-1]), flush=True)
    report = {"gpu": torch.cuda.get_device_name() if device.type == "cuda" else None, "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
