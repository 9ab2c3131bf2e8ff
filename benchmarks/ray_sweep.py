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
import subprocess
import sys
import time
from pathlib import Path

from context_parallel import synthetic_clip


def sweep(gpus: int, jobs: int, clip: list[str], extra: list[str], sweep_dir: Path) -> dict:
    command = [sys.executable, "-m", "qvedit", "-m", "hydra/launcher=ray", *clip, "metrics=none",
               "max_frames=2", f"seed={','.join(map(str, range(jobs)))}", f"hydra.launcher.ray.init.num_gpus={gpus}",
               "+hydra.launcher.ray.init.include_dashboard=false", f"hydra.sweep.dir={sweep_dir}", *extra]
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True,
                            env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    ended = time.time()
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-6000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"sweep on {gpus} GPU(s) failed (exit {result.returncode})")
    rows = []
    for job in sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()):
        files = [p for p in job.rglob("*") if p.is_file()]
        log = (job / "main.log").read_text() if (job / "main.log").is_file() else ""
        gpu = next((line.split("CUDA_VISIBLE_DEVICES=")[1].strip() for line in log.splitlines()
                    if "CUDA_VISIBLE_DEVICES=" in line), "?")
        rows.append({"job": job.name, "start_s": round((job / ".hydra").stat().st_mtime - started, 1),
                     "end_s": round(max(p.stat().st_mtime for p in files) - started, 1), "gpu": gpu})
    return {"gpus": gpus, "wall_s": round(ended - started, 1), "jobs": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--model", default="random_full")
    parser.add_argument("--gpus", default="2,1", help="GPU counts to sweep with, in order")
    parser.add_argument("extra", nargs="*", help="more qvedit overrides for every job")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    clip = [f"model={args.model}", *synthetic_clip(out / "clip", args.size)]
    results = []
    for gpus in map(int, args.gpus.split(",")):
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


if __name__ == "__main__":
    main()
