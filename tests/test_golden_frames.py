"""The frames a user gets stay the same bytes when the code changes shape: fixed commands, recorded pixels.

``golden_frames.json`` holds, for each command below, the SHA-256 of every frame's pixels (and the
job folder names of the sweep), recorded with the code before the refactor that introduced this
test. Pixels depend on the CPU's kernels and on library versions, so the file also records the
machine it was made on; elsewhere the comparison is skipped and says why. After a change that is
meant to change frames, record again:

    QVEDIT_RECORD_GOLDEN=1 python -m pytest tests/test_golden_frames.py
"""

import hashlib
import json
import os
import platform

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import REPO, run_qvedit

GOLDEN = REPO / "tests" / "golden_frames.json"
TEMPORAL = ["experiment=tiny_cpu", "io=demo", "ttlg=edge_gram_temporal", "ttlg.last_steps=3"]
COMMANDS = {  # name -> the commands run one after another into one folder
    "demo": [["experiment=demo"]],
    "acceptance_demo_sweep": [["experiment=acceptance_demo", "max_frames=3", "num_inference_steps=4", "seed=0,1",
                               "-m"]],
    "resumed": [[*TEMPORAL, "max_frames=4"], TEMPORAL],  # 4 frames, then the rest in a second run
}


def fingerprint() -> dict:
    import diffusers
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "cpu": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "machine": platform.machine()}


def pixel_hashes(folder) -> dict[str, str]:
    """{frame path relative to ``folder``: SHA-256 of its decoded pixels}."""
    hashes = {}
    for path in sorted(folder.rglob("frames/*.png")):
        pixels = np.asarray(Image.open(path))
        digest = hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes())
        hashes[str(path.relative_to(folder))] = digest.hexdigest()
    return hashes


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_frames_equal_the_recorded_ones(name, tmp_path):
    recording = os.environ.get("QVEDIT_RECORD_GOLDEN") == "1"
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {"fingerprint": fingerprint(), "frames": {}}
    if not recording and golden["fingerprint"] != fingerprint():
        pytest.skip(f"frames were recorded on {golden['fingerprint']}, this machine is {fingerprint()}")
    folder = tmp_path / name
    for command in COMMANDS[name]:
        overrides = [arg for arg in command if arg != "-m"]
        if "-m" in command:
            result = run_qvedit(*overrides, f"hydra.sweep.dir={folder}", "-m")
        else:
            result = run_qvedit(*overrides, f"hydra.run.dir={folder}")
        assert result.returncode == 0, result.stderr[-3000:]
    hashes = pixel_hashes(folder)
    if recording:
        golden["fingerprint"] = fingerprint()
        golden["frames"][name] = hashes
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    assert hashes == golden["frames"][name]
