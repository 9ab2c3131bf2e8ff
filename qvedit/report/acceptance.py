"""The median-of-seeds acceptance report (docs/METHOD.md, section 5) of a sweep (``python -m qvedit.accept SWEEP_DIR``).

Every job folder of the sweep holds ``.hydra/config.yaml`` and ``metrics.csv``. Guided jobs are
paired with their ``ttlg=off`` twins (same config but ``ttlg`` and ``seed``), frames 1..N are
compared with N = min(frames, T-1), and each criterion is judged on the median over seeds.
Writes ``acceptance.md``, ``acceptance.csv`` and per-frame loss plots into the sweep folder.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Optional

import pandas as pd
from omegaconf import OmegaConf
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode

from qvedit.core.errors import QveditError
from qvedit.core.files import atomic_path, write_figure_png, write_text_atomic
from qvedit.core.tool_parser import OneLineParser, emit, number, whole
from qvedit.io.frames import natural_key
from qvedit.io.layout import JOB_ERROR_FILE, job_error, metrics_csv_of, record_job_error
from qvedit.report.confdiff import diff_configs, group_contexts, load_run
from qvedit.report.drift import drift_by_setting, drift_table, honest_y, plot_drift
from qvedit.report.verdict import PLOTTED, Comparison, Criterion, SweepJob, SweepVerdict, plot_name
from qvedit.scoring.drift import judge_drift, shown
from qvedit.settings.field_tags import tags_of
from qvedit.settings.report import Thresholds
from qvedit.settings.schema import output_path_keys

log = logging.getLogger(__name__)

# Keys that may differ between a guided job and its off twin, besides ttlg.*: the replicate seed and
# where a job writes.
UNPAIRED_KEYS = ("seed", *output_path_keys())


def load_jobs(sweep_dir: Path) -> list[SweepJob]:
    jobs = []
    for config_file in sorted(sweep_dir.glob("*/.hydra/config.yaml"), key=lambda p: natural_key(p.parent.parent)):
        path = config_file.parent.parent
        config, _ = load_run(path)
        metrics_file = metrics_csv_of(path, config.get("metrics.path"))
        metrics = pd.read_csv(metrics_file) if metrics_file.is_file() else None
        error = job_error(path)
        if error is None and (metrics is None or metrics.empty):
            error = "no metrics rows: the job did not finish (still running, killed, or crashed)"
        jobs.append(SweepJob(path, config, metrics if error is None else None, error))
    return jobs


def pair_jobs(jobs: list[SweepJob]) -> tuple[list[Comparison], list[str]]:
    """Group finished jobs into guided-vs-off comparisons; messages say what could not be paired."""
    def setting(job: SweepJob) -> tuple:
        return tuple(sorted((k, repr(v)) for k, v in job.config.items()
                            if not k.startswith("ttlg.") and k not in UNPAIRED_KEYS))

    groups: dict[tuple, list[SweepJob]] = {}
    for job in jobs:
        if job.error is None:
            groups.setdefault(setting(job), []).append(job)
    comparisons, messages = [], []
    from_edges = [job.path.name for job in jobs if "io.init_frame" in job.config
                  and not job.config.get("io.source_frames_dir")]
    if from_edges:
        messages.append(f"{len(from_edges)} job(s) had no source frames (io.source_frames_dir): their warp_error "
                        f"uses optical flow estimated between edge maps ({', '.join(from_edges[:3])}"
                        f"{' ...' if len(from_edges) > 3 else ''})")
    contexts = group_contexts(list(groups))
    for key, members in groups.items():
        off = {job.config["seed"]: job for job in members if not job.guided}
        variants: dict[str, dict] = {}
        for job in members:
            if job.guided:
                variants.setdefault(job.ttlg, {})[job.config["seed"]] = job
        for label, on in variants.items():
            seeds = sorted(set(on) & set(off))
            if not seeds:
                messages.append(f"ttlg {label} (seeds {sorted(on)}) has no ttlg=off twin with the same seed and "
                                "settings: add ttlg=off to the sweep, e.g. ttlg=off,edge_gram")
                continue
            if len(seeds) == 1:
                messages.append(f"ttlg {label}: only seed {seeds[0]} has both runs; the acceptance check judges on "
                                "the median of 3 seeds (seed=0,1,2)")
            comparisons.append(Comparison(label, seeds, {s: on[s] for s in seeds}, {s: off[s] for s in seeds},
                                          context=contexts[key]))
        if not variants and off:
            messages.append(f"{len(off)} ttlg=off job(s) without a guided twin: nothing to compare them with")
    return comparisons, messages


def frame_table(jobs: dict, column: str, frames: int) -> Optional[pd.DataFrame]:
    """(frames x seeds) table of one metric over frames 1..frames, or None if the column is missing."""
    if any(column not in job.metrics.columns or job.metrics[column].isna().all() for job in jobs.values()):
        return None
    return pd.DataFrame({seed: job.metrics.set_index("frame")[column].loc[1:frames] for seed, job in jobs.items()})


def judge(comparison: Comparison, limits: Thresholds) -> Comparison:
    runs = list(comparison.on.values()) + list(comparison.off.values())
    n = min([limits.frames] + [int(job.metrics["frame"].max()) for job in runs])
    comparison.frames = n
    criteria = comparison.criteria

    def ratio_criterion(column: str, name: str, limit: float, extra_fraction: Optional[float] = None):
        on, off = frame_table(comparison.on, column, n), frame_table(comparison.off, column, n)
        if on is None or off is None:
            criteria.append(Criterion(name, None, f"<= {limit}", None, f"no {column} column (metrics=none?)"))
            return
        ratio = on.mean().median() / off.mean().median()
        criteria.append(Criterion(name, ratio, f"<= {limit}", bool(ratio <= limit),
                                  f"median over seeds of mean {column}: {shown(on.mean().median(), '.5g')} vs "
                                  f"{shown(off.mean().median(), '.5g')}"))
        if extra_fraction is not None:
            share = float((on.median(axis=1) <= off.median(axis=1)).mean())
            criteria.append(Criterion(f"{column} not worse, share of frames", share, f">= {extra_fraction}",
                                      share >= extra_fraction, "per-frame medians over seeds, guided <= off"))

    guided = next(iter(comparison.on.values())).config
    if float(guided.get("ttlg.edge_scale") or 0) > 0:
        ratio_criterion("edge_loss", "edge_loss ratio guided/off", limits.edge_ratio, limits.edge_frames_fraction)
    if float(guided.get("ttlg.gram_scale") or 0) > 0:
        ratio_criterion("gram_loss", "gram_loss ratio guided/off", limits.gram_ratio)
    ratio_criterion("warp_error", "warp_error ratio guided/off", limits.warp_ratio)
    value, passed, note = judge_drift(comparison.metrics(True), comparison.metrics(False), n, limits.drift_ratio)
    criteria.append(Criterion("color_drift last quarter guided/off", value, f"<= {limits.drift_ratio}", passed, note))
    prev, init = frame_table(comparison.on, "lpips_to_prev", n), frame_table(comparison.on, "lpips_to_init", n)
    if prev is None or init is None:
        criteria.append(Criterion("lpips", None, "-", None, "no LPIPS columns (lpips not installed or metrics=none)"))
    else:
        prev_mean, init_mean = prev.mean().median(), init.mean().median()
        criteria.append(Criterion("lpips_to_prev < lpips_to_init", prev_mean - init_mean, "< 0",
                                  bool(prev_mean < init_mean), f"{shown(prev_mean)} vs {shown(init_mean)}"))
        criteria.append(Criterion("lpips_to_prev", prev_mean, f"> {limits.lpips_prev_min}",
                                  bool(prev_mean > limits.lpips_prev_min)))
        criteria.append(Criterion("lpips_to_init", init_mean, f"> {limits.lpips_init_min}",
                                  bool(init_mean > limits.lpips_init_min)))
    return comparison


def plot(comparison: Comparison, column: str, out: Path) -> Optional[Path]:
    """Per-frame ``column``, off vs guided: median over seeds with a min-max band."""
    figure = plot_figure(comparison, column)
    return None if figure is None else write_figure_png(figure, out)


def plot_figure(comparison: Comparison, column: str):
    """The figure ``plot`` writes (None without the column): the legend below the axes, where it covers no
    data and no label; whole-number frame ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    tables = {"ttlg=off": frame_table(comparison.off, column, comparison.frames),
              f"ttlg {comparison.label}": frame_table(comparison.on, column, comparison.frames)}
    if any(t is None for t in tables.values()):
        return None
    figure, axes = plt.subplots(figsize=(6, 4))
    for name, table in tables.items():
        axes.plot(table.index, table.median(axis=1), marker="o", label=f"{name} (median)")
        axes.fill_between(table.index, table.min(axis=1), table.max(axis=1), alpha=0.25)
    honest_y(axes, [(t.index.to_numpy(dtype=float), t.max(axis=1).to_numpy(dtype=float)) for t in tables.values()])
    axes.set_xlabel("frame")
    axes.set_ylabel(column)
    axes.set_title(f"{column}: seeds {comparison.seeds}, min-max band")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    legend_below(axes)
    return figure


def legend_below(axes, columns: int = 1) -> None:
    """The legend under the axes (outside the data), long labels wrapped to the figure's width."""
    import textwrap

    handles, labels = axes.get_legend_handles_labels()
    width = int(axes.figure.get_figwidth() * 72 / 7 / columns)  # characters of ~7 pt that fit the figure
    axes.legend(handles, [textwrap.fill(label.replace(",", ", "), width) for label in labels], loc="upper center", ncol=columns,
                bbox_to_anchor=(0.5, -0.18), frameon=False, fontsize="small")


def thresholds_of(jobs: list[SweepJob]) -> Thresholds:
    """The thresholds the sweep was configured with (acceptance/ group), else the defaults."""
    for job in jobs:
        values = {k.split(".", 1)[1]: v for k, v in job.config.items() if k.startswith("acceptance.")}
        values.pop("_target_", None)
        if values:
            return Thresholds(**values)
    return Thresholds()


def judge_sweep(sweep_dir: Path, limits: Optional[Thresholds] = None) -> SweepVerdict:
    """Pair and judge the jobs of a sweep folder (nothing is written)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise QveditError(f"sweep folder not found: {sweep_dir}")
    jobs = load_jobs(sweep_dir)
    if not jobs:
        raise QveditError(f"{sweep_dir} holds no job folders with .hydra/config.yaml: is it a multirun sweep folder?")
    limits = limits or thresholds_of(jobs)
    comparisons, messages = pair_jobs(jobs)
    return SweepVerdict(sweep_dir, jobs, [judge(c, limits) for c in comparisons], messages, limits)


def markdown(verdict: SweepVerdict, plots: bool) -> str:
    """acceptance.md; ``plots``: link the per-frame plots (written beside it)."""
    judged, failed = verdict.judged, verdict.failed_jobs
    lines = [f"# Acceptance report: {verdict.sweep_dir}", "",
             f"**Verdict: {'PASS' if verdict.passed else 'FAIL'}** ({sum(bool(c.passed) for c in judged)} of "
             f"{len(judged)} criteria passed, {len(failed)} failed job(s), {len(verdict.jobs)} job(s))", ""]
    lines += ["## Jobs", "", "| job | ttlg | seed | frames | status |", "| --- | --- | --- | --- | --- |"]
    for job in verdict.jobs:
        rows = "-" if job.metrics is None else str(len(job.metrics))
        lines.append(f"| {job.path.name} | {job.ttlg} | {job.config.get('seed')} | {rows} | "
                     f"{'FAILED: ' + job.error if job.error else 'ok'} |")
    if verdict.messages:
        lines += ["", "## Notes", ""] + [f"- {m}" for m in verdict.messages]
    for comparison in verdict.comparisons:
        lines += ["", f"## {comparison.title}", "",
                  f"Seeds {comparison.seeds}, frames 1..{comparison.frames}, median over seeds. "
                  f"Thresholds: {asdict(verdict.limits)}.", "",
                  "| criterion | value | threshold | verdict | detail |", "| --- | --- | --- | --- | --- |"]
        for c in comparison.criteria:
            verdict_text = "skipped" if c.passed is None else ("pass" if c.passed else "FAIL")
            value = "-" if c.value is None else shown(c.value)
            lines.append(f"| {c.name} | {value} | {c.threshold} | {verdict_text} | {c.note} |")
        on, off = comparison.on[comparison.seeds[0]], comparison.off[comparison.seeds[0]]
        lines += ["", "Runs compared: " + ", ".join(
            f"{comparison.on[s].path.name} vs {comparison.off[s].path.name}" for s in comparison.seeds), ""]
        lines += [f"Config keys that differ ({off.path.name} -> {on.path.name}):", ""]
        lines += [f"- `{key}`: {a!r} -> {b!r}" for key, a, b in diff_configs(off.config, on.config)]
        lines += ["", "Drift (median over seeds):", "", *drift_table(comparison)]
        if plots:
            lines += [f"\n![{column}]({plot_name(comparison, column)})" for column in (*PLOTTED, "drift")
                      if (verdict.sweep_dir / plot_name(comparison, column)).is_file()]
    if len(verdict.comparisons) > 1:
        lines += ["", "## Drift by setting", "", *drift_by_setting(verdict.comparisons)]
    return "\n".join(lines) + "\n"


def csv_rows(verdict: SweepVerdict) -> pd.DataFrame:
    rows = [{"comparison": comparison.label, "seeds": " ".join(map(str, comparison.seeds)),
             "frames": comparison.frames, "criterion": c.name, "value": c.value, "threshold": c.threshold,
             "passed": c.passed} for comparison in verdict.comparisons for c in comparison.criteria]
    return pd.DataFrame(rows, columns=["comparison", "seeds", "frames", "criterion", "value", "threshold", "passed"])


def write_report(sweep_dir: str | Path, limits: Optional[Thresholds] = None) -> tuple[bool, Path]:
    """Judge the sweep and write acceptance.md / .csv, the plots and report.html into it.
    Returns (all passed, acceptance.md)."""
    verdict = judge_sweep(Path(sweep_dir), limits)
    written = set()
    for comparison in verdict.comparisons:
        clips = {f"ttlg {comparison.label}": comparison.metrics(True), "ttlg=off": comparison.metrics(False)}
        written |= {plot(comparison, column, verdict.sweep_dir / plot_name(comparison, column)) for column in PLOTTED}
        written.add(plot_drift(clips, comparison.frames, comparison.title,
                               verdict.sweep_dir / plot_name(comparison, "drift")))
    for stale in set(verdict.sweep_dir.glob("acceptance_*.png")) - written:  # of comparisons the sweep no longer has
        stale.unlink(missing_ok=True)
    report = verdict.sweep_dir / "acceptance.md"
    write_text_atomic(report, markdown(verdict, plots=True))
    with atomic_path(verdict.sweep_dir / "acceptance.csv") as partial:
        csv_rows(verdict).to_csv(partial, index=False)
    from qvedit.report.html import write_sweep_html# jinja2 and the previews only where the report is written

    write_sweep_html(verdict)
    return verdict.passed, report


class SweepReport(Callback):
    """Hydra callback: rewrites the report after every job, so a failed job still gets one.

    Hydra skips ``on_multirun_end`` when a job raised; ``on_job_end`` runs for every job, failed
    or not, and records the failure before the report is rewritten.
    """

    def on_job_end(self, config, job_return, **kwargs) -> None:
        hydra = HydraConfig.get()
        if hydra.mode != RunMode.MULTIRUN or _is_search(config):
            return
        if job_return.status.name == "FAILED":
            error = job_return._return_value
            record_job_error(Path(hydra.runtime.output_dir), f"{type(error).__name__}: {error}")
        self._report(Path(hydra.sweep.dir), final=False)

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not _is_search(config):  # a search's trials have no twins; its results are the Pareto front
            self._report(sweep_dir, final=True)
        failed = sorted(p.parent.name for p in sweep_dir.glob(f"*/{JOB_ERROR_FILE}"))
        if failed:
            print(f"qvedit: error: {len(failed)} job(s) failed ({', '.join(failed)}): "
                  f"see {sweep_dir / 'acceptance.md'}", file=sys.stderr)
            sys.exit(1)

    @staticmethod
    def _report(sweep_dir: Path, final: bool) -> None:
        try:
            passed, report = write_report(sweep_dir)
        except Exception as err:  # the report must never take the sweep down
            log.warning("acceptance report not written: %s", err)
            return
        if final:
            log.info("acceptance %s: %s", "PASS" if passed else "FAIL", report)


def _is_search(config) -> bool:
    return bool(OmegaConf.select(config, "tuning.objectives", default=None))


def main(argv: Optional[list[str]] = None) -> int:
    parser = OneLineParser(
        prog="python -m qvedit.accept", description=__doc__.splitlines()[0],
        epilog="Without threshold options the sweep's acceptance.md, .csv and plots are rewritten and printed. "
               "With any, the report is a what-if: printed only, the sweep's files stay as they are. The criteria "
               "and their defaults: docs/METHOD.md, section 5 (\"Does guidance work? The acceptance check\"). "
               "Exit code: 0 every criterion passed, 1 one failed (or a job), 2 bad arguments or not a sweep folder.")
    parser.add_argument("sweep_dir", help="a multirun folder, e.g. runs/multirun/2026-11-26/12-00-00")
    for field in fields(Thresholds):
        tags = tags_of(field)
        kind = whole(tags.min, tags.max) if isinstance(field.default, int) else number(tags.min, tags.max)
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=kind, default=None,
                            help=f"judge with this acceptance.{field.name} instead of the sweep's (default "
                                 f"{field.default})")
    args = parser.parse_args(argv)
    sweep_dir = Path(args.sweep_dir)
    overrides = {k: v for k, v in vars(args).items() if k != "sweep_dir" and v is not None}
    try:
        if not overrides:
            passed, report = write_report(sweep_dir)
            emit(report.read_text())  # a reader that stops early (| head) ends the output quietly
        else:
            jobs_limits = thresholds_of(load_jobs(sweep_dir)) if sweep_dir.is_dir() else Thresholds()
            verdict = judge_sweep(sweep_dir, Thresholds(**{**asdict(jobs_limits), **overrides}))
            passed = verdict.passed
            emit(markdown(verdict, plots=False))
            emit(f"(what-if thresholds {overrides}: {sweep_dir / 'acceptance.md'} is unchanged)")
    except QveditError as err:
        print(f"qvedit: error: {err}", file=sys.stderr)
        return 2
    return 0 if passed else 1
