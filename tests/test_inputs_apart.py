"""qvedit never writes into a folder it reads a user's input from: refused in one line before anything is written.

Each input key (``path="input"`` in the schema) against each folder a run writes into (``RunLayout.written_folders``),
through real command lines: the check comes before Hydra makes the run folder, so the user's folder is untouched.
"""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qvedit.io.layout import RunLayout
from qvedit.settings.io import FramesIO
from qvedit.settings.report import MetricsSettings
from tests.conftest import run_qvedit as qvedit
from tests.conftest import write_clip
from tests.test_cli import one_line_error


def snapshot(folder: Path) -> dict:
    """{relative path: bytes} of every file below ``folder``, hidden ones included."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def source_frames(folder: Path, count: int = 3) -> Path:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    return folder


def test_edges_made_into_the_source_frames_folder_are_refused_and_the_frames_kept(tmp_path):
    """The slip of the report: io.source_frames_dir=DIR io.edges_dir=DIR wrote edge maps over the source frames."""
    frames = source_frames(tmp_path / "frames")
    before = snapshot(frames)
    result = qvedit("experiment=tiny_cpu", f"io.source_frames_dir={frames}", f"io.edges_dir={frames}",
                    f"hydra.run.dir={tmp_path / 'run'}")
    one_line_error(result, f"io.edges_dir={frames} is the folder io.source_frames_dir reads from",
                   "choose another io.edges_dir")
    assert snapshot(frames) == before and not (tmp_path / "run").exists()


def cases(tmp: Path) -> dict:
    """name -> (overrides, the line's start): one per kind of input and kind of output folder."""
    init, edges = write_clip(tmp / "clip")
    frames = source_frames(tmp / "source")
    lora = tmp / "loras" / "style.safetensors"
    decoder = tmp / "decoders" / "taew2_1.safetensors"
    candidate = tmp / "earlier" / "first_frame" / "candidate_00.png"
    for path in (lora, decoder, candidate):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not looked at: the check needs only where it is")
    clip = [f"io.init_frame={init}", f"io.edge_frames_dir={edges}"]
    return {
        "run folder = edge frames": ([*clip, f"hydra.run.dir={edges}"],
                                     f"hydra.run.dir={edges} is the folder io.edge_frames_dir reads from"),
        "run folder = init frame's": ([*clip, f"hydra.run.dir={init.parent}"],
                                      f"hydra.run.dir={init.parent} is the folder of init.png, which io.init_frame"),
        "frames inside source frames": ([f"io.source_frames_dir={frames}", f"io.out_frames_dir={frames / 'out'}",
                                         f"hydra.run.dir={tmp / 'run'}"], "io.out_frames_dir=" + str(frames / "out")
                                        + " is inside the folder io.source_frames_dir reads from"),
        "metrics beside the init frame": ([*clip, f"metrics.path={init.parent / 'metrics.csv'}",
                                           f"hydra.run.dir={tmp / 'run'}"], f"metrics.path={init.parent} is the folder"),
        "debug images into the edge frames": ([*clip, f"debug_dir={edges}", f"hydra.run.dir={tmp / 'run'}"],
                                              f"debug_dir={edges} is the folder io.edge_frames_dir"),
        "run folder = a LoRA's": ([*clip, f"model.loras=[{{path:{lora}}}]", f"hydra.run.dir={lora.parent}"],
                                  "is the folder of style.safetensors, which model.loras[0].path reads from"),
        "frames beside the tiny decoder": ([*clip, "ttlg=edge", "ttlg.decoder=tiny", f"ttlg.tiny_decoder={decoder}",
                                            f"io.out_frames_dir={decoder.parent}", f"hydra.run.dir={tmp / 'run'}"],
                                           "which ttlg.tiny_decoder reads from"),
        "another run's first frame": ([f"io.init_frame={candidate}", f"io.edge_frames_dir={edges}",
                                       f"hydra.run.dir={candidate.parent.parent}"],
                                      f"hydra.run.dir={candidate.parent} is the folder of candidate_00.png"),
        "a sweep into the edge frames": ([*clip, "seed=0,1", f"hydra.sweep.dir={edges}", "-m"],
                                         f"hydra.sweep.dir={edges} is the folder io.edge_frames_dir"),
    }


@pytest.mark.parametrize("name", [
    "run folder = edge frames", "run folder = init frame's", "frames inside source frames",
    "metrics beside the init frame", "debug images into the edge frames", "run folder = a LoRA's",
    "frames beside the tiny decoder", "another run's first frame", "a sweep into the edge frames"])
def test_every_output_folder_is_kept_out_of_every_input_folder(tmp_path, name):
    overrides, start = cases(tmp_path)[name]
    before = snapshot(tmp_path)
    result = qvedit("experiment=tiny_cpu", *overrides)
    one_line_error(result, start, "qvedit never writes into a folder it reads your input from")
    assert snapshot(tmp_path) == before  # nothing written anywhere: not even Hydra's .hydra/ or log


def test_a_run_folder_below_an_input_file_s_folder_is_fine(tmp_path):
    init, edges = write_clip(tmp_path / "clip")
    io = FramesIO(init_frame=str(init), edge_frames_dir=str(edges))
    inputs = [("io.init_frame", init), ("io.edge_frames_dir", edges)]
    assert RunLayout.resolve(init.parent / "run", io, MetricsSettings()).input_problem(inputs) is None
    inside = RunLayout.resolve(edges / "run", io, MetricsSettings()).input_problem(inputs)
    assert inside.startswith(f"hydra.run.dir={edges / 'run'} is inside the folder io.edge_frames_dir reads from")


@pytest.mark.long
def test_a_swept_output_folder_is_refused_by_its_own_job(tmp_path):
    """A swept value is not in the config Hydra's callback sees before the sweep: the job itself refuses it."""
    init, edges = write_clip(tmp_path / "clip", size=(32, 32), edges=1)
    before = snapshot(edges)
    sweep = tmp_path / "sweep"
    result = qvedit("experiment=tiny_cpu", f"io.init_frame={init}", f"io.edge_frames_dir={edges}", "metrics=none",
                    "num_inference_steps=2", f"io.out_frames_dir={tmp_path / 'out'},{edges}", f"hydra.sweep.dir={sweep}",
                    "-m")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"io.out_frames_dir={edges} is the folder io.edge_frames_dir reads from" in result.stderr
    assert snapshot(edges) == before and (tmp_path / "out" / "00001.png").is_file()
