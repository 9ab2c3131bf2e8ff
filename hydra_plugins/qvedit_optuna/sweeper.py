"""A Hydra sweeper that searches settings with Optuna (multi-objective), behind ``hparams_search=ttlg_optuna``.

hydra-optuna-sweeper 1.2.0, the plugin the Hydra project ships, pins optuna < 3, whose SQLite storage
fails under SQLAlchemy 2 (which MLflow needs): a study could not be stored. This sweeper keeps the
plugin's config shape (``hydra.sweeper.params`` with Hydra's ``interval(...)``, ``range(...)``,
``choice(...)``, ``tag(log, interval(...))``, ``tag(int, interval(...))``; ``n_trials``, ``n_jobs``, ``directions``, ``storage``,
``study_name``, ``seed``) on today's Optuna. Each trial is one job; the job returns its objectives (a
tuple, see ``qvedit.report.tuning``). The study lives in ``storage`` (SQLite by default), so running
the same command into the same sweep folder goes on from the trials already done. At the end the sweep
folder gets the Pareto front (``optuna_pareto.csv``, ``.md``, ``.png``) and the best trade-off as a
ready ``ttlg`` preset (``ttlg_tuned.yaml``).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def distribution(name: str, text: str):
    """An Optuna distribution from a Hydra sweep expression such as ``interval(0.01, 0.2)``."""
    import optuna

    value = OverridesParser.create().parse_override(f"{name}={text}").value()
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if "int" in value.tags:  # tag(int, interval(2, 10)): Hydra's intervals are floats otherwise
            return optuna.distributions.IntDistribution(int(value.start), int(value.end), log=log_scale)
        return optuna.distributions.FloatDistribution(float(value.start), float(value.end), log=log_scale)
    if isinstance(value, RangeSweep):
        return optuna.distributions.IntDistribution(int(value.start), int(value.stop) - 1, step=int(value.step or 1))
    if isinstance(value, ChoiceSweep):
        return optuna.distributions.CategoricalDistribution(list(value.list))
    return optuna.distributions.CategoricalDistribution([value])  # a fixed value


class OptunaSweeper(Sweeper):
    def __init__(self, params: Optional[dict] = None, n_trials: int = 20, n_jobs: int = 1,
                 directions: Optional[list] = None, storage: Optional[str] = None, study_name: str = "qvedit",
                 seed: int = 0, objective_names: Optional[list] = None):
        self.params = dict(params or {})
        self.n_trials, self.n_jobs, self.seed = n_trials, max(1, n_jobs), seed
        self.directions = list(directions or ["minimize"])
        self.storage, self.study_name = storage, study_name
        self.objective_names = list(objective_names or [f"objective_{i}" for i in range(len(self.directions))])
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)
        self.sweep_dir = Path(config.hydra.sweep.dir)

    def sweep(self, arguments: list[str]) -> Any:
        try:
            import optuna
        except ImportError:
            print('qvedit: error: hparams_search=ttlg_optuna needs Optuna: pip install -e ".[tuning]"', file=sys.stderr)
            sys.exit(2)

        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        space = {name: distribution(name, str(text)) for name, text in self.params.items()}
        storage = self.storage or f"sqlite:///{(self.sweep_dir / 'optuna.db').resolve()}"
        sampler = optuna.samplers.NSGAIISampler(seed=self.seed) if len(self.directions) > 1 \
            else optuna.samplers.TPESampler(seed=self.seed)
        study = optuna.create_study(storage=storage, study_name=self.study_name, directions=self.directions,
                                    sampler=sampler, load_if_exists=True)
        done = len([t for t in study.trials if t.state.is_finished()])
        self.job_idx = done
        log.info("Optuna study %s in %s: %d of %d trials done", self.study_name, storage, done, self.n_trials)
        while done < self.n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - done))]
            batch = [[*arguments, *(f"{name}={trial.params[name]}" for name in space)] for trial in trials]
            self.validate_batch_is_legal(batch)
            returns = self.launcher.launch(batch, initial_job_idx=self.job_idx)
            self.job_idx += len(batch)
            for trial, job in zip(trials, returns):
                values = self._values(job)
                if values is None:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(trial, values)
            done += len(batch)
        from qvedit.report.tuning import write_pareto

        search = OmegaConf.select(self.config, "hydra.runtime.choices.hparams_search", default=None)
        write_pareto(study, self.objective_names, self.sweep_dir, search)
        return study

    def _values(self, job) -> Optional[list[float]]:
        try:
            value = job.return_value
        except Exception as err:  # the job raised: the trial failed
            log.warning("trial failed: %s", err)
            return None
        if value is None:
            return None
        values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
        if len(values) != len(self.directions):
            log.warning("a trial returned %d values for %d directions", len(values), len(self.directions))
            return None
        return values

