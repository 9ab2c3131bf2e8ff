"""hparams_search=ttlg_optuna: a small study on the demo clip, its reuse of the unguided clip, and its outputs."""

import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir

from hydra_plugins.qvedit_optuna.sweeper import distribution
from qvedit.settings.schema import register_schemas
from tests.browser import assert_page_is_whole
from tests.conftest import REPO, SAFETY_TIMEOUT_S, run_qvedit

optuna = pytest.importorskip("optuna", reason="hparams_search needs the tuning extra")
register_schemas()
STUDY = ["experiment=tiny_cpu", "io=demo", "hparams_search=ttlg_optuna", "hydra.sweeper.n_trials=3",
         "max_frames=3", "num_inference_steps=4"]


# What `pip install -e .` leaves: setuptools' finder maps the two packages to the repository, and the repository
# root is not on sys.path (the user's own folder is the current one), so the hydra_plugins namespace Hydra walks
# for plugins does not hold qvedit_optuna.
AS_INSTALLED = f"""
import importlib.util, runpy, sys
MAPPING = {{"qvedit": {str(REPO / "qvedit")!r}, "hydra_plugins.qvedit_optuna": {str(REPO / "hydra_plugins" / "qvedit_optuna")!r}}}
class EditableFinder:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name in MAPPING:
            return importlib.util.spec_from_file_location(name, MAPPING[name] + "/__init__.py",
                                                          submodule_search_locations=[MAPPING[name]])
sys.path = [p for p in sys.path if p not in ("", {str(REPO)!r})]
sys.meta_path.insert(0, EditableFinder)
sys.argv[0] = "qvedit"
runpy.run_module("qvedit", run_name="__main__")
"""


def run_installed(folder, *args) -> subprocess.CompletedProcess:
    """``python -m qvedit ARGS`` from ``folder``, as after ``pip install -e .``: the repository is not on sys.path."""
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-c", AS_INSTALLED, *args], cwd=folder, capture_output=True, text=True,
                          timeout=SAFETY_TIMEOUT_S, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})


@pytest.mark.long
def test_a_three_trial_study_reuses_the_unguided_clip_and_writes_its_front_and_a_preset(tmp_path):
    sweep = tmp_path / "study"
    result = run_qvedit(*STUDY, f"hydra.sweep.dir={sweep}", "-m")
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert log.count("trial objectives (guided / unguided)") == 3
    assert log.count("resuming at frame 3: frames 0..2 are already in") == 2  # the unguided clip made once
    assert len(list((sweep / "reference_off" / "frames").glob("*.png"))) == 3
    study = optuna.load_study(study_name="ttlg", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3 and len(study.directions) == 3
    front = pd.read_csv(sweep / "optuna_pareto.csv")
    assert set(front["trial"]) == {t.number for t in study.best_trials}
    assert {"edge_loss", "gram_loss", "warp_error", "ttlg.lr", "ttlg.last_steps"} <= set(front.columns)
    assert (sweep / "optuna_pareto.png").is_file()
    assert "Pareto front of study ttlg" in (sweep / "optuna_pareto.md").read_text()
    assert not (sweep / "acceptance.md").exists()  # a search has no unguided twins to judge

    preset = yaml.safe_load((sweep / "ttlg_tuned.yaml").read_text())
    best = min(study.best_trials, key=lambda t: sum(t.values))
    assert preset["lr"] == best.params["ttlg.lr"] and preset["temporal_mode"] == "flow"
    # the tuned keys and the search's own temporal_mode, not experiment=tiny_cpu's vgg_weights: random
    assert set(preset) == {key.removeprefix("ttlg.") for key in best.params} | {"temporal_mode"}
    page = assert_page_is_whole(sweep / "report.html")  # the study's page, as every sweep has
    assert page["title"].startswith("qvedit study ttlg") and "ttlg_tuned.yaml" in page["links"]
    assert [src for src, _ in page["images"]] == ["optuna_pareto.png"]
    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    shutil.copy(sweep / "ttlg_tuned.yaml", conf / "ttlg" / "tuned.yaml")
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        cfg = compose("config", overrides=["ttlg=tuned"])
    assert cfg.ttlg.last_steps == best.params["ttlg.last_steps"]

    # resumable, and from the user's own folder, not the repository root
    again = run_installed(tmp_path / "elsewhere", *STUDY, "hydra.sweeper.n_trials=4", f"hydra.sweep.dir={sweep}", "-m")
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(optuna.load_study(study_name="ttlg", storage=f"sqlite:///{sweep / 'optuna.db'}").trials) == 4


@pytest.mark.parametrize("text, kind, bounds", [
    ("interval(0.01, 0.3)", "FloatDistribution", (0.01, 0.3)),
    ("tag(log, interval(0.01, 0.3))", "FloatDistribution", (0.01, 0.3)),
    ("range(2, 11)", "IntDistribution", (2, 10)),
])
def test_hydra_sweep_expressions_become_optuna_distributions(text, kind, bounds):
    made = distribution("ttlg.lr", text)
    assert type(made).__name__ == kind and (made.low, made.high) == bounds
    assert made.log == text.startswith("tag(log")
    assert distribution("ttlg.edge_op", "choice(sobel, laplacian)").choices == ("sobel", "laplacian")
