"""``python -m qvedit.toy.train``: train the toy edit model from scratch on the CPU (or a GPU), resumably.

    python -m qvedit.toy.train                 # into runs/toy-train: checkpoints, then runs/toy-train/model
    python -m qvedit.toy.train --publish       # the same, then the model replaces qvedit/toy/weights (model=toy)
    python -m qvedit.toy.train --device cuda --out runs/toy-train-gpu   # on a GPU

Stages (each checkpointed; the same command again goes on from the last checkpoint): the training clips are drawn
(``qvedit.toy.data``), the VAE learns to reconstruct them, the frames are encoded and the prompts' encodings are
pooled, the transformer learns the edits by flow matching (``qvedit.toy.fit``), and the pipeline is written with
``save_pretrained`` beside ``training.json`` (the recipe, the seconds of each stage, the machine and the SHA-256 of
every weight file, which ``model=toy`` checks). A folder that holds anything else, or a run of another recipe, is
refused in one line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from qvedit.core.errors import QveditError
from qvedit.core.files import atomic_folder, atomic_path, write_text_atomic
from qvedit.core.tool_parser import OneLineParser, run_tool
from qvedit.models.integrity import TOY_RECORD as RECORD
from qvedit.models.integrity import sha256
from qvedit.toy.data import Recipe, clip_style, prompt_keys, render_clip

log = logging.getLogger("qvedit.toy")
WEIGHTS = Path(__file__).resolve().parent / "weights"  # the committed toy model (model=toy)
CHECKPOINT_EVERY = 100


def weight_hashes(folder: Path) -> dict[str, str]:
    """{relative path: SHA-256} of every weight file of a pipeline folder."""
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*.safetensors"))}


class Run:
    """One training run in its folder ``out``: the recipe, the checkpoints of each stage, the model at the end."""

    def __init__(self, out: Path, recipe: Recipe, quiet: bool = False, device: str = "cpu"):
        self.out, self.recipe, self.quiet, self.device = out, recipe, quiet, device
        self.seconds: dict[str, float] = {}
        self.claim()

    def claim(self) -> None:
        """Record the recipe in a new folder, or check it against the one a folder's run recorded."""
        recipe_file = self.out / "recipe.json"
        if recipe_file.is_file():
            recorded = json.loads(recipe_file.read_text())
            differing = [f"{key}: {recorded.get(key)!r} -> {value!r}" for key, value in self.recipe.as_dict().items()
                         if recorded.get(key) != value]
            if differing:
                raise QveditError(f"{self.out} holds a training run of another recipe ({'; '.join(differing)}): go on "
                                  "with the same options, or train into a new folder (--out)")
            return
        if self.out.exists() and any(self.out.iterdir()):
            what = "another model" if (self.out / "model_index.json").is_file() else "files of its own"
            raise QveditError(f"{self.out} holds {what}, not a toy training run: train into a new or empty folder "
                              "(--out)")
        write_text_atomic(recipe_file, json.dumps(self.recipe.as_dict(), indent=2) + "\n")

    # -- checkpoints --------------------------------------------------------------------------------------

    def checkpoint(self, stage: str) -> Path:
        return self.out / f"{stage}.ckpt"

    def save(self, stage: str, step: int, state: dict) -> None:
        with atomic_path(self.checkpoint(stage)) as partial:
            torch.save({"step": step, "seconds": self.seconds, **state}, partial)

    def load(self, stage: str):
        """(next step, state) of ``stage``'s checkpoint, or (0, None)."""
        path = self.checkpoint(stage)
        if not path.is_file():
            return 0, None
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as err:  # a damaged checkpoint: say which, and how to go on
            raise QveditError(f"checkpoint {path} does not load ({type(err).__name__}): delete it to redo that stage "
                              "from its start") from None
        self.seconds.update(state.pop("seconds", {}))
        return state.pop("step"), state

    def fit(self, stage: str, trainer, steps: int) -> None:
        """Run ``trainer.step`` from the checkpointed step to ``steps``, with progress and checkpoints."""
        from tqdm.auto import tqdm

        start, state = self.load(stage)
        if state is not None:
            trainer.load(state)
            if start < steps:
                log.info("%s: going on from the checkpoint at step %d of %d", stage, start, steps)
        began, losses = time.perf_counter() - self.seconds.get(stage, 0.0), []
        bar = tqdm(total=steps, initial=start, desc=stage, unit="step", disable=self.quiet or not sys.stderr.isatty())
        for step in range(start, steps):
            losses.append(trainer.step(step))
            bar.update()
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            done = step + 1
            if done % CHECKPOINT_EVERY == 0 or done == steps:
                self.seconds[stage] = time.perf_counter() - began
                self.save(stage, done, trainer.state())
                if not self.quiet and not sys.stderr.isatty():
                    log.info("%s: step %d of %d, loss %.4f (mean of the last 50), %.0f s", stage, done, steps,
                             np.mean(losses[-50:]), self.seconds[stage])
        bar.close()

    # -- the stages ----------------------------------------------------------------------------------------

    def clips(self) -> tuple[dict, list[str]]:
        """The training clips, drawn again each run (quick, and the same every time): {kind: (clips, T, H, W, 3)}."""
        recipe, began = self.recipe, time.perf_counter()
        styles = [clip_style(recipe, c) for c in range(recipe.clips)]
        rendered = [render_clip(c, recipe.clip_length, recipe.size, styles[c]) for c in range(recipe.clips)]
        frames = {kind: np.stack([clip[kind] for clip in rendered]) for kind in ("source", "styled", "edges")}
        self.seconds.setdefault("clips", time.perf_counter() - began)
        return frames, styles

    def train(self) -> Path:
        """Every stage, going on from the checkpoints; returns the folder of the finished model."""
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_shift

        from qvedit.models.diffusers_compat import single_frame_convolutions
        from qvedit.toy import fit
        from qvedit.toy.model import build_pipeline

        model_dir = self.out / "model"
        if (model_dir / RECORD).is_file():
            log.info("%s is finished: %s", self.out, model_dir)
            return model_dir
        frames, styles = self.clips()
        pipe = build_pipeline()
        pipe.vae.to(self.device)  # the text encoder stays on the CPU: it encodes the prompts' pools once
        pipe.transformer.to(self.device)
        restyled = [c for c, style in enumerate(styles) if style != "none"]
        pool = np.concatenate([frames["styled"].reshape(-1, *frames["styled"].shape[2:]),
                               frames["source"][restyled].reshape(-1, *frames["source"].shape[2:])])
        edges = frames["edges"].reshape(-1, *frames["edges"].shape[2:])
        with single_frame_convolutions(pipe.vae):
            self.fit("vae", fit.VAEStage(pipe.vae, self.recipe, pool, edges), self.recipe.vae_steps)
            pipe.vae.eval().requires_grad_(False)
            fit.normalise_latents(pipe.vae, np.concatenate([pool[:: max(1, len(pool) // 768)],
                                                            edges[:: max(1, len(edges) // 256)]]))
            data = self.encoded(pipe, frames)
        config = pipe.scheduler.config
        tokens = (self.recipe.size[0] // 8) * (self.recipe.size[1] // 8)
        mu = calculate_shift(tokens, config["base_image_seq_len"], config["max_image_seq_len"], config["base_shift"],
                             config["max_shift"])
        stage = fit.TransformerStage(pipe.transformer, self.recipe, data["latents"], data["prompts"], styles,
                                     pipe._pack_latents, mu)
        self.fit("transformer", stage, self.recipe.transformer_steps)
        pipe.transformer = stage.ema
        return self.write_model(pipe.to("cpu"), model_dir)

    def encoded(self, pipe, frames: dict) -> dict:
        """Every training frame's normalised latents and the prompts' pooled encodings, made once and kept."""
        path = self.out / "encoded.pt"
        if path.is_file():
            return torch.load(path, weights_only=True, map_location="cpu")
        from qvedit.toy import fit

        began = time.perf_counter()
        log.info("encoding %d clips of %d frames", self.recipe.clips, self.recipe.clip_length)
        def encode(array: np.ndarray) -> torch.Tensor:  # (clips, T, H, W, 3) -> (clips, T, C, h, w)
            flat = fit.encode_frames(pipe.vae, array.reshape(-1, *array.shape[2:]))
            return flat.reshape(*array.shape[:2], *flat.shape[1:])

        latents = {kind: encode(frames[kind]) for kind in ("styled", "edges")}
        restyled = [c for c in range(self.recipe.clips) if not np.array_equal(frames["source"][c], frames["styled"][c])]
        latents["source"] = latents["styled"].clone()  # a clip in no style is its own source
        if restyled:
            latents["source"][restyled] = encode(frames["source"][restyled])
        data = {"latents": latents, "prompts": self.prompt_pools(pipe, frames)}
        self.seconds["encode"] = time.perf_counter() - began
        with atomic_path(path) as partial:
            torch.save(data, partial)
        return data

    @torch.no_grad()
    def prompt_pools(self, pipe, frames: dict) -> dict:
        """{(prompt, images): (embeddings, mask)}: ``recipe.pool`` encodings of each prompt the examples use, each
        with random training frames as its condition images (resized as the pipeline resizes them for the vision
        encoder): the transformer learns from encodings made the way the pipeline makes them at every call."""
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import CONDITION_IMAGE_SIZE, calculate_dimensions

        rng = np.random.default_rng([self.recipe.seed, 0x9E])
        width, height = calculate_dimensions(CONDITION_IMAGE_SIZE, self.recipe.size[0] / self.recipe.size[1])
        pools = {}
        for prompt, count in prompt_keys():
            encoded = []
            for _ in range(self.recipe.pool):
                clip, t = int(rng.integers(self.recipe.clips)), int(rng.integers(self.recipe.clip_length))
                kinds = ["source"] if count == 1 else ["edges", "styled", "styled"][:count]
                images = [pipe.image_processor.resize(Image.fromarray(frames[k][clip, t]), height, width)
                          for k in kinds]
                embeds, mask = pipe.encode_prompt(prompt=prompt, image=images, device="cpu")
                mask = torch.ones(embeds.shape[1], dtype=torch.long) if mask is None else mask[0]  # None: all ones
                encoded.append((embeds[0].half(), mask))
            pools[(prompt, count)] = (torch.stack([e for e, _ in encoded]), torch.stack([m for _, m in encoded]))
        return pools

    def write_model(self, pipe, model_dir: Path) -> Path:
        """The pipeline in the diffusers layout, with ``training.json``; written whole or not at all."""
        with atomic_folder(model_dir, complete=RECORD) as staging:
            pipe.save_pretrained(staging, safe_serialization=True)
            record = {"recipe": self.recipe.as_dict(), "seconds": {k: round(v, 1) for k, v in self.seconds.items()},
                      "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                                  "processor": platform.processor() or platform.machine(),
                                  "torch": torch.__version__, "load_average": [round(v, 2) for v in os.getloadavg()],
                                  "device": device_name(self.device)},
                      "files": weight_hashes(staging)}
            (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        log.info("the toy model is in %s (%s)", model_dir, ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items()))
        return model_dir


def device_name(device: str) -> str:
    """What trained it: "cpu", or the GPU's name."""
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"


def publish(model_dir: Path, target: Path = WEIGHTS) -> Path:
    """Replace the committed toy model (``qvedit/toy/weights``) with the one in ``model_dir``."""
    staging = target.with_name(f".{target.name}.publishing")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(model_dir, staging)
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def main(argv=None) -> int:
    parser = OneLineParser(prog="python -m qvedit.toy.train", description=__doc__.split("\n\n")[0],
                           epilog="Exit codes: 0 trained (or already finished), 2 a problem said in one line.")
    parser.add_argument("--out", default="runs/toy-train", help="the run's folder (checkpoints, then model/)")
    parser.add_argument("--publish", action="store_true", help="copy the finished model into qvedit/toy/weights")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    parser.add_argument("--device", default="cpu", help="where the VAE and the transformer train: cpu (default), "
                        "cuda or cuda:N (the weights differ from a CPU run's in their last bits)")
    for field in fields(Recipe):  # every recipe value can be changed (a smaller run for a try, a test)
        if field.name != "size":
            parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    recipe = replace(Recipe(), **{f.name: getattr(args, f.name) for f in fields(Recipe) if f.name != "size"})
    return run_tool(lambda: train(args, recipe))


def train(args: argparse.Namespace, recipe: Recipe) -> None:
    from qvedit.models.devices import check_device

    model_dir = Run(Path(args.out), recipe, args.quiet, check_device(args.device)).train()
    if args.publish:
        log.info("published: %s", publish(model_dir))


if __name__ == "__main__":
    sys.exit(main())
