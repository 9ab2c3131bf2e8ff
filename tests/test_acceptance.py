"""The acceptance checker on hand-made sweeps: pass, fail, missing twin, one seed, failed job."""

from html import escape
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from qvedit.core.errors import QveditError
from qvedit.io.layout import JOB_ERROR_FILE
from qvedit.report.acceptance import main, write_report


def make_job(sweep: Path, name: str, seed: int, ttlg: dict, edge, gram, lpips=(0.05, 0.2), extra=None):
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    config = {"seed": seed, "prompt": "p", "num_inference_steps": 8,
              "ttlg": {"edge_scale": 0.0, "gram_scale": 0.0, "temporal_scale": 0.0, "lr": 0.05, **ttlg},
              "metrics": {"path": None}, **(extra or {})}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={seed}"]))
    if edge is not None:
        frames = len(edge)
        pd.DataFrame({"frame": range(1, frames + 1), "edge_loss": edge, "gram_loss": gram,
                      "lpips_to_init": [lpips[1]] * frames, "lpips_to_prev": [lpips[0]] * frames,
                      "seconds": 1.0, "guided_steps": 0, "peak_mem_mib": 10.0}).to_csv(job / "metrics.csv", index=False)
    return job


def sweep_with(tmp_path, on_factor=0.9, gram_factor=0.9, seeds=(0, 1, 2), frames=10, off=True):
    sweep = tmp_path / "sweep"
    rng = np.random.default_rng(0)
    for seed in seeds:
        base_edge = 0.06 + 0.01 * rng.random(frames)
        base_gram = 0.001 + 0.0001 * rng.random(frames)
        if off:
            make_job(sweep, f"{seed}_seed={seed},ttlg=off", seed, {}, base_edge, base_gram)
        make_job(sweep, f"{3 + seed}_seed={seed},ttlg=edge_gram", seed, {"edge_scale": 1.0, "gram_scale": 0.2},
                 base_edge * on_factor, base_gram * gram_factor)
    return sweep


def test_passing_sweep(tmp_path):
    sweep = sweep_with(tmp_path)
    passed, report = write_report(sweep)
    text = report.read_text()
    assert passed and "**Verdict: PASS**" in text
    assert "frames 1..8" in text  # N = min(8, T-1)
    assert "`ttlg.edge_scale`: 0.0 -> 1.0" in text and "`ttlg.gram_scale`: 0.0 -> 0.2" in text
    table = pd.read_csv(sweep / "acceptance.csv")
    assert set(table["criterion"]) >= {"edge_loss ratio guided/off", "gram_loss ratio guided/off",
                                       "lpips_to_prev < lpips_to_init"}
    assert table["passed"].all()
    assert abs(table.set_index("criterion").loc["edge_loss ratio guided/off", "value"] - 0.9) < 1e-9
    assert sorted(p.name for p in sweep.glob("*.png")) == [  # the drift plot shows gram_loss and lpips_to_init
        "acceptance_edge_scale1.0_gram_scale0.2_drift.png", "acceptance_edge_scale1.0_gram_scale0.2_edge_loss.png",
        "acceptance_edge_scale1.0_gram_scale0.2_gram_loss.png"]
    assert main([str(sweep)]) == 0


@pytest.mark.parametrize("on_factor, gram_factor, failing", [
    (0.97, 0.9, "edge_loss ratio guided/off"),  # only 3% better: the default threshold wants 5%
    (0.9, 0.99, "gram_loss ratio guided/off"),  # only 1% better: the default threshold wants 2%
])
def test_failing_sweep_names_the_criterion(tmp_path, on_factor, gram_factor, failing):
    sweep = sweep_with(tmp_path, on_factor, gram_factor)
    passed, report = write_report(sweep)
    assert not passed and "**Verdict: FAIL**" in report.read_text()
    table = pd.read_csv(sweep / "acceptance.csv").set_index("criterion")
    assert not table.loc[failing, "passed"]
    assert main([str(sweep)]) == 1


def test_thresholds_come_from_the_sweep_config_and_the_command_line(tmp_path, capsys):
    sweep = sweep_with(tmp_path, on_factor=0.97)
    assert main([str(sweep)]) == 1
    written = {p.name: p.read_bytes() for p in sweep.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main([str(sweep), "--edge-ratio", "0.98"]) == 0  # a what-if: printed, the sweep's files untouched
    out = capsys.readouterr().out
    assert "**Verdict: PASS**" in out and "acceptance.md is unchanged" in out
    assert {p.name: p.read_bytes() for p in sweep.iterdir() if p.is_file()} == written


def test_median_over_seeds_ignores_one_bad_seed(tmp_path):
    sweep = sweep_with(tmp_path)
    metrics = pd.read_csv(sweep / "3_seed=0,ttlg=edge_gram" / "metrics.csv")
    metrics["edge_loss"] *= 3  # seed 0 is an outlier
    metrics.to_csv(sweep / "3_seed=0,ttlg=edge_gram" / "metrics.csv", index=False)
    assert write_report(sweep)[0]


def test_missing_off_twin_is_a_message_not_a_crash(tmp_path):
    sweep = sweep_with(tmp_path, off=False)
    passed, report = write_report(sweep)
    assert not passed and "has no ttlg=off twin" in report.read_text()
    assert main([str(sweep)]) == 1


def test_one_seed_is_judged_with_a_warning(tmp_path):
    passed, report = write_report(sweep_with(tmp_path, seeds=(0,)))
    assert passed and "only seed 0 has both runs" in report.read_text()


def test_a_failed_job_is_reported_with_its_reason(tmp_path):
    sweep = sweep_with(tmp_path)
    job = make_job(sweep, "6_seed=3,ttlg=off", 3, {}, None, None)
    (job / JOB_ERROR_FILE).write_text("max_frames=99 but the 8 edge frames allow at most 9 output frames\n")
    make_job(sweep, "7_seed=4,ttlg=off", 4, {}, None, None)  # killed before its first frame
    passed, report = write_report(sweep)
    text = report.read_text()
    assert not passed
    assert "| 6_seed=3,ttlg=off | off | 3 | - | FAILED: max_frames=99" in text
    assert "7_seed=4,ttlg=off" in text and "did not finish" in text


def test_settings_that_differ_beyond_ttlg_are_not_paired(tmp_path):
    sweep = tmp_path / "sweep"
    make_job(sweep, "0", 0, {}, [0.06] * 8, [0.001] * 8, extra={"num_inference_steps": 20})
    make_job(sweep, "1", 0, {"edge_scale": 1.0}, [0.05] * 8, [0.001] * 8)
    passed, report = write_report(sweep)
    assert not passed and "no ttlg=off twin" in report.read_text()


def test_not_a_sweep_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(QveditError, match="no job folders"):
        write_report(tmp_path)
    assert main([str(tmp_path / "nope")]) == 2
    assert "sweep folder not found" in capsys.readouterr().err


def test_report_files_are_replaced_whole_or_not_at_all(tmp_path):
    from qvedit.core.files import atomic_path as replaced_whole

    report = tmp_path / "acceptance.md"
    report.write_text("previous report\n")
    with pytest.raises(RuntimeError):
        with replaced_whole(report) as partial:
            partial.write_text("half a rep")
            raise RuntimeError("job killed while writing")
    assert report.read_text() == "previous report\n"
    with replaced_whole(report) as partial:
        partial.write_text("new report\n")
    assert report.read_text() == "new report\n"
    assert [p.name for p in tmp_path.iterdir()] == ["acceptance.md"]


def test_jobs_pair_across_output_paths_but_not_across_settings(tmp_path):
    """Keys tagged path="output" in the schema (io.out_video, io.edges_dir ...) never split a pair."""
    sweep = tmp_path / "sweep"
    edge, gram = [0.06] * 4, [0.001] * 4
    make_job(sweep, "0_off", 0, {}, edge, gram, extra={"io": {"edges_dir": "a", "out_video": "a.mp4"}})
    make_job(sweep, "1_on", 0, {"edge_scale": 1.0}, [0.05] * 4, gram,
             extra={"io": {"edges_dir": "b", "out_video": "b.mp4"}})
    make_job(sweep, "2_on_nearest", 0, {"edge_scale": 1.0}, [0.05] * 4, gram, extra={"io": {"resize": "nearest"}})
    write_report(sweep)
    text = (sweep / "acceptance.md").read_text()
    assert "Runs compared: 1_on vs 0_off" in text
    assert "has no ttlg=off twin" in text  # 2_on_nearest: io.resize changes frames, so no twin


def test_the_report_says_when_the_warp_error_came_from_edge_maps(tmp_path):
    sweep = tmp_path / "sweep"
    edge, gram = [0.06] * 4, [0.001] * 4
    make_job(sweep, "0_off", 0, {}, edge, gram, extra={"io": {"init_frame": "i.png", "source_frames_dir": None}})
    make_job(sweep, "1_on", 0, {"edge_scale": 1.0}, [0.05] * 4, gram,
             extra={"io": {"init_frame": "i.png", "source_frames_dir": None}})
    write_report(sweep)
    assert "2 job(s) had no source frames (io.source_frames_dir)" in (sweep / "acceptance.md").read_text()


def test_the_html_report_holds_the_verdict_and_every_criterion(tmp_path):
    sweep = sweep_with(tmp_path, on_factor=0.97)
    write_report(sweep)
    html = (sweep / "report.html").read_text()
    assert "<title>qvedit sweep sweep: FAIL</title>" in html and '<span class="verdict fail">FAIL</span>' in html
    table = pd.read_csv(sweep / "acceptance.csv")
    assert all(f"<td>{escape(name)}</td>" in html for name in table["criterion"])
    assert all(f'src="{p.name}"' in html for p in sweep.glob("acceptance_*.png"))
    assert "src=\"/" not in html and "file://" not in html  # relative links only


def test_a_plot_keeps_its_legend_off_the_data_inside_the_canvas_with_whole_frame_ticks(tmp_path):
    """The longest label a sweep makes (flow guidance) and 4 frames (where matplotlib would tick 1.25, 1.5)."""
    from qvedit.report.acceptance import judge_sweep, plot_figure

    sweep = tmp_path / "sweep"
    rng = np.random.default_rng(0)
    flow = {"edge_scale": 1.0, "gram_scale": 0.2, "temporal_scale": 1.0, "temporal_mode": "flow"}
    for seed in (0, 1):
        edge, gram = 0.06 + 0.01 * rng.random(4), 0.001 + 0.0001 * rng.random(4)
        make_job(sweep, f"{seed}_seed={seed},ttlg=off", seed, {}, edge, gram)
        make_job(sweep, f"{2 + seed}_seed={seed},ttlg=edge_gram_flow", seed, flow, edge * 0.9, gram * 0.9)
    (comparison,) = judge_sweep(sweep).comparisons
    figure = plot_figure(comparison, "edge_loss")
    figure.tight_layout()
    renderer = figure.canvas.get_renderer()
    canvas = figure.bbox
    (axes,) = figure.axes
    for artist in (figure, axes.get_legend(), axes.xaxis.label, axes.yaxis.label, axes.title):
        box = artist.get_tightbbox(renderer) if artist is figure else artist.get_window_extent(renderer)
        assert canvas.x0 - 1 <= box.x0 and box.x1 <= canvas.x1 + 1 and canvas.y0 - 1 <= box.y0 \
            and box.y1 <= canvas.y1 + 1, (artist, box, canvas)
    assert not axes.get_legend().get_window_extent(renderer).overlaps(axes.get_window_extent(renderer))
    ticks = [t for t in axes.get_xticks() if 1 <= t <= 4]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert any("temporal_mode=flow" in text.get_text().replace("\n", "") for text in axes.get_legend().get_texts())


def test_the_sweep_page_fits_1280_pixels_and_its_title_has_the_date(tmp_path):
    """Real job names (every override, no space to break at) and a failed job's message."""
    from tests.browser import assert_page_is_whole

    sweep = tmp_path / "multirun" / "2026-12-01" / "07-29-44"
    rng = np.random.default_rng(0)
    long = "max_frames=9,num_inference_steps=8,seed={seed},ttlg.last_steps=3,ttlg.lr=0.05,ttlg={ttlg},io=demo"
    for seed in (0, 1):
        edge, gram = 0.06 + 0.01 * rng.random(8), 0.001 + 0.0001 * rng.random(8)
        make_job(sweep, f"{seed}_" + long.format(seed=seed, ttlg="off"), seed, {}, edge, gram)
        make_job(sweep, f"{2 + seed}_" + long.format(seed=seed, ttlg="edge_gram_flow"), seed,
                 {"edge_scale": 1.0, "gram_scale": 0.2}, edge * 0.9, gram * 0.9)
    failed = make_job(sweep, "4_" + long.format(seed=2, ttlg="edge_gram_flow"), 2, {"edge_scale": 1.0}, None, None)
    (failed / JOB_ERROR_FILE).write_text("max_frames=99 but the 8 edge frames allow at most 9 output frames: " * 3)
    for job in sweep.iterdir():
        (job / "report.html").write_text("<!doctype html><title>job</title>")
    write_report(sweep)
    page = assert_page_is_whole(sweep / "report.html")  # also: not wider than a 1280 px window
    assert page["title"].startswith("qvedit sweep 2026-12-01 07-29-44: ")
    assert "FAILED: max_frames=99" in page["text"]


def test_every_plot_keeps_everything_it_draws_inside_the_picture(tmp_path):
    """Every plot qvedit writes, with the longest labels it makes (flow guidance, three seeds) and frame 1 far above
    the others (its warp error is against the input frame 0): no label or legend is cut at an edge, so the PNG's
    outermost pixels are all background; and each y axis starts at 0, so a small change looks small."""
    import importlib.util
    import sys

    import optuna
    from PIL import Image

    from qvedit.report.drift import drift_figure, plot_drift
    from qvedit.report.tuning import _plot
    from tests.conftest import REPO

    sweep = tmp_path / "sweep"
    rng = np.random.default_rng(0)
    flow = {"edge_scale": 1.0, "gram_scale": 0.2, "temporal_scale": 1.0, "temporal_mode": "flow"}
    for seed in (0, 1, 2):
        for name, ttlg, factor in ((f"{seed}_seed={seed},ttlg=off", {}, 1.0),
                                   (f"{3 + seed}_seed={seed},ttlg=edge_gram_flow", flow, 0.9)):
            job = make_job(sweep, name, seed, ttlg, (0.06 + 0.01 * rng.random(8)) * factor, 4e-4 + 1e-6 * rng.random(8))
            table = pd.read_csv(job / "metrics.csv")
            table["warp_error"] = [0.25] + list(0.02 + 0.001 * rng.random(7))
            table["color_drift"], table["edge_offset_px"] = 39 + 0.002 * rng.random(8), 5 + rng.random(8)
            table.to_csv(job / "metrics.csv", index=False)
    write_report(sweep)
    run_table = pd.read_csv(job / "metrics.csv")
    pngs = [*sweep.glob("acceptance_*.png"),
            plot_drift({"guided": {0: run_table}, "ttlg=off": {0: run_table}}, None, "drift over the clip",
                       tmp_path / "drift.png")]
    study = optuna.create_study(directions=["minimize", "minimize"])
    for values in ((0.9, 0.95), (0.8, 1.0), (1.0, 0.85)):
        study.add_trial(optuna.trial.create_trial(values=list(values), params={}, distributions={}))
    pngs.append(_plot(study, ["edge_loss", "warp_error"], study.best_trials[0], tmp_path / "optuna_pareto.png"))
    spec = importlib.util.spec_from_file_location("drift_benchmark", REPO / "benchmarks" / "drift.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    curves = {(name, ttlg): pd.Series(39 + rng.random(8), index=range(1, 9)) for name in benchmark.SETTINGS
              for ttlg in ("off", "edge_gram")}
    from qvedit.core.files import write_figure_png

    pngs.append(write_figure_png(benchmark.curves_figure(curves), tmp_path / "bench_drift.png", lay_out=False))
    sys.modules.pop("drift_benchmark", None)
    assert len(pngs) == 7  # edge_loss, gram_loss, warp_error and drift of the sweep; a run's drift, Pareto, benchmark
    for png in pngs:
        pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        assert (border == 255).all(), f"{png.name}: something is cut at an edge"
    figure = drift_figure({"guided": {0: run_table}}, None, "drift")
    assert all(axis.get_ylim()[0] == 0 for axis in figure.axes)  # color_drift 39.000..39.002 is not zoomed into
    warp = [p for p in pngs if p.name.endswith("_warp_error.png")]
    assert warp  # frame 1 (0.25) is above its axis, written; the later frames (~0.02) fill the panel
