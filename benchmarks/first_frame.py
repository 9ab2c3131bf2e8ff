"""What frame 0's edit costs (``first_frame.prompt``): seconds per candidate beside seconds per clip frame.

    python benchmarks/first_frame.py --out ff_results --model random_full --size 1024 --candidates 3
    python benchmarks/first_frame.py --out ff_results --model random_full --size 1024 --candidates 3 --name lightning_like \\
        num_inference_steps=8 true_cfg_scale=1 first_frame.num_inference_steps=8 first_frame.true_cfg_scale=1
    python benchmarks/first_frame.py --out ff_tiny --model tiny --size 64 --candidates 2 experiment=tiny_cpu   # CPU check

One ``python -m qvedit`` process on a synthetic two-frame source folder (the demo scene at --size²,
``io.source_frames_dir`` alone: the edge map is made from frame 1): it makes --candidates edits of frame
0 (40 steps, true CFG 4 by default: the model's single-image defaults) and then the one clip frame (50
steps, true CFG 4, two condition images). Each time is read from the run's log lines ("candidate k of N
made in X s", "frame 1 of 1 done in X s"); the first candidate includes the pipeline's first-call
warm-up. ``model=random_full``: random weights, timing only. Results: OUT/<name>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's qvedit

from qvedit.cli.override_keys import argument_problems, config_groups, unknown_overrides  # noqa: E402
from qvedit.cli.override_values import override_problems  # noqa: E402
from qvedit.core.tool_parser import OneLineParser, folder, run_step, run_tool, whole  # noqa: E402


def source_folder(folder: Path, size: int) -> Path:
    """Frames 0 and 1 of the demo scene at size x size."""
    from qvedit.io.demo import demo_frame

    folder.mkdir(parents=True, exist_ok=True)
    for t in (0, 1):
        Image.fromarray(demo_frame(t, (size, size))).save(folder / f"{t:05d}.png")
    return folder


def name(text: str) -> str:
    """``--name``: a file name (no folder)."""
    if not text.strip() or "/" in text or text in (".", ".."):
        raise argparse.ArgumentTypeError(f"{text!r} is not a file name: give a word such as lightning_like")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="benchmarks/first_frame.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=folder, required=True)
    parser.add_argument("--model", default="random_full", choices=config_groups()["model"])
    parser.add_argument("--size", type=whole(16, 4096, multiple=16), default=1024, help="frame side, a multiple of 16")
    parser.add_argument("--candidates", type=whole(1, 64), default=3)
    parser.add_argument("--name", type=name, default="first_frame", help="names OUT/<name>.json and .md")
    parser.add_argument("extra", nargs="*", help="more qvedit overrides (key=value)")
    return parser


def main(argv=None) -> int:
    """The benchmark; a bad argument (an override included) or a run that fails is one ``qvedit: error:`` line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    problems = argument_problems(args.extra) or unknown_overrides(args.extra) or override_problems(args.extra)
    if problems:
        parser.error(problems[0])
    return run_tool(lambda: measure(args))


def measure(args: argparse.Namespace) -> int:
    out = args.out.resolve()
    run_dir = out / f"{args.name}_run"
    command = [sys.executable, "-m", "qvedit", f"model={args.model}", *args.extra,
               f"io.source_frames_dir={source_folder(out / 'source', args.size)}",
               "first_frame.prompt=make it a watercolour painting", f"first_frame.candidates={args.candidates}",
               "metrics=none", "max_frames=2", f"hydra.run.dir={run_dir}"]
    started = time.time()
    run_step(command, "the qvedit run", log=out / f"{args.name}_run.log")
    wall = time.time() - started
    log = (run_dir / "main.log").read_text()
    candidates = [float(s) for s in re.findall(r"candidate \d+ of \d+ made in ([\d.]+) s", log)]
    frames = [float(s) for s in re.findall(r"frame \d+ of \d+ done in ([\d.]+) s", log)]
    results = {"command": " ".join(command[1:]), "size": args.size, "wall_s": round(wall, 1),
               "candidate_s": candidates, "clip_frame_s": frames,
               "candidate_after_first_s": round(sum(candidates[1:]) / max(1, len(candidates) - 1), 3)}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(results, indent=2))
    lines = [f"# Frame 0's edit vs a clip frame ({args.model}, {args.size}², {args.name})", "",
             f"`{results['command']}`", "", "| what | seconds |", "| --- | --- |"]
    lines += [f"| candidate {k}{' (first call, warm-up included)' if k == 0 else ''} | {s:.2f} |"
              for k, s in enumerate(candidates)]
    lines += [f"| clip frame {k + 1} | {s:.2f} |" for k, s in enumerate(frames)]
    lines += [f"| whole process (start, model load, all of the above) | {wall:.1f} |"]
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
