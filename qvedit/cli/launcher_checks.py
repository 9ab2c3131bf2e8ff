"""Checks for the sweep launchers of ``conf/hydra/launcher/`` (Ray, SLURM) before any job starts, and
qvedit's own Hydra plugin (the Optuna sweeper) registered so it is found from any folder."""

from __future__ import annotations

import sys

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def ray_gpu_shortfall(launcher: DictConfig, visible_gpus: int) -> str | None:
    """Why a local Ray could never start a job (each asks for more GPUs than Ray has), or None."""
    ray = launcher.get("ray")
    if ray is None or ray.init.get("address"):
        return None  # not Ray, or a cluster whose GPUs are not ours to count
    wanted = ray.remote.get("num_gpus") or 0
    granted = ray.init.get("num_gpus")
    available = visible_gpus if granted is None else granted
    if wanted <= available:
        return None
    return (f"each Ray job asks for hydra.launcher.ray.remote.num_gpus={wanted} GPU(s) but the local Ray has "
            f"{available}: jobs would wait forever; on a CPU-only machine set hydra.launcher.ray.remote.num_gpus=0 "
            "(and device=cpu)")


def register_plugins() -> None:
    """Make qvedit's Optuna sweeper known to Hydra, whatever the current folder.

    Hydra finds plugins by walking the ``hydra_plugins`` namespace package's ``__path__``. An editable
    install (``pip install -e .``) maps ``hydra_plugins.qvedit_optuna`` to the repository through
    setuptools' import finder but adds nothing to that namespace's path, so the walk finds the sweeper
    only where the repository root is on ``sys.path`` (run from it): anywhere else
    ``hparams_search=ttlg_optuna`` was an "Unknown plugin class". Hydra's ``Plugins.register`` adds it
    by hand; the import is plain Python, which the finder serves.
    """
    from hydra.core.plugins import Plugins

    from hydra_plugins.qvedit_optuna.sweeper import OptunaSweeper

    Plugins.instance().register(OptunaSweeper)


class LauncherCheck(Callback):
    """Hydra callback: refuse a sweep its launcher could never run, with one line, before it starts."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        import torch

        problem = ray_gpu_shortfall(config.hydra.launcher, torch.cuda.device_count())
        if problem:
            print(f"qvedit: error: {problem}", file=sys.stderr)
            sys.exit(2)
