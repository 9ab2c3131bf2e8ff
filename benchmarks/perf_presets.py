"""The perf presets side by side on one GPU: speed, memory, and how far each moves the frame (needs CUDA).

    python benchmarks/perf_presets.py --out perf_presets.json                       # everything, both models
    python benchmarks/perf_presets.py --models tiny --out tiny.json                 # a minute or two
    python benchmarks/perf_presets.py --models random_full --presets default vram24 --out vram24.json

For each model (``tiny`` and ``random_full``, both in bf16; random_full is the full 2509 architecture with
random weights: timing and memory only) and each preset (``default``, ``fp8``, ``vram24``; also ``fast``,
``fp8_eager``, ``vram24_fp8storage`` on request), the pipeline is loaded afresh with that preset and makes
frame 1 of a random --size² clip with a fixed seed, once per --ttlg setting (``off``, ``edge_gram``), through
qvedit's own frame loop (``qvedit.bench.run_variant``), after one 2-step warm-up frame (compile, the
offload's block order). Each row: seconds for the frame, transformer seconds per step, peak GPU memory
(``max_memory_allocated`` and ``max_memory_reserved``), and the frame's difference to the ``default``
preset's frame (same model, same ttlg) in 8-bit levels, max and mean over pixels and channels. The default
preset's guided frame is made twice (``default (again)``): guidance's backward pass is not deterministic on
a GPU, so that row is the noise floor for the guided differences; with ``ttlg=off`` the transformer's
arithmetic is the same under ``vram24``, so its difference should be 0.

Every run is in try/except: an error is printed and the next one runs. Results are written to --out (JSON)
and beside it as .md after every row; the markdown table is printed at the end. Without torchao the fp8
rows are skipped with one line saying so.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from qvedit.core.cpu_threads import use_cpu_threads  # noqa: E402

use_cpu_threads()  # before torch is imported (its CPU dry run on a busy machine)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from qvedit.core.tool_parser import OneLineParser, file, folder, run_tool, whole  # noqa: E402

PRESETS = {  # the perf/*.yaml presets as PerfSettings keywords
    "default": {},
    "fast": {"compile": True},
    "fp8": {"quantize": "fp8", "compile": True},
    "fp8_eager": {"quantize": "fp8"},
    "vram24": {"group_offload": True},
    "vram24_fp8storage": {"group_offload": True, "layerwise_fp8_storage": True},
}
BUDGET_GIB = 24


def torchao_line() -> str:
    try:
        import torchao
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_  # noqa: F401
    except ImportError as err:
        return (f"torchao is not usable here ({err}): the fp8 rows are skipped; install it with "
                "pip install 'qvedit[fp8]' or the wheel you carried")
    return f"torchao {torchao.__version__}"


def difference(frame: Path, reference: Path) -> dict:
    a = np.asarray(Image.open(frame).convert("RGB"), np.int16)
    b = np.asarray(Image.open(reference).convert("RGB"), np.int16)
    if a.shape != b.shape:
        return {"levels_max": None, "levels_mean": None}
    d = np.abs(a - b)
    return {"levels_max": int(d.max()), "levels_mean": round(float(d.mean()), 4)}


def markdown(report: dict) -> str:
    lines = [f"{report['device']} (compute capability {report['capability']}), torch {report['torch']}, diffusers "
             f"{report['diffusers']}, {report['torchao']}, {report['date']}; {report['size']}², {report['steps']} "
             f"steps, true CFG 4, edge_gram guides the last {report['last_steps']} steps; random_full: random weights, "
             "timing only", "",
             "| model | preset | ttlg | s/frame | transformer s/step | peak GiB (allocated) | peak GiB (reserved) "
             f"| within {BUDGET_GIB} GiB | vs default: max levels | mean levels |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['preset']} | {r['ttlg']} | error: {r['error'][:120]} | | | | | | |")
            continue
        gpu = r["peak_reserved_gib"] is not None
        within = ("yes" if r["peak_reserved_gib"] <= BUDGET_GIB else "no") if gpu else "-"
        peaks = f"{r['peak_gib']:.2f} | {r['peak_reserved_gib']:.2f}" if gpu else "- | -"
        lines.append(f"| {r['model']} | {r['preset']} | {r['ttlg']} | {r['seconds_per_frame']:.2f} | "
                     f"{r['transformer_s_per_step']:.3f} | {peaks} | {within} "
                     f"| {'-' if r.get('levels_max') is None else r['levels_max']} "
                     f"| {'-' if r.get('levels_mean') is None else r['levels_mean']} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="benchmarks/perf_presets.py", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=("tiny", "random_full"), default=["tiny", "random_full"])
    parser.add_argument("--presets", nargs="+", choices=tuple(PRESETS), default=["default", "fp8", "vram24"])
    parser.add_argument("--ttlg", nargs="+", choices=("off", "edge_gram"), default=["off", "edge_gram"])
    parser.add_argument("--size", type=whole(16, 4096, multiple=16), default=1024, help="frame side, a multiple of 16")
    parser.add_argument("--steps", type=whole(1, 1000), default=50)
    parser.add_argument("--last-steps", type=whole(0, 1000), default=10)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script on the tiny model")
    parser.add_argument("--out", type=file, default=Path("perf_presets.json"),
                        help="JSON file; the .md goes beside it")
    parser.add_argument("--condition-area-output", action="store_true",
                        help="condition images at the frame's size (condition_area=output) instead of the pipeline's 1 MP")
    parser.add_argument("--keep-frames", type=folder, default=None,
                        help="folder to keep the frames in (default: a temporary one)")
    return parser


def main(argv=None) -> int:
    """The benchmark; a bad argument, or no GPU, is one ``qvedit: error:`` line (exit 2) before anything loads."""
    args = build_parser().parse_args(argv)
    return run_tool(lambda: measure(args))


def measure(args: argparse.Namespace) -> int:
    import diffusers

    from qvedit.cli.bench import load_pipeline, run_variant
    from qvedit.core.errors import QveditError
    from qvedit.models.devices import check_device
    from qvedit.models.perf import apply_perf, check_perf
    from qvedit.settings.model import PerfSettings

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise QveditError(f"--device {args.device} but no CUDA GPU is visible: the script measures the presets on a "
                          "GPU (--device cpu: a dry run on the tiny model, where fp8 and vram24 are refused)")
    check_device(args.device)
    ao = torchao_line()
    print(ao, flush=True)
    presets = ["default", *[p for p in args.presets if p != "default"]]  # the reference first
    if "default" not in args.presets:
        print("perf_presets: the default preset is run too, as the reference of the frame differences")
    capability = ".".join(map(str, torch.cuda.get_device_capability(args.device))) if cuda else "-"
    report = {"device": torch.cuda.get_device_name(args.device) if cuda else "CPU", "capability": capability, "torch": torch.__version__,
              "diffusers": diffusers.__version__, "torchao": ao, "date": time.strftime("%Y-%m-%d"), "size": args.size,
              "steps": args.steps, "last_steps": args.last_steps, "rows": []}
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)

    def record(row: dict) -> None:
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
        out.write_text(json.dumps(report, indent=2))
        out.with_suffix(".md").write_text(markdown(report))

    keep = args.keep_frames
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            references: dict[str, Path] = {}
            for preset in presets:
                work = (keep or Path(tmp)) / model / preset
                work.mkdir(parents=True, exist_ok=True)
                perf = PerfSettings(**PRESETS[preset])
                runs = [(t, t) for t in args.ttlg]
                if preset == "default" and "edge_gram" in args.ttlg:
                    runs.append(("edge_gram", "edge_gram (again)"))
                pipe = None
                try:
                    check_perf(perf, args.device, "bf16")
                    started = time.perf_counter()
                    pipe = load_pipeline(model, args.device, "bf16", perf)
                    apply_perf(pipe, perf)
                    load_s = time.perf_counter() - started
                    warm_up = "off_cond_output" if args.condition_area_output else "off"
                    run_variant(pipe, warm_up, args.size, 2, 0, work)  # compile; the offload learns the block order
                except Exception as err:  # noqa: BLE001 - one preset's failure must not end the run
                    kind = "refused" if isinstance(err, QveditError) else type(err).__name__
                    print(f"perf_presets: {model} {preset}: {kind}: {err}", flush=True)
                    if not isinstance(err, QveditError):
                        traceback.print_exc()
                    for _, label in runs:
                        record({"model": model, "preset": preset, "ttlg": label, "error": f"{kind}: {err}"})
                    pipe = None
                    gc.collect()
                    continue
                for ttlg, label in runs:
                    try:
                        variant = f"{ttlg}_cond_output" if args.condition_area_output else ttlg
                        row = run_variant(pipe, variant, args.size, args.steps, args.last_steps, work)
                        frame = Path(row.pop("frame"))
                        row = {"model": model, "preset": preset, "ttlg": label, "load_s": round(load_s, 1), **row}
                        if preset == "default" and label == ttlg:
                            references[ttlg] = frame  # the reference itself: no difference column
                        elif ttlg in references:
                            row.update(difference(frame, references[ttlg]))
                        record(row)
                    except Exception as err:  # noqa: BLE001
                        print(f"perf_presets: {model} {preset} ttlg={label}: {type(err).__name__}: {err}", flush=True)
                        traceback.print_exc()
                        record({"model": model, "preset": preset, "ttlg": label, "error": f"{type(err).__name__}: {err}"})
                pipe = None  # the loader frees it before the next preset loads
                gc.collect()
    print()
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
