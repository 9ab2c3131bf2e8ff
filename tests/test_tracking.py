"""logger=mlflow against a temporary SQLite store, read back with the MLflow client."""

import sys

import pytest
from hydra import compose, initialize_config_dir

from qvedit.core.errors import QveditError
from qvedit.report.tracking import MlflowStore
from qvedit.run.job import run
from qvedit.settings.report import LoggerSettings
from qvedit.settings.schema import register_schemas
from tests.conftest import REPO, SAFETY_TIMEOUT_S, run_qvedit

mlflow = pytest.importorskip("mlflow", reason="logger=mlflow needs the tracking extra")
register_schemas()
CLIP = ["experiment=tiny_cpu", "io=demo", "max_frames=3", "num_inference_steps=2"]


def client_of(store):
    from mlflow.tracking import MlflowClient

    return MlflowClient(store)


def config(*overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return compose("config", overrides=[*CLIP, *overrides])


def test_a_run_is_one_mlflow_run_with_params_metrics_by_frame_tags_and_artifacts(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracked = run(config("ttlg=edge", "logger=mlflow", f"logger.tracking_uri={store}"), tmp_path / "tracked")
    plain = run(config("ttlg=edge"), tmp_path / "plain")
    assert [p.read_bytes() for p in tracked.frames] == [p.read_bytes() for p in plain.frames]  # logging never changes
    assert [p.name for p in tracked.frames] == ["00000.png", "00001.png", "00002.png"]  # frames

    client = client_of(store)
    experiment = client.get_experiment_by_name("qvedit")
    assert experiment.artifact_location == (tmp_path / "mlflow-artifacts").as_uri()  # beside the store
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == "tracked"
    params, tags = found.data.params, found.data.tags
    assert params["num_inference_steps"] == "2" and params["ttlg.edge_scale"] == "1.0" and params["io.resize"] == "area"
    assert tags["frames.seed"] == "0" and tags["frames.ttlg.edge_scale"] == "1.0" and "frames.device" not in tags
    assert {"qvedit.version", "diffusers.version", "torch.version", "device.name", "git.commit"} <= set(tags)
    for column in ("edge_loss", "warp_error", "seconds", "peak_mem_mib", "guided_steps"):
        history = client.get_metric_history(found.info.run_id, column)
        assert [m.step for m in history] == [1, 2]
        assert [m.value for m in history] == tracked.metrics[column].tolist()  # the table the run handed back
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"metrics.csv", "preview.png", "preview.gif", "report.html"} <= artifacts  # in-process: no .hydra/


@pytest.mark.long
def test_a_sweep_is_a_parent_run_with_the_verdict_and_its_jobs_nested(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_qvedit(*CLIP, "ttlg=off,edge_gram", "logger=mlflow", f"logger.tracking_uri={store}",
                        f"hydra.sweep.dir={tmp_path / 'sweep'}", "-m")
    assert result.returncode == 0, result.stderr[-3000:]
    client = client_of(store)
    runs = client.search_runs([client.get_experiment_by_name("qvedit").experiment_id])
    (parent,) = [r for r in runs if r.info.run_name == "sweep sweep"]
    jobs = [r for r in runs if r is not parent]
    assert len(jobs) == 2 and all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in jobs)
    assert parent.info.status == "FINISHED" and parent.data.tags["verdict"] in ("PASS", "FAIL")
    assert "edge_scale_1.0_gram_scale_0.2/edge_loss ratio guided/off" in parent.data.metrics, parent.data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"acceptance.md", "acceptance.csv", "report.html"} <= artifacts
    assert ".hydra" in {a.path for a in client.list_artifacts(jobs[0].info.run_id)}


@pytest.mark.long
def test_a_store_that_cannot_be_reached_fails_the_run_at_once_in_one_line(tmp_path):
    result = run_qvedit(*CLIP, "logger=mlflow", "logger.tracking_uri=http://127.0.0.1:9",
                        f"hydra.run.dir={tmp_path / 'run'}", timeout=SAFETY_TIMEOUT_S)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("qvedit: error:")]
    assert len(errors) == 1 and "http://127.0.0.1:9 cannot be used" in errors[0] and "logger=none" in errors[0]
    assert not (tmp_path / "run" / "frames" / "00001.png").exists()


def test_logger_mlflow_without_mlflow_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(QveditError, match=r'pip install -e "\.\[tracking\]"'):
        MlflowStore(LoggerSettings(backend="mlflow"))


@pytest.mark.parametrize("uri", ["foo://bar", "sqlite:///{tmp}/afile/mlflow.db"])
def test_a_tracking_uri_mlflow_cannot_use_is_one_line(tmp_path, uri):
    """An unknown scheme (MLflow raised a KeyError or its own exception), a database below a file."""
    (tmp_path / "afile").write_text("")
    with pytest.raises(QveditError, match="cannot be used") as info:
        MlflowStore(LoggerSettings(backend="mlflow", tracking_uri=uri.format(tmp=tmp_path)))
    assert "\n" not in str(info.value) and "logger=none" in str(info.value)
