"""``report.html`` of a sweep and of a run, from the Jinja2 templates beside this module.

Each page is self-contained: it links only files in its own folder or below (plots, previews, the
jobs' pages), so it opens from the file system and from an MLflow artifact view alike.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import jinja2
import markupsafe
import pandas as pd

import qvedit
from qvedit.core.files import write_text_atomic
from qvedit.core.images import read_rgb8
from qvedit.report.confdiff import diff_configs
from qvedit.report.drift import comparison_trends, paired_trends, sides_by_setting
from qvedit.report.previews import cell_size, comparison_gif
from qvedit.report.verdict import PLOTTED, Comparison, SweepVerdict, plot_name
from qvedit.scoring.drift import shown

log = logging.getLogger(__name__)

REPORT = "report.html"


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                                     autoescape=True, trim_blocks=True, lstrip_blocks=True)
    environment.filters["breakable"] = breakable
    return environment


def breakable(text) -> markupsafe.Markup:
    """``text`` (escaped) that a narrow table column may break after each ``_`` or ``.`` (``edge_<wbr>loss``), and
    nowhere else: never inside a word."""
    return markupsafe.Markup(re.sub(r"([_.])", r"\1<wbr>", str(markupsafe.escape(text))))


def _render(template: str, out: Path, **values) -> Path:
    written = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    html = _environment().get_template(template).render(version=qvedit.__version__, written=written, **values)
    return write_text_atomic(out, html)


def page_name(folder: Path) -> str:
    """How a page names its folder: with the date where the default layout keeps it in the folder above
    (``runs/2026-12-01/07-29-44`` -> ``2026-12-01 07-29-44``), else the folder's own name."""
    folder = Path(folder)
    date = folder.resolve().parent.name
    return f"{date} {folder.name}" if re.fullmatch(r"\d{4}-\d{2}-\d{2}", date) else folder.name


def has_cjk(text: str) -> bool:
    """Whether ``text`` holds Chinese, Japanese or Korean characters (the default prompt does)."""
    return any("\u2e80" <= char <= "\u9fff" or "\uac00" <= char <= "\ud7af" or "\uf900" <= char <= "\ufaff"
               or "\uff00" <= char <= "\uffef" for char in str(text))


def _number(value, digits: int = 4) -> str:
    return "-" if value is None else shown(value, f".{digits}g")


def write_sweep_html(verdict: SweepVerdict) -> Path:
    """``<sweep>/report.html``: the verdict, jobs, criteria, plots, off | guided previews, per-frame tables."""
    jobs = []
    for job in verdict.jobs:
        metrics = job.metrics
        jobs.append({"name": job.path.name, "ttlg": job.ttlg, "seed": job.config.get("seed"), "error": job.error,
                     "frames": "-" if metrics is None else len(metrics),
                     "seconds": "-" if metrics is None else _number(metrics["seconds"].mean(), 3),
                     "peak": "-" if metrics is None else _number(metrics["peak_mem_mib"].max(), 6)})
    comparisons = [_comparison(verdict, c) for c in verdict.comparisons]
    return _render("sweep.html", verdict.sweep_dir / REPORT, name=page_name(verdict.sweep_dir), verdict=verdict,
                   passed_count=sum(bool(c.passed) for c in verdict.judged), jobs=jobs,
                   limits=vars(verdict.limits), comparisons=comparisons,
                   by_setting=_by_setting(verdict.comparisons) if len(verdict.comparisons) > 1 else [])


def _comparison(verdict: SweepVerdict, comparison: Comparison) -> dict:
    on, off = comparison.on[comparison.seeds[0]], comparison.off[comparison.seeds[0]]
    criteria = [{"name": c.name, "value": _number(c.value), "threshold": c.threshold, "note": c.note,
                 "verdict": "skipped" if c.passed is None else "pass" if c.passed else "FAIL",
                 "css": "skip" if c.passed is None else "pass" if c.passed else "fail"} for c in comparison.criteria]
    plots = [{"column": column, "file": plot_name(comparison, column)} for column in PLOTTED
             if (verdict.sweep_dir / plot_name(comparison, column)).is_file()]
    gifs = []
    for seed in comparison.seeds:
        name = plot_name(comparison, f"seed{seed}").replace(".png", ".gif").replace("acceptance_", "compare_")
        if _comparison_gif(comparison.off[seed].path, comparison.on[seed].path, comparison.frames,
                           verdict.sweep_dir / name):
            gifs.append({"seed": seed, "file": name})
    columns, table = _frame_table(comparison)
    drift_plot = plot_name(comparison, "drift")
    return {"title": comparison.title, "drift": _drift_rows(comparison),
            "drift_plot": drift_plot if (verdict.sweep_dir / drift_plot).is_file() else None,
            "label": comparison.label, "seeds": comparison.seeds, "frames": comparison.frames, "criteria": criteria,
            "plots": plots, "gifs": gifs, "table_columns": columns, "table": table, "off_name": off.path.name,
            "on_name": on.path.name, "differing": diff_configs(off.config, on.config)}


def _drift_rows(comparison: Comparison) -> list[dict]:
    """Per drift column: guided and off, the median over seeds of the last-quarter mean, growth and slope."""
    return [{"column": column, "cells": [cell for t in sides for cell in (_number(t.last_quarter),
                                                                           _number(t.growth, 3), shown(t.slope, "+.3g"))]}
            for column, *sides in paired_trends(comparison)]


def _by_setting(comparisons: list) -> list[dict]:
    """The sweep's settings side by side on drift (last-quarter mean, growth), off and guided each."""
    rows = []
    for comparison, guided in sides_by_setting(comparisons):  # the off jobs once, however many settings share them
        trends = comparison_trends(comparison, guided)
        cells = [_number(getattr(trends.get(c), name, None), digits) for c in ("color_drift", "edge_offset_px")
                 for name, digits in (("last_quarter", 4), ("growth", 3))]
        rows.append({"setting": comparison.context or "-", "ttlg": comparison.label if guided else "off",
                     "cells": cells})
    return rows


def _frame_table(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Per frame 1..N, the median over seeds of each plotted metric, off and guided."""
    columns, series = [], []
    for column in PLOTTED:
        for side, jobs in (("off", comparison.off), ("guided", comparison.on)):
            values = [job.metrics.set_index("frame")[column] for job in jobs.values() if column in job.metrics]
            if len(values) == len(jobs) and not all(v.isna().all() for v in values):
                columns.append(f"{column} {side}")
                series.append(pd.concat(values, axis=1).median(axis=1))
    rows = [[str(frame)] + [_number(s.get(frame)) for s in series] for frame in range(1, comparison.frames + 1)]
    return columns, rows


def _job_frames(job_dir: Path) -> Path:
    from omegaconf import OmegaConf

    config = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
    folder = OmegaConf.select(config, "io.out_frames_dir", default=None)
    return Path(folder) if folder else job_dir / "frames"


def _comparison_gif(off_dir: Path, on_dir: Path, frames: int, out: Path) -> Optional[Path]:
    """``edge | ttlg=off | guided`` for frames 0..frames of two jobs; None when their files are not there."""
    try:
        edges = _edge_maps(on_dir, frames)
        clips = {}
        for title, job_dir in (("ttlg=off", off_dir), ("guided", on_dir)):
            paths = [_job_frames(job_dir) / f"{i:05d}.png" for i in range(frames + 1)]
            images = [read_rgb8(path) for path in paths]
            cell = cell_size(images[0].size)
            clips[title] = [image.resize(cell) if image.width > cell[0] else image for image in images]
        fps = 8.0
        return comparison_gif(edges, clips, out, fps)
    except Exception as err:  # a preview must never take the report down
        log.debug("no comparison preview %s: %s", out.name, err)
        return None


def _edge_maps(job_dir: Path, frames: int) -> list:
    """Edge maps 1..frames of a finished job, read through its own io settings."""
    from omegaconf import OmegaConf

    from qvedit.core.config_trust import build
    from qvedit.io.layout import RunLayout
    from qvedit.io.source import open_source
    from qvedit.settings.report import MetricsSettings
    from qvedit.settings.schema import register_schemas

    register_schemas()  # the resolvers its config may use
    config = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
    io = build(config.io)  # a sweep folder from elsewhere is data: only qvedit's own settings are built
    layout = replace(RunLayout.resolve(job_dir, io, MetricsSettings()), edges_dir=None)  # read, write nothing
    source = open_source(io, layout)
    size = source.init_image().size
    return [source.edge_frame(k, size) for k in range(frames)]


def write_run_html(run_dir: Path, summary: list[str], settings: dict, metrics: pd.DataFrame, metrics_csv: Path,
                   previews: list[tuple[Path, str]], first_frame: Optional[dict] = None,
                   videos: Optional[list[Path]] = None, keyframes: Sequence[int] = ()) -> Path:
    """``<run>/report.html``: what the run made (``videos``: its mp4), its previews, settings and per-frame table
    (``metrics``, the clip's table, linked to ``metrics_csv``); with ``first_frame``
    (``FirstFrameEdit.report_section``) the first-frame candidates too; with ``keyframes`` (``schedule=segments``)
    the keyframes' rows shaded and each seam (the frame before a keyframe) marked."""
    roles = {**{k - 1: "seam" for k in keyframes}, **{k: "keyframe" for k in keyframes}}
    rows = [([_number(value, 6) if isinstance(value, float) else str(value) for value in row],
             roles.get(getattr(row, "frame", None), "")) for row in metrics.itertuples(index=False)]
    images = [{"file": _relative(path, run_dir), "caption": caption} for path, caption in previews if path.is_file()]
    videos = [_relative(path, run_dir) for path in videos or [] if Path(path).is_file()]
    summary = [relative_to_page(line.strip(), run_dir) for line in summary]
    return _render("run.html", run_dir / REPORT, name=page_name(run_dir), summary=summary,
                   previews=images, settings=[(key, value, has_cjk(value)) for key, value in sorted(settings.items())],
                   metrics_file=_relative(metrics_csv, run_dir), columns=list(metrics.columns), rows=rows,
                   videos=videos, cjk_prompt=has_cjk(settings.get("prompt", "")), first_frame=first_frame,
                   keyframes=list(keyframes))


def relative_to_page(line: str, folder: Path) -> str:
    """``line`` (of the run's summary) with the paths inside ``folder`` written relative to it: the page lies there,
    beside every file it names. Paths elsewhere (``io.out_frames_dir``, ``metrics.path``) stay as they are."""
    for prefix in sorted({str(Path(folder)), str(Path(folder).resolve())}, key=len, reverse=True):
        line = line.replace(prefix + os.sep, "")
    return line


def _relative(path: Path, folder: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(folder).resolve()).as_posix()
    except ValueError:  # written elsewhere (io.out_frames_dir, metrics.path): link it as it is
        return Path(path).resolve().as_uri()


def write_study_html(sweep_dir: Path, study, names: list[str], front: pd.DataFrame, best) -> Path:
    """``<sweep>/report.html`` of an Optuna search: the Pareto plot and table, the tuned preset, every trial."""
    folders = {int(p.name.split("_", 1)[0]): p.name for p in Path(sweep_dir).iterdir()
               if p.is_dir() and p.name.split("_", 1)[0].isdigit()}

    def link(number: int) -> Optional[str]:
        name = folders.get(number)
        return f"{name}/report.html" if name and (Path(sweep_dir) / name / REPORT).is_file() else None

    params = [column for column in front.columns if column not in ("trial", *names)]
    front_rows = [{"trial": int(row["trial"]), "link": link(int(row["trial"])),
                   "scores": [_number(row[n]) for n in names],
                   "chosen": [_number(row[p]) if isinstance(row[p], float) else row[p] for p in params]}
                  for _, row in front.iterrows()]
    trials = [{"number": t.number, "state": t.state.name, "link": link(t.number),
               "scores": [_number(v) for v in (t.values or [None] * len(names))]} for t in study.trials]
    files = [name for name in ("ttlg_tuned.yaml", "optuna_pareto.csv", "optuna_pareto.md")
             if (Path(sweep_dir) / name).is_file()]
    plot = "optuna_pareto.png" if (Path(sweep_dir) / "optuna_pareto.png").is_file() else None
    return _render("study.html", Path(sweep_dir) / REPORT, name=page_name(sweep_dir), study=study.study_name,
                   names=names, params=params, front=front_rows, trials=trials, best=best.number, files=files,
                   plot=plot, folder=str(sweep_dir))
