"""A run folder written before the folders became the layers (2026-12-05, the layout of commit f778426) still
loads: its YAML names classes where they were then (``qvedit.settings.io.FirstFrameSettings``,
``qvedit.launchers.LauncherCheck``), which are read as the classes they are now, and the run made again from its
config gives its frames. ``tests/data/run_folder_2026_12_05`` is that run's ``.hydra`` and frames, as written by
``python -m qvedit experiment=tiny_cpu io=demo num_inference_steps=2 ttlg=edge_gram max_frames=2``."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import run_qvedit
from qvedit.core.config_trust import config_file_problems, current_target, target_problem

FOLDER = Path(__file__).resolve().parent / "data" / "run_folder_2026_12_05"


def targets(tree) -> list[str]:
    if isinstance(tree, dict):
        return [v for k, v in tree.items() if k == "_target_"] + [t for v in tree.values() for t in targets(v)]
    return [t for v in tree for t in targets(v)] if isinstance(tree, list) else []


def test_every_class_an_old_run_folder_names_is_found_where_it_is_now():
    names = [t for name in ("config.yaml", "hydra.yaml") for t in targets(yaml.safe_load((FOLDER / ".hydra" / name).read_text()))]
    assert "qvedit.settings.io.FirstFrameSettings" in names and "qvedit.launchers.LauncherCheck" in names
    assert current_target("qvedit.settings.io.FirstFrameSettings") == "qvedit.settings.first_frame.FirstFrameSettings"
    assert current_target("qvedit.launchers.LauncherCheck") == "qvedit.cli.launcher_checks.LauncherCheck"
    assert [(n, target_problem(n)) for n in names if target_problem(n)] == []
    assert [config_file_problems(FOLDER / ".hydra" / name) for name in ("config.yaml", "hydra.yaml")] == [[], []]


def test_a_class_that_moved_twice_is_found_where_it_is_now():
    """Run folders from before the settings moved to qvedit.settings name FirstFrameSettings in qvedit.io.settings:
    the folder move, then the class's own move."""
    assert current_target("qvedit.io.settings.FirstFrameSettings") == "qvedit.settings.first_frame.FirstFrameSettings"
    assert target_problem("qvedit.io.settings.FirstFrameSettings") is None
    assert current_target("qvedit.models.settings.ModelSettings") == "qvedit.settings.model.ModelSettings"


@pytest.mark.long
def test_an_old_run_folder_runs_again_and_makes_its_frames(tmp_path):
    again = tmp_path / "again"
    result = run_qvedit("--config-path", str(FOLDER / ".hydra"), "--config-name", "config", f"hydra.run.dir={again}",
                        env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("00000.png", "00001.png"):
        old = np.asarray(Image.open(FOLDER / "frames" / name), dtype=np.float64)
        new = np.asarray(Image.open(again / "frames" / name), dtype=np.float64)
        assert old.shape == new.shape
        # frame 0 is the input copied; frame 1 may differ in last bits on another CPU kind (golden frames' tolerance)
        assert np.array_equal(old, new) if name == "00000.png" else np.abs(old - new).mean() < 1.0, name
