"""``python -m qvedit``: the Hydra entry point. Compose, instantiate, run; nothing clever."""

from __future__ import annotations

import logging
import os
import shutil
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

from qvedit.config import RunSettings, frame_settings, register_schemas
from qvedit.devices import check_device
from qvedit.editor import edit_clip
from qvedit.errors import QveditError
from qvedit.io.frames import FrameWriter
from qvedit.io.layout import RunLayout, record_job_error
from qvedit.io.preview import write_previews
from qvedit.models.diffusers_compat import warn_if_untested_diffusers
from qvedit.models.parallel import Team, follower_overrides, torchrun_rank
from qvedit.outputs import ClipOutputs, check_or_record

log = logging.getLogger("qvedit")
register_schemas()
# conf/hydra/launcher/ray.yaml shares its name with hydra-ray-launcher's schema on purpose (the
# command is hydra/launcher=ray); Hydra 1.3 merges the two as wanted but warns about the name.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/ray' is validated against ConfigStore schema")

# conf/ sits beside the package (the repository layout); install with `pip install -e .`.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def build(node: DictConfig, **kwargs):
    """``instantiate`` that lets a QveditError through as itself, not wrapped by Hydra."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, QveditError):
            raise err.__cause__ from None
        raise


def run(cfg: DictConfig, run_dir: Path) -> Path:
    """Edit the clip ``cfg`` describes into ``run_dir``; returns the folder the frames went to."""
    settings = RunSettings.of(cfg)
    team = build(cfg.parallel).start(settings.device, settings.true_cfg_scale)
    try:
        return edit(cfg, run_dir, team)
    finally:
        team.close()


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
    frames = FrameWriter(layout.frames_dir)
    check_or_record(frames.folder, frame_settings(cfg))
    check_device(device)
    outputs = ClipOutputs(frames, layout.metrics_csv, metrics.scorer(device, quality=team.is_writer), layout.debug_dir)
    if device.startswith("cuda"):  # which physical GPU, for sweeps whose launcher hands out GPUs
        log.info("on %s: %s, CUDA_VISIBLE_DEVICES=%s", device, torch.cuda.get_device_name(device),
                 os.environ.get("CUDA_VISIBLE_DEVICES", "(all)"))
    warn_if_untested_diffusers()
    pipe = model.load(device, settings.dtype)
    perf.apply(pipe)
    team.share_work(pipe)
    if not team.is_writer:
        pipe.set_progress_bar_config(disable=True)
    paths = edit_clip(pipe, source, outputs, settings, ttlg, team)
    if team.is_writer:
        written = write_previews(source, paths, layout) + source.finish(paths, layout)
        log.info("wrote %d frames to %s; also %s", len(paths), frames.folder, ", ".join(str(p) for p in written))
    return frames.folder


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def hydra_main(cfg: DictConfig) -> None:
    try:
        run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except QveditError as err:
        rank = torchrun_rank()
        print(f"qvedit: error{f' (rank {rank})' if rank else ''}: {err}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # One bad job must not end the sweep: the report lists it with this message.
            record_job_error(Path(HydraConfig.get().runtime.output_dir), str(err))
            return
        sys.exit(2)
    except KeyboardInterrupt:
        if torchrun_rank() == 0:
            hydra = HydraConfig.get()
            overrides = " ".join(o for o in hydra.overrides.task if not o.startswith("hydra.run.dir="))
            world = int(os.environ.get("WORLD_SIZE", "1"))
            launch = f"torchrun --nproc-per-node {world} -m qvedit" if world > 1 else "python -m qvedit"
            print(f"qvedit: interrupted; the finished frames are kept. Resume with: {launch} {overrides} "
                  f"hydra.run.dir={hydra.runtime.output_dir}", file=sys.stderr)
        sys.exit(130)


def main() -> None:
    """``python -m qvedit`` / ``qvedit``. Under torchrun, ranks other than 0 run in a scratch folder
    that is removed at exit: the run folder, its logs and its frames are rank 0's alone."""
    overrides, scratch = follower_overrides()
    sys.argv += overrides
    try:
        hydra_main()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
