"""Speed and memory of one frame, side by side with the plain diffusers call, in one process.

    python -m qvedit.bench --model random_full --sizes 1024 --steps 50 --variants plain off edge_gram --out DIR

Variants (each makes frame 1 of a random 2-frame clip on the same inputs and seed):

- ``plain``: ``QwenImageEditPlusPipeline.__call__`` as the design's loop calls it (docs/METHOD.md, section 2);
- ``off``: qvedit with ``ttlg=off``;  ``edge_gram``: qvedit with ``ttlg=edge_gram``, ``last_steps``;
- ``off_cond_output`` / ``edge_gram_cond_output``: the same with ``condition_area=output``;
- ``edge_gram_low_memory``: ``edge_gram`` with ``perf=low_memory`` (text encoder offloaded);
- ``off_fast`` / ``plain_fast``: ``perf=fast`` (regional compile), after one warm-up frame;
- ``off_fp8`` / ``edge_gram_fp8``: ``perf=fp8`` (FP8 matmuls, compiled), ``off_vram24`` / ``edge_gram_vram24``:
  ``perf=vram24`` (group offloading), each on a freshly loaded pipeline, after one warm-up frame;
- ``lightning_off`` / ``lightning_edge_gram``: ``experiment=lightning``'s steps, true CFG off, scheduler
  values and guidance window (read from ``conf/experiment/lightning.yaml``); no LoRA is loaded: a fused
  LoRA leaves the transformer's shapes and cost as they are;
- ``edge_gram_decode512`` / ``lightning_edge_gram_decode512``: guidance decoding x0 at 512 (``ttlg.decode_size=512``);
- ``lightning_edge_gram_tiny`` / ``lightning_edge_gram_tiny_decode512``: guidance decoding with the tiny decoder
  (``ttlg.decoder=tiny``) with random weights (``ttlg.tiny_decoder=random``: timing only), at the frame's size / 512;
- ``*_cache`` (``off_cache``, ``edge_gram_cache``, ``lightning_off_cache``, ``lightning_edge_gram_cache``,
  ``off_cache_fp8``, ``edge_gram_cache_fp8``): the same with ``perf.cache=taylorseer`` (its defaults); each row
  says how much faster it is than the variant without ``_cache`` and how far its frame is, in 8-bit levels;
- ``fastest_off`` / ``fastest_edge_gram``: ``experiment=fastest`` as composed from ``conf/`` (tiny decoder weights
  random), on a freshly loaded pipeline; ``fastest_edge_gram_nocache``: the same without the step cache;
- ``off_first_frame_image`` / ``lightning_off_first_frame_image``: ``anchor.first_frame_image=true``, frame 0
  as a third condition image (a longer transformer pass);
- ``q21_*``: Qwen-Image 2.1 in the same run, on its own pipeline loaded after 2509's (``qvedit.cli.bench21``).
- ``*_s06`` / ``*_s04`` (``off``, ``edge_gram``, ``lightning_*``, ``lightning4_*``, ``q21_*``): warped noise with
  ``start.strength`` 0.6 / 0.4, frame 1 starting part-way down the schedule from frame 0 warped onto it (the flow
  between the random edge map and frame 0's edges, by DIS on the CPU, is part of the time); ``lightning4_off`` /
  ``lightning4_edge_gram``: ``experiment=lightning_4step``'s steps and guidance window (``fastest_*`` take the
  preset's own ``start``).

Per variant: seconds per frame, prompt encoding, transformer time per denoising step, VAE decode, peak GPU memory;
guided variants also the added seconds per guided step. CUDA events time the parts without synchronising inside the
loop. Writes ``bench.json`` and ``bench.md``. With ``model=random_full`` every figure is "random weights, timing only".
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from qvedit.core.cpu_threads import use_cpu_threads

use_cpu_threads()  # before torch is imported: OpenMP reads its settings once
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from qvedit.cli.bench21 import Q21_VARIANTS, q21_preset  # noqa: E402
from qvedit.core.tool_parser import OneLineParser, emit, folder, run_tool, whole  # noqa: E402
from qvedit.models.modifications import modifications_of  # noqa: E402
from qvedit.report.bench import compare_frames, markdown, uncached, write_report  # noqa: E402
from qvedit.settings.run import DTYPE_NAMES  # noqa: E402

VARIANTS = ("plain", "off", "edge_gram", "off_cond_output", "edge_gram_cond_output", "edge_gram_low_memory",
            "plain_fast", "off_fast", "lightning_off", "lightning_edge_gram", "edge_gram_decode512",
            "lightning_edge_gram_decode512", "off_fp8", "edge_gram_fp8", "off_vram24", "edge_gram_vram24",
            "lightning_edge_gram_tiny", "lightning_edge_gram_tiny_decode512", "off_cache", "edge_gram_cache",
            "lightning_off_cache", "lightning_edge_gram_cache", "off_cache_fp8", "edge_gram_cache_fp8", "fastest_off",
            "fastest_edge_gram", "fastest_edge_gram_nocache", "off_first_frame_image",
            "lightning_off_first_frame_image", "off_s06", "off_s04", "edge_gram_s06", "edge_gram_s04",
            "lightning_off_s06", "lightning_off_s04", "lightning_edge_gram_s06", "lightning_edge_gram_s04",
            "lightning4_off", "lightning4_edge_gram", "lightning4_off_s06", "lightning4_off_s04",
            "lightning4_edge_gram_s06", "lightning4_edge_gram_s04", *Q21_VARIANTS)
# Settings applied to the loaded pipeline (they stay with it: these stages come after the plain ones), and
# presets that change the pipeline for good, so each gets a freshly loaded one (qvedit.models.loading).
APPLIED = {"_low_memory": dict(offload_text_encoder=True), "_fast": dict(compile=True)}
RELOADED = {"_fp8": dict(quantize="fp8", compile=True), "_vram24": dict(group_offload=True), "q21": {}}


def stage_of(variant: str) -> str:
    """The suffix of ``APPLIED`` / ``RELOADED`` whose pipeline the variant runs on ("" for the plain one);
    ``experiment=fastest`` runs with ``perf=fp8``."""
    if variant.startswith("fastest"):
        return "_fp8"
    if variant.startswith("q21"):
        return "q21"  # Qwen-Image 2.1's own pipeline
    return next((suffix for suffix in (*APPLIED, *RELOADED) if variant.endswith(suffix)), "")


def fastest_preset(experiment: str = "fastest") -> dict:
    """``experiment=fastest`` (or another preset) as composed from ``conf/``: steps, CFG, scheduler, guidance, perf
    and start settings."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from qvedit.settings.schema import CONF_DIR, register_schemas

    register_schemas()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = OmegaConf.to_container(compose("config", overrides=[f"experiment={experiment}"]))
    drop = lambda node: {k: v for k, v in node.items() if k != "_target_"}  # noqa: E731
    return {"steps": cfg["num_inference_steps"], "true_cfg_scale": cfg["true_cfg_scale"],
            "scheduler": cfg["model"]["scheduler"], "ttlg": drop(cfg["ttlg"]), "perf": drop(cfg["perf"]),
            "start": drop(cfg["start"])}


def lightning_preset() -> dict:
    """``experiment=lightning``'s steps, CFG, scheduler values and guidance window, from its YAML."""
    from omegaconf import OmegaConf

    from qvedit.settings.schema import CONF_DIR

    preset = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "experiment" / "lightning.yaml"))
    return {"steps": preset["num_inference_steps"], "true_cfg_scale": preset["true_cfg_scale"],
            "scheduler": preset["model"]["scheduler"], "ttlg": preset["ttlg"]}


class PartTimer:
    """Sums the time spent inside chosen methods of one pipeline call, with CUDA events on a GPU."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.spans: dict[str, list] = {}

    @contextmanager
    def wrapping(self, owner, method: str, label: str):
        """``owner.method`` timed as ``label`` inside the block (the modification ``timer <method>`` of ``owner``,
        wrapping whatever is there, e.g. perf's offload wrapper)."""
        original = getattr(owner, method)

        def timed(*args, **kwargs):
            start = self._mark()
            try:
                return original(*args, **kwargs)
            finally:
                self.spans.setdefault(label, []).append((start, self._mark()))

        with modifications_of(owner).applied(f"timer {method}", lambda change: change.set(owner, method, timed),
                                             detail=label):
            yield

    def _mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, label: str) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return sum(a.elapsed_time(b) for a, b in self.spans.get(label, [])) / 1000
        return sum(b - a for a, b in self.spans.get(label, []))

    def count(self, label: str) -> int:
        return len(self.spans.get(label, []))


def start_of(variant: str, fastest: Optional[dict]):
    """The variant's ``start``: ``_s06`` / ``_s04`` warped noise at strength 0.6 / 0.4, ``fastest_*`` the preset's."""
    from qvedit.settings.start import StartSettings

    if fastest is not None:
        return StartSettings(**fastest["start"])
    suffix = re.search(r"_s(\d)(\d)$", variant)
    return StartSettings(noise="warped", strength=float(f"{suffix[1]}.{suffix[2]}")) if suffix else StartSettings()


def warm_up_steps(variant: str) -> int:
    """Steps of a warm-up frame: 2, or the fewest that leave the variant's part-way start one step to run."""
    return next(steps for steps in itertools.count(2) if start_of(variant, None).steps_run(steps) >= 1)


def make_inputs(size: int, folder: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / "init.png")
    (folder / "edges").mkdir(exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(folder / "edges" / "1.png")
    return folder / "init.png", folder / "edges"


def run_variant(pipe, variant: str, size: int, steps: int, last_steps: int, work: Path) -> dict:
    from qvedit.io.clip_flow import ClipFlow
    from qvedit.io.frames import FrameFolders, FrameWriter
    from qvedit.models.family import family_of
    from qvedit.models.lora import use_scheduler
    from qvedit.models.step_cache import use_step_cache
    from qvedit.run.clip_editor import edit_clip, frame_seed
    from qvedit.run.frame_outputs import ClipOutputs
    from qvedit.run.frame_plan import ClipPlan
    from qvedit.settings.anchor import AnchorSettings
    from qvedit.settings.guidance import FlowSettings, TTLGSettings
    from qvedit.settings.model import PerfSettings
    from qvedit.settings.run import PIPELINE_CONDITION_AREA, RunSettings

    init, edges = make_inputs(size, work)
    cuda = pipe.device.type == "cuda"
    timer = PartTimer(cuda)

    cond_output = variant.endswith("_cond_output")
    guided = "edge_gram" in variant
    fastest = fastest_preset() if variant.startswith("fastest") else None
    q21 = q21_preset(variant, last_steps) if variant.startswith("q21") else None
    lightning = fastest or q21 or (fastest_preset("lightning_4step") if variant.startswith("lightning4") else None) \
        or (lightning_preset() if variant.startswith("lightning") else None)
    if variant.startswith("lightning4"):  # its guidance window; the guided variants set the scales
        lightning["ttlg"] = {k: lightning["ttlg"][k] for k in ("every", "start_step", "end_step", "last_steps")}
    start = start_of(variant, fastest)
    window = lightning["ttlg"] if lightning else {"last_steps": last_steps}
    decode = {"decode_size": 512 if variant.endswith("_decode512") else None,
              "decoder": "tiny" if "_tiny" in variant else "vae", "tiny_decoder": "random"}
    if fastest:
        window, decode = fastest["ttlg"], {"tiny_decoder": "random"}  # the published weights may not be here
    ttlg = TTLGSettings(**{"edge_scale": 1.0, "gram_scale": 0.2, **window, **decode, "vgg_weights": "random"}) \
        if guided else TTLGSettings()
    if lightning:
        steps = lightning["steps"] if steps > 2 or "_grid" in variant else steps  # (2: a warm-up; a grid: its own)
    settings = RunSettings(num_inference_steps=steps, true_cfg_scale=lightning["true_cfg_scale"] if lightning else 4.0,
                           condition_area="output" if cond_output else PIPELINE_CONDITION_AREA)
    use_scheduler(pipe, lightning["scheduler"] if lightning else {})
    cache = {key: value for key, value in fastest["perf"].items() if key.startswith("cache")} if fastest else \
        {"cache": "taylorseer" if "_cache" in variant else "none"}
    cache = PerfSettings(**cache) if not variant.endswith("_nocache") else PerfSettings()
    use_step_cache(pipe.transformer, cache)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with timer.wrapping(pipe, "encode_prompt", "prompt"), timer.wrapping(pipe.transformer, "forward", "transformer"), \
            timer.wrapping(pipe.vae, "decode", "decode"):
        if variant.removeprefix("q21_").startswith("plain"):
            edge = Image.open(sorted(edges.iterdir())[0]).convert("RGB")
            cfg = {} if q21 else {"negative_prompt": " ", "true_cfg_scale": settings.true_cfg_scale}  # 2.1: its own
            with torch.inference_mode():
                pipe(image=[edge, Image.open(init)], prompt=settings.prompt, num_inference_steps=steps, height=size,
                     width=size, generator=torch.Generator(pipe.device).manual_seed(frame_seed(0, 1)), **cfg)
        else:
            out = Path(tempfile.mkdtemp(prefix=f"out-{variant}-", dir=work))  # a new clip, never a resumed one
            anchor = AnchorSettings(first_frame_image=variant.endswith("_first_frame_image"))
            source = FrameFolders(str(init), str(edges))
            plan = ClipPlan.of(settings, source, family_of(pipe).replace(**q21["family"]) if q21 else None)
            flow = ClipFlow(FlowSettings(), source, (size, size), pipe.device) if start.needs_flow else None
            frame = edit_clip(pipe, source, ClipOutputs(FrameWriter(out)), settings, ttlg, anchor=anchor, flow=flow,
                              plan=plan, start=start)[-1]
        if cuda:
            torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    run = start.steps_run(steps)  # the steps a part-way start runs
    row = {
        "variant": variant, "size": size, "steps": steps, "seconds_per_frame": seconds,
        "prompt_encoding_s": timer.seconds("prompt"),
        "transformer_s_per_step": timer.seconds("transformer") / run,
        "transformer_passes": timer.count("transformer"),
        "decode_s": timer.seconds("decode"), "decode_calls": timer.count("decode"),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
    }
    if not variant.removeprefix("q21_").startswith("plain"):
        row["frame"] = str(frame)  # frame 1 as written (in ``work``)
    if not start.is_default:
        row.update(start_noise=start.noise, start_strength=start.strength, steps_run=run)
    if guided:
        row["guided_steps"] = sum(ttlg.guides_step(i, run) for i in range(run))
    if cache.cache != "none":
        from qvedit.models.step_cache import fresh_steps

        full = fresh_steps(cache, steps)
        row["steps_in_full"] = len(full) if full is not None else None
    return row


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m qvedit.bench", description=__doc__.splitlines()[0],
                           epilog="Each variant is described in the module's docstring (qvedit/cli/bench.py); "
                                  "docs/performance.md and benchmarks/RESULTS.md have the figures measured with it. "
                                  "Exit code: 0 done, 2 bad arguments or a setting the device cannot run (one line, "
                                  "before any loading).")
    parser.add_argument("--model", choices=("random_full", "tiny"), default="random_full",
                        help="random_full: the full 2509 architecture, random weights, timing only (a GPU); tiny: "
                             "the offline toy model, to try the benchmark on the CPU (default: %(default)s)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: %(default)s)")
    parser.add_argument("--sizes", type=whole(16, 4096, multiple=16), nargs="+", default=[512, 1024],
                        metavar="PIXELS", help="square frame sides to time, each a multiple of 16 in 16..4096 "
                                               "(default: 512 1024)")
    parser.add_argument("--steps", type=whole(1, 1000), default=50,
                        help="denoising steps per frame, 1..1000 (default: %(default)s)")
    parser.add_argument("--last-steps", type=whole(0, 1000), default=10,
                        help="guided variants guide the last N steps, as ttlg.last_steps (default: %(default)s)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["plain", "off", "edge_gram"],
                        metavar="VARIANT", help=f"what to time, in this order: {', '.join(VARIANTS)} (default: "
                                                "plain off edge_gram)")
    parser.add_argument("--attention-backend", default=None, help="perf.attention_backend for every variant")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default=None,
                        help="default: fp32 for the tiny model, bf16 for random_full (the fp8 variants need bf16)")
    parser.add_argument("--out", type=folder, default=None, help="folder for bench.json and bench.md (default: a new "
                                                    "runs/bench/<date>/<time>/, as a run's folder)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The benchmark; bad arguments and settings the device cannot run are one ``qvedit: error:`` line (exit 2)
    before anything loads."""
    args = build_parser().parse_args(argv)
    return run_tool(lambda: bench(args))


def bench(args: argparse.Namespace) -> int:
    out = args.out or Path("runs") / "bench" / time.strftime("%Y-%m-%d") / time.strftime("%H-%M-%S")

    from qvedit.core.errors import QveditError
    from qvedit.models.devices import check_device
    from qvedit.models.perf import apply_perf, check_perf
    from qvedit.settings.model import PerfSettings

    dtype = args.dtype or ("fp32" if args.model == "tiny" else "bf16")
    stages = [([v for v in args.variants if not stage_of(v)], {}, False)]
    stages += [([v for v in args.variants if stage_of(v) == suffix], perf, False) for suffix, perf in APPLIED.items()]
    stages += [([v for v in args.variants if stage_of(v) == suffix], perf, True) for suffix, perf in RELOADED.items()]
    stages = [(variants, PerfSettings(attention_backend=args.attention_backend, **perf), reload)
              for variants, perf, reload in stages if variants]
    q21_first = [v for v in args.variants if stage_of(v) == "q21"][:1]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise QveditError(f"--device {args.device}{' (the default)' if args.device == 'cuda' else ''} but no CUDA GPU "
                          "is visible: the benchmark times a GPU; --model tiny --device cpu tries it on the CPU")
    check_device(args.device)
    for _, perf, _ in stages:
        check_perf(perf, args.device, dtype)
    for warning in cpu_warnings(args.model, args.device, args.sizes, args.variants):
        progress(f"warning: {warning}")
    total, done = len(args.variants) * len(args.sizes), 0
    pipe, rows, report, frames = None, [], None, {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for number, (variants, perf, reload) in enumerate(stages):
            if pipe is None or reload:
                pipe = None  # the loader frees the pipeline loaded now before it loads the next
                release = "2.1" if variants[0].startswith("q21") else "2509"
                progress(f"loading the {args.model} pipeline ({release}) on {args.device} ({dtype})")
                pipe = load_pipeline(args.model, args.device, dtype, perf if reload else None, release)
                if number == 0 or variants[:1] == q21_first:
                    steps = warm_up_steps(variants[0])
                    progress(f"warm-up: {variants[0]} at {min(args.sizes)}², {steps} steps")
                    run_variant(pipe, variants[0], min(args.sizes), steps, 0, work)  # warm-up: kernels, allocator
            apply_perf(pipe, perf)
            for size in args.sizes:
                for variant in variants:
                    done += 1
                    progress(f"{done} of {total}: {variant} at {size}², {args.steps} steps")
                    if perf.compile or reload:  # compiles for this size; group offloading learns the block order
                        run_variant(pipe, variant, size, warm_up_steps(variant), 0, work)
                    rows.append(run_variant(pipe, variant, size, args.steps, args.last_steps, work))
                    if "frame" in rows[-1]:  # in the temporary folder
                        frames[size, variant] = np.asarray(Image.open(rows[-1].pop("frame")).convert("RGB"))
                    compare_frames(rows, frames)
                    progress(f"{done} of {total}: {variant} at {size}² took {rows[-1]['seconds_per_frame']:.2f} s")
                    emit(json.dumps(rows[-1]))
                    report = write_report(rows, args.model, pipe.device, out)  # after every row
    emit(markdown(report))
    progress(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    return 0


def progress(line: str) -> None:
    """One line on stderr as the benchmark goes (stdout holds the JSON rows and the table)."""
    print(f"qvedit.bench: {line}", file=sys.stderr, flush=True)


def cpu_warnings(model: str, device: str, sizes: list[int], variants: list[str]) -> list[str]:
    """What ``python -m qvedit`` would warn of on the CPU for these sizes and variants (none on a GPU)."""
    from qvedit.run.frame_plan import ClipPlan, cpu_speed_warnings
    from qvedit.settings.run import PIPELINE_CONDITION_AREA, RunSettings

    areas = {"output" if v.endswith("_cond_output") else PIPELINE_CONDITION_AREA for v in variants}
    found = []
    for size in sizes:
        for area in sorted(areas, key=str):
            settings = RunSettings(condition_area=area)
            for warning in cpu_speed_warnings(device, settings, ClipPlan.sized(settings, (size, size), 1),
                                              model == "random_full"):
                if warning not in found:
                    found.append(warning)
    return found


def load_pipeline(model: str, device: str, dtype: str, perf=None, release: str = "2509"):
    """The tiny or random_full pipeline of ``release``'s family (``perf``: the settings that change it for good,
    applied as it loads)."""
    from qvedit.models.loading import load_pipeline as load
    from qvedit.settings.model import RandomFullModel, TinyModel

    chosen = TinyModel.in_cache(release) if model == "tiny" else RandomFullModel(f"random-full-{release}",
                                                                                 release=release)
    pipe = load(chosen, device, dtype, perf)
    pipe.set_progress_bar_config(disable=True)
    return pipe


if __name__ == "__main__":
    raise SystemExit(main())
