"""``model.loras`` and ``model.scheduler`` at work: LoRAs in the transformer, and the scheduler config a
few-step LoRA (Lightning) was distilled with.

Everything that can be checked without the model is checked before it loads (``check_model``:
``resolve_loras``, ``check_scheduler``): each LoRA is a whole ``.safetensors`` file holding LoRA weights, a hub LoRA is
fetched into the Hugging Face cache. Loading goes through diffusers' own LoRA loading
(``load_lora_weights``, ``set_adapters``, ``fuse_lora``); before it, the LoRA's keys and shapes are
held against the transformer, since diffusers 0.42.1 only logs a warning for keys that name no module
of the model (and silently skips a file whose keys lack the ``transformer.`` prefix).

The loaded pipeline is kept for the process (``loading._cached``); a ``Variant`` says what a job wants
on it. The LoRA files (and, fused, their scales: they are baked into the weights) are part of the
cache key, so a job with other LoRAs gets a freshly loaded pipeline; unfused scales and the scheduler
are set again at every job, so a job that asks for neither gets the model's own back.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from qvedit.core.errors import QveditError, short_reason
from qvedit.models.integrity import PICKLED_SUFFIXES, safetensors_problem
from qvedit.models.modifications import modifications_of
from qvedit.settings.model import RELEASES, LoraSpec, ModelSettings

log = logging.getLogger(__name__)

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name


@dataclass(frozen=True)
class LoraFile:
    """One ``model.loras`` entry, resolved to a local safetensors file."""

    index: int
    file: Path
    scale: float

    @property
    def label(self) -> str:
        return f"model.loras[{self.index}] ({self.file})"

    @property
    def adapter(self) -> str:
        return f"qvedit_{self.index}"

    def identity(self) -> tuple:
        """The file as the pipeline cache knows it: a file rewritten in place is a new LoRA."""
        stat = self.file.stat()
        return str(self.file.resolve()), stat.st_size, stat.st_mtime_ns


# -- before the model loads -------------------------------------------------------------------------

def check_model(model: ModelSettings) -> None:
    """What can be checked of ``model`` before it loads: every LoRA file (a hub LoRA is fetched into the
    Hugging Face cache now) and the scheduler keys; a QveditError naming the entry or key otherwise. A LoRA whose
    name says it was made for the other model of the same family (a 2509 Lightning LoRA on 2511) is one warning."""
    for lora, spec in zip(resolve_loras(model.loras), model.loras):
        made_for = release_named(f"{spec.path}/{spec.weight_name or ''}/{lora.file.name}")
        if made_for is not None and made_for != model.release and RELEASES[made_for].family == model.family:
            log.warning("%s was made for %s, and this run's model is %s (model.release=%s): it loads (the same "
                        "transformer) but was trained on the other weights%s", lora.label, RELEASES[made_for].name,
                        model.about.name, model.release,
                        f"; {model.about.name}'s own: experiment=lightning" if model.about.lightning_repo else "")
    check_scheduler(model.scheduler)


def release_named(name: str) -> Optional[str]:
    """The release a LoRA's path or file name names (``Qwen-Image-Edit-2509-Lightning-...``: 2509), or None."""
    found = re.findall(r"Qwen-Image-Edit-(2509|2511)|Qwen-Image-(2\.1)", name, flags=re.IGNORECASE)
    named = {edit or image for edit, image in found}
    return named.pop() if len(named) == 1 else None


def require_peft() -> None:
    if importlib.util.find_spec("peft") is None:
        raise QveditError("model.loras needs the peft package (a dependency of qvedit): pip install -e . "
                          "or pip install 'peft>=0.17'")


def resolve_loras(specs: list[LoraSpec]) -> tuple[LoraFile, ...]:
    """Each entry as a checked local file, in order; a QveditError naming the entry otherwise."""
    if specs:
        require_peft()
    return tuple(LoraFile(i, checked_lora_file(f"model.loras[{i}]", lora_path(i, spec)), float(spec.scale))
                 for i, spec in enumerate(specs))


def lora_path(i: int, spec: LoraSpec) -> Path:
    """The weights file an entry names: a file, a file in a folder, or a file of a hub repo."""
    label, path = f"model.loras[{i}]", Path(spec.path).expanduser()
    if path.is_file():
        if spec.weight_name:
            raise QveditError(f"{label}: weight_name={spec.weight_name!r} is for a folder or a hub id, but path "
                              f"{spec.path} is a file: drop weight_name")
        return path
    if path.is_dir():
        return file_in_folder(label, path, spec.weight_name)
    if HUB_ID.match(spec.path) and not spec.path.endswith((".safetensors", *PICKLED_SUFFIXES)):
        return hub_file(label, spec.path, spec.weight_name or LORA_WEIGHT_NAME)
    raise QveditError(f"{label}.path: {spec.path} not found (give a .safetensors file, a folder holding one, or a "
                      "hub id owner/name with weight_name)")


def file_in_folder(label: str, folder: Path, weight_name: Optional[str]) -> Path:
    if weight_name:
        if not (folder / weight_name).is_file():
            raise QveditError(f"{label}: {folder} has no file {weight_name} (weight_name)")
        return folder / weight_name
    if (folder / LORA_WEIGHT_NAME).is_file():
        return folder / LORA_WEIGHT_NAME
    weights = sorted(p.name for p in folder.glob("*.safetensors"))
    if len(weights) == 1:
        return folder / weights[0]
    if weights:
        raise QveditError(f"{label}: {folder} holds {len(weights)} .safetensors files ({', '.join(weights[:4])}"
                          f"{' ...' if len(weights) > 4 else ''}): say which with weight_name")
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLED_SUFFIXES)
    found = f" (only pickled weights: {', '.join(pickled[:4])}, which qvedit does not load)" if pickled else ""
    raise QveditError(f"{label}: the folder {folder} holds no .safetensors LoRA weights{found}")


def hub_file(label: str, repo: str, weight_name: str) -> Path:
    """The file from the Hugging Face cache, downloaded first where the hub can be reached."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        log.info("LoRA %s: %s from the hub (or its cache)", repo, weight_name)
        return Path(hf_hub_download(repo, weight_name))
    except LocalEntryNotFoundError:
        raise QveditError(f"{label}: the hub LoRA {repo} {weight_name} is not in the Hugging Face cache and the hub "
                          f"cannot be reached: download it first (huggingface-cli download {repo} {weight_name}) or "
                          "give its local path as path") from None
    except (EntryNotFoundError, RepositoryNotFoundError) as err:
        raise QveditError(f"{label}: the hub has no {weight_name} in {repo} ({type(err).__name__}): check path and "
                          "weight_name") from None
    except OSError as err:
        raise QveditError(f"{label}: cannot fetch {repo} {weight_name} from the hub ({err}); download it first or "
                          "give its local path") from None


def checked_lora_file(label: str, file: Path) -> Path:
    """``file`` if it is a whole safetensors file holding LoRA weights."""
    if file.suffix in PICKLED_SUFFIXES or file.suffix != ".safetensors":
        raise QveditError(f"{label}: {file} is not a .safetensors file; qvedit loads LoRAs from safetensors only "
                          "(unpickling other formats can run any code)")
    problem = safetensors_problem(file)
    if problem:
        raise QveditError(f"{label}: {file} is damaged: {problem}")
    keys = safetensors_keys(file)
    if not any("lora" in key.lower() for key in keys):
        first = f" (the first: {keys[0]!r})" if keys else ""
        raise QveditError(f"{label}: {file} is not a LoRA: none of its {len(keys)} tensors is a LoRA weight{first}; "
                          "a LoRA holds keys like transformer.<module>.lora_A.weight")
    return file


def safetensors_keys(file: Path) -> list[str]:
    """The tensor names of a whole safetensors file (its header only)."""
    with open(file, "rb") as handle:
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    return [name for name in header if name != "__metadata__"]


def check_scheduler(overrides: dict) -> None:
    """``model.scheduler`` names only FlowMatchEulerDiscreteScheduler settings, with values it takes."""
    if not overrides:
        return
    import inspect

    from diffusers import FlowMatchEulerDiscreteScheduler

    known = set(inspect.signature(FlowMatchEulerDiscreteScheduler.__init__).parameters) - {"self"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise QveditError(f"model.scheduler.{unknown[0]} is not a FlowMatchEulerDiscreteScheduler setting: use "
                          f"{', '.join(sorted(known))}")
    try:
        FlowMatchEulerDiscreteScheduler(**overrides)
    except (ValueError, TypeError) as err:
        raise QveditError(f"model.scheduler={overrides}: {' '.join(str(err).split())}") from None


# -- on the loaded pipeline -------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """What a job sets up on the cached pipeline: LoRAs (fused or as layers) and scheduler values."""

    loras: tuple[LoraFile, ...] = ()
    fuse: bool = True
    scheduler: tuple = ()  # sorted (key, value) pairs of model.scheduler

    @classmethod
    def of(cls, specs: list[LoraSpec], fuse: bool, scheduler: dict) -> "Variant":
        return cls(resolve_loras(specs), bool(fuse), tuple(sorted(scheduler.items())))

    def key(self) -> tuple:
        """The part of the pipeline cache key: the LoRA files, and fused, their scales."""
        if not self.loras:
            return ()
        return ("fused" if self.fuse else "layers", *((l.identity(), l.scale if self.fuse else None)
                                                      for l in self.loras))

    def install(self, pipe) -> None:
        """Load the LoRAs into a freshly loaded pipeline (once per cache entry)."""
        if not self.loras:
            return
        def load(change) -> None:
            modules = dict(pipe.transformer.named_modules())
            for lora in self.loras:
                load_lora(pipe, lora, modules)
            names = [lora.adapter for lora in self.loras]
            pipe.set_adapters(names, [lora.scale for lora in self.loras])
            if self.fuse:
                pipe.fuse_lora(adapter_names=names)
                pipe.unload_lora_weights()  # the merged weights stay; the LoRA layers go

        about = ", ".join(f"{lora.file.name} x {lora.scale:g}" for lora in self.loras)
        # permanent: the LoRA files (and fused, their scales) are part of the pipeline cache's key
        modifications_of(pipe).apply("loras", load, detail=f"{'fused' if self.fuse else 'as layers'}: {about}",
                                     permanent=True)
        log.info("LoRAs %s: %s", "fused" if self.fuse else "as layers", about)

    def configure(self, pipe):
        """Set this job's LoRA scales (unfused) and scheduler on the pipeline; returns it."""
        if self.loras and not self.fuse:
            pipe.set_adapters([lora.adapter for lora in self.loras], [lora.scale for lora in self.loras])
        use_scheduler(pipe, dict(self.scheduler))
        return pipe


PLAIN = Variant()  # no LoRA, the model's own scheduler


def load_lora(pipe, lora: LoraFile, modules: dict) -> None:
    """One LoRA into the transformer through diffusers, after its keys and shapes are held against it."""
    where = {"weight_name": lora.file.name, "use_safetensors": True}
    try:
        state = pipe.lora_state_dict(str(lora.file.parent), **where)  # diffusers' key conversion, as it loads
    except (ValueError, KeyError, OSError, RuntimeError) as err:
        raise QveditError(f"{lora.label} is not a LoRA diffusers can read: {short_reason(err)}") from None
    problem = mismatch(state, modules)
    if problem:
        from qvedit.models.family import FAMILIES, family_of, presets_of

        mine, theirs = family_of(pipe), lora_family(state)
        other = (f"; its keys are a {FAMILIES[theirs].title} LoRA's ({presets_of(theirs)}), and this model is "
                 f"{mine.title}" if theirs not in (None, mine.name) else "")
        raise QveditError(f"{lora.label} does not fit this model's transformer: {problem}{other}")
    try:
        pipe.load_lora_weights(str(lora.file.parent), adapter_name=lora.adapter, **where)
    except Exception as err:  # whatever diffusers or peft raise: one line naming the file
        raise QveditError(f"{lora.label} could not be loaded: {short_reason(err)}") from None


def lora_family(state: dict) -> Optional[str]:
    """The family whose transformer has the modules a LoRA's keys name (``qvedit.models.family``), where its keys
    name modules only one family has; None otherwise."""
    from qvedit.models.family import FAMILIES

    found = {family.name for family in FAMILIES.values()
             if any(marker in key for key in state for marker in family.lora_markers)}
    return found.pop() if len(found) == 1 else None


def mismatch(state: dict, modules: dict) -> Optional[str]:
    """The first key of a diffusers-format LoRA state dict that does not fit the transformer's
    ``modules`` ({name: module}), and why; None when every key fits."""
    if not state:
        return "it holds no LoRA weights"
    ranks: dict[str, int] = {}
    for key, tensor in state.items():
        name = key.removeprefix("transformer.")
        if name == key:
            return f"key {key!r} is not under transformer. (diffusers loads only the transformer's LoRA keys)"
        module_name, lora, part = name.partition(".lora_")
        if not lora:
            return f"key {key!r} is not a LoRA weight"
        module = modules.get(module_name)
        if module is None:
            return f"key {key!r} names {module_name}, which the transformer does not have"
        weight = getattr(module, "weight", None)
        if weight is None or weight.ndim != 2:
            return f"key {key!r}: {module_name} is not a linear layer"
        shape = tuple(tensor.shape)
        if part == "A.weight" and (len(shape) != 2 or shape[1] != weight.shape[1]):
            return f"key {key!r} has shape {shape}, but {module_name} takes {weight.shape[1]} inputs"
        if part in ("B.weight", "B.bias") and shape[0] != weight.shape[0]:
            return f"key {key!r} has shape {shape}, but {module_name} gives {weight.shape[0]} outputs"
        if part in ("A.weight", "B.weight") and len(shape) == 2:
            rank = shape[0] if part == "A.weight" else shape[1]
            if ranks.setdefault(module_name, rank) != rank:
                return f"key {key!r} has rank {rank}, its other half {ranks[module_name]}"
    return None


def use_scheduler(pipe, overrides: dict) -> None:
    """The model's own scheduler with ``overrides`` (a new FlowMatchEulerDiscreteScheduler from its config: the
    modification ``scheduler`` of the pipeline, made afresh at every call), or the model's own again when there are
    none."""
    changes = modifications_of(pipe)
    changes.remove("scheduler")
    if not overrides:
        return
    from diffusers import FlowMatchEulerDiscreteScheduler

    own = pipe.scheduler
    changes.apply("scheduler", lambda change: change.set(pipe, "scheduler", FlowMatchEulerDiscreteScheduler.from_config(
        own.config, **overrides)), detail=", ".join(f"{key}={value}" for key, value in sorted(overrides.items())))
