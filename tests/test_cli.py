"""``python -m qvedit`` as a user runs it: the demo end to end, and bad input as one-line errors."""

import re

import pytest
import yaml

from tests.browser import assert_page_is_whole
from tests.conftest import REPO, THREADS
from tests.conftest import run_qvedit as qvedit


@pytest.mark.xdist_group("demo")
def test_demo_runs_end_to_end_guided_and_says_what_guidance_changed(made):
    run_dir, (result,) = made("demo")  # python -m qvedit experiment=demo, run once (also for its golden frames)
    frames = sorted(p.name for p in (run_dir / "frames").glob("*.png"))
    assert frames == [f"{i:05d}.png" for i in range(9)]
    header, *rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert header.split(",") == ["frame", "hops", "edge_loss", "gram_loss", "warp_error", "color_drift",
                                 "edge_offset_px", "lpips_to_init", "lpips_to_prev", "seconds", "guided_steps",
                                 "peak_mem_mib"]
    assert len(rows) == 8 and all(int(row.split(",")[10]) == 8 for row in rows)  # every one of the 8 steps guided
    assert [row.split(",")[1] for row in rows] == [row.split(",")[0] for row in rows]  # a chain: hops = frame
    assert b"\r" not in (run_dir / "metrics.csv").read_bytes()
    assert len(list((run_dir / "unguided" / "frames").glob("*.png"))) == 9  # the twin without guidance
    assert (run_dir / "preview.png").is_file() and (run_dir / "preview.gif").is_file()
    page = assert_page_is_whole(run_dir / "report.html")  # real headless Chromium
    assert [src for src, _ in page["images"]] == ["compare_unguided.gif", "preview.gif", "preview.png", "drift.png"]
    saved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert saved["model"]["_target_"] == "qvedit.settings.model.ToyModel"  # the toy model that really edits
    assert "experiment=demo" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    out = result.stdout
    assert "guidance edge 1, gram 0.2: 8 of 8 denoising steps per frame took a guidance step" in out
    change = re.search(r"guided vs unguided .*: edge_loss ([\d.]+) vs ([\d.]+) \(([-+]\d+)%\)", out)
    assert change and float(change[1]) < float(change[2])  # guidance lowered the edge loss
    assert "next:" in out and "experiment=acceptance_demo -m" in out and "experiment=tiny_cpu" in out
    assert summary_shape(out.split("qvedit: made frames", 1)[1], run_dir) == summary_shape(readme_demo_output(), None)
    assert f"look: {run_dir / 'preview.png'}" in out
    # stderr is a pipe here, not a terminal: a log line per frame, no progress-bar escape codes
    assert "frame 8 of 8 done in" in result.stdout + result.stderr
    assert "\x1b[" not in result.stdout + result.stderr and "\x1b[" not in (run_dir / "main.log").read_text()
    # OpenMP's threads wait passively (never spin against other work on shared cores); the suite's thread count kept
    threads = int(THREADS["OMP_NUM_THREADS"])
    assert (f"CPU: {threads} thread{'s' if threads > 1 else ''} (OMP_NUM_THREADS={threads}), OMP_WAIT_POLICY=PASSIVE"
            in (run_dir / "main.log").read_text())


def test_cpu_threads_wait_passively_and_what_a_user_set_is_kept(monkeypatch):
    import os

    from qvedit.core.cpu_threads import use_cpu_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    environ = {}
    assert use_cpu_threads(environ) == {"OMP_WAIT_POLICY": "PASSIVE"} == environ  # torch's own count: the cores
    mine = {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "3"}
    assert use_cpu_threads(mine) == {} and mine == {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "3"}
    monkeypatch.setattr(os, "cpu_count", lambda: 8)  # taskset or a container's cpuset: 2 of the machine's 8 cores
    assert use_cpu_threads({}) == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "2"}


def readme_demo_output() -> str:
    """The demo's printed lines as the README shows them (its first code block after the demo's paragraph)."""
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index("qvedit: made frames 1..8 of 9", readme.index("The demo runs")):]
    return block[:block.index("```")].split("qvedit: made frames", 1)[1]


def summary_shape(text: str, run_dir) -> list[str]:
    """The lines with numbers and the run folder blanked: the README's sample and a run must match in shape
    (the numbers' last digits depend on the CPU)."""
    if run_dir is not None:
        text = text.replace(str(run_dir), "RUN")
    text = re.sub(r"runs/\d{4}-\d{2}-\d{2}/\d{2}-\d{2}-\d{2}", "RUN", text)
    return [re.sub(r"[-+]?\d[\d.e-]*", "N", line).rstrip() for line in text.strip().splitlines()]


def test_help_is_qvedits_own(tmp_path):
    result = qvedit("--help")
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    assert text.startswith("qvedit: video editing with Qwen-Image-Edit-2509")
    assert "io:             frames (default), demo, demo_long, shapes, video" in text
    assert ("ttlg:           off (default), edge, edge_gram, edge_gram_color, edge_gram_flow, edge_gram_temporal, "
            "gram") in text
    assert "flow:           dis (default), raft" in text
    assert "schema" not in text and "Powered by Hydra" not in text
    assert "python -m qvedit experiment=demo" in text and "experiment=tiny_cpu io.init_frame=" in text
    assert re.search(r"^  num_inference_steps=50 +denoising steps per frame$", text, re.M)
    assert re.search(r"^  ttlg\.last_steps=10 +guide only the last N denoising steps$", text, re.M)


@pytest.mark.parametrize("override, guess", [
    ("num_inference_step=4", "num_inference_steps"), ("+num_inference_step=4", "num_inference_steps"),
    ("++ttlg.edge_scal=1", "ttlg.edge_scale"), ("io.init_frme=x.png", "io.init_frame"), ("tllg=edge", "ttlg"),
])
def test_a_misspelt_key_names_the_closest_real_one_also_with_plus(tmp_path, override, guess):
    result = qvedit("experiment=demo", override, f"hydra.run.dir={tmp_path / 'run'}")
    one_line_error(result, f"did you mean {guess}?", override)
    assert not (tmp_path / "run").exists()  # refused before Hydra made a run folder


def test_a_key_of_another_io_option_added_with_plus_is_refused(tmp_path):
    result = qvedit("experiment=demo", "+io.rgb_video=clip.mp4", f"hydra.run.dir={tmp_path / 'run'}")
    one_line_error(result, "io.rgb_video is not a key of the io option in use", "io=")
    assert not (tmp_path / "run").exists()  # the failed run's folder is gone again


def one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("qvedit: error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0]


def test_no_inputs_names_the_missing_keys_and_the_demo_and_leaves_no_folder(tmp_path):
    one_line_error(qvedit(f"hydra.run.dir={tmp_path / 'run'}"), "io.init_frame", "io.edge_frames_dir",
                   "experiment=demo")
    assert not (tmp_path / "run").exists()


def test_the_demo_never_writes_its_clip_outside_the_cache(tmp_path):
    result = qvedit("experiment=demo", f"io.init_frame={tmp_path / 'typo' / 'init.png'}",
                    f"hydra.run.dir={tmp_path / 'run'}")
    one_line_error(result, "io=shapes makes its clip only in", "io=frames")  # the demo's clip
    assert not (tmp_path / "typo").exists()


def test_unknown_model_offline_is_a_clear_error_with_every_problem_before_loading(tmp_path, clip):
    """Offline without the model nor the VGG weights: both in the one line, the model first (it matters most)."""
    init, edges = clip
    result = qvedit("model.model_id=nobody/no-such-model", f"io.init_frame={init}", f"io.edge_frames_dir={edges}",
                    "device=cpu", f"hydra.run.dir={tmp_path}", env={"TORCH_HOME": str(tmp_path / "torch")})
    one_line_error(result, "cannot load model 'nobody/no-such-model' offline", "model=tiny", "vgg16-397923af.pth")
    error = next(line for line in result.stderr.splitlines() if line.startswith("qvedit: error:"))
    assert error.index("cannot load model") < error.index("vgg16-397923af.pth")
    assert "stacktrace" not in result.stderr.lower()  # nothing points at a traceback that is never shown
    assert "full 20.4 B-parameter model on the CPU takes hours per frame" in result.stdout + result.stderr


def test_too_many_frames_asked_keeps_nothing_half_done(tmp_path, clip):
    init, edges = clip
    result = qvedit("model=tiny", "device=cpu", "dtype=fp32", "metrics=none", "max_frames=9", f"io.init_frame={init}",
                    f"io.edge_frames_dir={edges}", f"hydra.run.dir={tmp_path}")
    one_line_error(result, "max_frames=9", "at most 4")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_says_what_to_pass(tmp_path, clip):
    init, edges = clip
    result = qvedit("model=tiny", f"io.init_frame={init}", f"io.edge_frames_dir={edges}", f"hydra.run.dir={tmp_path}")
    one_line_error(result, "device=cpu")


@pytest.mark.long
def test_metrics_without_vgg_weights_offline_say_what_to_do(tmp_path, clip):
    init, edges = clip
    result = qvedit("model=tiny", "device=cpu", f"io.init_frame={init}", f"io.edge_frames_dir={edges}",
                    f"hydra.run.dir={tmp_path}", env={"TORCH_HOME": str(tmp_path / "torch")})
    one_line_error(result, "vgg16-397923af.pth", "metrics=none", "metrics.vgg_weights=random")
    assert "ttlg.vgg_weights" not in result.stderr  # the key that fixes the metrics is metrics.vgg_weights


@pytest.mark.long
def test_a_slow_cpu_setting_is_named_before_the_run(tmp_path, clip):
    init, edges = clip
    result = qvedit("experiment=tiny_cpu", "metrics=none", "condition_area=1048576", "max_frames=1",
                    f"io.init_frame={init}", f"io.edge_frames_dir={edges}", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "condition_area=1048576" in result.stdout + result.stderr
    assert "pass condition_area=output" in result.stdout + result.stderr


def test_misspelt_key_fails_before_running(tmp_path):
    result = qvedit("ttlg.edge_scal=1", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "edge_scal" in result.stderr


@pytest.mark.parametrize("argv, line", [
    (["--max-frames", "6"], "--max-frames 6: qvedit takes key=value overrides, not --options: pass max_frames=6"),
    (["--max_frames=6"], "--max_frames=6: qvedit takes key=value overrides, not --options: pass max_frames=6"),
    (["--keep-frames"], "--keep-frames: qvedit takes key=value overrides, not --options: pass io.keep_frames=VALUE"),
    (["io.init_frame=/data/my", "clip.png"], "clip.png is not key=value (every override is key=value): if it is the "
                                             "rest of a value with a space, quote the whole override: "
                                             "'io.init_frame=/data/my clip.png'"),
])
def test_an_argparse_habit_or_an_unquoted_space_is_one_line_naming_the_fix(tmp_path, argv, line):
    result = qvedit(*argv, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and result.stderr == f"qvedit: error: {line}\n", result.stderr
    assert not (tmp_path / "run").exists()


def test_overrides_after_an_option_of_hydras_are_taken():
    """experiment=demo -m seed=0,1: Hydra took the overrides as one run of words, and refused those after -m."""
    from qvedit.cli.override_keys import overrides_last

    assert overrides_last(["experiment=demo", "-m", "seed=0,1"]) == ["-m", "experiment=demo", "seed=0,1"]
    result = qvedit("experiment=demo", "--cfg", "job", "seed=3")
    assert result.returncode == 0 and "seed: 3" in result.stdout.splitlines(), result.stderr[-2000:]


@pytest.mark.parametrize("override, fragments", [
    ("ttlg=edgegram", ["ttlg=edgegram is not an option of ttlg: did you mean edge_gram?", "edge_gram_flow, "]),
    ("experiment=tiny", ["did you mean tiny_cpu?"]),
    ("num_inference_steps=abc", ["num_inference_steps=abc is not valid", "an integer from 1 to 1000"]),
    ("ttlg.lr=abc", ["ttlg.lr takes a number >= 0"]),
    ("compare_unguided=maybe", ["compare_unguided takes true or false"]),
    ("model.scheduler={bogus_key:1}", ["bogus_key is not a FlowMatchEulerDiscreteScheduler setting", "shift, "]),
    ("+model.scheduler={bogus_key:1}", ["bogus_key is not a FlowMatchEulerDiscreteScheduler setting"]),
    ("model.loras=abc", ["model.loras=abc is not valid", "a list of entries", "path, weight_name, scale"]),
    ("seed=0,abc", ["seed=abc is not valid"]),  # each value of a sweep
])
def test_a_value_hydra_would_refuse_is_named_with_what_the_key_takes(override, fragments):
    from qvedit.cli.override_values import override_problems

    (problem,) = override_problems(["experiment=demo", override, "-m"])
    for fragment in fragments:
        assert fragment in problem


def test_values_a_key_takes_pass(tmp_path):
    from qvedit.cli.override_values import override_problems

    # each as a shell hands it over: the quotes a user types around an override never reach qvedit
    assert override_problems(["ttlg=edge_gram,off", "seed=range(3)", "ttlg.lr=interval(0.01,0.1)", "max_area=null",
                              "model.loras=[{path:a.safetensors,scale:0.5}]", "model.loras=[{path:a.safetensors}]",
                              "model.loras=[]", "+model.scheduler={shift:3.0}", "model.scheduler={shift:3.0}",
                              "perf.fp8_keep_bf16=[img_in,proj_out]", "tuning.objectives=[edge_loss,warp_error]",
                              f"io.init_frame={tmp_path}/x.png", "io.rgb_video=${oc.env:HOME}/a.mp4", "-m"]) == []


@pytest.mark.parametrize("overrides, expected", [
    (["model.loras=[{path:lora.safetensors,scale:0.0}]"],
     {"model": {"loras": [{"path": "lora.safetensors", "weight_name": None, "scale": 0.0}]}}),
    (["model.loras=[{path:lora.safetensors}]"],
     {"model": {"loras": [{"path": "lora.safetensors", "weight_name": None, "scale": 1.0}]}}),
    (["model.loras=[{path:a.safetensors},{path:b.safetensors,weight_name:w.safetensors,scale:0.5}]"],
     {"model": {"loras": [{"path": "a.safetensors", "weight_name": None, "scale": 1.0},
                          {"path": "b.safetensors", "weight_name": "w.safetensors", "scale": 0.5}]}}),
    (["model.scheduler={shift:3.0}"], {"model": {"scheduler": {"shift": 3.0}}}),
    (["experiment=lightning", "model=tiny", "model.scheduler={shift:3.0}"],  # merged over the preset's values
     {"model": {"scheduler": {"shift": 3.0, "base_shift": 1.0986122886681098, "use_dynamic_shifting": True}}}),
    (["perf.fp8_keep_bf16=[img_in,proj_out]"], {"perf": {"fp8_keep_bf16": ["img_in", "proj_out"]}}),
    (["tuning.objectives=[edge_loss,warp_error]"], {"tuning": {"objectives": ["edge_loss", "warp_error"]}}),
])
def test_keys_taking_a_list_or_a_dict_take_what_a_shell_hands_over(overrides, expected):
    """A real command line through python -m qvedit (the argv a shell gives, no quotes left): composed as typed."""
    result = qvedit("experiment=tiny_cpu", "io=demo", *overrides, "--cfg", "job")
    assert result.returncode == 0 and "qvedit: error" not in result.stderr, result.stderr[-2000:]
    composed = yaml.safe_load(result.stdout)

    def contains(node, wanted):
        if isinstance(wanted, dict):
            return all(key in node and contains(node[key], value) for key, value in wanted.items())
        return node == wanted

    assert contains(composed, expected), result.stdout


def test_a_bad_value_is_one_line_and_exit_2_before_hydra_runs(tmp_path):
    result = qvedit("experiment=demo", "ttlg=edgegram", f"hydra.run.dir={tmp_path / 'run'}")
    one_line_error(result, "did you mean edge_gram?")
    assert "HYDRA_FULL_ERROR" not in result.stderr and not (tmp_path / "run").exists()


def test_what_hydra_refuses_while_composing_is_one_line(tmp_path):
    """A key below a dict node that does not hold it yet (Hydra's struct mode) needs a +: the line says so."""
    result = qvedit("experiment=demo", "model.scheduler.shift=3.0", f"hydra.run.dir={tmp_path / 'run'}")
    one_line_error(result, "model.scheduler holds no key shift", "+model.scheduler.shift=")
    assert "HYDRA_FULL_ERROR" not in result.stderr


def test_a_missing_option_hydra_finds_while_composing_names_the_closest(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from qvedit.cli.override_values import hydra_error_line
    from qvedit.settings.schema import register_schemas
    from tests.conftest import REPO

    register_schemas()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")), \
            pytest.raises(HydraException) as info:
        compose("config", overrides=["ttlg=edgegram"])
    assert hydra_error_line(info.value).startswith("ttlg=edgegram is not an option of ttlg: did you mean edge_gram?")


def test_a_run_folder_below_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    result = qvedit("experiment=demo", f"hydra.run.dir={tmp_path / 'afile' / 'run'}")
    one_line_error(result, f"cannot create {tmp_path / 'afile' / 'run'}: Not a directory ({tmp_path / 'afile'} is a "
                           "file)", "hydra.run.dir")
