"""The toy model's training data and training script: seeded clips, edge maps as qvedit makes them, a run that
goes on from its checkpoint to the same weights, and the folders it refuses."""

import json

import numpy as np
import pytest
import torch

from qvedit.core.errors import QveditError
from qvedit.io.frames import EdgeMaker
from qvedit.io.shapes import STYLES, ToyScene, toy_clip
from qvedit.settings.io import SHAPES_HELD_OUT_SEED
from qvedit.toy import train
from qvedit.toy.data import INSTRUCTIONS, KINDS, Recipe, clip_style, draw_example
from tests.conftest import run_qvedit

# A run small enough for a test: a few clips, a few steps of each stage.
MICRO = Recipe(clips=3, clip_length=4, vae_steps=4, vae_batch=2, transformer_steps=4, batch=2, pool=1)


def test_a_clip_is_its_seed_alone_and_moves():
    first, again, other = toy_clip(7, 6), toy_clip(7, 6), toy_clip(8, 6)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])
    assert first[0].shape == (64, 64, 3) and first[0].dtype == np.uint8
    assert np.abs(first[5].astype(int) - first[0].astype(int)).mean() > 1  # shapes and camera move


def test_the_clips_hold_every_shape_texture_and_background():
    scenes = [ToyScene.from_seed(seed) for seed in range(60)]
    assert {shape.kind for scene in scenes for shape in scene.shapes} == {"circle", "square", "triangle", "star",
                                                                          "ring"}
    assert {shape.texture for scene in scenes for shape in scene.shapes} == {"flat", "stripes", "dots", "gradient",
                                                                             "noise"}
    assert {scene.background for scene in scenes} == {"gradient", "stripes", "checks", "noise"}


def test_every_style_changes_the_frame_and_red_only_the_shapes():
    scene = ToyScene.from_seed(3)
    plain = scene.frame(0).astype(int)
    for style in STYLES[1:]:
        assert np.abs(scene.frame(0, style).astype(int) - plain).mean() > 5, style
    red = scene.frame(0, "red").astype(int)
    changed = np.abs(red - plain).sum(axis=-1) > 0
    assert 0.02 < changed.mean() < 0.6  # the shapes, not the background
    assert (red[changed, 0] - red[changed, 1:].max(axis=-1)).mean() > 40  # and they are red
    assert set(INSTRUCTIONS.values()) == set(STYLES) - {"none"}


def test_the_edge_maps_are_the_ones_qvedit_makes_from_source_frames(tmp_path):
    from qvedit.toy.data import render_clip

    clip = render_clip(5, 3, (64, 64), "night")
    maker = EdgeMaker("sobel")
    for t in range(3):
        assert np.array_equal(clip["edges"][t], np.asarray(maker.edge(t, clip["source"][t])))


def test_held_out_clips_are_never_training_clips_and_examples_follow_the_layout():
    recipe = Recipe()
    assert recipe.clips <= SHAPES_HELD_OUT_SEED
    styles = [clip_style(recipe, c) for c in range(recipe.clips)]
    assert 0.45 < np.mean([style != "none" for style in styles]) < 0.75
    rng = np.random.default_rng(0)
    for kind, count in (("follow", 2), ("anchor", 3), ("instruct", 1)):
        for _ in range(50):
            example = draw_example(rng, kind, recipe, styles)
            assert len(example.conditions) == count and 0 <= example.clip < recipe.clips
            if kind != "instruct":
                (edge_kind, t), (_, followed) = example.conditions[:2]
                assert edge_kind == "edges" and example.target == ("styled", t) and 0 <= followed < t
    assert abs(sum(KINDS.values()) - 1) < 1e-9


def weights_of(folder):
    from safetensors.torch import load_file

    return {part: load_file(folder / part / "diffusion_pytorch_model.safetensors") for part in ("vae", "transformer")}


@pytest.mark.long
def test_a_stopped_run_goes_on_from_its_checkpoint_to_the_same_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "CHECKPOINT_EVERY", 2)
    whole = train.Run(tmp_path / "whole", MICRO, quiet=True).train()

    from qvedit.toy import fit

    original = fit.TransformerStage.step

    def stop_at_step_3(self, step):
        if step == 3:
            raise KeyboardInterrupt  # a kill after the checkpoint of step 2
        return original(self, step)

    monkeypatch.setattr(fit.TransformerStage, "step", stop_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train.Run(tmp_path / "stopped", MICRO, quiet=True).train()
    assert torch.load(tmp_path / "stopped" / "transformer.ckpt", weights_only=True)["step"] == 2
    monkeypatch.setattr(fit.TransformerStage, "step", original)
    resumed = train.Run(tmp_path / "stopped", MICRO, quiet=True).train()
    for part, tensors in weights_of(whole).items():
        for name, tensor in tensors.items():
            assert torch.equal(tensor, weights_of(resumed)[part][name]), (part, name)
    record = json.loads((resumed / "training.json").read_text())
    assert record["recipe"] == MICRO.as_dict() and set(record["files"]) == {
        "vae/diffusion_pytorch_model.safetensors", "transformer/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors"}


def test_a_folder_of_another_model_or_recipe_is_refused(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    with pytest.raises(QveditError, match="holds another model, not a toy training run"):
        train.Run(model, MICRO)
    train.Run(tmp_path / "run", MICRO)
    with pytest.raises(QveditError, match=r"another recipe \(clips: 3 -> 4\)"):
        train.Run(tmp_path / "run", Recipe(**{**MICRO.as_dict(), "size": (64, 64), "clips": 4}))


@pytest.mark.long
def test_the_command_line_refuses_in_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    result = run_qvedit("--out", str(tmp_path), module="qvedit.toy.train")  # as a user runs it: one line, exit 2
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"qvedit: error: {tmp_path} holds files of its own, not a toy training run: train into a new or empty "
        "folder (--out)"]
    with pytest.raises(SystemExit) as stop:
        train.main(["--clips", "many"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "qvedit: error: python -m qvedit.toy.train: argument --clips: invalid int value: 'many' (python -m "
        "qvedit.toy.train --help says what each option takes)"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recipe.json").write_text(json.dumps(MICRO.as_dict()))
    (tmp_path / "run" / "vae.ckpt").write_bytes(b"not a checkpoint")
    assert train.main(["--out", str(tmp_path / "run"), "--quiet", *micro_options()]) == 2
    assert "vae.ckpt does not load (UnpicklingError): delete it to redo that stage" in capsys.readouterr().err


def micro_options() -> list[str]:
    return [arg for key, value in MICRO.as_dict().items() if key != "size"
            for arg in (f"--{key.replace('_', '-')}", str(value))]
