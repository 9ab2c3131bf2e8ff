"""The drift defences through the real pipeline on the tiny model, resume, and a sweep that compares them."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from qvedit.core.errors import QveditError
from qvedit.io.frames import FrameFolders, FrameWriter
from qvedit.run.clip_editor import edit_clip
from qvedit.run.frame_outputs import ClipOutputs, check_or_record
from qvedit.settings.anchor import THREE_IMAGE_PROMPT, AnchorSettings
from qvedit.settings.guidance import TTLGSettings
from qvedit.settings.run import RunSettings
from tests.browser import assert_page_is_whole, open_in_chromium
from tests.conftest import REPO, run_qvedit, write_clip


class PipeSpy:
    """The real pipeline, with every call's keyword arguments recorded."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, []

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self.pipe(**kwargs)


def transformer_tokens(pipe) -> tuple[list, object]:
    """A hook recording the image tokens (output + conditions) of every transformer pass."""
    seen = []

    def record(module, args, kwargs):
        seen.append(kwargs["hidden_states"].shape[1])

    return seen, pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)


def make(pipe, clip, out, anchor, ttlg=None, frames=None):
    init, edges = clip
    settings = RunSettings(prompt="p", num_inference_steps=2, true_cfg_scale=1.0, seed=0, condition_area="output",
                           max_frames=frames)
    spy = PipeSpy(pipe)
    paths = edit_clip(spy, FrameFolders(str(init), str(edges)), ClipOutputs(FrameWriter(out)), settings,
                      ttlg or TTLGSettings(), anchor=anchor)
    return spy.calls, paths


def same(a: Image.Image, b) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(Image.open(b) if isinstance(b, Path) else b))


def test_frame_0_reaches_the_pipeline_as_a_third_image(family_pipe, tmp_path):
    clip = write_clip(tmp_path / "clip", size=(64, 64), edges=2)
    tokens, hook = transformer_tokens(family_pipe)
    try:
        two, _ = make(family_pipe, clip, tmp_path / "two", AnchorSettings())
        two_tokens = list(tokens)
        tokens.clear()
        three, paths = make(family_pipe, clip, tmp_path / "three", AnchorSettings(first_frame_image=True),
                            TTLGSettings(edge_scale=1.0, last_steps=None))
    finally:
        hook.remove()
    assert [len(call["image"]) for call in two] == [2, 2] and [len(call["image"]) for call in three] == [3, 3]
    for index, call in enumerate(three, start=1):
        assert same(call["image"][2], clip[0]) and same(call["image"][1], paths[index - 1])
        assert call["prompt"] == THREE_IMAGE_PROMPT
    assert two[0]["prompt"] == "p"
    # the real pipeline encoded the third image: every pass carries its latent tokens beside the other two's
    assert tokens and len(set(two_tokens)) == 1 and all(t > two_tokens[0] for t in tokens)


def test_every_nth_frame_is_made_from_frame_0(tiny_pipe, tmp_path):
    clip = write_clip(tmp_path / "clip", edges=5)
    calls, paths = make(tiny_pipe, clip, tmp_path / "out", AnchorSettings(every=2))
    follows = {index: call["image"][1] for index, call in enumerate(calls, start=1)}
    assert all(same(follows[i], clip[0]) for i in (2, 4))  # anchor frames follow frame 0
    assert all(same(follows[i], paths[i - 1]) for i in (1, 3, 5))  # the others the frame before
    assert not any(same(follows[i], paths[i - 1]) for i in (2, 4))


def test_colour_anchor_changes_what_the_next_frame_follows(tiny_pipe, tmp_path):
    clip = write_clip(tmp_path / "clip", edges=2)
    calls, paths = make(tiny_pipe, clip, tmp_path / "out", AnchorSettings(color="mean_std"))
    plain_calls, plain = make(tiny_pipe, clip, tmp_path / "plain", AnchorSettings())
    assert same(calls[1]["image"][1], paths[1])  # the corrected frame 1 is written and followed
    assert not same(Image.open(paths[1]), plain[1])


def test_resume_refuses_other_anchor_settings_listing_the_key(tmp_path):
    from hydra import compose, initialize_config_dir

    from qvedit.run.config_values import frame_settings
    from qvedit.settings.schema import register_schemas

    register_schemas()

    def config(*overrides):
        with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
            return compose("config", overrides=["experiment=tiny_cpu", "io=demo", *overrides])

    check_or_record(tmp_path, frame_settings(config()))
    for made in ("00000.png", "00001.png"):  # frames made (frame 0 alone: a run that made none, started afresh)
        (tmp_path / made).write_bytes(b"")
    for preset, listed in (("anchor=color", "anchor.color: 'none' -> 'mean_std'"),
                           ("anchor=first_frame", "anchor.first_frame_image: False -> True"),
                           ("anchor.every=4", "anchor.every: None -> 4")):
        with pytest.raises(QveditError, match=listed.replace("(", r"\(").replace(")", r"\)")):
            check_or_record(tmp_path, frame_settings(config(preset)))
    check_or_record(tmp_path, frame_settings(config()))  # the same settings resume


@pytest.mark.long
def test_a_sweep_over_the_defences_on_the_long_demo(tmp_path):
    """anchor=none,color x ttlg=off,edge_gram on a short io=demo_long in one process: the colour anchor at least
    halves the last-quarter colour drift, and the report and pages show the drift section and plots."""
    sweep = tmp_path / "sweep"
    result = run_qvedit("-m", "experiment=tiny_cpu", "io=demo_long", "io.length=7", "num_inference_steps=2",
                        "anchor=none,color", "ttlg=off,edge_gram", "seed=0", "acceptance.frames=6",
                        f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]
    drift = {}
    for job in sweep.glob("*/metrics.csv"):
        table = pd.read_csv(job)
        assert {"color_drift", "edge_offset_px"} <= set(table.columns) and len(table) == 6
        drift[job.parent.name] = table["color_drift"].iloc[-2:].mean()
    for ttlg in ("off", "edge_gram"):
        none, color = (next(v for k, v in drift.items() if f"anchor={a}" in k and f"ttlg={ttlg}" in k)
                       for a in ("none", "color"))
        assert color <= 0.5 * none, (ttlg, color, none)
    report = (sweep / "acceptance.md").read_text()
    assert "color_drift last quarter guided/off" in report and "## Drift by setting" in report
    assert "(anchor.color=mean_std)" in report and "(anchor.color=none)" in report
    assert len(list(sweep.glob("acceptance_*_drift.png"))) == 2
    found = assert_page_is_whole(sweep / "report.html")
    assert sum("_drift.png" in src for src, _ in found["images"]) == 2
    job = next(sweep.glob("*anchor=color*ttlg=edge_gram*"))
    assert (job / "drift.png").is_file()
    page = open_in_chromium(job / "report.html")
    assert any(src == "drift.png" for src, _ in page["images"])
    # the top of the page (the run's summary) says an anchor held the clip; a run without one says nothing of it
    assert "anchor: each frame's colours moved to frame 0's (anchor.color=mean_std)" in page["text"].split("Settings")[0]
    unanchored = next(sweep.glob("*anchor=none*ttlg=edge_gram*"))
    assert "anchor:" not in (unanchored / "report.html").read_text()


def test_an_anchor_in_words():
    assert AnchorSettings().describe() is None and AnchorSettings(color="mean_std", color_strength=0).describe() is None
    assert AnchorSettings(color="histogram", color_strength=0.5, every=8).describe() == (
        "anchor: each frame's colours moved to frame 0's (anchor.color=histogram, anchor.color_strength=0.5); "
        "frames 8, 16, ... made from frame 0 (anchor.every=8)")
