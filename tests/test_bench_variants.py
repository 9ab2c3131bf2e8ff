"""qvedit.bench's variants for the tiny guidance decoder, the step cache and experiment=fastest, on the CPU."""

import json

from qvedit.cli import bench
from qvedit.models.step_cache import fresh_steps
from qvedit.settings.model import PerfSettings


def test_cached_and_tiny_decoder_variants_report_speed_and_frame_difference(tmp_path, tiny_pipe, monkeypatch):
    monkeypatch.setattr("qvedit.settings.run.PIPELINE_CONDITION_AREA", 32 * 32)  # small conditions: seconds on the CPU
    assert bench.main(["--model", "tiny", "--device", "cpu", "--sizes", "32", "--steps", "6", "--variants", "off",
                       "off_cache", "lightning_off", "lightning_edge_gram_tiny", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    rows = {row["variant"]: row for row in report["rows"]}
    cached = rows["off_cache"]
    assert cached["steps_in_full"] == len(fresh_steps(PerfSettings(cache="taylorseer"), 6)) == 4
    assert cached["transformer_passes"] == 12  # the transformer runs every step: the cache skips its blocks
    assert cached["speedup_vs_uncached"] > 0 and cached["levels_vs_uncached_max"] >= 0
    assert 0 <= cached["levels_vs_uncached_mean"] <= cached["levels_vs_uncached_max"]
    tiny = rows["lightning_edge_gram_tiny"]
    assert tiny["guided_steps"] == 7 and "added_s_per_guided_step" in tiny and tiny["decode_calls"] == 1
    assert "tiny decoder's cost" in report["tiny_decoder"]
    assert "| 32² | 6 | off_cache |" in (tmp_path / "bench.md").read_text()


def test_fastest_runs_as_composed_on_the_fp8_pipeline():
    preset = bench.fastest_preset()
    assert (preset["steps"], preset["true_cfg_scale"], preset["ttlg"]["decoder"]) == (4, 1.0, "tiny")
    assert (preset["perf"]["quantize"], preset["perf"]["cache"]) == ("fp8", "taylorseer")
    assert fresh_steps(PerfSettings(**preset["perf"]), 4) == [0, 1, 2]
    assert [bench.stage_of(v) for v in ("fastest_edge_gram", "edge_gram_cache_fp8", "edge_gram_cache", "off_fast")] \
        == ["_fp8", "_fp8", "", "_fast"]
    assert [bench.uncached(v) for v in ("edge_gram_cache_fp8", "lightning_off_cache", "fastest_edge_gram")] \
        == ["edge_gram_fp8", "lightning_off", "fastest_edge_gram_nocache"]


def test_qwen_image_21_variants_run_in_the_same_bench_on_its_own_pipeline(tmp_path, monkeypatch):
    """The q21_* variants load Qwen-Image 2.1 after 2509's variants (tiny models here, random_full / random_full_21 on
    a GPU): 40 steps, or the 8-step grid guided on steps 0..6, with the guided step's cost against q21_off; a warped
    start at strength 0.6."""
    monkeypatch.setattr("qvedit.settings.run.PIPELINE_CONDITION_AREA", 32 * 32)
    assert bench.main(["--model", "tiny", "--device", "cpu", "--sizes", "32", "--steps", "3", "--last-steps", "2",
                       "--variants", "off", "q21_off", "q21_edge_gram", "q21_grid8_edge_gram", "q21_off_s06",
                       "--out", str(tmp_path)]) == 0
    rows = {row["variant"]: row for row in json.loads((tmp_path / "bench.json").read_text())["rows"]}
    assert (rows["off"]["steps"], rows["q21_off"]["steps"], rows["q21_grid8_edge_gram"]["steps"]) == (3, 40, 8)
    assert rows["q21_edge_gram"]["guided_steps"] == 2 and rows["q21_grid8_edge_gram"]["guided_steps"] == 7
    assert rows["q21_edge_gram"]["added_s_per_guided_step"] is not None
    assert rows["q21_off"]["transformer_passes"] == 40  # no CFG: one pass a step
    started = rows["q21_off_s06"]  # a part-way start on 2.1: the last 24 of its 40 steps
    assert (started["steps_run"], started["transformer_passes"], started["start_noise"]) == (24, 24, "warped")
    assert "| vs 2509 plain |" in (tmp_path / "bench.md").read_text()


def test_start_variants_run_the_steps_a_part_way_start_leaves(tmp_path, tiny_pipe, monkeypatch):
    """The GPU variants of start.strength (timing only there), run here on the tiny model: frame 1 runs the tail of
    the schedule, and the guidance window counts over the steps run."""
    monkeypatch.setattr("qvedit.settings.run.PIPELINE_CONDITION_AREA", 32 * 32)
    assert bench.main(["--model", "tiny", "--device", "cpu", "--sizes", "32", "--steps", "6", "--variants", "off_s06",
                       "lightning4_edge_gram_s04", "--out", str(tmp_path)]) == 0
    rows = {row["variant"]: row for row in json.loads((tmp_path / "bench.json").read_text())["rows"]}
    assert (rows["off_s06"]["steps_run"], rows["off_s06"]["transformer_passes"]) == (3, 6)  # 3 of 6 steps, CFG
    lightning = rows["lightning4_edge_gram_s04"]
    assert (lightning["steps"], lightning["steps_run"], lightning["guided_steps"]) == (4, 1, 1)
    assert (lightning["start_noise"], lightning["start_strength"]) == ("warped", 0.4)
    assert bench.fastest_preset()["start"] == {"noise": "warped", "strength": 0.5}
