"""Frame 0 edited inside qvedit (first_frame.*): the candidates, the pick, re-runs, bad input; and a folder
of source frames that needs no edge maps."""

import hashlib
import logging
import shutil

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from qvedit.core.errors import QveditError
from qvedit.core.images import to_tensor
from qvedit.guidance.edges import edges_to_uint8, sobel_edges
from qvedit.io.frames import FrameFolders
from qvedit.run.clip_editor import frame_seed
from qvedit.run.first_frame import FirstFrameEdit, candidate_seed
from qvedit.run.job import run
from qvedit.settings.schema import register_schemas
from tests.browser import assert_page_is_whole
from tests.conftest import MODELS, REPO, run_qvedit, write_clip

register_schemas()
TINY = ["model=tiny", "device=cpu", "dtype=fp32", "num_inference_steps=2", "condition_area=output", "metrics=none",
        "first_frame.num_inference_steps=2", "max_frames=2"]
PROMPT = "first_frame.prompt=make it a watercolour painting"


def execute(run_dir, *overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose("config", overrides=[*TINY, *overrides])
    return run(cfg, run_dir).frames_dir


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_source_frames(folder, count=3, size=(40, 24)):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"f{i}.png")
    return folder


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A clip whose frame 0 is candidate 0 of 2, made once for the tests that run again into a copy of it."""
    root = tmp_path_factory.mktemp("first_frame")
    init, edges = write_clip(root / "clip", size=(40, 24), edges=2)
    clip = [f"io.init_frame={init}", f"io.edge_frames_dir={edges}", PROMPT, "first_frame.candidates=2"]
    execute(root / "run", *clip)
    return root, clip


def copy_of(made, tmp_path):
    root, clip = made
    shutil.copytree(root / "run", tmp_path / "run")
    return tmp_path / "run", clip


@pytest.fixture
def no_model(monkeypatch):
    """The case is refused before the model loads: loading it fails the test."""
    monkeypatch.setattr("qvedit.models.loading._cached", lambda *a, **k: pytest.fail("the model loaded"))


@pytest.fixture
def no_edit(monkeypatch):
    """No candidate may be made."""
    monkeypatch.setattr(FirstFrameEdit, "edit", lambda *a, **k: pytest.fail("a candidate was made again"))


def test_frame_0_is_the_picked_candidate_copied_byte_for_byte(made):
    root, _ = made
    run_dir, init = root / "run", root / "clip" / "init.png"
    candidates = run_dir / "first_frame"
    assert sorted(p.name for p in candidates.glob("candidate_*.png")) == ["candidate_00.png", "candidate_01.png"]
    assert np.array_equal(pixels(run_dir / "frames" / "00000.png"), pixels(candidates / "candidate_00.png"))
    assert not np.array_equal(pixels(candidates / "candidate_00.png"), pixels(init))  # it was edited
    assert not np.array_equal(pixels(candidates / "candidate_00.png"), pixels(candidates / "candidate_01.png"))
    assert Image.open(candidates / "candidate_01.png").size == Image.open(init).size
    sheet = Image.open(candidates / "candidates.png")
    assert sheet.width > 3 * 192 and sheet.height > 192  # source frame 0 | candidate 0 | candidate 1, cells >= 192
    page = assert_page_is_whole(run_dir / "report.html")  # real headless Chromium
    shown = [src for src, _ in page["images"]]
    assert "first_frame/candidate_00.png" in shown and "first_frame/candidate_01.png" in shown
    assert "first_frame/candidates.png" in page["links"]
    text = (run_dir / "report.html").read_text()
    assert "frame 0: candidate 0 of 2" in text and "make it a watercolour painting" in text
    assert f"seed {candidate_seed(0, 0)}, derived from seed=0 and candidate 0" in text  # not a bare 19-digit seed
    assert not list(run_dir.rglob(".qvedit-lock"))  # frames/ and first_frame/ were given back, their locks removed


def test_another_pick_reuses_the_candidates_and_starts_the_clip_over(made, tmp_path, no_edit, caplog, capsys):
    run_dir, clip = copy_of(made, tmp_path)
    before = {p.name: digest(p) for p in (run_dir / "first_frame").glob("candidate_*.png")}
    with caplog.at_level(logging.INFO, logger="qvedit"):
        execute(run_dir, *clip, "first_frame.pick=1")
    assert {p.name: digest(p) for p in (run_dir / "first_frame").glob("candidate_*.png")} == before
    assert np.array_equal(pixels(run_dir / "frames" / "00000.png"), pixels(run_dir / "first_frame" / "candidate_01.png"))
    assert "the clip starts over" in caplog.text and "2 of 2 candidates are already in" in caplog.text
    assert len(list((run_dir / "frames").glob("*.png"))) == 2
    assert "frame 0: candidate 1 of 2" in capsys.readouterr().out


def test_more_candidates_or_a_deleted_one_make_only_those_and_keep_the_clip(made, tmp_path, monkeypatch):
    run_dir, clip = copy_of(made, tmp_path)
    frames = {p.name: digest(p) for p in (run_dir / "frames").glob("*.png")}
    deleted = digest(run_dir / "first_frame" / "candidate_01.png")
    (run_dir / "first_frame" / "candidate_01.png").unlink()
    seeds = []
    real_edit = FirstFrameEdit.edit
    monkeypatch.setattr(FirstFrameEdit, "edit", lambda self, pipe, seed: seeds.append(seed) or real_edit(self, pipe, seed))
    execute(run_dir, *[o for o in clip if "candidates" not in o], "first_frame.candidates=3")
    assert seeds == [candidate_seed(0, 1), candidate_seed(0, 2)]  # candidates is not a frame setting
    assert digest(run_dir / "first_frame" / "candidate_01.png") == deleted  # made again from its seed
    assert {p.name: digest(p) for p in (run_dir / "frames").glob("*.png")} == frames


@pytest.mark.parametrize("changed", [
    "first_frame.prompt=make it an oil painting", "first_frame.num_inference_steps=3", "first_frame.true_cfg_scale=2",
    "first_frame.negative_prompt=blurry"])
def test_resume_refuses_a_changed_first_frame_key(made, tmp_path, no_model, changed):
    run_dir, clip = copy_of(made, tmp_path)
    key = changed.split("=")[0]
    with pytest.raises(QveditError, match=f"holds frames made with other settings \\({key}: "):
        execute(run_dir, *[o for o in clip if not o.startswith(key)], changed)


def test_another_prompt_before_the_clip_moves_the_candidates_aside_and_makes_new_ones(made, tmp_path):
    run_dir, clip = copy_of(made, tmp_path)
    shutil.rmtree(run_dir / "frames")  # a first_frame.only run made no clip
    old = digest(run_dir / "first_frame" / "candidate_00.png")
    execute(run_dir, *[o for o in clip if not o.startswith("first_frame.prompt")],
            "first_frame.prompt=make it an oil painting", "first_frame.only=true")
    earlier = run_dir / "first_frame" / "earlier_01"
    assert digest(earlier / "candidate_00.png") == old and (earlier / "candidates.yaml").is_file()
    assert digest(run_dir / "first_frame" / "candidate_00.png") != old
    assert "oil painting" in (run_dir / "first_frame" / "candidates.yaml").read_text()


@pytest.mark.parametrize("model", MODELS)
def test_only_writes_the_candidates_and_no_clip(tmp_path, capsys, model):
    source = write_source_frames(tmp_path / "source")
    frame0 = tmp_path / "frame0.png"  # the source's own frame 0 as io.init_frame: the frame to edit
    shutil.copy(sorted(source.iterdir())[0], frame0)
    execute(tmp_path / "run", f"io.source_frames_dir={source}", f"io.init_frame={frame0}", PROMPT,
            "first_frame.only=true", f"model={model}")
    run_dir = tmp_path / "run"
    assert (run_dir / "first_frame" / "candidate_00.png").is_file() and (run_dir / "first_frame" / "candidates.png").is_file()
    assert not list(run_dir.rglob("0000*.png")) and not (run_dir / "metrics.csv").exists()
    assert not (run_dir / "preview.png").exists()
    page = assert_page_is_whole(run_dir / "report.html")
    assert [src for src, _ in page["images"]] == ["first_frame/candidate_00.png"]
    out = capsys.readouterr().out
    assert "first_frame.only=true: no clip made" in out and "first_frame.pick=K" in out


def test_a_frame_folder_without_edge_maps_gets_them_made_and_saved(tmp_path):
    source = write_source_frames(tmp_path / "source", count=4)
    frames = FrameFolders(None, None, source_frames_dir=str(source), edges_dir=tmp_path / "edges")
    first = sorted(source.iterdir())
    assert len(frames) == 3 and frames.has_source_frames
    assert np.array_equal(np.asarray(frames.init_image()), pixels(first[0]))
    for k in range(3):
        edge = frames.edge_frame(k, frames.init_image().size)
        expected = edges_to_uint8(sobel_edges(to_tensor(pixels(first[k + 1]))))
        assert np.array_equal(pixels(tmp_path / "edges" / f"{k + 1:05d}.png")[..., 0], expected)
        assert np.array_equal(np.asarray(edge)[..., 0], expected)


def test_candidate_seeds_are_their_own_stream():
    candidates = {candidate_seed(seed, k) for seed in range(4) for k in range(16)}
    frames = {frame_seed(seed, i) for seed in range(4) for i in range(64)}
    assert len(candidates) == 64 and not candidates & frames


@pytest.mark.parametrize("overrides, message", [
    (["first_frame.prompt=", "first_frame.only=true"], "first_frame.prompt is empty"),
    ([PROMPT, "first_frame.pick=2"], "first_frame.pick=2 but first_frame.candidates=1"),
    (["first_frame.pick=1"], "first_frame.pick=1 without first_frame.prompt"),
])
def test_bad_first_frame_values_are_one_line_before_the_model_loads(tmp_path, no_model, overrides, message):
    init, edges = write_clip(tmp_path / "clip", size=(40, 24), edges=2)
    with pytest.raises(QveditError, match=message) as info:
        execute(tmp_path / "run", f"io.init_frame={init}", f"io.edge_frames_dir={edges}", *overrides)
    assert "\n" not in str(info.value)


def test_an_init_frame_that_is_not_the_source_frame_0_is_ambiguous(tmp_path, no_model):
    source = write_source_frames(tmp_path / "source")
    edited = tmp_path / "edited.png"
    Image.fromarray(255 - pixels(sorted(source.iterdir())[0])).save(edited)
    with pytest.raises(QveditError, match="drop io.init_frame to edit f0.png, or drop first_frame.prompt to use "
                                          "edited.png as frame 0"):
        execute(tmp_path / "run", f"io.source_frames_dir={source}", f"io.init_frame={edited}", PROMPT)


@pytest.mark.parametrize("damage, message", [
    (lambda folder: (folder / "candidates.yaml").write_text("made_with: [\n"), "candidates.yaml is damaged"),
    (lambda folder: (folder / "candidate_01.png").write_bytes(b"not a png"), "candidate_01.png is damaged"),
    (lambda folder: Image.new("RGB", (40, 24)).save(folder / "candidate_00.png"), "its pixels changed"),
    (lambda folder: ((folder / "candidate_01.png").unlink(), (folder / "candidate_01.png").mkdir()),
     "candidate_01.png is a folder where qvedit writes a file"),
    (lambda folder: (shutil.rmtree(folder), folder.write_text("a file")), "first_frame is a file where qvedit keeps"),
])
def test_a_damaged_candidates_folder_is_one_line_before_the_model_loads(made, tmp_path, no_model, damage, message):
    run_dir, clip = copy_of(made, tmp_path)
    damage(run_dir / "first_frame")
    kept = {p: digest(p) for p in run_dir.rglob("*.png") if p.is_file()}
    with pytest.raises(QveditError, match=message) as info:
        execute(run_dir, *clip, "first_frame.pick=1")
    assert "\n" not in str(info.value)
    assert {p: digest(p) for p in run_dir.rglob("*.png") if p.is_file()} == kept  # nothing finished lost


@pytest.mark.long
@pytest.mark.parametrize("model", MODELS)
def test_tiny_cpu_edits_a_video_in_one_command(tmp_path, model):
    """The README's one-command job on the CPU: a video and one instruction in, the clip out (the tiny model of each
    family)."""
    import imageio.v3 as iio

    rng = np.random.default_rng(3)
    video = tmp_path / "in.mp4"
    iio.imwrite(video, rng.integers(0, 256, (2, 32, 48, 3), dtype=np.uint8), fps=8, codec="libx264")
    result = run_qvedit("experiment=tiny_cpu", f"model={model}", "io=video", f"io.rgb_video={video}", PROMPT,
                        "num_inference_steps=2", "first_frame.num_inference_steps=2", "metrics=none",
                        f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "run"
    assert sorted(p.name for p in (run_dir / "edges").glob("*.png")) == ["00001.png"]
    assert np.array_equal(pixels(run_dir / "frames" / "00000.png"), pixels(run_dir / "first_frame" / "candidate_00.png"))
    assert (run_dir / "output.mp4").is_file()
    assert "(frame 0 is the edited first frame)" in result.stdout
    assert f'frame 0: candidate 0 of 1 ({run_dir / "first_frame" / "candidate_00.png"})' in result.stdout
    assert f"seed {candidate_seed(0, 0)}" in result.stdout
