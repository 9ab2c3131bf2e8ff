"""A local model folder checked before it is loaded: every component there, every weight file whole.

``from_pretrained`` on a folder with a truncated safetensors file or a missing component fails deep
inside diffusers or transformers, minutes into loading the real model, with whatever error that
library raises. These checks read only ``model_index.json`` and the safetensors headers (the first
bytes of each file), so they take milliseconds and name the file to copy again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from qvedit.core.errors import QveditError

PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _damaged(folder: Path, detail: str) -> QveditError:
    return QveditError(f"model folder {folder} is damaged or incomplete: {detail}; copy it again (or pass another "
                       "model.model_id)")


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file, or None: its header must parse and its tensors'
    data must end within the file."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"{path.name} is {size} bytes, too short for a safetensors file"
        header_size = int.from_bytes(head, "little")
        if header_size > size - 8:
            return f"{path.name} is cut short ({size} bytes, its header alone says {header_size + 8})"
        try:
            header = json.loads(handle.read(header_size))
            ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return f"{path.name} has a damaged header"
    needed = 8 + header_size + max(ends, default=0)
    if size < needed:
        return f"{path.name} is cut short ({size} of its {needed} bytes)"
    return None


def check_model_folder(folder: Path) -> None:
    """Raise a QveditError naming what is missing or damaged in a diffusers pipeline folder."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise _damaged(folder, "it has no model_index.json")
    try:
        components = json.loads(index.read_text())
    except (ValueError, UnicodeDecodeError):
        raise _damaged(folder, "model_index.json does not parse") from None
    for name, spec in components.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        part = folder / name
        if not part.is_dir():
            raise _damaged(folder, f"{name}/ is missing (model_index.json lists it)")
        weights = sorted(part.glob("*.safetensors"))
        if (part / "config.json").is_file() and not weights:  # a model (not a tokenizer or scheduler) needs weights
            pickled = sorted(p.name for p in part.iterdir() if p.suffix in PICKLED_SUFFIXES)
            if pickled:
                raise QveditError(f"model folder {folder}: {name}/ has only pickled weights ({', '.join(pickled)}), "
                                  "which qvedit does not load (unpickling can run any code): use the model's "
                                  "safetensors files")
            raise _damaged(folder, f"{name}/ holds no .safetensors weights")
        for shards in part.glob("*.safetensors.index.json"):
            try:
                listed = set(json.loads(shards.read_text())["weight_map"].values())
            except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
                raise _damaged(folder, f"{name}/{shards.name} does not parse") from None
            for shard in sorted(listed - {w.name for w in weights}):
                raise _damaged(folder, f"{name}/{shard} is missing ({shards.name} lists it)")
        for path in weights:
            problem = safetensors_problem(path)
            if problem:
                raise _damaged(folder, f"{name}/{problem}")


TOY_RECORD = "training.json"  # beside the toy model's weights: what its training run made (qvedit/toy/train.py)
TOY_TRAIN_COMMAND = "python -m qvedit.toy.train --publish"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_toy_weights(folder: Path) -> None:
    """``model=toy``: raise a QveditError of one line when a weight file of the toy model in ``folder`` is missing
    or is not the file its training run wrote (its SHA-256 differs from the one in ``training.json``)."""
    record = folder / TOY_RECORD
    fix = f"restore it (git checkout -- {folder}) or train the toy model again: {TOY_TRAIN_COMMAND}"
    if not record.is_file():
        raise QveditError(f"model=toy: {record} is missing, so its weights cannot be checked: {fix}")
    try:
        files = json.loads(record.read_text())["files"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise QveditError(f"model=toy: {record} is damaged: {fix}") from None
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            raise QveditError(f"model=toy: its weights file {path} is missing: {fix}")
        if sha256(path) != digest:
            raise QveditError(f"model=toy: its weights file {path} is damaged (not the file its training run wrote, "
                              f"by its SHA-256 in {TOY_RECORD}): {fix}")
