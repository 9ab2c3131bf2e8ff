"""The first frame of a compiled preset in a first and in a second process: what keeping torch.compile's kernels in
qvedit's cache folder saves (needs CUDA for the default random_full model).

    python benchmarks/compile_cache.py --out compile_cache.json                          # perf=fp8, 1024², random_full
    python benchmarks/compile_cache.py --preset fast --size 512 --out fast.json
    python benchmarks/compile_cache.py --model tiny --device cpu --preset fast --size 64 --out cpu.json   # a CPU proof

Runs ``python -m qvedit model=<model> perf=<preset> ...`` --processes times (2) one after another, each making
frame 1 of a random --size² clip (--steps steps, true CFG off, ``ttlg=off``, ``metrics=none``) with
``QVEDIT_CACHE`` set to one fresh folder (--cache to give one) and PyTorch's own cache variables unset, so the
compile caches go to ``<QVEDIT_CACHE>/torch-compile`` (``qvedit.models.perf.use_compile_cache``). The first
process compiles and fills it; the later ones load from it. Per process: its wall seconds (Python start, model
build, the frame), the first frame's own seconds (``metrics.csv``), and the size of the compile cache after it.
Writes --out (JSON) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's qvedit, the one its python -m qvedit commands run

from qvedit.cli.bench import make_inputs  # noqa: E402
from qvedit.core.errors import QveditError  # noqa: E402
from qvedit.core.tool_parser import OneLineParser, child_error, file, folder, run_tool, whole  # noqa: E402


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def one_process(args, cache: Path, clip: tuple[Path, Path], run_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    env.update(QVEDIT_CACHE=str(cache), PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "qvedit", f"model={args.model}", f"perf={args.preset}", f"device={args.device}",
               f"dtype={args.dtype}", f"io.init_frame={clip[0]}", f"io.edge_frames_dir={clip[1]}", "max_frames=2",
               f"num_inference_steps={args.steps}", "true_cfg_scale=1.0", "metrics=none", f"hydra.run.dir={run_dir}"]
    if args.model == "tiny":
        command.append("condition_area=output")  # 1 MP condition images take minutes a frame on a CPU
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    row = {"process_s": round(wall, 2), "returncode": result.returncode,
           "compile_cache_mib": round(folder_bytes(cache / "torch-compile") / 2**20, 1)}
    if result.returncode != 0:
        row["error"] = child_error(result.stderr)
        return row
    with open(run_dir / "metrics.csv", newline="") as handle:
        row["first_frame_s"] = float(next(csv.DictReader(handle))["seconds"])
    return row


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="benchmarks/compile_cache.py", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random_full", choices=("random_full", "tiny"))
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (with --model tiny)")
    parser.add_argument("--dtype", default=None, choices=("bf16", "fp16", "fp32"),
                        help="default: bf16 (random_full), fp32 (tiny)")
    parser.add_argument("--preset", default="fp8", choices=("fp8", "fast"))
    parser.add_argument("--size", type=whole(16, 4096, multiple=16), default=1024, help="frame side, a multiple of 16")
    parser.add_argument("--steps", type=whole(1, 1000), default=4)
    parser.add_argument("--processes", type=whole(1, 16), default=2)
    parser.add_argument("--cache", type=folder, default=None,
                        help="QVEDIT_CACHE for every process (default: a fresh folder)")
    parser.add_argument("--out", type=file, default=Path("compile_cache.json"))
    return parser


def main(argv=None) -> int:
    """The benchmark; a bad argument is one ``qvedit: error:`` line (exit 2) before any process starts."""
    args = build_parser().parse_args(argv)
    return run_tool(lambda: measure(args))


def measure(args: argparse.Namespace) -> int:
    args.dtype = args.dtype or ("fp32" if args.model == "tiny" else "bf16")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise QveditError(f"--device {args.device} but no CUDA GPU is visible: this benchmark times the GPU's "
                              "compile cache; --model tiny --device cpu --preset fast --size 64 tries it on the CPU")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = Path(args.cache) if args.cache else work / "qvedit-cache"
        clip = make_inputs(args.size, work)
        for number in range(1, args.processes + 1):
            rows.append({"process": number, **one_process(args, cache, clip, work / f"run{number}")})
            print(json.dumps(rows[-1]), flush=True)
    report = {"model": args.model, "preset": args.preset, "size": args.size, "steps": args.steps,
              "device": args.device, "date": time.strftime("%Y-%m-%d"), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    lines = [f"perf={args.preset}, model={args.model}, {args.size}², {args.steps} steps, {args.device}, "
             f"{report['date']}",
             "", "| process | first frame s | process s | compile cache MiB |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['process']} | {r.get('first_frame_s', r.get('error'))} | {r['process_s']} | "
              f"{r['compile_cache_mib']} |" for r in rows]
    print("\n".join(lines))
    return 0 if all(r["returncode"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
