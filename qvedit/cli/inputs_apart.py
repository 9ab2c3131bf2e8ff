"""The Hydra callback that keeps a run's outputs out of the folders it reads a user's input from
(``conf/hydra/default.yaml``)."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from qvedit.core.config_trust import build
from qvedit.io.layout import RunLayout
from qvedit.run.config_values import input_paths


class InputsApart(Callback):
    """Hydra callback: refuse, in one line and before Hydra makes the run (or sweep) folder and writes its
    ``.hydra/`` there, a run whose outputs would go into a folder it reads a user's input from. The job checks
    again with its own folder (``qvedit.run.job``); this is the check that comes before Hydra writes anything."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self.refuse(config, "run")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.refuse(config, "sweep")

    @staticmethod
    def refuse(config: DictConfig, mode: str) -> None:
        try:
            layout = RunLayout.resolve(Path(config.hydra[mode].dir), build(config.io), build(config.metrics),
                                       config.get("debug_dir"))
            problem = layout.input_problem(input_paths(config), f"hydra.{mode}.dir")
        except Exception:  # a value the job itself will refuse, in its own words
            return
        if problem:
            print(f"qvedit: error: {problem}", file=sys.stderr)
            sys.exit(2)
