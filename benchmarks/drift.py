"""Drift and its defences on a 32-frame clip of shapes: every anchor preset, the toy model on the CPU, seeds 0-2.

    python benchmarks/drift.py --out runs/drift-bench            # length 32 (the table of docs/long-clips.md)
    python benchmarks/drift.py --length 24 --seeds 0 --out DIR   # a quick look
    python benchmarks/drift.py --jobs 2 --out DIR                 # two settings at once (OMP_NUM_THREADS=1)
    python benchmarks/drift.py --reuse --out DIR                  # the finished sweeps kept, the rest made

Each setting below is one ``experiment=drift_demo`` sweep (``io=shapes``: a held-out clip of shapes the toy model
never saw, ``ttlg=off`` and ``ttlg=edge_gram`` for each seed), judged over the whole clip. Writes ``drift.md`` (the
table docs/long-clips.md shows: per setting, guided and off, the median over seeds of the last-quarter mean of each
drift column and its growth over the first quarter), ``drift.json`` and ``drift.png`` (median ``color_drift``
per frame of every setting). The toy model (``model=toy``) was trained in this repository on synthetic shapes: the
figures show what each defence does to a model that really edits and drifts, not how the real model's images look.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's qvedit, the one its python -m qvedit commands run

from qvedit.core.errors import QveditError  # noqa: E402
from qvedit.core.tool_parser import OneLineParser, folder, run_step, run_tool, whole  # noqa: E402
from qvedit.io.layout import job_error  # noqa: E402
SETTINGS = {  # name -> overrides of experiment=drift_demo (ttlg and seed are swept)
    "anchor=none": ["anchor=none"],
    "anchor=first_frame": ["anchor=first_frame"],
    "anchor=color (mean_std)": ["anchor=color"],
    "anchor=color anchor.color=histogram": ["anchor=color", "anchor.color=histogram"],
    "anchor=keyframes": ["anchor=keyframes"],
    "ttlg.color_scale=1 (edge_gram_color)": ["anchor=none", "ttlg=off,edge_gram_color"],
}


def finished(sweep: Path, args) -> bool:
    """Every job of the setting's sweep (ttlg off and guided, each seed) made the whole clip, its metrics with it."""
    jobs = [job for job in sweep.glob("*seed=*") if job.is_dir()] if sweep.is_dir() else []
    return len(jobs) == 2 * len(args.seeds) and all(
        job_error(job) is None and (job / "metrics.csv").is_file()
        and len((job / "metrics.csv").read_text().splitlines()) == args.length for job in jobs)


def run_setting(name: str, overrides: list[str], args, out: Path) -> Path:
    sweep = out / re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-")
    command = [sys.executable, "-m", "qvedit", "-m", "experiment=drift_demo", f"io.length={args.length}",
               f"seed={','.join(map(str, args.seeds))}", *overrides, f"hydra.sweep.dir={sweep}"]
    if args.reuse and finished(sweep, args):
        print(f"{name}: kept from {sweep}", flush=True)
        return sweep
    started = time.perf_counter()
    run_step(command, f"{name}: the sweep", log=sweep.with_name(sweep.name + ".log"), cwd=REPO)
    print(f"{name}: {time.perf_counter() - started:.0f} s, {sweep}", flush=True)
    return sweep


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="benchmarks/drift.py", description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=whole(2, 10_000), default=32,
                        help="frames of the clip, frame 0 included (io.length: 2..10000; default %(default)s)")
    parser.add_argument("--seeds", type=whole(0, 2**63 - 1), nargs="+", default=[0, 1, 2],
                        help="the seeds of each setting, each once (default 0 1 2)")
    parser.add_argument("--out", type=folder, default=Path("runs/drift-bench"), help="the folder of the sweeps and "
                        "of drift.md/.json/.png (default %(default)s)")
    parser.add_argument("--jobs", type=whole(1, 64), default=1, help="settings run at once (after a one-frame run "
                        "that makes the clip in the cache; default %(default)s)")
    parser.add_argument("--reuse", action="store_true", help="keep the sweeps already finished in --out (a "
                        "run that stopped, or the table made again) instead of resuming each job")
    return parser


def main(argv=None) -> int:
    """The benchmark; a bad argument, or a sweep that fails, is one ``qvedit: error:`` line (exit 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(set(args.seeds)) < len(args.seeds):
        parser.error(f"argument --seeds: {' '.join(map(str, args.seeds))} names a seed twice: give each once")
    return run_tool(lambda: measure(args))


def measure(args: argparse.Namespace) -> int:
    import pandas as pd

    from qvedit.core.files import write_figure_png
    from qvedit.report.acceptance import judge_sweep
    from qvedit.scoring.drift import median_trends, shown

    out = args.out.resolve()
    if args.jobs > 1:  # one frame first, alone: it makes the clip in the cache
        warm_up = [sys.executable, "-m", "qvedit", "experiment=drift_demo", f"io.length={args.length}",
                   "max_frames=1", f"hydra.run.dir={out / 'warm-up'}"]
        run_step(warm_up, "the warm-up run", log=out / "warm-up.log", cwd=REPO)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        sweeps = dict(zip(SETTINGS, pool.map(lambda name: run_setting(name, SETTINGS[name], args, out), SETTINGS)))
    names = list(SETTINGS)
    rows, curves = [], {}
    for name in names:
        verdict = judge_sweep(sweeps[name])
        if len(verdict.comparisons) != 1:
            raise QveditError(f"{name}: the sweep {sweeps[name]} holds no guided job with its ttlg=off twin "
                              f"({len(verdict.failed_jobs)} failed job(s)): see its acceptance.md")
        (comparison,) = verdict.comparisons
        for guided in (False, True):
            trends = median_trends(comparison.metrics(guided), comparison.frames)
            row = {"setting": name, "ttlg": comparison.label if guided else "off"}
            for column, found in trends.items():
                row[f"{column} last quarter"], row[f"{column} growth"] = found.last_quarter, found.growth
            rows.append(row)
            tables = comparison.metrics(guided).values()
            curves[(name, row["ttlg"])] = pd.concat([t.set_index("frame")["color_drift"] for t in tables],
                                                    axis=1).median(axis=1)
    table = pd.DataFrame(rows)
    none = table[table.setting == "anchor=none"].set_index("ttlg")["color_drift last quarter"]
    table["color_drift vs anchor=none"] = [row["color_drift last quarter"] / none.get(row["ttlg"], none.iloc[-1])
                                           for _, row in table.iterrows()]
    columns = ["setting", "ttlg", "color_drift last quarter", "color_drift vs anchor=none", "color_drift growth",
               "edge_offset_px last quarter", "lpips_to_init last quarter", "gram_loss last quarter"]
    lines = [f"toy model, CPU ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at the end), io=shapes length "
             f"{args.length}, seeds {args.seeds}, {time.strftime('%Y-%m-%d')}: median over seeds; last quarter = mean "
             "over the last quarter of the frames",
             "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(shown(row[c]) if isinstance(row[c], float) else str(row[c])
                                       for c in columns) + " |")
    (out / "drift.md").write_text("\n".join(lines) + "\n")
    (out / "drift.json").write_text(json.dumps(rows, indent=2))
    write_figure_png(curves_figure(curves), out / "drift.png", lay_out=False)
    print("\n".join(lines))
    return 0


def curves_figure(curves: dict):
    """``drift.png``: the median ``color_drift`` per frame of every (setting, ttlg), the legend right of the axes.
    ``curves``: {(setting, ttlg): series over frames}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qvedit.report.drift import honest_y

    figure, axes = plt.subplots(figsize=(10, 4.5), layout="constrained")
    for (name, ttlg), curve in curves.items():
        axes.plot(curve.index, curve.to_numpy(), "-" if ttlg != "off" else "--", label=f"{name}, {ttlg}")
    honest_y(axes, [(c.index.to_numpy(dtype=float), c.to_numpy(dtype=float)) for c in curves.values()])
    axes.set_xlabel("frame")
    axes.set_ylabel("color_drift (median over seeds)")
    figure.legend(loc="outside right upper", fontsize=7)
    return figure


if __name__ == "__main__":
    raise SystemExit(main())
