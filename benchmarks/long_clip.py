"""Memory over a long clip: peak RSS at frame 10 and at the last frame, tiny model on the CPU.

    python benchmarks/long_clip.py --frames 200 --out long_clip.json

Streams a synthetic clip of FRAMES edge frames through the rolling loop (with metrics and edge
guidance on) and records the peak RSS after each frame (since the last reset: the loop resets the
high-water mark at each frame's start on Linux). Memory must not grow with T.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's qvedit

from qvedit.core.cpu_threads import use_cpu_threads  # noqa: E402
from qvedit.core.tool_parser import OneLineParser, file, run_tool, whole  # noqa: E402

use_cpu_threads()  # before torch is imported (in main): OpenMP's threads wait passively on a busy machine


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="benchmarks/long_clip.py", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=whole(10, 100_000), default=200,
                        help="edge frames, 10 or more: the peak at frame 10 is the baseline (default %(default)s)")
    parser.add_argument("--out", type=file, default=None, help="a JSON file for the report")
    return parser


def main(argv=None) -> int:
    """The benchmark; a bad argument is one ``qvedit: error:`` line (exit 2)."""
    args = build_parser().parse_args(argv)
    return run_tool(lambda: measure(args))


def measure(args: argparse.Namespace) -> int:

    from qvedit.core.images import to_tensor
    from qvedit.guidance.edges import edges_to_uint8, sobel_edges
    from qvedit.io.demo import demo_frame
    from qvedit.io.frames import FrameFolders, FrameWriter
    from qvedit.models.loading import load_pipeline
    from qvedit.run.clip_editor import edit_clip
    from qvedit.run.frame_outputs import ClipOutputs
    from qvedit.scoring.frame_metrics import FrameMetrics
    from qvedit.settings.guidance import TTLGSettings
    from qvedit.settings.model import TinyModel
    from qvedit.settings.report import MetricsSettings
    from qvedit.settings.run import RunSettings

    pipe = load_pipeline(TinyModel.in_cache(), "cpu", "fp32")
    work = Path(tempfile.mkdtemp(prefix="qvedit-long-"))
    (work / "edges").mkdir()
    Image.fromarray(demo_frame(0)).save(work / "init.png")
    for t in range(1, args.frames + 1):
        edge = edges_to_uint8(sobel_edges(to_tensor(demo_frame(t % 40)))[0, 0])
        Image.fromarray(edge).save(work / "edges" / f"{t:05d}.png")

    samples = {}
    writer = FrameWriter(work / "frames")
    original = writer.write

    def write_and_sample(index, image):
        path = original(index, image)
        samples[index] = peak_rss_mib()
        return path

    writer.write = write_and_sample
    started = time.perf_counter()
    outputs = ClipOutputs(writer, work / "metrics.csv", FrameMetrics(MetricsSettings(vgg_weights="random")))
    edit_clip(pipe, FrameFolders(str(work / "init.png"), str(work / "edges")), outputs,
              RunSettings(prompt="p", num_inference_steps=4, condition_area="output"),
              TTLGSettings(edge_scale=1.0, last_steps=2))
    report = {"frames": args.frames, "seconds": round(time.perf_counter() - started, 1),
              "peak_rss_mib_at_frame_10": round(samples[10], 1),
              f"peak_rss_mib_at_frame_{args.frames}": round(samples[args.frames], 1),
              "growth_mib": round(samples[args.frames] - samples[10], 1), "work_dir": str(work)}
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
