"""perf/ settings and the benchmark entry on the CPU (the GPU figures are measured with the device tool)."""

import json

import pytest

from qvedit.bench import main as bench_main
from qvedit.errors import QveditError
from qvedit.models.settings import PerfSettings


def test_unknown_attention_backend_is_a_clear_error(tiny_pipe):
    with pytest.raises(QveditError, match="perf.attention_backend='no-such-kernel'"):
        PerfSettings(attention_backend="no-such-kernel").apply(tiny_pipe)


def test_text_encoder_offload_needs_a_gpu(tiny_pipe):
    with pytest.raises(QveditError, match="needs a CUDA device"):
        PerfSettings(offload_text_encoder=True).apply(tiny_pipe)


def test_default_perf_changes_nothing(tiny_pipe):
    PerfSettings().apply(tiny_pipe)
    assert "encode_prompt" not in vars(tiny_pipe)


def test_bench_runs_and_reports_every_column(tmp_path, tiny_pipe):
    assert bench_main(["--model", "tiny", "--device", "cpu", "--sizes", "64", "--steps", "2", "--last-steps", "2",
                       "--variants", "off_cond_output", "edge_gram_cond_output", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    off, guided = report["rows"]
    assert (off["variant"], guided["variant"]) == ("off_cond_output", "edge_gram_cond_output")
    assert off["transformer_passes"] == 4  # 2 steps x true CFG
    assert guided["guided_steps"] == 2 and guided["added_s_per_guided_step"] > 0
    assert all(off[k] > 0 for k in ("seconds_per_frame", "prompt_encoding_s", "transformer_s_per_step", "decode_s"))
    assert "| 64² | 2 | edge_gram_cond_output |" in (tmp_path / "bench.md").read_text()
