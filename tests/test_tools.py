"""The tools beside python -m qvedit (.accept, .bench, the benchmarks/ scripts) as a user's shell meets them: a
reader that stops early, the smallest values they take, a step that fails. (Any value of any option: tests/
test_property.py.)"""

import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.test_acceptance import sweep_with


def test_accept_into_a_reader_that_stops_early_ends_quietly(tmp_path):
    """python -m qvedit.accept DIR | head: the report is written, the output ends without a traceback."""
    sweep = sweep_with(tmp_path)
    process = subprocess.Popen([sys.executable, "-m", "qvedit.accept", str(sweep)], cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before the report is printed
    stderr = process.stderr.read()
    process.stderr.close()
    assert process.wait() == 0 and stderr == "", stderr  # the verdict's exit code (PASS), nothing on stderr
    assert (sweep / "acceptance.md").is_file() and (sweep / "report.html").is_file()


def test_help_into_a_reader_that_stops_early_ends_quietly():
    """python -m qvedit --help | head"""
    process = subprocess.Popen([sys.executable, "-m", "qvedit", "--help"], cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    stderr = process.stderr.read()
    process.stderr.close()
    assert process.wait() == 0 and stderr == "", stderr


def test_the_bench_runs_with_the_smallest_sizes_and_steps_it_takes(tmp_path, tiny_pipe, capsys):
    """--steps 0 and --sizes 0 divided by zero: refused in one line; 16 pixels and --last-steps 0 run. (--steps 1 is
    taken, and the one-step NaN of issue 31's point 11 is one line too.)"""
    from qvedit.cli.bench import main

    assert main(["--model", "tiny", "--device", "cpu", "--sizes", "16", "--steps", "2", "--last-steps", "0",
                 "--variants", "off_cond_output", "edge_gram_cond_output", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "bench.json").is_file() and "| 16² | 2 | edge_gram_cond_output |" in capsys.readouterr().out
    for bad in (["--sizes", "0"], ["--steps", "0"]):
        with pytest.raises(SystemExit) as refused:
            main(["--model", "tiny", "--device", "cpu", *bad])
        assert refused.value.code == 2
    err = capsys.readouterr().err
    assert err.count("qvedit: error:") == 2 and "Traceback" not in err


def test_a_benchmark_step_that_fails_is_one_line_naming_its_log(tmp_path, monkeypatch, capsys):
    """benchmarks/drift.py --jobs 2: its warm-up run's one-line error came back as a CalledProcessError traceback."""
    import importlib.util

    from qvedit.core import tool_parser as cli

    spec = importlib.util.spec_from_file_location("drift_benchmark_step", REPO / "benchmarks" / "drift.py")
    drift = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(drift)
    failed = subprocess.CompletedProcess([], 2, stdout="", stderr="loading\nqvedit: error: the clip is cut short\n")
    monkeypatch.setattr(cli.subprocess, "run", lambda *a, **k: failed)
    assert drift.main(["--jobs", "2", "--length", "2", "--out", str(tmp_path / "bench")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (f"qvedit: error: the warm-up run failed (exit 2): the clip is cut short; its whole output: "
                    f"{(tmp_path / 'bench' / 'warm-up.log').resolve()}")
    with pytest.raises(SystemExit) as refused:  # io.length takes 2 or more: refused before anything runs
        drift.main(["--length", "1", "--jobs", "2", "--out", str(tmp_path / "bench")])
    assert refused.value.code == 2 and "argument --length: 1 is out of range" in capsys.readouterr().err
