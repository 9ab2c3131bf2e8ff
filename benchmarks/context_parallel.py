"""One frame on two or four GPUs vs one: context parallelism's outputs and its speed (needs 2 CUDA GPUs).

    python benchmarks/context_parallel.py --out cp_results            # tiny equality + 1024² timing
    python benchmarks/context_parallel.py --out cp_results --skip-timing
    python benchmarks/context_parallel.py --out cp4 --layouts "1 GPU,ulysses 2,ulysses 4,cfg 2 x ulysses 2"

1. Outputs: the tiny model on the demo clip in bf16, one GPU vs ``torchrun --nproc-per-node 2``
   with parallel.ulysses_degree=2, ring_degree=2 and cfg_degree=2, guidance off and edge_gram.
   Frames are compared in 8-bit levels (max and mean absolute difference over all frames).
2. Speed: ``model=random_full`` (random weights, timing only) on a synthetic --size² clip, --steps
   steps, true CFG 4, one generated frame: seconds for that frame (metrics.csv, prompt encoding
   and decode included), one GPU vs each 2-GPU layout, and the frames' difference.

Every run is the real CLI; results go to OUT/context_parallel.json and .md after each row.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's qvedit

from qvedit.core.errors import QveditError  # noqa: E402
from qvedit.core.tool_parser import OneLineParser, folder, run_step, run_tool, whole  # noqa: E402

TINY = ["experiment=demo", "device=cuda", "dtype=bf16"]
LAUNCH = {
    "1 GPU": [sys.executable, "-m", "qvedit"],
    "1 GPU again": [sys.executable, "-m", "qvedit"],  # run-to-run noise of the baseline itself
    "ulysses 2": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                  "-m", "qvedit", "parallel.ulysses_degree=2"],
    "ring 2": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "qvedit", "parallel.ring_degree=2"],
    "cfg 2": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
              "-m", "qvedit", "parallel.cfg_degree=2"],
    "ulysses 4": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4",
                  "-m", "qvedit", "parallel.ulysses_degree=4"],
    # one Ulysses pair of GPUs per CFG pass: its frames should be those of "ulysses 2"
    "cfg 2 x ulysses 2": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4",
                          "-m", "qvedit", "parallel.cfg_degree=2", "parallel.ulysses_degree=2"],
}
SAME_FRAMES_AS = {"cfg 2 x ulysses 2": "ulysses 2"}


def qvedit(layout: str, overrides: list[str], run_dir: Path) -> dict:
    """Run the CLI; returns wall seconds and the per-frame seconds from metrics.csv."""
    started = time.perf_counter()
    run_step([*LAUNCH[layout], *overrides, f"hydra.run.dir={run_dir}"], f"{layout} {' '.join(overrides)}",
             log=run_dir.with_name(run_dir.name + ".log"))
    wall = time.perf_counter() - started
    with open(run_dir / "metrics.csv") as rows:
        seconds = [float(row["seconds"]) for row in csv.DictReader(rows)]
    return {"wall_s": round(wall, 2), "frame_s": seconds}


def frame_difference(a: Path, b: Path) -> dict:
    """8-bit differences between the frames of two run folders (frame 0 is a copy, left out)."""
    names = sorted(p.name for p in (a / "frames").glob("*.png"))[1:]
    assert names == sorted(p.name for p in (b / "frames").glob("*.png"))[1:], "different frame counts"
    diffs = [np.abs(np.asarray(Image.open(a / "frames" / n), np.int16) - np.asarray(Image.open(b / "frames" / n),
                                                                                    np.int16)) for n in names]
    return {"frames": len(names), "max_abs": int(max(d.max() for d in diffs)),
            "mean_abs": round(float(np.mean([d.mean() for d in diffs])), 4),
            "first_frame_mean_abs": round(float(diffs[0].mean()), 4)}


def synthetic_clip(folder: Path, size: int) -> list[str]:
    """The demo scene at size x size with one edge frame; returns the io overrides."""
    from qvedit.core.images import to_tensor
    from qvedit.guidance.edges import edges_to_uint8, sobel_edges
    from qvedit.io.demo import demo_frame

    (folder / "edges").mkdir(parents=True, exist_ok=True)
    Image.fromarray(demo_frame(0, (size, size))).save(folder / "init.png")
    frame = to_tensor(demo_frame(1, (size, size)))
    Image.fromarray(edges_to_uint8(sobel_edges(frame)[0, 0])).save(folder / "edges" / "00001.png")
    return ["io=frames", f"io.init_frame={folder / 'init.png'}", f"io.edge_frames_dir={folder / 'edges'}"]


def write(out: Path, results: dict) -> None:
    (out / "context_parallel.json").write_text(json.dumps(results, indent=2))
    lines = ["# One frame on 2 GPUs vs 1", "", "## Outputs (tiny model, bf16, demo clip)", "",
             "| run | ttlg | frames | max abs diff | mean abs diff | frame 1 mean abs diff | vs its twin (max, mean) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in results["equality"]:
        d = row["vs 1 GPU"]
        twin = next((v for k, v in row.items() if k.startswith("vs ") and k != "vs 1 GPU"), None)
        versus_twin = f"{twin['max_abs']}, {twin['mean_abs']}" if twin else "-"
        lines.append(f"| {row['layout']} | {row['ttlg']} | {d['frames']} | {d['max_abs']} | {d['mean_abs']} | "
                     f"{d['first_frame_mean_abs']} | {versus_twin} |")
    if results["timing"]:
        lines += ["", f"## Speed ({results['timing_setup']})", "",
                  "| run | frame s | speed-up | run wall s | mean abs diff vs 1 GPU |",
                  "| --- | --- | --- | --- | --- |"]
        base = results["timing"][0]["frame_s"][-1]
        for row in results["timing"]:
            diff = row.get("vs 1 GPU", {}).get("mean_abs", "-")
            lines.append(f"| {row['layout']} | {row['frame_s'][-1]:.2f} | {base / row['frame_s'][-1]:.2f}x | "
                         f"{row['wall_s']:.1f} | {diff} |")
    (out / "context_parallel.md").write_text("\n".join(lines) + "\n")


def layout_list(text: str) -> list[str]:
    """``--layouts``: comma-separated names of ``LAUNCH``."""
    layouts = [name.strip() for name in text.split(",")]
    unknown = [name for name in layouts if name not in LAUNCH]
    if unknown:
        raise argparse.ArgumentTypeError(f"{unknown[0]!r} is no layout: give some of {', '.join(LAUNCH)}, "
                                         "comma-separated")
    return layouts


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="benchmarks/context_parallel.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=folder, required=True)
    parser.add_argument("--size", type=whole(16, 4096, multiple=16), default=1024, help="frame side, a multiple of 16")
    parser.add_argument("--steps", type=whole(1, 1000), default=50)
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-equality", action="store_true")
    parser.add_argument("--layouts", type=layout_list, default=layout_list("1 GPU,ulysses 2,ring 2,cfg 2"),
                        help=f"comma-separated, the first is the baseline: {', '.join(LAUNCH)}")
    return parser


def main(argv=None) -> int:
    """The benchmark; a bad argument, too few GPUs or a run that fails is one ``qvedit: error:`` line (exit 2)."""
    args = build_parser().parse_args(argv)
    return run_tool(lambda: measure(args))


def measure(args: argparse.Namespace) -> int:
    import torch

    layouts = args.layouts
    needed = max(int(LAUNCH[name][LAUNCH[name].index("--nproc-per-node") + 1])
                 if "--nproc-per-node" in LAUNCH[name] else 1 for name in layouts)
    if torch.cuda.device_count() < needed:
        raise QveditError(f"--layouts {','.join(layouts)} needs {needed} CUDA GPUs, {torch.cuda.device_count()} are "
                          "visible: run it on a machine with them")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = {"equality": [], "timing": [],
               "timing_setup": f"model=random_full (random weights), {args.size}², {args.steps} steps, true CFG 4"}

    if not args.skip_equality:
        for ttlg in ("off", "edge_gram"):
            overrides = [*TINY, f"ttlg={ttlg}"]
            for layout in layouts:
                run_dir = out / f"tiny_{ttlg}_{layout.replace(' ', '')}"
                row = {"layout": layout, "ttlg": ttlg, **qvedit(layout, overrides, run_dir)}
                if layout != layouts[0]:
                    row["vs 1 GPU"] = frame_difference(out / f"tiny_{ttlg}_{layouts[0].replace(' ', '')}", run_dir)
                    twin = SAME_FRAMES_AS.get(layout)
                    if twin in layouts:
                        row[f"vs {twin}"] = frame_difference(out / f"tiny_{ttlg}_{twin.replace(' ', '')}", run_dir)
                    results["equality"].append(row)
                print(json.dumps(row), flush=True)
                write(out, results)

    if not args.skip_timing:
        clip = synthetic_clip(out / "clip", args.size)
        overrides = ["model=random_full", *clip, "metrics=none", "max_frames=2", f"num_inference_steps={args.steps}"]
        for layout in layouts:
            run_dir = out / f"full_{layout.replace(' ', '')}"
            row = {"layout": layout, **qvedit(layout, overrides, run_dir)}
            if layout != layouts[0]:
                row["vs 1 GPU"] = frame_difference(out / f"full_{layouts[0].replace(' ', '')}", run_dir)
                twin = SAME_FRAMES_AS.get(layout)
                if twin in layouts:
                    row[f"vs {twin}"] = frame_difference(out / f"full_{twin.replace(' ', '')}", run_dir)
            results["timing"].append(row)
            print(json.dumps(row), flush=True)
            write(out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
