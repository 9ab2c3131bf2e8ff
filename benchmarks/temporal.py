"""Frames tied where they are made: every start (noise x strength) against the warp error and the seconds a frame.

    python benchmarks/temporal.py --out runs/temporal-bench                  # tiny model, CPU, the figures of docs/long-clips.md
    python benchmarks/temporal.py --model toy --clips shapes --out DIR      # the toy model on a clip of shapes
    python benchmarks/temporal.py --out DIR -- model.model_id=/m dtype=bf16  # any overrides, passed to every run
    python benchmarks/temporal.py --jobs 2 --out DIR                        # both clips at once (OMP_NUM_THREADS=1)
    python benchmarks/temporal.py --reuse --out DIR                         # finished sweeps kept: the table again

For each clip, one sweep (``-m``) over ``start.noise`` (independent, shared, warped) x ``start.strength`` (1, 0.8,
0.6, 0.4) x ``ttlg`` (off, edge_gram) x seeds; ``start=fresh`` is independent at 1, ``start=shared`` and
``start=warped`` their noise at 1, ``start=warped_previous`` warped at 0.6. The clips: ``io=demo_long`` (a
synthetic pan while the light turns to sunset) and a clip made from a real photograph (scikit-image's
``astronaut``, panned and zoomed: ``qvedit.io.photo_clip``), both ``--length`` frames. Per setting, the median over
seeds of each clip mean of ``warp_error``, ``lpips_to_prev``, ``edge_loss``, ``gram_loss``, ``color_drift`` and
``seconds`` (a frame's time in the loop), over frames 2..T-1 (frame 1 follows frame 0, the input itself, which a
part-way start copies much of: it would flatter strength < 1; ``warp_error (1..)`` includes it). Writes
``temporal.md``, ``temporal.json`` and ``temporal.png`` (warp error against seconds a frame, per clip and ttlg).

``--model NAME`` is ``model=NAME`` with ``experiment=tiny_cpu`` (CPU settings), so a model trained later runs the
same benchmark; anything after ``--`` is passed to every run as Hydra overrides.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's qvedit, as the runs it starts use (python -m qvedit from REPO)

from qvedit.core.errors import QveditError  # noqa: E402
from qvedit.core.tool_parser import OneLineParser, folder, number, run_tool, whole  # noqa: E402

NOISES = ("independent", "shared", "warped")
STRENGTHS = (1.0, 0.8, 0.6, 0.4)
TTLG = ("off", "edge_gram")
COLUMNS = ("warp_error", "lpips_to_prev", "edge_loss", "gram_loss", "color_drift", "seconds")
PRESETS = {("independent", 1.0): "fresh", ("shared", 1.0): "shared", ("warped", 1.0): "warped",
           ("warped", 0.6): "warped_previous"}


def clip_overrides(clip: str, args, out: Path) -> list[str]:
    if clip in ("demo_long", "shapes"):  # shapes: a clip the toy model never saw (io.clip_seed's default)
        return [f"io={clip}", f"io.length={args.length}"]
    from qvedit.io.photo_clip import write_photo_clip

    folder = write_photo_clip(out / "clips" / f"{args.photo}-{args.length}", args.photo, args.length)
    return ["io=frames", f"io.source_frames_dir={folder}"]


def sweep_command(clip: str, args, out: Path) -> tuple[list[str], Path]:
    sweep = out / f"{clip}-{args.model}"
    experiment = "toy_cpu" if args.model == "toy" else "tiny_cpu"  # the toy model's own CPU settings
    command = [sys.executable, "-m", "qvedit", "-m", f"experiment={experiment}", f"model={args.model}",
               f"num_inference_steps={args.steps}", *clip_overrides(clip, args, out),
               f"start.noise={','.join(NOISES)}", f"start.strength={','.join(f'{s:g}' for s in args.strengths)}",
               f"ttlg={','.join(TTLG)}", f"seed={','.join(map(str, args.seeds))}", *args.overrides,
               f"hydra.sweep.dir={sweep}"]
    return command, sweep


def finished(sweep: Path, jobs: int, length: int) -> bool:
    from qvedit.io.layout import job_error

    found = [job for job in sweep.glob("*seed=*") if job.is_dir()] if sweep.is_dir() else []
    return len(found) == jobs and all(job_error(job) is None and (job / "metrics.csv").is_file() and
                                      len((job / "metrics.csv").read_text().splitlines()) == length for job in found)


def run_sweep(clip: str, args, out: Path) -> Path:
    command, sweep = sweep_command(clip, args, out)
    jobs = len(NOISES) * len(args.strengths) * len(TTLG) * len(args.seeds)
    if args.reuse and finished(sweep, jobs, args.length):
        print(f"{clip}: kept from {sweep}", flush=True)
        return sweep
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        said = [line for line in result.stderr.splitlines() if line.startswith("qvedit: error")] or \
            result.stderr.strip().splitlines()[-1:] or ["no message"]
        refuse(f"{clip}: the sweep failed ({said[-1]}); its log: {sweep}")
    print(f"{clip}: {jobs} jobs in {time.perf_counter() - started:.0f} s, {sweep}", flush=True)
    return sweep


def job_rows(clip: str, sweep: Path) -> list[dict]:
    """One row per job: its settings (from .hydra/overrides.yaml) and its clip means."""
    import pandas as pd
    import yaml

    from qvedit.io.layout import job_error

    rows = []
    for job in sorted(p for p in sweep.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()):
        if job_error(job) is not None:
            raise SystemExit(f"{job}: {job_error(job)}")
        overrides = dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        metrics = pd.read_csv(job / "metrics.csv")
        later = metrics[metrics.frame >= 2]
        row = {"clip": clip, "noise": overrides["start.noise"], "strength": float(overrides["start.strength"]),
               "ttlg": overrides["ttlg"], "seed": int(overrides["seed"]),
               "warp_error (1..)": float(metrics.warp_error.mean())}
        row.update({column: float(later[column].mean()) for column in COLUMNS if column in later})
        rows.append(row)
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="benchmarks/temporal.py", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides passed to every run (after --)")
    parser.add_argument("--model", default="tiny", help="model=NAME for every run (default: tiny)")
    parser.add_argument("--clips", nargs="+", choices=("demo_long", "photo", "shapes"), default=["demo_long", "photo"],
                        help="demo_long (a synthetic pan), photo (a photograph panned and zoomed), shapes (a clip of "
                        "shapes the toy model never saw: use it with --model toy)")
    parser.add_argument("--photo", default="astronaut", help="the photograph of the photo clip (qvedit.io.photo_clip)")
    parser.add_argument("--length", type=whole(3, 10_000), default=16,
                        help="frames of each clip, frame 0 included (frames 2.. are judged; default %(default)s)")
    parser.add_argument("--steps", type=whole(1, 1000), default=8, help="num_inference_steps")
    parser.add_argument("--strengths", type=number(0, 1), nargs="+", default=list(STRENGTHS),
                        help="start.strength values, in (0, 1]")
    parser.add_argument("--seeds", type=whole(0, 2**63 - 1), nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=folder, default=Path("runs/temporal-bench"))
    parser.add_argument("--jobs", type=whole(1, 64), default=1, help="clips run at once (after a one-frame warm-up)")
    parser.add_argument("--reuse", action="store_true", help="keep the sweeps already finished in --out")
    return parser


def main(argv=None) -> int:
    """The benchmark; a bad argument, or a sweep that fails, is one ``qvedit: error:`` line (exit 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if any(strength == 0 for strength in args.strengths):
        parser.error("argument --strengths: 0 is out of range: give start.strength values in (0, 1]")
    return run_tool(lambda: measure(args))


def measure(args: argparse.Namespace) -> int:
    overrides = args.overrides
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.jobs > 1:  # one frame first, alone: it builds the model and the clips in the cache
        warm_up = [sys.executable, "-m", "qvedit", "experiment=tiny_cpu", f"model={args.model}", "io=demo_long",
                   f"io.length={args.length}", "max_frames=1", *overrides, f"hydra.run.dir={out / 'warm-up'}"]
        result = subprocess.run(warm_up, cwd=REPO, capture_output=True, text=True)
        if result.returncode != 0:
            said = result.stderr.strip().splitlines()[-1:] or ["no message"]
            refuse(f"the one-frame warm-up failed ({said[-1]})")
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        sweeps = dict(zip(args.clips, pool.map(lambda clip: run_sweep(clip, args, out), args.clips)))
    jobs = pd.DataFrame([row for clip in args.clips for row in job_rows(clip, sweeps[clip])])
    table = jobs.groupby(["clip", "ttlg", "noise", "strength"], sort=False).median(numeric_only=True).reset_index()
    table = table.drop(columns="seed").sort_values(["clip", "ttlg", "noise", "strength"],
                                                   ascending=[True, False, True, False])
    fresh = table[(table["noise"] == "independent") & (table["strength"] == 1.0)].set_index(["clip", "ttlg"])
    for column in ("warp_error", "edge_loss"):
        table[f"{column} vs fresh"] = [row[column] / fresh.loc[(row["clip"], row["ttlg"]), column]
                                       for _, row in table.iterrows()]
    table.insert(4, "preset", [PRESETS.get((n, s), "") for n, s in zip(table["noise"], table["strength"])])
    write_table(table, args, out)
    plot(table, out / "temporal.png")
    return 0


def write_table(table, args, out: Path) -> None:
    shown = ["clip", "ttlg", "noise", "strength", "preset", "warp_error", "warp_error vs fresh", "warp_error (1..)",
             "lpips_to_prev", "edge_loss", "edge_loss vs fresh", "gram_loss", "color_drift", "seconds"]
    load = os.getloadavg()[0]
    lines = [f"model={args.model}, CPU ({os.cpu_count()} cores, load {load:.1f} at the end), {args.length} frames, "
             f"{args.steps} steps, seeds {args.seeds}, {time.strftime('%Y-%m-%d')}; median over seeds of the clip means "
             f"over frames 2..{args.length - 1}{'; overrides: ' + ' '.join(args.overrides) if args.overrides else ''}",
             "", "| " + " | ".join(shown) + " |", "|" + " --- |" * len(shown)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in shown)
                     + " |")
    (out / "temporal.md").write_text("\n".join(lines) + "\n")
    (out / "temporal.json").write_text(json.dumps(table.to_dict(orient="records"), indent=1))
    print("\n".join(lines))


def plot(table, path: Path) -> None:
    import matplotlib.pyplot as plt

    from qvedit.core.files import write_figure_png

    clips = list(dict.fromkeys(table["clip"]))
    figure, axes = plt.subplots(1, len(clips), figsize=(5 * len(clips) + 2.6, 4.6), layout="constrained",
                                squeeze=False)
    markers = {"independent": "o", "shared": "s", "warped": "^"}
    for axis, clip in zip(axes[0], clips):
        for (ttlg, noise), group in table[table["clip"] == clip].groupby(["ttlg", "noise"], sort=False):
            group = group.sort_values("strength")
            line, = axis.plot(group.seconds, group.warp_error, marker=markers[noise], linestyle="-" if ttlg != "off"
                              else "--", label=f"{noise}, ttlg={ttlg}")
            for row in group.itertuples():
                axis.annotate(f"{row.strength:g}", (row.seconds, row.warp_error), fontsize=7,
                              xytext=(3, 3), textcoords="offset points", color=line.get_color())
        axis.set_title(re.sub("_", " ", clip) + " (labels: start.strength)", fontsize=10)
        axis.set_xlabel("seconds a frame (median over seeds)")
        axis.set_ylabel("warp error, frames 2.. (median over seeds)")
        axis.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", fontsize=8, title="start.noise, ttlg", title_fontsize=8)
    write_figure_png(figure, path, lay_out=False)



def refuse(problem: str) -> None:
    raise QveditError(problem)


if __name__ == "__main__":
    sys.exit(main())
