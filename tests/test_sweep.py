"""Real multirun sweeps, reproducing a sweep job from its folder, and diffing two runs (tiny model, CPU)."""

import pandas as pd
import pytest

from qvedit.report.confdiff import main as diff_main
from tests.browser import assert_page_is_whole
from tests.conftest import THREADS
from tests.conftest import run_qvedit as qvedit


@pytest.mark.xdist_group("acceptance_demo_sweep")
def test_acceptance_sweep_writes_the_report(made):
    # experiment=acceptance_demo max_frames=3 num_inference_steps=4 seed=0,1 -m, run once (also for its golden frames)
    sweep, (result,) = made("acceptance_demo_sweep")
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    common = "max_frames=3,num_inference_steps=4"
    assert jobs == [f"0_{common},seed=0,ttlg=off", f"1_{common},seed=1,ttlg=off",
                    f"2_{common},seed=0,ttlg=edge_gram", f"3_{common},seed=1,ttlg=edge_gram",
                    f"4_{common},seed=0,ttlg=edge_gram_flow", f"5_{common},seed=1,ttlg=edge_gram_flow"]
    assert (result.stdout + result.stderr).count("[INFO] - loading ") == 1  # one model load serves every job
    report = (sweep / "acceptance.md").read_text()
    assert "## ttlg edge_scale=1.0,gram_scale=0.2 vs ttlg=off" in report and "frames 1..2" in report
    assert "## ttlg edge_scale=1.0,gram_scale=0.2,temporal_scale=1.0,temporal_mode=flow vs ttlg=off" in report
    plots = sorted(p.name for p in sweep.glob("acceptance_*.png"))
    assert len(plots) == 8, plots  # edge, Gram, warp error and the drift plot, per comparison
    assert sum(name.endswith("_drift.png") for name in plots) == 2
    table = pd.read_csv(sweep / "acceptance.csv")
    assert {"edge_loss ratio guided/off", "warp_error ratio guided/off"} <= set(table["criterion"])
    metrics = pd.read_csv(sweep / jobs[2] / "metrics.csv")
    assert metrics.columns.tolist() == ["frame", "hops", "edge_loss", "gram_loss", "warp_error", "color_drift",
                                        "edge_offset_px", "lpips_to_init", "lpips_to_prev", "seconds",
                                        "guided_steps", "peak_mem_mib"]
    assert metrics["warp_error"].notna().all() and (metrics["warp_error"] >= 0).all()
    page = assert_page_is_whole(sweep / "report.html")  # real headless Chromium
    assert page["title"].endswith(": PASS") or page["title"].endswith(": FAIL")
    gifs = [src for src, _ in page["images"] if src.startswith("compare_")]
    assert len(gifs) == 4  # edge | off | guided per seed, for both guided presets
    assert f"{jobs[0]}/report.html" in page["links"]
    assert_page_is_whole(sweep / jobs[2] / "report.html")
    checker = qvedit(str(sweep), module="qvedit.accept")
    assert checker.returncode in (0, 1) and "Acceptance report" in checker.stdout


@pytest.mark.long
def test_a_failing_job_still_gets_a_report_and_fails_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    result = qvedit("experiment=tiny_cpu", "io=demo", "num_inference_steps=2", "ttlg=off", "max_frames=2,99",
                    f"hydra.sweep.dir={sweep}", "-m")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "1 job(s) failed (1_io=demo,max_frames=99,num_inference_steps=2,ttlg=off)" in result.stderr
    report = (sweep / "acceptance.md").read_text()
    assert "| 1_io=demo,max_frames=99,num_inference_steps=2,ttlg=off | off | 0 | - | FAILED: max_frames=99 but the 8" in report
    assert (sweep / "0_io=demo,max_frames=2,num_inference_steps=2,ttlg=off" / "frames" / "00001.png").is_file()


@pytest.mark.xdist_group("acceptance_demo_sweep")  # on the worker that made the sweep
def test_rerun_from_a_job_folder_gives_the_same_frames_and_diff_tells_runs_apart(tmp_path, made, capsys):
    sweep, _ = made("acceptance_demo_sweep")
    common = "max_frames=3,num_inference_steps=4"
    first, other = sweep / f"2_{common},seed=0,ttlg=edge_gram", sweep / f"1_{common},seed=1,ttlg=off"
    again = tmp_path / "again"  # the sweep's job made again, alone, from its folder's config
    result = qvedit("--config-path", str(first / ".hydra"), "--config-name", "config", f"hydra.run.dir={again}",
                    env=THREADS)
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(p.name for p in (first / "frames").glob("*.png"))
    assert names == ["00000.png", "00001.png", "00002.png"]
    for name in names:
        assert (first / "frames" / name).read_bytes() == (again / "frames" / name).read_bytes()

    assert diff_main([str(first), str(again)]) == 0
    assert "configs are identical" in capsys.readouterr().out
    assert diff_main([str(first), str(other)]) == 1
    out = capsys.readouterr().out
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert "seed 0 -> 1" in lines and "ttlg.edge_scale 1.0 -> 0.0" in lines and "ttlg.gram_scale 0.2 -> 0.0" in lines
    (only_b,) = [line for line in lines if line.startswith("overrides only in B: ")]
    assert sorted(only_b.removeprefix("overrides only in B: ").split()) == ["seed=1", "ttlg=off"]
    assert diff_main([str(first), str(tmp_path / "nope")]) == 2


def test_diff_shows_values_not_interpolations_and_its_help_says_the_arguments_and_exit_codes(tmp_path, capsys):
    from qvedit.core.files import cache_dir

    for name, model_id in (("a", "${qvedit.cache:tiny-qwen-image-edit-2509}"), ("b", "/models/other")):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text(f"seed: 0\nmodel:\n  model_id: {model_id}\n"
                                                                f"out: ${{hydra:runtime.output_dir}}\n")
    assert diff_main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    out = capsys.readouterr().out
    assert f"model.model_id  '{cache_dir() / 'tiny-qwen-image-edit-2509'}' -> '/models/other'" in out
    assert "qvedit.cache" not in out  # resolved; a ${hydra:...} only Hydra knows stays as written (and equal here)
    with pytest.raises(SystemExit) as done:
        diff_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert done.value.code == 0 and "RUN_A" in text and "RUN_B" in text
    assert "Exit code: 0 the configs are equal, 1 they differ, 2 a folder is not a run folder" in text
    with pytest.raises(SystemExit) as refused:
        diff_main([str(tmp_path / "a")])
    assert refused.value.code == 2 and capsys.readouterr().err.count("\n") == 1  # one line, as python -m qvedit's


# Twenty overrides with long values, as a user's sweep or a search's floats make them: the folder names they
# made were over 255 bytes (OSError: File name too long, the sweep lost).
LONG_OVERRIDES = [
    "ttlg.edge_size=256", "ttlg.gram_size=256", "ttlg.temporal_size=64", "ttlg.every=1", "ttlg.color_scale=0.0",
    "acceptance.edge_ratio=0.950000000000001", "acceptance.gram_ratio=0.980000000000001",
    "acceptance.warp_ratio=1.000000000000001", "acceptance.drift_ratio=1.000000000000001",
    "acceptance.edge_frames_fraction=0.600000000000001", "acceptance.lpips_prev_min=0.005000000000001",
    "acceptance.lpips_init_min=0.010000000000001", "anchor.color_strength=0.999999999999999",
    "metrics.size=256", "metrics.gram_size=256", "flow.method=dis", "first_frame.num_inference_steps=40",
    "first_frame.negative_prompt=a_negative_prompt_long_enough_to_fill_a_good_part_of_a_folder_name_by_itself",
    "negative_prompt=another_negative_prompt_with_words_enough_to_make_folder_names_long_on_their_own_too",
    "ttlg.lr=0.050000000000000001",
]


def assert_bounded_job_folders(sweep, jobs: int):
    folders = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert len(folders) == jobs
    for folder in folders:
        assert len(folder.name.encode()) <= 96 and "~" in folder.name, folder.name
        recorded = (folder / ".hydra" / "overrides.yaml").read_text()
        assert "ttlg.temporal_size=64" in recorded and "first_frame.negative_prompt=a_negative" in recorded
    return folders


@pytest.mark.long
def test_a_sweep_with_twenty_long_overrides_bounds_its_folder_names_and_still_pairs_its_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    result = qvedit("experiment=tiny_cpu", "io=demo", "max_frames=2", "num_inference_steps=2", "ttlg=off,edge",
                    *LONG_OVERRIDES, f"hydra.sweep.dir={sweep}", "-m")
    assert result.returncode in (0, 1) and "Traceback" not in result.stderr, result.stderr[-3000:]
    off, edge = assert_bounded_job_folders(sweep, 2)
    assert off.name.startswith("0_") and "ttlg=off," in off.name and "ttlg=edge," in edge.name
    report = (sweep / "acceptance.md").read_text()
    assert "## ttlg edge_scale=1.0 vs ttlg=off" in report and "FAILED" not in report  # paired by settings, not names


@pytest.mark.long
def test_an_optuna_search_with_twenty_long_overrides_bounds_its_folder_names(tmp_path):
    sweep = tmp_path / "search"
    result = qvedit("experiment=tiny_cpu", "io=demo", "hparams_search=ttlg_optuna", "hydra.sweeper.n_trials=2",
                    "max_frames=2", "num_inference_steps=2", *LONG_OVERRIDES, f"hydra.sweep.dir={sweep}", "-m")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert_bounded_job_folders(sweep, 2)
    assert (sweep / "optuna_pareto.csv").is_file()
