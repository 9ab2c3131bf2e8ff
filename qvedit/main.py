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

from qvedit.acceptance import record_job_error
from qvedit.config import register_schemas
from qvedit.editor import GenerationSettings, edit_clip
from qvedit.errors import QveditError
from qvedit.frames import FrameWriter
from qvedit.parallel import Team, follower_overrides, torchrun_rank
from qvedit.pipeline import check_device
from qvedit.preview import write_previews
from qvedit.resume import check_or_record, frame_settings

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
    team = build(cfg.parallel).start(cfg.device, cfg.true_cfg_scale)
    try:
        return edit(cfg, run_dir, team)
    finally:
        team.close()


def edit(cfg: DictConfig, run_dir: Path, team: Team) -> Path:
    """``run`` on one rank of ``team``: ranks other than 0 keep nothing but their share of the work."""
    if team.size > 1 and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise QveditError("a torchrun team edits one clip: run sweeps without torchrun (hydra/launcher=ray "
                          "gives each job its own GPU)")
    device = team.device or cfg.device
    writes = team.is_writer
    ttlg = build(cfg.ttlg)
    made_edges = {"edges_dir": str(run_dir / "edges")} if "edges_dir" in cfg.io and (
        not cfg.io.edges_dir or not writes) else {}
    source = build(cfg.io, **made_edges)  # inputs are checked before the (slow) model load
    generation = GenerationSettings(
        prompt=cfg.prompt,
        negative_prompt=cfg.negative_prompt,
        num_inference_steps=cfg.num_inference_steps,
        true_cfg_scale=cfg.true_cfg_scale,
        seed=cfg.seed,
        condition_area=cfg.condition_area,
        max_area=cfg.max_area,
    )
    writer = FrameWriter(cfg.io.out_frames_dir if writes and cfg.io.out_frames_dir else run_dir / "frames")
    check_or_record(writer.folder, frame_settings(cfg))
    check_device(device)
    if device.startswith("cuda"):  # which physical GPU, for sweeps whose launcher hands out GPUs
        log.info("on %s: %s, CUDA_VISIBLE_DEVICES=%s", device, torch.cuda.get_device_name(device),
                 os.environ.get("CUDA_VISIBLE_DEVICES", "(all)"))
    metrics = build(cfg.metrics, device=device, **({} if writes else {"quality": False}))
    pipe = build(cfg.model, device=device, dtype=cfg.dtype)
    build(cfg.perf).apply(pipe)
    build(cfg.parallel).apply(pipe, team)
    if not writes:
        pipe.set_progress_bar_config(disable=True)
    frames = edit_clip(
        pipe, source, writer, generation, ttlg,
        max_frames=cfg.max_frames,
        metrics_path=Path(cfg.metrics.path) if cfg.metrics.path and writes else run_dir / "metrics.csv",
        metrics=metrics,
        debug_dir=cfg.debug_dir,
        team=team,
    )
    if writes:
        outputs = write_previews(source, frames, run_dir, fps=getattr(source, "fps", 8.0))
        outputs += source.finish(frames, run_dir)
        log.info("wrote %d frames to %s; also %s", len(frames), writer.folder, ", ".join(str(p) for p in outputs))
    return writer.folder


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
