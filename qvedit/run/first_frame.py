"""Frame 0 made inside qvedit (``first_frame.prompt``): the source's frame 0 edited with an instruction on
the loaded pipeline, before the clip, into candidates of which one becomes frame 0.

    <run dir>/first_frame/candidate_00.png ...  candidate k = pipe(image=[source frame 0], first_frame.prompt),
                                                seeded from (seed, k), at the source frame's size
    <run dir>/first_frame/candidates.png        source frame 0 | candidate 0 | candidate 1 ... (the pick marked)
    <run dir>/first_frame/candidates.yaml       the settings that made them; each candidate's seed and pixel hash
    <run dir>/first_frame/earlier_01/ ...       candidates made with other settings, moved aside (never deleted)

A candidate depends on the source's frame 0, the pipeline (model, LoRAs, scheduler, dtype, perf and
parallel settings that change numbers), ``seed``, ``condition_area``, ``max_area`` and its own
``first_frame.*`` keys; not on the clip's prompt, steps or CFG, guidance, the edge maps or the pick. A
re-run whose candidates' settings are unchanged reuses them (none is made again, however ``pick`` or
``candidates`` change); one with other settings moves them aside and makes new ones. The picked one is
frame 0 from then on exactly as a given ``io.init_frame`` is (``EditedFirstFrame``); the source's frame
0 stays ``source_frame(0)``: the original frames are still the flow's and the edge maps' source.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from omegaconf import OmegaConf
from PIL import Image
from tqdm.auto import tqdm

from qvedit.core import locks
from qvedit.core.errors import QveditError
from qvedit.core.files import atomic_path, write_text_atomic
from qvedit.core.images import read_rgb8, unusable_image
from qvedit.io.layout import RunLayout
from qvedit.io.source import FrameSource
from qvedit.models.parallel import Team
from qvedit.report.confdiff import diff_configs
from qvedit.report.previews import candidate_sheet, cell_size
from qvedit.run.frame_plan import ClipPlan
from qvedit.run.pipeline_call import PipelineCall, show_denoising_bars, shows_bars
from qvedit.settings.first_frame import FirstFrameSettings
from qvedit.settings.run import RunSettings

log = logging.getLogger(__name__)

MANIFEST = "candidates.yaml"
SHEET = "candidates.png"
# The spawn key of candidate seeds: their stream never meets a frame's (seed, i) (editor.frame_seed).
CANDIDATE_STREAM = 0x46524D30
# A new value changes frame 0 but no candidate: the clip in the frames folder is made again from frame 0.
START_OVER_KEYS = ("first_frame.pick",)


def candidate_seed(seed: int, index: int) -> int:
    """The seed of candidate ``index``'s generator, from (run seed, index) and a stream of its own."""
    sequence = np.random.SeedSequence([seed, index], spawn_key=(CANDIDATE_STREAM,))
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> 1)


def candidate_name(index: int) -> str:
    return f"candidate_{index:02d}.png"


def pixel_hash(image: Image.Image) -> str:
    """SHA-256 of an 8-bit RGB image's pixels (and shape): what a candidate's file must still decode to."""
    pixels = np.asarray(image)
    return hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()


def candidates_made_with(frames: dict[str, object], source_frame0: Image.Image) -> dict[str, object]:
    """The settings a candidate depends on: the run's frame settings (``frames``: ``frame_settings``) but the
    clip's own generation keys (the edit has its own ``first_frame.*``), guidance and its optical flow (never on
    for the edit), the inputs (the source frame's pixels stand for them) and ``first_frame.pick``."""
    replaced = {f.name for f in dataclasses.fields(FirstFrameSettings)}  # prompt, negative_prompt, steps, CFG
    made_with = {key: value for key, value in frames.items() if key not in replaced
                 and key.split(".")[0] not in ("io", "ttlg", "flow", "anchor") and key not in START_OVER_KEYS}
    return {**made_with, "source_frame0_sha256": pixel_hash(source_frame0)}


def check_source_frame0(source: FrameSource) -> None:
    """Refuse an ``io.init_frame`` that is not the source frames' frame 0: which of the two to edit is unclear."""
    init_path = getattr(source, "init_path", None)
    if init_path is None or not source.has_source_frames:
        return
    init = source.init_image()
    if not np.array_equal(np.asarray(init), np.asarray(source.source_frame(0, init.size))):
        first = source.source_paths[0]
        raise QveditError(f"first_frame.prompt edits the source's frame 0, but io.init_frame={init_path} is not "
                          f"io.source_frames_dir's frame 0 ({first}): drop io.init_frame to edit {first.name}, or "
                          f"drop first_frame.prompt to use {init_path.name} as frame 0 as it is")


@dataclass
class Candidate:
    index: int
    seed: int
    file: str
    pixels_sha256: Optional[str] = None  # None until it is made


class FirstFrameEdit:
    """The candidates of one run: which are already in ``folder``, which to make, and the pick.

    ``prepare`` checks everything before the model loads; ``make(pipe)`` makes the missing candidates on
    the loaded pipeline (guidance off, the run's perf settings, and the clip's ``plan``: the generation size
    and condition area of ``max_area`` and ``condition_area``), writes the contact sheet and returns the
    picked candidate, frame 0 of the clip.
    """

    def __init__(self, settings: FirstFrameSettings, run: RunSettings, plan: ClipPlan, folder: Path,
                 source_frame0: Image.Image, made_with: dict, recorded: dict[int, Candidate], team: Team):
        self.settings, self.run, self.plan, self.folder, self.team = settings, run, plan, folder, team
        self.source_frame0, self.made_with = source_frame0, made_with
        self.recorded = recorded  # every candidate in the folder made with these settings, also k >= candidates
        self.candidates = {k: recorded.get(k) or Candidate(k, candidate_seed(run.seed, k), candidate_name(k))
                           for k in range(settings.candidates)}
        self.made_now = 0

    @classmethod
    def prepare(cls, settings: FirstFrameSettings, frames: dict[str, object], run: RunSettings, plan: ClipPlan,
                source: FrameSource, layout: RunLayout, team: Team) -> "FirstFrameEdit":
        """Check the edit and the candidates folder, before the model loads; move candidates of other
        settings aside.

        Args:
            settings: ``first_frame/``'s settings (``prompt`` set).
            frames: the run's frame settings (``frame_settings``), of which a candidate depends on some.
            run: the top-level keys (``seed``).
            plan: the clip's plan, whose generation size and condition area the edit uses.
            source: the clip; its frame 0 is what is edited.
            layout: the run's layout (the candidates go to ``layout.first_frame``).
            team: the torchrun team (rank 0 reads and writes the folder).

        Returns:
            The edit, ready for ``make(pipe)``.
        """
        check_source_frame0(source)
        if team.settings.cfg_degree == 2 and settings.true_cfg_scale <= 1:
            raise QveditError(f"parallel.cfg_degree=2 shares the two passes of true CFG, but first_frame.true_cfg_scale="
                              f"{settings.true_cfg_scale} runs one for frame 0's edit: raise it above 1 or use "
                              "parallel.ulysses_degree=2")
        source_frame0 = source.init_image()
        folder = layout.first_frame
        made_with = candidates_made_with(frames, source_frame0)
        recorded = {}
        if team.is_main:
            check_writable(folder, settings.candidates)
            folder.mkdir(parents=True, exist_ok=True)
            locks.hold(folder)
            recorded = read_manifest(folder, made_with)
            for k in range(settings.candidates):
                if k in recorded:
                    check_candidate(folder, recorded[k], source_frame0.size)
        return cls(settings, run, plan, folder, source_frame0, made_with, recorded, team)

    @property
    def picked(self) -> Candidate:
        return self.candidates[self.settings.pick]

    def to_make(self) -> list[int]:
        return [k for k, candidate in self.candidates.items() if candidate.pixels_sha256 is None]

    def make(self, pipe) -> Image.Image:
        """Make the missing candidates, write the contact sheet; returns the picked one (8-bit RGB)."""
        todo = self.team.broadcast(self.to_make())
        self.made_now = len(todo)
        if len(todo) < len(self.candidates):
            log.info("first_frame: %d of %d candidates are already in %s (made with these settings): not made again",
                     len(self.candidates) - len(todo), len(self.candidates), self.folder)
        bars = shows_bars(self.team)
        show_denoising_bars(pipe, bars)
        call = PipelineCall(pipe, self.plan, self.team)
        for index in tqdm(todo, desc="first frame", unit="candidate", disable=not bars):
            started = time.perf_counter()
            image = self.edit(call, self.candidates[index].seed)
            if self.team.is_main:
                self.write(index, image)
                log.info("first_frame: candidate %d of %d made in %.2f s -> %s", index, len(self.candidates),
                         time.perf_counter() - started, self.folder / candidate_name(index))
        picked = read_rgb8(self.folder / self.picked.file) if self.team.is_main else None
        if self.team.is_main:
            self.write_sheet()
        return self.team.broadcast(picked)

    def edit(self, call: PipelineCall, seed: int) -> Image.Image:
        """One candidate: the source frame 0 edited with ``first_frame.prompt``, at the source frame's size."""
        s = self.settings
        return call(0, [self.source_frame0], s.prompt, s.num_inference_steps, seed, self.source_frame0.size,
                    s.true_cfg_scale, s.negative_prompt)

    def write(self, index: int, image: Image.Image) -> None:
        """Candidate ``index`` as its PNG, then recorded in the manifest (a kill between: made again)."""
        candidate = self.candidates[index]
        with atomic_path(self.folder / candidate.file) as partial:
            image.save(partial, format="PNG")
        candidate.pixels_sha256 = pixel_hash(image)
        self.recorded[index] = candidate
        write_manifest(self.folder, self.made_with, self.recorded)

    def write_sheet(self) -> Path:
        labels = ["source frame 0"] + [f"candidate {k}" + (" = frame 0" if k == self.settings.pick else "")
                                       for k in self.candidates]
        title = f'first_frame.prompt="{self.settings.prompt}", seeds from (seed {self.run.seed}, candidate k)'
        images = [read_rgb8(self.folder / c.file) for c in self.candidates.values()]
        return candidate_sheet(self.source_frame0, images, labels, title, self.folder / SHEET)

    def describe(self) -> str:
        """Where frame 0 came from, for the summary and report.html."""
        s = self.settings
        return (f"frame 0: candidate {s.pick} of {len(self.candidates)} ({self.folder / self.picked.file}), the "
                f'source\'s frame 0 edited with first_frame.prompt="{s.prompt}" (seed {self.picked.seed}, derived '
                f"from seed={self.run.seed} and candidate {s.pick}; {s.num_inference_steps} steps, true CFG "
                f"{s.true_cfg_scale:g}); all of them: {self.folder / SHEET}")

    def summary(self) -> list[str]:
        """The lines a ``first_frame.only`` run ends with."""
        last = len(self.candidates) - 1
        which = "candidate 0 is" if last == 0 else f"candidates 0..{last} are"
        command = pick_command() or "the same command without first_frame.only, with first_frame.pick=K"
        return [f"qvedit: first-frame {which} in {self.folder} ({self.made_now} made now, "
                f"{len(self.candidates) - self.made_now} reused); first_frame.only=true: no clip made",
                f"  {self.describe()}",
                f"  look: {self.folder / SHEET} (source frame 0 | candidate 0 | ...)",
                "next:",
                f"  {command}",
                f"      with K in 0..{last}: candidate K becomes frame 0 and the clip is made (no candidate made again)"]

    def report_section(self) -> dict:
        """report.html's first-frame section: each candidate (file relative to the run folder, caption,
        whether it is frame 0, the size it is shown at) and the contact sheet."""
        base = self.folder.parent  # the run folder
        shown = cell_size(self.source_frame0.size)
        images = [{"file": (self.folder / c.file).relative_to(base).as_posix(), "picked": k == self.settings.pick,
                   "width": shown[0], "height": shown[1], "enlarged": shown[0] > self.source_frame0.width,
                   "caption": f"candidate {k}, seed {c.seed}" + (" = frame 0" if k == self.settings.pick else "")}
                  for k, c in self.candidates.items()]
        return {"note": self.describe(), "candidates": images,
                "sheet": (self.folder / SHEET).relative_to(base).as_posix()}


def pick_command() -> Optional[str]:
    """This run's command without ``first_frame.only`` and with ``first_frame.pick=K``, into the same folder;
    None outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    dropped = ("hydra.run.dir=", "first_frame.only=", "first_frame.pick=")
    overrides = [o for o in hydra.overrides.task if not o.lstrip("+~").startswith(dropped)] + ["first_frame.pick=K"]
    return f"python -m qvedit {shlex.join(overrides)} hydra.run.dir={shlex.quote(str(hydra.runtime.output_dir))}"


class EditedFirstFrame:
    """A ``FrameSource`` whose frame 0 (``init_image``) is ``frame0``; everything else, the original frame 0
    among the source frames included, is ``source``'s."""

    frame0_edited = True  # previews say so in frame 0's edge cell (qvedit.report.previews)

    def __init__(self, source: FrameSource, frame0: Image.Image):
        self.source, self.frame0 = source, frame0

    def init_image(self) -> Image.Image:
        return self.frame0.copy()

    def __len__(self) -> int:
        return len(self.source)

    def __getattr__(self, name: str):
        return getattr(self.source, name)


# -- candidates.yaml --------------------------------------------------------------------------------

def read_manifest(folder: Path, made_with: dict) -> dict[int, Candidate]:
    """{index: candidate} of the candidates in ``folder`` made with ``made_with`` (whose file is there).
    Candidates of other settings, or unrecorded ones, are moved aside first; a damaged manifest is a QveditError."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        if any(folder.glob("candidate_*.png")):
            move_aside(folder, f"{manifest.name} is missing")
        return {}
    try:
        recorded = OmegaConf.to_container(OmegaConf.load(manifest))
        candidates = {int(entry["index"]): Candidate(**entry) for entry in recorded["candidates"]}
        before = recorded["made_with"]
        if not isinstance(before, dict):
            raise TypeError(f"made_with is a {type(before).__name__}")
    except Exception as err:  # yaml's and OmegaConf's errors, undecodable bytes, missing or odd entries
        raise QveditError(f"{manifest} is damaged ({type(err).__name__}): it records the settings the candidates in "
                          f"{folder} were made with; restore it, or delete {folder} to make them again") from None
    differing = diff_configs(before, made_with)
    if differing:
        move_aside(folder, "they were made with other settings (" + "; ".join(
            f"{key}: {old!r} -> {new!r}" for key, old, new in differing) + ")")
        return {}
    return {k: c for k, c in candidates.items() if (folder / c.file).is_file()}  # one deleted is made again


def check_writable(folder: Path, candidates: int) -> None:
    """Refuse, before the model loads, a candidates folder that is a file (or below one), or one where a folder has
    the name of a file qvedit writes there (a candidate, the sheet, the manifest)."""
    blocked = next((part for part in (folder, *folder.parents) if part.exists() and not part.is_dir()), None)
    if blocked is not None:
        raise QveditError(f"{blocked} is a file where qvedit keeps the first-frame candidates ({folder}): move it "
                          "away, or choose another hydra.run.dir")
    for path in [folder / candidate_name(k) for k in range(candidates)] + [folder / SHEET, folder / MANIFEST]:
        if path.exists() and not path.is_file():
            raise QveditError(f"{path} is a folder where qvedit writes a file of that name: move it away, or choose "
                              "another hydra.run.dir")


def check_candidate(folder: Path, candidate: Candidate, size: tuple[int, int]) -> None:
    """Refuse a candidate file that no longer holds what qvedit made (undecodable, resized, edited)."""
    path = folder / candidate.file
    problem = unusable_image(path, size) or (None if pixel_hash(read_rgb8(path)) == candidate.pixels_sha256
                                             else "its pixels changed since qvedit made it")
    if problem:
        raise QveditError(f"first-frame candidate {path} is damaged ({problem}): delete it to have it made again from "
                          f"its seed, or delete {folder} to make every candidate again (to use an image of your own "
                          "as frame 0, pass it as io.init_frame without first_frame.prompt)")


def write_manifest(folder: Path, made_with: dict, candidates: dict[int, Candidate]) -> None:
    entries = [dataclasses.asdict(candidates[k]) for k in sorted(candidates)]
    text = OmegaConf.to_yaml(OmegaConf.create({"made_with": made_with, "candidates": entries}))
    write_text_atomic(folder / MANIFEST, "# first-frame candidates (qvedit.run.first_frame): made with, and each one\n"
                      + text)


def move_aside(folder: Path, why: str) -> Path:
    """Move the candidates, sheet and manifest of ``folder`` into a new ``earlier_NN`` folder beside them."""
    number = 1
    while (folder / f"earlier_{number:02d}").exists():
        number += 1
    earlier = folder / f"earlier_{number:02d}"
    earlier.mkdir()
    for path in [*folder.glob("candidate_*.png"), folder / SHEET, folder / MANIFEST]:
        if path.is_file():
            shutil.move(str(path), str(earlier / path.name))
    log.warning("first_frame: the candidates in %s are not this run's: %s; they are moved to %s and made again",
                folder, why, earlier)
    return earlier
