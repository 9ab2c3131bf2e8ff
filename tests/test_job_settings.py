"""A run's typed settings, made once from the composed config; the unguided twin, defined once for
``compare_unguided`` and a search's reference; a trial's objectives from the tables its runs hand back."""

import dataclasses

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from qvedit.core.errors import QveditError
from qvedit.report.tuning import objectives
from qvedit.run.config_values import frame_settings, input_paths
from qvedit.run.job_settings import job_settings, search_reference, unguided
from qvedit.settings.guidance import TTLGSettings
from qvedit.settings.report import TuningSettings
from qvedit.settings.schedule import ScheduleSettings
from qvedit.settings.schema import register_schemas, scale_keys
from tests.conftest import REPO

register_schemas()
BASE = ["experiment=tiny_cpu", "io=demo", "max_frames=3"]


def config(*overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return compose("config", overrides=[*BASE, *overrides])


def test_the_config_becomes_typed_settings_once_with_its_frame_settings_and_inputs(tmp_path):
    init = tmp_path / "init.png"
    init.write_bytes(b"")
    cfg = config("ttlg=edge", "seed=3", f"io.init_frame={init}")
    job = job_settings(cfg)
    assert job.run.seed == 3 and job.ttlg.edge_scale == 1.0 and job.ttlg.vgg_weights == "random"
    assert job.frames == frame_settings(cfg) and job.inputs == tuple(input_paths(cfg))
    assert ("io.init_frame", init) in job.inputs
    assert job.config["ttlg"]["edge_scale"] == 1.0 and isinstance(job.config, dict)  # the tracking run's params
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.ttlg = TTLGSettings()


def test_a_run_folders_config_without_the_newer_groups_takes_their_defaults():
    cfg = config()
    with open_dict(cfg):
        del cfg["schedule"], cfg["tuning"]
    job = job_settings(cfg)
    assert job.schedule == ScheduleSettings() and job.tuning == TuningSettings()


def test_the_unguided_twin_turns_guidance_off_whatever_it_was_so_a_searchs_trials_share_one():
    trial_a = job_settings(config("ttlg=edge_gram", "ttlg.lr=0.2", "ttlg.last_steps=3", "compare_unguided=true"))
    trial_b = job_settings(config("ttlg=edge", "ttlg.temporal_mode=flow", "ttlg.temporal_scale=0.5"))
    twin = unguided(trial_a)
    assert twin.ttlg == TTLGSettings(vgg_weights="random") and not twin.ttlg.enabled  # tiny_cpu's VGG kept
    assert twin.frames["ttlg.edge_scale"] == 0.0 and twin.frames["ttlg.lr"] == TTLGSettings().lr
    assert {k: v for k, v in twin.frames.items() if not k.startswith("ttlg.")} == \
        {k: v for k, v in trial_a.frames.items() if not k.startswith("ttlg.")}  # the same clip otherwise
    assert unguided(trial_b).frames == twin.frames and unguided(trial_b).ttlg == twin.ttlg
    # what a search's reference was recorded with before the twin was defined once: the same manifest
    assert twin.frames == frame_settings(config(*(f"ttlg.{k}={'null' if v is None else v}"
                                                  for k, v in vars(TTLGSettings(vgg_weights="random")).items())))
    reference = search_reference(trial_a)
    assert reference.ttlg == twin.ttlg and reference.frames == twin.frames
    assert not reference.run.compare_unguided and reference.logger.backend == "none" and reference.tuning.objectives == []
    assert trial_a.run.compare_unguided and trial_a.ttlg.edge_scale == 1.0  # the run's own settings untouched


def test_a_trials_objectives_are_ratios_of_the_tables_its_runs_hand_back():
    guided = pd.DataFrame({"frame": [1, 2], "edge_loss": [0.1, 0.3], "gram_loss": [1.0, 1.0]})
    off = pd.DataFrame({"frame": [1, 2], "edge_loss": [0.4, 0.4], "gram_loss": [2.0, 2.0]})
    assert objectives(["edge_loss", "gram_loss"], guided, off) == pytest.approx((0.5, 0.5))
    with pytest.raises(QveditError, match=r"needs the metrics.csv column\(s\) \['warp_error'\]: run with the quality"):
        objectives(["edge_loss", "warp_error"], guided, off)


def test_a_twin_folder_an_earlier_qvedit_recorded_resumes_and_one_of_other_settings_stays_refused(tmp_path):
    from PIL import Image

    from qvedit.run.frame_outputs import check_or_record
    from qvedit.run.job import adopt_earlier_twin

    guided = job_settings(config("ttlg=edge_gram", "ttlg.lr=0.2", "compare_unguided=true"))
    earlier = {**guided.frames, **{key: 0.0 for key in scale_keys()}}  # the twin's record before it was defined once
    other = {**earlier, "seed": 7}
    for name, recorded in (("earlier", earlier), ("other", other)):
        folder = tmp_path / name
        folder.mkdir()
        check_or_record(folder, recorded)
        for k in (0, 1):
            Image.new("RGB", (8, 8)).save(folder / f"{k:05d}.png")
        adopt_earlier_twin(folder, earlier, unguided(guided).frames)
    assert check_or_record(tmp_path / "earlier", unguided(guided).frames) is False  # resumes: same frames
    with pytest.raises(QveditError, match=r"holds frames made with other settings \(.*seed: 7 -> 0"):
        check_or_record(tmp_path / "other", unguided(guided).frames)
