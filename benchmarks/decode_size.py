"""What a smaller guidance decode (``ttlg.decode_size``) changes in the acceptance numbers.

The demo scene at --size² (9 frames, tiny model on the CPU, random VGG), the acceptance sweep
(``ttlg=off,edge_gram``, seeds 0, 1, 2) once per decode size; prints and writes each sweep's
criteria (value, passed) and seconds per frame::

    python benchmarks/decode_size.py --size 256 --decode-sizes null 128 64 --out decode_size_results

The time a smaller decode saves on the real model is a ``qvedit.bench`` variant (``edge_gram_decode512``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's qvedit

from qvedit.core.tool_parser import OneLineParser, folder, run_step, run_tool, whole  # noqa: E402


def demo_clip(folder: Path, size: int, frames: int = 9) -> list[str]:
    """The demo scene at size x size: init frame, edge frames 1.., source frames; returns io overrides."""
    from qvedit.core.images import to_tensor
    from qvedit.guidance.edges import edges_to_uint8, sobel_edges
    from qvedit.io.demo import demo_frame

    for sub in ("edges", "source"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for t in range(frames):
        rgb = demo_frame(t, (size, size))
        Image.fromarray(rgb).save(folder / "source" / f"{t:05d}.png")
        if t == 0:
            Image.fromarray(rgb).save(folder / "init.png")
        else:
            edges = edges_to_uint8(sobel_edges(to_tensor(rgb))[0, 0])
            Image.fromarray(edges).save(folder / "edges" / f"{t:05d}.png")
    return ["io=frames", f"io.init_frame={folder / 'init.png'}", f"io.edge_frames_dir={folder / 'edges'}",
            f"io.source_frames_dir={folder / 'source'}"]


def sweep(clip: list[str], decode_size: str, out: Path) -> dict:
    folder = out / f"decode_{decode_size}"
    started = time.perf_counter()
    run_step([sys.executable, "-m", "qvedit", "experiment=acceptance_demo", *clip, "ttlg=off,edge_gram",
              f"ttlg.decode_size={decode_size}", f"hydra.sweep.dir={folder}", "-m"],
             f"the sweep with ttlg.decode_size={decode_size}", log=folder.with_name(folder.name + ".log"))
    import pandas as pd

    criteria = pd.read_csv(folder / "acceptance.csv")
    report = {f"{row.comparison}: {row.criterion}": [round(float(row.value), 4), bool(row.passed)]
              for row in criteria.itertuples()}
    seconds = {}
    for job in folder.iterdir():
        csv = job / "metrics.csv"
        if csv.is_file():
            seconds.setdefault("off" if "ttlg=off" in job.name else "edge_gram", []).append(
                pd.read_csv(csv)["seconds"].mean())
    return {"decode_size": decode_size, "wall_s": round(time.perf_counter() - started, 1),
            "seconds_per_frame": {k: round(float(np.median(v)), 3) for k, v in seconds.items()}, "acceptance": report}


def decode_size_value(text: str) -> str:
    """``--decode-sizes``: null (the frame's size) or a long side of 16 or more, as ttlg.decode_size takes it."""
    return text if text == "null" else str(whole(16, 4096)(text))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="benchmarks/decode_size.py", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=whole(16, 1024, multiple=16), default=256,
                        help="frame side of the demo scene, a multiple of 16 (default %(default)s; the tiny model on "
                             "the CPU)")
    parser.add_argument("--decode-sizes", type=decode_size_value, nargs="+", default=["null", "128", "64"],
                        help="ttlg.decode_size values: null or 16..4096 (default null 128 64)")
    parser.add_argument("--out", type=folder, required=True)
    return parser


def main(argv=None) -> int:
    """The benchmark; a bad argument or a sweep that fails is one ``qvedit: error:`` line (exit 2)."""
    args = build_parser().parse_args(argv)
    return run_tool(lambda: measure(args))


def measure(args: argparse.Namespace) -> int:
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    clip = demo_clip(out / "clip", args.size)
    rows = []
    for decode_size in args.decode_sizes:
        rows.append(sweep(clip, decode_size, out))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "acceptance"}), flush=True)
        (out / "decode_size.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
