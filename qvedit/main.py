"""``python -m qvedit``: the Hydra entry point. Compose, instantiate, run; nothing clever."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import warnings
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig

from qvedit import locks, stopping
from qvedit.config import RunSettings, check_values, frame_settings, register_schemas, scale_keys
from qvedit.devices import check_device
from qvedit.editor import cpu_speed_warnings, edit_clip
from qvedit.errors import QveditError
from qvedit.files import drop_staged
from qvedit.guidance.settings import TTLGSettings
from qvedit.io.frames import FrameWriter
from qvedit.io.layout import RunLayout, discard_if_empty, record_job_error
from qvedit.io.preview import write_previews
from qvedit.io.settings import DemoIO
from qvedit.keys import register_help, unknown_config_keys, unknown_overrides
from qvedit.models.diffusers_compat import warn_if_untested_diffusers
from qvedit.models.parallel import Team, follower_overrides, torchrun_rank
from qvedit.models.settings import ModelSettings
from qvedit.outputs import ClipOutputs, check_or_record
from qvedit.preflight import check_clip
from qvedit.report.summary import run_summary
from qvedit.trust import command_line_problems, target_problem

log = logging.getLogger("qvedit")
register_schemas()
register_help()
# conf/hydra/launcher/ray.yaml shares its name with hydra-ray-launcher's schema on purpose (the
# command is hydra/launcher=ray); Hydra 1.3 merges the two as wanted but warns about the name.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/ray' is validated against ConfigStore schema")

# conf/ sits beside the package (the repository layout); install with `pip install -e .`.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def build(node: DictConfig, **kwargs):
    """``instantiate`` that lets a QveditError through as itself, not wrapped by Hydra; only qvedit's own
    ``_target_``s are instantiated (``qvedit.trust``)."""
    problem = target_problem(node.get("_target_"))
    if problem:
        raise QveditError(f"{node._get_full_key(None)}._target_={node.get('_target_')!r} {problem}: use qvedit's own "
                          "config groups")
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, QveditError):
            raise err.__cause__ from None
        raise


def run(cfg: DictConfig, run_dir: Path) -> Path:
    """Edit the clip ``cfg`` describes into ``run_dir``; returns the folder the frames went to."""
    check_values(cfg)  # every value, before anything is loaded
    settings = RunSettings.of(cfg)
    team = build(cfg.parallel).start(settings.device, settings.true_cfg_scale)
    try:
        return edit(cfg, run_dir, team)
    finally:
        team.close()
        drop_staged()
        locks.release_all()


def edit(cfg: DictConfig, run_dir: Path, team: Team) -> Path:
    """``run`` on one rank of ``team``: ranks other than 0 keep nothing but their share of the work."""
    if team.size > 1 and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise QveditError("a torchrun team edits one clip: run sweeps without torchrun (hydra/launcher=ray "
                          "gives each job its own GPU)")
    settings = RunSettings.of(cfg)
    device = team.device or settings.device
    ttlg, io, metrics = build(cfg.ttlg), build(cfg.io), build(cfg.metrics)
    model, perf = build(cfg.model), build(cfg.perf)
    layout = RunLayout.resolve(run_dir, io, metrics, settings.debug_dir, writer=team.is_writer)
    source = io.open(layout)  # inputs are checked before the (slow) model load
    check_clip(settings, source)
    frames = FrameWriter(layout.frames_dir)
    check_or_record(frames.folder, frame_settings(cfg))
    check_device(device)
    outputs = ClipOutputs(frames, layout.metrics_csv, metrics.scorer(device, quality=team.is_writer), layout.debug_dir)
    if device.startswith("cuda"):  # which physical GPU, for sweeps whose launcher hands out GPUs
        log.info("on %s: %s, CUDA_VISIBLE_DEVICES=%s", device, torch.cuda.get_device_name(device),
                 os.environ.get("CUDA_VISIBLE_DEVICES", "(all)"))
    warn_if_untested_diffusers()
    for warning in cpu_speed_warnings(device, settings, source.init_image().size, type(model) is ModelSettings):
        log.warning(warning)
    pipe = model.load(device, settings.dtype)
    perf.apply(pipe)
    team.share_work(pipe)
    paths = edit_clip(pipe, source, outputs, settings, ttlg, team)
    unguided_csv = None
    if settings.compare_unguided and ttlg.enabled:
        unguided_csv = edit_unguided(pipe, source, cfg, settings, layout, outputs.metrics, team)
    if team.is_writer:
        written = write_previews(source, paths, layout) + source.finish(paths, layout)
        scales = {name.removesuffix("_scale"): getattr(ttlg, name) for name in ttlg.scales() if getattr(ttlg, name)}
        summary = run_summary(paths, all(p.exists() for p in paths), written, layout.metrics_csv,
                              settings.num_inference_steps, scales, unguided_csv, demo=isinstance(io, DemoIO))
        log.info(summary[0].removeprefix("qvedit: "))
        if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
            print("\n".join(summary), flush=True)
    return frames.folder


def edit_unguided(pipe, source, cfg: DictConfig, settings: RunSettings, layout: RunLayout, metrics,
                  team: Team) -> Path:
    """``compare_unguided``: the same clip with guidance off, beside the guided one; returns its metrics.csv."""
    frames_dir, metrics_csv = layout.unguided
    frames = FrameWriter(frames_dir)
    check_or_record(frames.folder, {**frame_settings(cfg), **{key: 0.0 for key in scale_keys()}})
    log.info("compare_unguided: making the clip again with ttlg=off in %s", frames.folder)
    edit_clip(pipe, source, ClipOutputs(frames, metrics_csv, metrics), settings, TTLGSettings(), team)
    return metrics_csv


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def hydra_main(cfg: DictConfig) -> None:
    stopping.install()
    try:
        for problem in unknown_config_keys(cfg):
            raise QveditError(problem)
        run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except QveditError as err:
        rank = torchrun_rank()
        print(f"qvedit: error{f' (rank {rank})' if rank else ''}: {err}", file=sys.stderr)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # One bad job must not end the sweep: the report lists it with this message.
            record_job_error(run_dir, str(err))
            return
        if not rank:
            discard_if_empty(run_dir)  # twenty typos must not leave twenty empty run folders
        sys.exit(2)
    except (KeyboardInterrupt, stopping.Terminated) as stop:
        signum = getattr(stop, "signum", signal.SIGINT)
        if torchrun_rank() == 0:
            how = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
            print(f"qvedit: {how}; the finished frames and their metrics rows are kept. Resume with: "
                  f"{stopping.resume_command(HydraConfig.get())}", file=sys.stderr)
        sys.exit(stopping.EXIT_CODES.get(signum, 128 + signum))


def main() -> None:
    """``python -m qvedit`` / ``qvedit``. Under torchrun, ranks other than 0 run in a scratch folder
    that is removed at exit: the run folder, its logs and its frames are rank 0's alone."""
    # one line per misspelt key; else the first key of a config from elsewhere that would run code
    problems = unknown_overrides(sys.argv[1:]) or command_line_problems(sys.argv[1:], Path(__file__))[:1]
    for problem in problems:
        print(f"qvedit: error: {problem}", file=sys.stderr)
    if problems:
        sys.exit(2)
    logging.raiseExceptions = False  # a log line a full disk cannot take must not print a traceback
    overrides, scratch = follower_overrides()
    sys.argv += overrides
    try:
        hydra_main()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
