"""The bad-input battery: each case ends in a clear one-line error or is handled, never a traceback,
and nothing finished is lost.

Cases run in-process through ``qvedit.run.job.run`` (the model loads once); ``tests/test_cli.py``
shows that the command line turns a QveditError into one ``qvedit: error:`` line with exit code 2.
Every case snapshots the files under its folder before the run it tests and checks afterwards that
each one is still there with the same bytes (but those the case damaged on purpose), that no
half-written file is left, that every frame decodes and that every frame has its metrics row.
Faults the machine would have to produce (a full disk, out of GPU memory, a lock held by another
process) are injected: the write or the model call raises the OS's or torch's own error.
"""

from __future__ import annotations

import errno
import hashlib
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from qvedit.core.errors import QveditError
from qvedit.core.files import PARTIAL_GLOB
from qvedit.models.loading import load_pipeline
from qvedit.run.job import run
from qvedit.settings.model import TinyModel
from qvedit.settings.schema import register_schemas
from tests.conftest import REPO, TINY_21_MODEL, TINY_MODEL

register_schemas()
TINY = ["model=tiny", "device=cpu", "dtype=fp32", "num_inference_steps=2", "condition_area=output", "metrics=none"]
METRICS = ["metrics=default", "metrics.vgg_weights=random"]


def rgb(size=(40, 24), seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def clip(root: Path, init: Image.Image = None, edges=3, edge_size=None, names=None) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    init = init if init is not None else rgb()
    init.save(root / "init.png")
    (root / "edges").mkdir(exist_ok=True)
    size = edge_size or (init.size if init.size else (40, 24))
    for k, name in enumerate(names or [f"{k}.png" for k in range(1, edges + 1)]):
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (size[1], size[0]), dtype=np.uint8)).save(
            root / "edges" / name)
    return root / "init.png", root / "edges"


def video(path: Path, frames: int) -> Path:
    if frames == 0:  # no frames: ffmpeg leaves an mp4 without a video stream
        writer = imageio_ffmpeg.write_frames(str(path), (40, 24), fps=10, ffmpeg_log_level="quiet")
        writer.send(None)
        writer.close()
    else:
        iio.imwrite(path, np.zeros((frames, 24, 40, 3), np.uint8) + 80, fps=10, codec="libx264")
    return path


def execute(tmp_path: Path, overrides: list[str]) -> Path:
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose("config", overrides=TINY + overrides)
    return run(cfg, tmp_path / "run").frames_dir


def frames_io(init, edges):
    return [f"io.init_frame='{init}'", f"io.edge_frames_dir='{edges}'"]  # quoted: paths may hold spaces


@dataclass
class Context:
    """What a case's setup may use: pytest's monkeypatch, and things to undo after the run."""

    mp: pytest.MonkeyPatch
    later: list


def plain(t):
    return frames_io(*clip(t))


@dataclass
class Case:
    name: str
    setup: Callable  # (tmp folder, Context) -> overrides; may make an earlier run first
    error: Optional[str]  # regex of the one-line message; None: handled, the clip is made
    frames: Optional[int] = None  # frames in run/frames afterwards, when the case says
    early: bool = False  # refused before the model loads
    damaged: tuple = ()  # files (relative to the tmp folder) the setup damaged on purpose


def earlier_run(t: Path, *extra: str, frames: int = 3) -> list[str]:
    """A finished run of ``frames`` frames into t/run (metrics on); returns the overrides of the clip."""
    overrides = frames_io(*clip(t)) + METRICS
    execute(t, overrides + [f"max_frames={frames}", *extra])
    return overrides


# -- setups ----------------------------------------------------------------------------------------

def empty_edges(t, ctx):
    init, edges = clip(t, edges=0)
    return frames_io(init, edges)


def text_as_png(t, ctx):
    init, edges = clip(t)
    (edges / "2.png").write_text("hello")
    return frames_io(init, edges)


def truncated_png(t, ctx):
    init, edges = clip(t)
    data = (edges / "2.png").read_bytes()
    (edges / "2.png").write_bytes(data[: len(data) // 2])
    return frames_io(init, edges)


def init_mode(mode):
    def setup(t, ctx):
        image = rgb()
        if mode == "I;16":
            image = Image.fromarray((np.asarray(image.convert("L"), np.uint16) * 257))
        else:
            image = image.convert(mode)
        return frames_io(*clip(t, init=image))
    return setup


def corrupt_mp4(t, ctx):
    data = video(t / "good.mp4", 5).read_bytes()
    (t / "bad.mp4").write_bytes(data[: len(data) // 2])
    return ["io=video", f"io.rgb_video={t / 'bad.mp4'}"]


def failing_write(match: Callable[[str], bool], error: int, partial_bytes: bool = False):
    """Setup: PIL saves to a temporary name for which ``match(name)`` holds fail with OSError ``error``
    (after writing some bytes, like a disk that fills up in the middle of a file)."""
    def setup(t, ctx):
        original = Image.Image.save

        def save(image, fp, *args, **kwargs):
            if isinstance(fp, (str, Path)) and match(Path(fp).name):
                Path(fp).write_bytes(b"\x89PNG half")
                raise OSError(error, __import__("os").strerror(error))
            return original(image, fp, *args, **kwargs)

        ctx.mp.setattr(Image.Image, "save", save)
        return plain(t) + METRICS
    return setup


def failing_row_append(t, ctx):
    """The second metrics row fails half-written (EIO): the row is cut back, frame 2 is not kept."""
    import qvedit.core.files as files

    calls = []

    class HalfWriter:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, text):
            self.handle.write(text[:5])
            self.handle.flush()
            raise OSError(errno.EIO, "Input/output error")

    def fake_open(path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)
        if mode == "a":
            calls.append(path)
            if len(calls) == 2:
                return HalfWriter(handle)
        return handle

    ctx.mp.setattr(files, "open", fake_open, raising=False)
    return plain(t) + METRICS


def failing_manifest(t, ctx):
    original = Path.write_text

    def write_text(path, *args, **kwargs):
        if ".qvedit-run." in path.name:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        return original(path, *args, **kwargs)

    ctx.mp.setattr(Path, "write_text", write_text)
    return plain(t)


def out_of_memory(error: type, at_call: int):
    """The transformer raises ``error`` on its ``at_call``-th call (4 calls a frame: 2 steps, true CFG)."""
    def setup(t, ctx):
        pipe = load_pipeline(TinyModel(TINY_MODEL), device="cpu", dtype="fp32")
        calls, forward = [], pipe.transformer.forward

        def failing(*args, **kwargs):
            calls.append(1)
            if len(calls) >= at_call:
                raise error("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.10 GiB")
            return forward(*args, **kwargs)

        ctx.mp.setattr(pipe.transformer, "forward", failing)
        return plain(t) + METRICS
    return setup


HOLDER = "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); " \
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'process %d on testhost' % os.getpid()); print('held', " \
         "flush=True); time.sleep(float(sys.argv[2]))"


def folder_held_by_another_process(seconds: float):
    def setup(t, ctx):
        (t / "run" / "frames").mkdir(parents=True)
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(t / "run" / "frames" / ".qvedit-lock"),
                                   str(seconds)], stdout=subprocess.PIPE, text=True)
        ctx.later.append(lambda: (holder.kill(), holder.wait(), holder.stdout.close()))
        assert holder.stdout.readline().strip() == "held"
        if seconds == 0:
            holder.wait()  # it died: the kernel let go of its lock
        return plain(t)
    return setup


def damaged_model(damage: Callable[[Path], None]):
    def setup(t, ctx):
        folder = t / "model"
        shutil.copytree(TINY_MODEL, folder)
        damage(folder)
        return plain(t) + [f"model.model_id={folder}"]
    return setup


def truncate(relative: str, keep=0.5):
    def damage(folder):
        data = (folder / relative).read_bytes()
        (folder / relative).write_bytes(data[: int(len(data) * keep)])
    return damage


def pickled_weights(folder):
    from safetensors.torch import load_file

    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), folder / "vae" / "diffusion_pytorch_model.bin")
    weights.unlink()


def damaged_after_a_run(damage: Callable[[Path], None]):
    """A finished 3-frame run, then ``damage(run folder)`` before the same command runs again (4 frames)."""
    def setup(t, ctx):
        overrides = earlier_run(t)
        (t / "before").mkdir()
        for path in (t / "run" / "frames").glob("*.png"):
            shutil.copy(path, t / "before" / path.name)
        damage(t / "run")
        return overrides
    return setup


def cut(relative: str):
    def damage(run_dir):
        data = (run_dir / relative).read_bytes()
        (run_dir / relative).write_bytes(data[: len(data) // 3])
    return damage


def replace_image(relative: str, size):
    def damage(run_dir):
        rgb(size, seed=5).save(run_dir / relative)
    return damage


def garbage(relative: str):
    def damage(run_dir):
        (run_dir / relative).write_bytes(bytes(range(256)) * 3)
    return damage


def resumed_with(*changed: str):
    def setup(t, ctx):
        return earlier_run(t) + list(changed)
    return setup


def misfit_tiny_decoder(t, ctx):
    from safetensors.torch import save_file

    import torch

    (t / "decoder").mkdir()  # a folder of its own: the run folder may not be inside an input's
    save_file({"decoder.1.weight": torch.zeros(256, 4, 3, 3)}, t / "decoder" / "taew2_1.safetensors")
    return plain(t) + ["ttlg=edge", "ttlg.decoder=tiny", f"ttlg.tiny_decoder={t / 'decoder'}"]


def value(*overrides: str):
    return lambda t, ctx: plain(t) + list(overrides)


def folder_of(class_name: Optional[str], preset: str):
    """A copy of the tiny model of the other family (or of 2509's, renamed ``class_name``) given to ``preset``."""
    def setup(t, ctx):
        from qvedit.models.tiny21 import build_tiny_21_model

        folder = t / "model"
        if class_name is None:  # the tiny Qwen-Image 2.1, whatever the preset
            if not (Path(TINY_21_MODEL) / "model_index.json").is_file():
                build_tiny_21_model(TINY_21_MODEL)
            shutil.copytree(TINY_21_MODEL, folder)
        else:
            shutil.copytree(TINY_MODEL, folder)
            index = folder / "model_index.json"
            index.write_text(index.read_text().replace('"QwenImageEditPlusPipeline"', f'"{class_name}"'))
        return plain(t) + [f"model={preset}", f"model.model_id={folder}"]
    return setup


CASES = [
    Case("no inputs", lambda t, ctx: [], "io.init_frame and io.edge_frames_dir are not set", early=True),
    Case("missing init frame", lambda t, ctx: [f"io.init_frame={t / 'nope.png'}", f"io.edge_frames_dir={clip(t)[1]}"],
         "init frame not found", early=True),
    Case("missing edge folder", lambda t, ctx: frames_io(clip(t)[0], t / "nope"), "edge frame folder not found",
         early=True),
    Case("edge folder is a file", lambda t, ctx: frames_io(clip(t)[0], clip(t)[0]), "is not a folder", early=True),
    Case("empty edge folder", empty_edges, "no edge frames", early=True),
    Case("only hidden files", lambda t, ctx: frames_io(*clip(t, names=[".1.png", ".2.png"])), "no edge frames",
         early=True),
    Case("text file named .png", text_as_png, "cannot read image", early=True),
    Case("truncated png mid-sequence", truncated_png, "2.png", frames=2),
    Case("missing video", lambda t, ctx: ["io=video", f"io.rgb_video={t / 'nope.mp4'}"], "not found", early=True),
    Case("zero-frame video", lambda t, ctx: ["io=video", f"io.rgb_video={video(t / 'zero.mp4', 0)}"],
         "no video frames", early=True),
    Case("corrupt mp4", corrupt_mp4, "cannot decode video|damaged", early=True),
    Case("grayscale init", init_mode("L"), None),
    Case("RGBA init", init_mode("RGBA"), None),
    Case("16-bit init", init_mode("I;16"), None),
    Case("palette init", init_mode("P"), None),
    Case("edges larger than init", lambda t, ctx: frames_io(*clip(t, edge_size=(80, 48))), None),
    Case("edges smaller than init", lambda t, ctx: frames_io(*clip(t, edge_size=(20, 12))), None),
    Case("1x1 images", lambda t, ctx: frames_io(*clip(t, init=rgb((1, 1)), edge_size=(1, 1))), None),
    Case("spaces and non-ASCII in the path", lambda t, ctx: frames_io(*clip(t / "mes vidéos" / "clip 1")), None),
    Case("max_frames 0", value("max_frames=0"), r"max_frames=0 is out of range: use an integer >= 1", early=True),
    Case("max_frames 1", value("max_frames=1"), None, frames=1),
    Case("max_frames beyond the edges", value("max_frames=10"), "at most 4 output frames", early=True),
    Case("output folder is a file", lambda t, ctx: plain(t) + [f"io.out_frames_dir={clip(t)[0]}"], "is a file",
         early=True),
    Case("unwritable output folder", value("io.out_frames_dir=/sys/qvedit-frames"), "cannot create output folder",
         early=True),
    Case("NaN in the latents", value("ttlg=edge", "ttlg.lr=1e30", "ttlg.vgg_weights=random"), "NaN", frames=1),
    # values out of range: one line with what the key takes, before the model loads
    Case("no denoising steps", value("num_inference_steps=0"),
         r"num_inference_steps=0 is out of range: use an integer from 1 to 1000", early=True),
    Case("unknown dtype", value("dtype=bf8"), r"dtype='bf8' is not valid: use bf16, fp16 or fp32", early=True),
    Case("negative seed", value("seed=-1"), r"seed=-1 is out of range", early=True),
    Case("NaN CFG scale", value("true_cfg_scale=nan"), r"true_cfg_scale=nan is not a finite number", early=True),
    Case("condition area too small", value("condition_area=100"),
         r"condition_area=100 is out of range: use an integer from 1024 to 16777216, or output", early=True),
    Case("condition area a word", value("condition_area=fast"), r"condition_area='fast' is not valid", early=True),
    Case("max_area too small", value("max_area=10"), r"max_area=10 is out of range: use an integer >= 256, or null",
         early=True),
    Case("guide every 0th step", value("ttlg.every=0"), r"ttlg.every=0 is out of range: use an integer >= 1",
         early=True),
    Case("negative step size", value("ttlg.lr=-0.5"), r"ttlg.lr=-0.5 is out of range: use a number >= 0", early=True),
    Case("negative last_steps", value("ttlg.last_steps=-1"), r"ttlg.last_steps=-1 is out of range", early=True),
    Case("Gram loss below VGG's size", value("ttlg.gram_size=8"), r"ttlg.gram_size=8 is out of range: use an integer "
         r">= 32", early=True),
    Case("LPIPS size 4", value("metrics.size=4"), r"metrics.size=4 is out of range", early=True),
    Case("fraction above 1", value("acceptance.edge_frames_fraction=1.5"),
         r"acceptance.edge_frames_fraction=1.5 is out of range: use a number from 0 to 1", early=True),
    Case("three CFG ranks", value("parallel.cfg_degree=3"), r"parallel.cfg_degree=3 is out of range: use an integer "
         "from 1 to 2", early=True),
    Case("several bad values at once", value("num_inference_steps=0", "ttlg.every=0"),
         r"num_inference_steps=0 .*; ttlg.every=0 ", early=True),
    # sizes every stage takes
    Case("1x1 frames with the metrics on", lambda t, ctx: frames_io(*clip(t, init=rgb((1, 1)), edge_size=(1, 1)))
         + METRICS, None),
    Case("8x8 frames with Gram guidance", lambda t, ctx: frames_io(*clip(t, init=rgb((8, 8)), edge_size=(8, 8)))
         + ["ttlg=gram", "ttlg.vgg_weights=random"] + METRICS, None),
    Case("frames too elongated for the encoder", lambda t, ctx: frames_io(*clip(t, init=rgb((1, 300))))
         + METRICS, r"the frames are 1x300, too elongated .* at most 200:1", early=True),
    # writing fails: one line with the folder and its free space; no half-written file
    Case("disk full writing frame 2", failing_write(lambda name: name.startswith(".00002."), errno.ENOSPC),
         r"cannot write 00002.png in .*frames: No space left on device \(.* free there\)", frames=2),
    Case("metrics row cut off by an I/O error", failing_row_append, r"cannot write metrics.csv in .*: Input/output "
         "error", frames=2),
    Case("read-only disk writing the preview", failing_write(lambda name: name.startswith(".preview."), errno.EROFS),
         r"cannot write preview.(png|gif) in .*: Read-only file system", frames=4),
    Case("quota exceeded recording the settings", failing_manifest, r"cannot write .qvedit-run.yaml .*Disk quota",
         early=True),
    # out of memory inside a frame: the frame, its size, the peak, the preset that fits
    Case("CUDA out of memory in frame 2", out_of_memory(torch.cuda.OutOfMemoryError, at_call=5),
         r"frame 2 \(generated at 32x32\) ran out of memory \(peak [\d.]+ GiB, then 20.00 GiB more was asked\): use a "
         r"smaller max_area \(max_area=512 .*frames 0..1 are kept", frames=2),
    Case("host memory out in frame 1", out_of_memory(MemoryError, at_call=1),
         r"frame 1 \(generated at 32x32\) ran out of memory .*frame 0 is kept", frames=1),
    # one writer per folder
    Case("frames folder in use by another process", folder_held_by_another_process(60),
         r"run/frames is in use by process \d+ on testhost, another qvedit run", early=True),
    Case("lock of a process that died", folder_held_by_another_process(0), None),
    # damaged inputs that look fine
    Case("truncated safetensors in the model", damaged_model(truncate("vae/diffusion_pytorch_model.safetensors")),
         r"model folder .* is damaged or incomplete: vae/diffusion_pytorch_model.safetensors is cut short", early=True),
    Case("model folder lacking a component", damaged_model(lambda f: shutil.rmtree(f / "text_encoder")),
         r"damaged or incomplete: text_encoder/ is missing", early=True),
    Case("pickled weights in the model", damaged_model(pickled_weights),
         r"vae/ has only pickled weights \(diffusion_pytorch_model.bin\), which qvedit does not load", early=True),
    Case("a finished frame truncated before resuming", damaged_after_a_run(cut("frames/00002.png")), None,
         damaged=("run/frames/00002.png",)),
    Case("a finished frame of another size before resuming",
         damaged_after_a_run(replace_image("frames/00001.png", (20, 20))), None, damaged=("run/frames/00001.png",)),
    Case("metrics.csv garbage before resuming", damaged_after_a_run(garbage("metrics.csv")), None,
         damaged=("run/metrics.csv",)),
    Case("the settings record damaged before resuming", damaged_after_a_run(garbage("frames/.qvedit-run.yaml")),
         r"frames/.qvedit-run.yaml is damaged .*: it records the settings", early=True,
         damaged=("run/frames/.qvedit-run.yaml",)),
    Case("resumed with another seed", resumed_with("seed=3"), r"holds frames made with other settings \(seed: 0 -> 3\)",
         early=True),
    Case("resumed with another init frame", lambda t, ctx: earlier_run(t) + [f"io.init_frame={clip(t / 'other', rgb(seed=9))[0]}"],
         r"holds frames (made with other settings|of another clip)", early=True),
    # perf settings that cannot work here or together: one line before the model loads
    Case("FP8 matmuls on the CPU", value("perf=fp8"), r"perf.quantize=fp8 needs a CUDA GPU with FP8 tensor cores "
         r"\(compute capability >= 8.9: Ada, Hopper or newer\), and device=cpu", early=True),
    Case("group offloading on the CPU", value("perf=vram24"), r"perf.group_offload streams the model's weights "
         "from CPU memory to a CUDA GPU, but device=cpu", early=True),
    Case("compile with group offloading", value("perf=vram24", "perf.compile=true"),
         "perf.compile does not combine with perf.group_offload", early=True),
    Case("an unknown quantization", value("perf.quantize=int4"), r"perf.quantize='int4' is not valid: use none or fp8",
         early=True),
    # ttlg.decoder=tiny (its weights) and perf.cache (what it combines with): one line before the model loads
    Case("tiny decoder weights that do not fit", misfit_tiny_decoder, r"ttlg.tiny_decoder: .*/taew2_1.safetensors does "
         r"not hold the taew2_1 tiny decoder: decoder.1.weight has shape \[256, 4, 3, 3\] where the decoder takes "
         r"\[256, 16, 3, 3\]", early=True),
    Case("tiny decoder without weights", value("ttlg=edge", "ttlg.decoder=tiny"), "ttlg.decoder=tiny needs its weights",
         early=True),
    Case("step cache with group offloading", value("perf=vram24", "perf.cache=taylorseer"),
         "perf.cache does not combine with perf.group_offload", early=True),
    Case("step cache computing no step in full", value("perf.cache=taylorseer", "perf.cache_start_step=0"),
         r"perf.cache_start_step=0 is out of range: use an integer >= 1", early=True),
    # the model family (model.release) and what it takes: one line before the model loads
    Case("a model key 2509's family does not take", value("model.kv_cache=false"),
         r"model.kv_cache is a key of Qwen-Image 2.1 \(qwen_image_21\); model.release=2509 is the qwen_edit_plus "
         r"family \(Qwen-Image-Edit-2509, Qwen-Image-Edit-2511\), which does not take it: drop model.kv_cache",
         early=True),
    Case("a sampling grid of other steps", value("model=tiny_21", "model.sample_sigmas=[1.0,0.6,0.3]"),
         r"model.sample_sigmas has 3 values, so each call takes 3 steps, but num_inference_steps=2: set "
         r"num_inference_steps=3", early=True),
    Case("a 2.1 folder given to 2509's preset", folder_of(None, "qwen_edit_2509"),
         r"model.model_id=.*/model: its model_index.json names QwenImage21Pipeline, but model.release=2509 "
         r"\(Qwen-Image-Edit-2509\) runs QwenImageEditPlusPipeline: use model=qwen_image_21 with model.model_id=",
         early=True),
    Case("a 2509 folder given to 2.1's tiny preset", folder_of("QwenImageEditPlusPipeline", "tiny_21"),
         r"its model_index.json names QwenImageEditPlusPipeline, but model.release=2.1 \(Qwen-Image 2.1\) runs "
         r"QwenImage21Pipeline: use model=qwen_edit_2509 or model=qwen_edit_2511 with model.model_id=", early=True),
    Case("a folder of a pipeline qvedit does not run", folder_of("FluxPipeline", "qwen_edit_2511"),
         r"its model_index.json names FluxPipeline, which qvedit does not run: qvedit runs QwenImageEditPlusPipeline "
         r"\(model=qwen_edit_2509 or model=qwen_edit_2511\); QwenImage21Pipeline \(model=qwen_image_21\)$",
         early=True),
    Case("the tiny guidance decoder on 2.1", value("model=tiny_21", "ttlg=edge", "ttlg.decoder=tiny",
                                                   "ttlg.tiny_decoder=random"),
         r"ttlg.decoder=tiny decodes with taehv's taew2_1, trained for Qwen-Image's 16-channel latents", early=True),
    Case("the first block cache on 2.1", value("model=tiny_21", "perf.cache=first_block"),
         r"perf.cache=first_block does not apply to Qwen-Image 2.1: .*use perf.cache=taylorseer", early=True),
    Case("a part-way start that leaves no step of 2.1's sampling grid",
         value("model=tiny_21", "start=warped_previous", "start.strength=0.4", "model.sample_sigmas=[1.0,0.5]"),
         r"start.strength=0.4 leaves no denoising step of num_inference_steps=2 .*: the smallest strength that works "
         r"here is 0.5", early=True),
    # configs are data: only qvedit's own _target_s are built
    Case("a model _target_ that runs a command", value("model._target_=os.system"),
         r"model._target_='os.system' is not qvedit's", early=True),
    Case("a ttlg _target_ inside qvedit but not a setting", value("ttlg._target_=qvedit.core.files.write_text_atomic"),
         r"ttlg._target_='qvedit.core.files.write_text_atomic' is not one of qvedit's settings classes", early=True),
]

REWRITTEN = ("metrics.csv", "preview.png", "preview.gif", "compare_unguided.gif", "report.html", "drift.png",
             ".qvedit-lock")


def snapshot(root: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def assert_nothing_lost(before: dict[Path, str], root: Path, damaged: set[Path]) -> None:
    """Every file from before is there with its bytes (metrics.csv: its rows; previews, report.html and the lock are
    rewritten by design), nothing half-written is left, every frame decodes, and every frame after 0
    has its metrics row."""
    for path, digest in before.items():
        if path in damaged or path.name in REWRITTEN:
            continue
        assert path.is_file(), f"{path} was lost"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{path} changed"
    assert not [p for p in root.rglob(PARTIAL_GLOB) if p.is_file()], "a half-written file was left"
    for frames_dir in [p for p in root.rglob("frames") if p.is_dir()]:
        frames = sorted(frames_dir.glob("*.png"))
        for path in frames:
            Image.open(path).load()
        metrics = frames_dir.parent / "metrics.csv"
        if metrics.is_file() and frames_dir.parent / "metrics.csv" not in damaged:
            rows = pd.read_csv(metrics)["frame"].tolist()
            assert rows == list(range(1, len(frames))), f"metrics rows {rows} for {len(frames)} frames"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(tiny_pipe, tmp_path, monkeypatch, case):
    context = Context(monkeypatch, [])
    overrides = case.setup(tmp_path, context)
    before = snapshot(tmp_path)
    if case.early:  # refused before the model loads: loading it would fail this test
        monkeypatch.setattr("qvedit.models.loading._cached", lambda *a, **k: pytest.fail("the model loaded"))
    try:
        if case.error is None:
            frames = execute(tmp_path, overrides)
            init = next(o.split("=", 1)[1].strip("'") for o in overrides if o.startswith("io.init_frame="))
            written = sorted(frames.glob("*.png"))
            assert len(written) == (case.frames or 4)
            source = Image.open(init)
            assert Image.open(written[-1]).size == source.size
            assert np.asarray(Image.open(written[0])).shape == (source.size[1], source.size[0], 3)
            if (tmp_path / "before").is_dir():  # frames made again are the same bytes as the first time
                for path in sorted((tmp_path / "before").glob("*.png")):
                    assert (frames / path.name).read_bytes() == path.read_bytes(), path.name
        else:
            with pytest.raises(QveditError, match=case.error) as info:
                execute(tmp_path, overrides)
            assert "\n" not in str(info.value)
            if case.frames is not None:
                assert len(list((tmp_path / "run" / "frames").glob("*.png"))) == case.frames
    finally:
        for undo in context.later:
            undo()
    assert_nothing_lost(before, tmp_path, {tmp_path / d for d in case.damaged})


def test_the_battery_has_at_least_40_cases():
    assert len(CASES) >= 40
