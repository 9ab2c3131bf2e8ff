"""A sweep on the Ray launcher, one GPU per job: wall time with 1 GPU vs 2 GPUs (needs 2 CUDA GPUs).

    python benchmarks/ray_sweep.py --out ray_results --jobs 4 --size 512

Runs ``python -m qvedit -m hydra/launcher=ray model=random_full seed=0,1,...`` (random weights,
timing only) on a synthetic --size² clip with one generated frame per job, first letting Ray hand
out one GPU (jobs one after another), then two (two jobs at a time). Records each sweep's wall
time, each job's interval (its folder's creation to its last file) and which physical GPU it ran
on, so the overlap is visible. Results: OUT/ray_sweep.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from context_parallel import synthetic_clip  # (it puts this checkout's qvedit first on the path)

from qvedit.cli.override_keys import argument_problems, config_groups, unknown_overrides
from qvedit.cli.override_values import override_problems
from qvedit.core.errors import QveditError
from qvedit.core.tool_parser import OneLineParser, folder, run_step, run_tool, whole


def sweep(gpus: int, jobs: int, clip: list[str], extra: list[str], sweep_dir: Path) -> dict:
    command = [sys.executable, "-m", "qvedit", "-m", "hydra/launcher=ray", *clip, "metrics=none",
               "max_frames=2", f"seed={','.join(map(str, range(jobs)))}", f"hydra.launcher.ray.init.num_gpus={gpus}",
               "+hydra.launcher.ray.init.include_dashboard=false", f"hydra.sweep.dir={sweep_dir}", *extra]
    started = time.time()
    run_step(command, f"the sweep on {gpus} GPU(s)", log=sweep_dir.with_name(sweep_dir.name + ".log"),
             env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    ended = time.time()
    rows = []
    for job in sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()):
        files = [p for p in job.rglob("*") if p.is_file()]
        log = (job / "main.log").read_text() if (job / "main.log").is_file() else ""
        gpu = next((line.split("CUDA_VISIBLE_DEVICES=")[1].strip() for line in log.splitlines()
                    if "CUDA_VISIBLE_DEVICES=" in line), "?")
        rows.append({"job": job.name, "start_s": round((job / ".hydra").stat().st_mtime - started, 1),
                     "end_s": round(max(p.stat().st_mtime for p in files) - started, 1), "gpu": gpu})
    return {"gpus": gpus, "wall_s": round(ended - started, 1), "jobs": rows}


def gpu_counts(text: str) -> list[int]:
    """``--gpus``: comma-separated GPU counts, each 1 or more."""
    return [whole(1, 64)(count) for count in text.split(",")]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="benchmarks/ray_sweep.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=folder, required=True)
    parser.add_argument("--jobs", type=whole(1, 64), default=4)
    parser.add_argument("--size", type=whole(16, 4096, multiple=16), default=512, help="frame side, a multiple of 16")
    parser.add_argument("--model", default="random_full", choices=config_groups()["model"])
    parser.add_argument("--gpus", type=gpu_counts, default=[2, 1], help="GPU counts to sweep with, in order, "
                        "comma-separated (default 2,1)")
    parser.add_argument("extra", nargs="*", help="more qvedit overrides for every job (key=value)")
    return parser


def main(argv=None) -> int:
    """The benchmark; a bad argument (an override included), too few GPUs or a sweep that fails is one
    ``qvedit: error:`` line (exit 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    problems = argument_problems(args.extra) or unknown_overrides(args.extra) or override_problems(args.extra)
    if problems:
        parser.error(problems[0])
    return run_tool(lambda: measure(args))


def measure(args: argparse.Namespace) -> int:
    import torch

    if torch.cuda.device_count() < max(args.gpus):
        raise QveditError(f"--gpus {','.join(map(str, args.gpus))} needs {max(args.gpus)} CUDA GPUs, "
                          f"{torch.cuda.device_count()} are visible: run it on a machine with them")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    clip = [f"model={args.model}", *synthetic_clip(out / "clip", args.size)]
    results = []
    for gpus in args.gpus:
        results.append(sweep(gpus, args.jobs, clip, args.extra, out / f"sweep_{gpus}gpu"))
        print(json.dumps(results[-1]), flush=True)
        (out / "ray_sweep.json").write_text(json.dumps(results, indent=2))
    lines = [f"# Ray sweep: {args.jobs} jobs, model={args.model}, {args.size}², one frame each "
             f"({' '.join(args.extra) or 'default settings'})", "", "| GPUs | sweep wall s | jobs (start-end s, GPU) |",
             "| --- | --- | --- |"]
    for row in results:
        jobs = "; ".join(f"{j['job'].split('_')[0]}: {j['start_s']}-{j['end_s']} GPU {j['gpu']}" for j in row["jobs"])
        lines.append(f"| {row['gpus']} | {row['wall_s']} | {jobs} |")
    (out / "ray_sweep.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
