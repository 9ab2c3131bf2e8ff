"""What the toy edit model does on clips it never saw, against the random tiny model: CPU, held-out shapes clips.

    python benchmarks/toy_model.py --out runs/toy-bench              # 6 held-out clips of 9 frames, seeds 0-2
    python benchmarks/toy_model.py --clips 2 --seeds 0 --out DIR      # a quick look

For each held-out clip (``io=shapes io.clip_seed=1000000 + k``, seeds the toy model was never trained on) and each
generation seed, the clip is made with ``model=toy`` and with ``model=tiny`` (random weights), guidance off, and
scored against the clip's ground truth (its source frames): the spec's edge loss (Sobel, L1, against the ground
truth frame's edges: metrics.csv's ``edge_loss``), the PSNR of frame 1 (made from frame 0 and edge map 1 alone) and
of the last frame. Then the guidance sweep ``ttlg=off,edge,edge_gram`` on the toy model is judged by the
acceptance checker (the spec's section 6.3 thresholds, median of the seeds). Writes ``toy_model.md`` and
``toy_model.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's qvedit, as the runs (python -m qvedit from REPO) use

from qvedit.core.errors import QveditError  # noqa: E402
from qvedit.core.tool_parser import OneLineParser, child_error, folder, run_tool, whole  # noqa: E402
HELD_OUT = 1_000_000  # qvedit.settings.io.SHAPES_HELD_OUT_SEED
MODELS = {"toy": "experiment=toy_cpu", "tiny": "experiment=tiny_cpu"}


def qvedit(*overrides: str) -> None:
    result = subprocess.run([sys.executable, "-m", "qvedit", *overrides], cwd=REPO, capture_output=True, text=True)
    if result.returncode not in (0, 1):  # 1: a sweep whose verdict is FAIL
        raise QveditError(f"python -m qvedit {' '.join(overrides)} failed: {child_error(result.stderr)}")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def held_out_scores(model: str, clip_seed: int, seed: int, args, out: Path) -> dict:
    import pandas as pd
    from PIL import Image

    from qvedit.core.files import cache_dir

    run = out / f"{model}-clip{clip_seed}-seed{seed}"
    if not (run / "metrics.csv").is_file():
        qvedit(MODELS[model], "io=shapes", f"io.clip_seed={clip_seed}", f"io.length={args.length}", f"seed={seed}",
               f"hydra.run.dir={run}")
    metrics = pd.read_csv(run / "metrics.csv")
    truth = cache_dir() / f"shapes-{clip_seed}-{args.length}" / "source"
    last = args.length - 1

    def frame(folder: Path, index: int) -> np.ndarray:
        return np.asarray(Image.open(folder / f"{index:05d}.png").convert("RGB"))

    return {"model": model, "clip": clip_seed, "seed": seed, "edge_loss": float(metrics["edge_loss"].mean()),
            "psnr_frame_1": psnr(frame(run / "frames", 1), frame(truth, 1)),
            "psnr_last_frame": psnr(frame(run / "frames", last), frame(truth, last)),
            "seconds_per_frame": float(metrics["seconds"].median())}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="benchmarks/toy_model.py", description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=whole(1, 1000), default=6, help="held-out clips (seeds 1000000, 1000001, ...)")
    parser.add_argument("--length", type=whole(2, 10_000), default=9,
                        help="frames of each clip, frame 0 included (default %(default)s)")
    parser.add_argument("--seeds", type=whole(0, 2**63 - 1), nargs="+", default=[0, 1, 2], help="generation seeds")
    parser.add_argument("--out", type=folder, default=Path("runs/toy-bench"))
    return parser


def main(argv=None) -> int:
    """The benchmark; a bad argument, or a run that fails, is one ``qvedit: error:`` line (exit 2)."""
    args = build_parser().parse_args(argv)
    return run_tool(lambda: measure(args))


def measure(args: argparse.Namespace) -> int:
    from qvedit.report.acceptance import judge_sweep

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = [held_out_scores(model, HELD_OUT + k, seed, args, out) for model in MODELS for k in range(args.clips)
            for seed in args.seeds]
    summary = {}
    for model in MODELS:
        mine = [row for row in rows if row["model"] == model]
        summary[model] = {key: float(np.median([row[key] for row in mine])) for key in
                          ("edge_loss", "psnr_frame_1", "psnr_last_frame", "seconds_per_frame")}
    sweep = out / "guidance"
    if not (sweep / "acceptance.md").is_file():
        qvedit("-m", MODELS["toy"], "io=shapes", f"io.clip_seed={HELD_OUT}", f"io.length={args.length}",
               "ttlg=off,edge,edge_gram", f"seed={','.join(map(str, args.seeds))}", f"hydra.sweep.dir={sweep}")
    verdict = judge_sweep(sweep)
    guidance = {comparison.label: {c.name: (c.value, c.passed) for c in comparison.criteria}
                for comparison in verdict.comparisons}
    toy, tiny = summary["toy"], summary["tiny"]
    lines = [f"toy vs tiny (random weights), CPU ({os.cpu_count()} cores, load average "
             f"{os.getloadavg()[0]:.1f}), {time.strftime('%Y-%m-%d')}: {args.clips} held-out shapes clips of "
             f"{args.length} frames x seeds {args.seeds}, 8 steps, guidance off; medians", "",
             "| model | edge loss | PSNR frame 1 (dB) | PSNR last frame (dB) | s / frame |", "| --- | --- | --- | --- | --- |"]
    for model, found in summary.items():
        lines.append(f"| {model} | {found['edge_loss']:.4f} | {found['psnr_frame_1']:.2f} | "
                     f"{found['psnr_last_frame']:.2f} | {found['seconds_per_frame']:.3f} |")
    lines += ["", f"edge loss toy / tiny: {toy['edge_loss'] / tiny['edge_loss']:.3f} (target at most 0.5); PSNR of "
              f"frame 1: {toy['psnr_frame_1']:.2f} dB (target at least 20)", "",
              f"guidance on the toy model (held-out clip {HELD_OUT}, acceptance checker, median of seeds):"]
    for label, criteria in guidance.items():
        lines.append(f"- ttlg {label} vs off: " + "; ".join(
            f"{name} {value:.3f} {'pass' if passed else 'FAIL' if passed is False else 'n/a'}"
            for name, (value, passed) in criteria.items() if value is not None))
    lines.append(f"\n{time.perf_counter() - started:.0f} s in all")
    (out / "toy_model.md").write_text("\n".join(lines) + "\n")
    (out / "toy_model.json").write_text(json.dumps({"rows": rows, "summary": summary, "guidance": guidance}, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
