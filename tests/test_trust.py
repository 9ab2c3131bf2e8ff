"""A config folder from elsewhere is data: only qvedit's own targets (and the launcher and sweeper
plugins) may be instantiated from it, and Hydra never reads one that names anything else."""

from pathlib import Path

import yaml

from omegaconf import OmegaConf

from conftest import run_qvedit
from qvedit.core.config_trust import build, command_line_problems, config_file_problems, target_problem
from qvedit.settings.model import TinyModel

MAIN = Path(__file__).resolve().parent.parent / "qvedit" / "main.py"


def write(folder: Path, name: str, tree: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(tree))
    return path


def test_the_targets_a_qvedit_run_writes_are_allowed(tmp_path):
    hydra = {"hydra": {
        "callbacks": {"report": {"_target_": "qvedit.report.acceptance.SweepReport"},
                      "tracking": {"_target_": "qvedit.report.tracking.SweepTracking"}},
        "sweeper": {"_target_": "hydra_plugins.qvedit_optuna.sweeper.OptunaSweeper"},
        "launcher": {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"},
        "job_logging": {"handlers": {"file": {"class": "logging.FileHandler", "filename": "main.log"},
                                     "console": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout"}}}}}
    config = {"model": {"_target_": "qvedit.settings.model.TinyModel", "model_id": "x"},
              "io": {"_target_": "qvedit.settings.io.DemoIO"}}
    assert config_file_problems(write(tmp_path, "hydra.yaml", hydra)) == []
    assert config_file_problems(write(tmp_path, "config.yaml", config)) == []


def test_a_run_folder_of_an_earlier_version_names_the_settings_where_they_were(tmp_path):
    config = {"model": {"_target_": "qvedit.models.settings.TinyModel", "model_id": "x"},
              "ttlg": {"_target_": "qvedit.guidance.settings.TTLGSettings", "edge_scale": 1.0}}
    assert config_file_problems(write(tmp_path, "config.yaml", config)) == []
    loaded = OmegaConf.load(tmp_path / "config.yaml")
    assert build(loaded.model) == TinyModel("x") and build(loaded.ttlg).edge_scale == 1.0
    assert "is not one of qvedit's settings classes" in target_problem("qvedit.models.loading.load_pipeline")


def test_anything_else_is_named_by_file_and_key(tmp_path):
    tree = {"model": {"_target_": "os.system"},
            "ttlg": {"_target_": "qvedit.core.files.write_text_atomic"},
            "hydra": {"searchpath": ["file:///elsewhere"],
                      "sweeper": {"_target_": "hydra_plugins.qvedit_optuna.sweeper.optuna"},
                      "job_logging": {"handlers": {"x": {"class": "subprocess.Popen"},
                                                   "y": {"class": "logging.StreamHandler", "stream": "ext://os.environ"}}}}}
    problems = config_file_problems(write(tmp_path, "config.yaml", tree))
    text = "\n".join(problems)
    assert len(problems) == 6, text
    assert all(p.startswith(f"{tmp_path / 'config.yaml'}: ") for p in problems)
    for fragment in ("model._target_='os.system' is not qvedit's",
                     "ttlg._target_='qvedit.core.files.write_text_atomic' is not one of qvedit's settings classes",
                     "hydra.searchpath adds config folders",
                     "is not a launcher or sweeper class",
                     "hydra.job_logging.handlers.x.class='subprocess.Popen' is not a class of Python's logging module",
                     "a log may only go to ext://sys.stdout or ext://sys.stderr"):
        assert fragment in text, (fragment, text)


def test_rerunning_a_config_that_runs_a_command_is_refused_before_hydra_reads_it(tmp_path):
    marker = tmp_path / "ran"
    folder = tmp_path / "sent" / ".hydra"
    write(folder, "config.yaml", {"model": {"_target_": "os.system", "command": f"touch {marker}"}})
    result = run_qvedit("--config-path", str(folder), "--config-name", "config", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("qvedit: error: ") and "model._target_='os.system' is not qvedit's" in line
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_experimental_rerun_unpickles_and_is_refused():
    (problem,) = command_line_problems(["--experimental-rerun", "runs/x/.hydra/config.pickle"], MAIN)
    assert "a pickle can run any code" in problem
