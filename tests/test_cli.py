"""``python -m qvedit`` as a user runs it: the demo end to end, and bad input as one-line errors."""

import time

import pytest
import yaml

from tests.conftest import run_qvedit as qvedit


def test_demo_runs_end_to_end(tmp_path):
    started = time.monotonic()
    result = qvedit("experiment=demo", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert time.monotonic() - started < 120
    frames = sorted(p.name for p in (tmp_path / "frames").glob("*.png"))
    assert frames == [f"{i:05d}.png" for i in range(9)]
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",") == ["frame", "edge_loss", "gram_loss", "lpips_to_init", "lpips_to_prev", "seconds",
                                  "guided_steps", "peak_mem_mib"] and len(rows) == 9
    assert (tmp_path / "preview.png").is_file() and (tmp_path / "preview.gif").is_file()
    saved = yaml.safe_load((tmp_path / ".hydra" / "config.yaml").read_text())
    assert saved["model"]["_target_"] == "qvedit.models.settings.TinyModel"
    assert "experiment=demo" in (tmp_path / ".hydra" / "overrides.yaml").read_text()
    assert "frames:" in result.stderr  # the progress bar over frames


def one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("qvedit: error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0]


def test_no_inputs_names_the_missing_keys_and_the_demo(tmp_path):
    one_line_error(qvedit(f"hydra.run.dir={tmp_path}"), "io.init_frame", "io.edge_frames_dir", "experiment=demo")


def test_unknown_model_offline_is_a_clear_error(tmp_path, clip):
    init, edges = clip
    result = qvedit("model.model_id=nobody/no-such-model", f"io.init_frame={init}", f"io.edge_frames_dir={edges}",
                    "device=cpu", "metrics=none", f"hydra.run.dir={tmp_path}")
    one_line_error(result, "cannot load model 'nobody/no-such-model'", "model=tiny")


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


def test_metrics_without_vgg_weights_offline_say_what_to_do(tmp_path, clip):
    init, edges = clip
    result = qvedit("model=tiny", "device=cpu", f"io.init_frame={init}", f"io.edge_frames_dir={edges}",
                    f"hydra.run.dir={tmp_path}", env={"TORCH_HOME": str(tmp_path / "torch")})
    one_line_error(result, "vgg16-397923af.pth", "metrics=none")


def test_misspelt_key_fails_before_running(tmp_path):
    result = qvedit("ttlg.edge_scal=1", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "edge_scal" in result.stderr
