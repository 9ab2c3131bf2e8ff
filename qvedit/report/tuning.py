"""Searching guidance settings (``hparams_search=ttlg_optuna``): a trial's objectives and the study's results.

Each trial makes the clip with the settings the sampler chose and returns, for every name in
``tuning.objectives``, the guided / unguided ratio of that metrics column's mean (lower is better):
``objectives`` takes the two clips' metrics tables as their runs handed them back. The unguided clip is the
trial's unguided twin (``qvedit.run.job_settings.unguided``: guidance off, whatever the sampler chose), so it is the
same for every trial: ``qvedit.run.job.trial_objectives`` makes it once, into ``<sweep>/reference_off``, by the
first trial that needs it (the others find it finished), one at a time (``one_at_a_time``). At the end
``write_pareto`` writes the Pareto front and the best trade-off as a ``ttlg`` preset.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from pathlib import Path
from typing import Iterator, Optional

import pandas as pd
import yaml
from omegaconf import OmegaConf

from qvedit.core.errors import QveditError
from qvedit.core.files import atomic_path, write_figure_png, write_text_atomic
from qvedit.settings.schema import CONF_DIR

log = logging.getLogger(__name__)

REFERENCE = "reference_off"  # the unguided reference clip's folder in the sweep's


@contextlib.contextmanager
def one_at_a_time(sweep_dir: Path) -> Iterator[None]:
    """Trials running side by side (Ray) make the reference one at a time."""
    with open(sweep_dir / ".reference_off.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def objectives(names: list[str], guided: pd.DataFrame, unguided: pd.DataFrame) -> tuple[float, ...]:
    """A trial's objectives: for each of ``names`` (``tuning.objectives``), the mean of that metrics column of the
    guided clip over the unguided reference's (the metrics tables their runs handed back)."""
    missing = [name for name in names if name not in guided or guided[name].isna().all()]
    if missing:
        raise QveditError(f"tuning.objectives needs the metrics.csv column(s) {missing}: run with the quality "
                          "metrics on (metrics=default)")
    ratios = tuple(float(guided[name].mean() / unguided[name].mean()) for name in names)
    log.info("trial objectives (guided / unguided): %s", ", ".join(f"{n} {r:.4f}" for n, r in zip(names, ratios)))
    return ratios


def write_pareto(study, names: list[str], sweep_dir: Path, search: Optional[str]) -> list[Path]:
    """optuna_pareto.csv / .md / .png and ttlg_tuned.yaml (the Pareto trial with the lowest mean ratio);
    ``search``: the ``conf/hparams_search/`` option the sweep chose."""
    front = [t for t in study.best_trials if t.values is not None]
    if not front:
        log.warning("the study has no finished trial: no Pareto front written")
        return []
    rows = [{"trial": t.number, **{n: v for n, v in zip(names, t.values)}, **t.params} for t in front]
    table = pd.DataFrame(rows).sort_values(names[0])
    best = min(front, key=lambda t: sum(t.values) / len(t.values))
    with atomic_path(sweep_dir / "optuna_pareto.csv") as partial:
        table.to_csv(partial, index=False)
    lines = [f"# Pareto front of study {study.study_name} ({len(study.trials)} trials)", "",
             f"Objectives (guided / unguided, lower is better): {', '.join(names)}. "
             f"Best trade-off (lowest mean): trial {best.number}, written as ttlg_tuned.yaml.", "",
             "| " + " | ".join(table.columns) + " |", "|" + " --- |" * len(table.columns)]
    lines += ["| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |"
              for row in table.itertuples(index=False)]
    written = [write_text_atomic(sweep_dir / "optuna_pareto.md", "\n".join(lines) + "\n"),
               sweep_dir / "optuna_pareto.csv", _plot(study, names, best, sweep_dir / "optuna_pareto.png"),
               write_preset(best.params, search, sweep_dir / "ttlg_tuned.yaml", best, names)]
    from qvedit.report.html import write_study_html# jinja2 only where the page is written

    written.append(write_study_html(sweep_dir, study, names, table, best))
    log.info("Pareto front (%d trials) and the best trade-off preset: %s; the study's page: %s", len(front),
             sweep_dir / "ttlg_tuned.yaml", sweep_dir / "report.html")
    return written


def write_preset(params: dict, search: Optional[str], out: Path, trial, names: list[str]) -> Path:
    """A ``conf/ttlg/`` preset: the ttlg keys the trial chose and those the search preset itself fixes
    (``temporal_mode: flow``), and nothing else of the sweep's command (``experiment=tiny_cpu``'s
    ``vgg_weights: random`` does not belong in a real run)."""
    values = search_preset_ttlg(search)
    values.update({key.removeprefix("ttlg."): value for key, value in params.items() if key.startswith("ttlg.")})
    scores = ", ".join(f"{n} {v:.4f}" for n, v in zip(names, trial.values))
    header = (f"# Tuned by hparams_search=ttlg_optuna: trial {trial.number} of study in {out.parent}\n"
              f"# ({scores}, guided / unguided). Copy to conf/ttlg/<name>.yaml and run with ttlg=<name>.\n")
    return write_text_atomic(out, header + yaml.safe_dump(values, sort_keys=False))


def search_preset_ttlg(search: Optional[str]) -> dict:
    """The ``ttlg:`` keys of the ``conf/hparams_search/`` file ``search`` the sweep chose ({} if none)."""
    preset = CONF_DIR / "hparams_search" / f"{search}.yaml"
    if not search or not preset.is_file():
        return {}
    return dict(OmegaConf.to_container(OmegaConf.load(preset)).get("ttlg") or {})


def _plot(study, names: list[str], best, out: Path) -> Path:
    import matplotlib

    from qvedit.report.acceptance import legend_below

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in study.trials if t.values is not None]
    front = {t.number for t in study.best_trials}
    x, y = names[0], names[-1] if len(names) > 1 else names[0]
    figure, axes = plt.subplots(figsize=(6, 4.5))
    for group, style in ((False, dict(c="#aaaaaa", label="trial")), (True, dict(c="#d62728", label="Pareto front"))):
        points = [t for t in done if (t.number in front) == group]
        axes.scatter([t.values[0] for t in points], [t.values[-1] for t in points], **style)
    axes.scatter([best.values[0]], [best.values[-1]], marker="*", s=250, c="#1f77b4", label="ttlg_tuned.yaml")
    axes.set_xlabel(f"{x} guided / unguided")
    axes.set_ylabel(f"{y} guided / unguided")
    axes.set_title(f"{len(done)} trials, lower is better")
    legend_below(axes, columns=3)
    return write_figure_png(figure, out)
