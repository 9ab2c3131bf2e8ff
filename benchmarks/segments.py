"""Keyframes then segments (``schedule=segments``): N workers against 1, and the drift of segments against a chain.

    python benchmarks/segments.py --out runs/segments-bench              # CPU: io=demo_long (48 frames), tiny model
    python benchmarks/segments.py --out DIR model=toy                    # extra Hydra overrides go to every run
    python benchmarks/segments.py --out DIR --meet 0 1 2 4               # which schedule.meet_frames to run
    python benchmarks/segments.py --gpu --workers 1 2 4 --out DIR        # 64 frames of random_full at 1024², 8 steps

Every run is one ``python -m qvedit`` command with its own run folder under --out, ``OMP_NUM_THREADS`` set to
--threads (each Ray worker of ``device=cpu`` runs one thread, so ``--threads 1`` compares like with like and
gives the same bytes). Measured per run: the command's wall time, the frame stage's wall time (from the first
frame begun to the last frame done, read from its ``main.log``: Ray's start and the workers' model loads left out)
and the CPU time of the command and every process it started (Ray's workers too: ``TreeCPU``). The CPU runs:

- ``chain``: ``schedule=chain``, the drift reference;
- ``segments meet=M``: ``schedule=segments`` with ``schedule.meet_frames=M``, one worker, for each --meet;
- ``segments workers=N``: the default meet, N Ray workers, for each --workers above 1; its frames are compared
  byte for byte with the one-worker run's.

Writes ``segments.json`` and ``segments.md``: the speed table (wall, frame stage, their ratios to one worker, CPU
seconds, the load average before and after, frames identical) and the drift table (last-quarter ``color_drift``,
``edge_offset_px`` and ``lpips_to_init``; ``warp_error`` inside segments and at the seams, the keyframes' rows; for
the chain, at the same frames). ``--gpu``: ``model=random_full experiment=lightning model.loras=[]`` (random
weights, timing only), ``ttlg=off metrics=none``, a 64-frame synthetic clip at 1024², one GPU per worker; speed
only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's qvedit, as the runs (python -m qvedit from REPO) use

from qvedit.core.errors import QveditError  # noqa: E402
from qvedit.core.tool_parser import OneLineParser, child_error, folder, run_tool, whole  # noqa: E402
LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")
FRAME_DONE = re.compile(r"frame (\d+) (?:of \d+ )?done in ([\d.]+) s")
FRAME_CPU = re.compile(r"frame (\d+): ([\d.]+) s, ([\d.]+) s CPU, on (\S+)")  # the driver's debug line
GPU_OVERRIDES = ["model=random_full", "experiment=lightning", "model.loras=[]", "device=cuda", "ttlg=off",
                 "metrics=none"]


def synthetic_clip(folder: Path, length: int, size: int) -> list[str]:
    """io=demo_long's scene at size x size, ``length`` frames, as a frame folder; returns the io overrides."""
    from PIL import Image

    from qvedit.core.images import to_tensor
    from qvedit.guidance.edges import edges_to_uint8, sobel_edges
    from qvedit.io.demo import long_demo_frame

    if not (folder / "source" / f"{length - 1:05d}.png").is_file():
        for sub in ("edges", "source"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        for t in range(length):
            frame = long_demo_frame(t, length, (size, size))
            Image.fromarray(frame).save(folder / "source" / f"{t:05d}.png")
            if t:
                Image.fromarray(edges_to_uint8(sobel_edges(to_tensor(frame))[0, 0])).save(
                    folder / "edges" / f"{t:05d}.png")
    return ["io=frames", f"io.init_frame={folder / 'source' / '00000.png'}", f"io.edge_frames_dir={folder / 'edges'}",
            f"io.source_frames_dir={folder / 'source'}"]


def frame_stage_s(main_log: Path) -> float:
    """Seconds from the first frame begun to the last frame done, from the run's log lines."""
    stamps = []
    for line in main_log.read_text().splitlines():
        done, stamp = FRAME_DONE.search(line), LOG_TIME.match(line)
        if done and stamp:
            at = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            stamps.append((at, float(done.group(2))))
    if not stamps:
        return float("nan")
    return stamps[-1][0] - (stamps[0][0] - stamps[0][1])


class TreeCPU:
    """CPU seconds of a process and everything it starts (Ray's raylet and workers, which are not reaped into this
    process's ``RUSAGE_CHILDREN``), read from ``/proc`` every ``every`` seconds while it runs (the last half-second
    of each process is missed)."""

    def __init__(self, root: int, every: float = 0.5):
        self.root, self.every, self.seen = root, every, {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self.stop.wait(self.every):
            parents, times = {}, {}
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    fields = stat.read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                pid = int(stat.parent.name)
                parents[pid], times[pid] = int(fields[1]), (int(fields[11]) + int(fields[12])) / tick
            tree, grew = {self.root}, True
            while grew:
                grown = tree | {pid for pid, parent in parents.items() if parent in tree}
                grew, tree = grown != tree, grown
            self.seen.update({pid: times[pid] for pid in tree if pid in times})

    def total(self) -> float:
        self.stop.set()
        self.thread.join()
        return sum(self.seen.values())


def frame_cpu(main_log: Path) -> dict[str, float]:
    """CPU seconds each worker spent on its frames (the driver's debug lines; segments only)."""
    workers: dict[str, float] = {}
    for found in FRAME_CPU.finditer(main_log.read_text()):
        workers[found.group(4)] = workers.get(found.group(4), 0.0) + float(found.group(3))
    return workers


def run(name: str, overrides: list[str], out: Path, threads: int, reuse: bool) -> dict:
    """One ``python -m qvedit`` command into ``out/name``; its times (kept from an earlier run with ``reuse``)."""
    folder = out / re.sub(r"[^A-Za-z0-9_.-]+", "_", name.replace("=", ""))
    record = folder / "bench_run.json"
    if reuse and record.is_file():
        print(f"{name}: kept from {folder}", flush=True)
        return json.loads(record.read_text())
    command = [sys.executable, "-m", "qvedit", *overrides, "hydra.verbose=qvedit.run.schedule.driver",
               f"hydra.run.dir={folder}"]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    cpu = TreeCPU(process.pid)
    _, stderr = process.communicate()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise QveditError(f"{name} failed (exit {process.returncode}): {child_error(stderr)}")
    row = {"name": name, "overrides": overrides, "folder": str(folder), "wall_s": round(wall, 1),
           "frame_stage_s": round(frame_stage_s(folder / "main.log"), 1), "cpu_s": round(cpu.total(), 1),
           "frame_cpu_s": {w: round(t, 1) for w, t in frame_cpu(folder / "main.log").items()},
           "load_before": round(load, 1), "load_after": round(os.getloadavg()[0], 1)}
    record.write_text(json.dumps(row, indent=2))
    print(f"{name}: {row['wall_s']} s wall, frames {row['frame_stage_s']} s, {row['cpu_s']} CPU s", flush=True)
    return row


def same_frames(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in (a / "frames").glob("*.png"))
    return names == sorted(p.name for p in (b / "frames").glob("*.png")) and all(
        (a / "frames" / n).read_bytes() == (b / "frames" / n).read_bytes() for n in names)


def drift_row(name: str, folder: Path, keyframes: list[int]) -> dict:
    """Last-quarter drift figures of a run, and its warp error at the keyframes (the seams) and elsewhere."""
    import pandas as pd

    from qvedit.scoring.drift import clip_trends

    table = pd.read_csv(folder / "metrics.csv")
    trends = clip_trends(table)
    row = {"name": name, **{f"{c} last quarter": round(trends[c].last_quarter, 4) for c in
                            ("color_drift", "edge_offset_px", "lpips_to_init") if c in trends}}
    if "edge_offset_px" in table:  # phase correlation on a noise-like frame now and then says hundreds of pixels
        last = table["edge_offset_px"].iloc[-max(1, len(table) // 4):]
        row["edge_offset_px last-quarter median"] = round(float(last.median()), 4)
    if "warp_error" in table:
        seams = table["frame"].isin(keyframes)
        row["warp_error inside"] = round(float(table.loc[~seams, "warp_error"].mean()), 5)
        row["warp_error at seams"] = round(float(table.loc[seams, "warp_error"].mean()), 5)
    if "hops" in table:
        row["max hops"] = int(table["hops"].max())
    return row


def write(out: Path, speed: list[dict], drift: list[dict], setup: str) -> None:
    (out / "segments.json").write_text(json.dumps({"setup": setup, "speed": speed, "drift": drift}, indent=2))
    lines = [f"# schedule=segments ({setup})", "", "## Speed", "",
             "| run | wall s | vs 1 worker | frame stage s | vs 1 worker | CPU s, all processes | frames' CPU s per "
             "worker | load before / after | frames = 1 worker's |", "| --- | --- | --- | --- | --- | --- | --- | --- "
             "| --- |"]
    base = speed[0] if speed else None
    for row in speed:
        per_worker = " + ".join(f"{t:g}" for t in row.get("frame_cpu_s", {}).values()) or "-"
        lines.append(f"| {row['name']} | {row['wall_s']} | {base['wall_s'] / row['wall_s']:.2f}x | "
                     f"{row['frame_stage_s']} | {base['frame_stage_s'] / row['frame_stage_s']:.2f}x | {row['cpu_s']} | "
                     f"{per_worker} | {row.get('load_before', '-')} / {row.get('load_after', '-')} | "
                     f"{row.get('same_frames', '-')} |")
    best = {}
    for row in speed:
        best.setdefault(row["workers"], []).append(row)
    for workers, rows in sorted(best.items()):
        if workers > 1 and len(best[1]):
            wall = min(r["wall_s"] for r in best[1]) / min(r["wall_s"] for r in rows)
            stage = min(r["frame_stage_s"] for r in best[1]) / min(r["frame_stage_s"] for r in rows)
            lines.append(f"\nBest of {len(rows)} runs each: {workers} workers {wall:.2f}x one worker's wall time, "
                         f"{stage:.2f}x its frame stage.")
            busiest = [max(r["frame_cpu_s"].values()) for r in rows if r.get("frame_cpu_s")]
            single = [sum(r["frame_cpu_s"].values()) for r in best[1] if r.get("frame_cpu_s")]
            if busiest and single:
                lines.append(f"By CPU time (what a busy machine does not change much): one worker's frames took "
                             f"{min(single):.1f} CPU s, the busiest of {workers} workers' {min(busiest):.1f} CPU s: "
                             f"{min(single) / min(busiest):.2f}x, the frame stage's speed-up on {workers} idle cores.")
    if drift:
        columns = [c for c in drift[0] if c != "name"]
        lines += ["", "## Drift (last quarter of the frames) and warp error inside segments / at the seams", "",
                  "| run | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 1)]
        lines += ["| " + " | ".join([row["name"], *(str(row.get(c, "-")) for c in columns)]) + " |" for row in drift]
    (out / "segments.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="benchmarks/segments.py", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides added to every run (model=toy ...)")
    parser.add_argument("--out", type=folder, default=Path("runs/segments-bench"),
                        help="the folder of the runs and of segments.md/.json (default %(default)s)")
    parser.add_argument("--length", type=whole(4, 10_000), default=None,
                        help="frames (default 48 on the CPU, 64 with --gpu)")
    parser.add_argument("--keyframe-every", type=whole(2, 10_000), default=16,
                        help="schedule.keyframe_every (default %(default)s)")
    parser.add_argument("--meet", type=whole(0, 64), nargs="*", default=None, help="schedule.meet_frames values "
                        "to run (drift); the default's run is the one-worker speed run")
    parser.add_argument("--workers", type=whole(1, 64), nargs="+", default=[1, 2],
                        help="Ray workers of the speed runs (default 1 2)")
    parser.add_argument("--ttlg", default="edge_gram_flow", help="the guidance preset of the CPU runs")
    parser.add_argument("--threads", type=whole(1, 256), default=1, help="OMP_NUM_THREADS of every run")
    parser.add_argument("--gpu", action="store_true", help="the GPU benchmark: random_full, 1024², Lightning 8 steps")
    parser.add_argument("--size", type=whole(16, 8192, multiple=16), default=1024,
                        help="--gpu: the clip's side in pixels")
    parser.add_argument("--repeat", type=whole(1, 100), default=1,
                        help="run the speed runs this many times, alternating")
    parser.add_argument("--no-chain", action="store_true", help="leave out the chain run")
    parser.add_argument("--reuse", action="store_true", help="keep the runs already finished in --out")
    return parser


def main(argv=None) -> int:
    """The benchmark; a bad argument, or a run that fails, is one ``qvedit: error:`` line (exit 2)."""
    args = build_parser().parse_args(argv)
    return run_tool(lambda: measure(args))


def measure(args: argparse.Namespace) -> int:
    from qvedit.settings.schedule import MEET_FRAMES

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    length = args.length or (64 if args.gpu else 48)
    if args.gpu:
        clip = synthetic_clip(out / "clip", length, args.size) + GPU_OVERRIDES
        setup = f"random_full (random weights, timing only), {args.size}², Lightning 8 steps, {length} frames"
    else:
        clip = ["experiment=tiny_cpu", "io=demo_long", f"io.length={length}", f"ttlg={args.ttlg}"]
        setup = f"tiny model, CPU, io=demo_long {length} frames, ttlg={args.ttlg}, OMP_NUM_THREADS={args.threads}"
    clip += args.overrides
    segments = ["schedule=segments", f"schedule.keyframe_every={args.keyframe_every}"]
    keyframes = list(range(args.keyframe_every, length, args.keyframe_every))
    speed, drift = [], []
    meets = ([] if args.gpu else (args.meet if args.meet is not None else [0, MEET_FRAMES]))
    one = None  # the speed runs first: they are the ones a busy machine spoils
    for attempt in range(args.repeat):  # 1, 2, 1, 2 ...: a load that comes and goes falls on both
        for workers in sorted(set(args.workers) | {1}):
            name = f"segments workers={workers}" + (f" #{attempt + 1}" if attempt else "")
            row = run(name, clip + segments + [f"schedule.workers={workers}"], out, args.threads, args.reuse)
            row["workers"] = workers
            if one is None:
                one = row
            else:
                row["same_frames"] = same_frames(Path(one["folder"]), Path(row["folder"]))
            speed.append(row)
    if not args.gpu and not args.no_chain:
        chain = run("chain", clip, out, args.threads, args.reuse)
        drift.append(drift_row("chain", Path(chain["folder"]), keyframes))
    if not args.gpu:
        drift.append(drift_row(f"segments meet={MEET_FRAMES}", Path(one["folder"]), keyframes))
        for meet in meets:
            if meet != MEET_FRAMES:
                row = run(f"segments meet={meet}", clip + segments + [f"schedule.meet_frames={meet}"], out,
                          args.threads, args.reuse)
                drift.append(drift_row(f"segments meet={meet}", Path(row["folder"]), keyframes))
    load = os.getloadavg()
    write(out, speed, drift, f"{setup}; {os.cpu_count()} cores, load average {load[0]:.1f} at the end, "
                             f"{time.strftime('%Y-%m-%d %H:%M')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
