"""The tables ``python -m qvedit.bench`` writes: each variant's row with its ratios to the plain call and to its
uncached twin, as ``bench.json`` and ``bench.md``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from qvedit.core.files import write_text_atomic
from qvedit.models.random_full import RANDOM_WEIGHTS


def uncached(variant: str) -> str:
    """The variant a cached one is compared with: the same without the step cache."""
    return variant + "_nocache" if variant.startswith("fastest") else variant.replace("_cache", "")


def summarise(rows: list[dict]) -> list[dict]:
    """Adds ratios to the plain call (the model's own: Qwen-Image 2.1's ``q21_*`` rows to ``q21_plain``, and to
    2509's ``plain`` beside it) and the cost of a guided step, per size."""
    for row in rows:
        same_size = {r["variant"]: r for r in rows if r["size"] == row["size"]}
        own_plain = "q21_plain" if row["variant"].startswith("q21") else "plain"
        if own_plain in same_size:
            row["ratio_to_plain"] = row["seconds_per_frame"] / same_size[own_plain]["seconds_per_frame"]
        if own_plain == "q21_plain" and "plain" in same_size:
            row["ratio_to_2509_plain"] = row["seconds_per_frame"] / same_size["plain"]["seconds_per_frame"]
        base = same_size.get(row["variant"].replace("edge_gram", "off").replace("_tiny", "").removesuffix("_decode512")
                             .removesuffix("_nocache"))
        if row.get("guided_steps") and base and base is not row:
            extra = row["seconds_per_frame"] - base["seconds_per_frame"]
            row["added_s_per_guided_step"] = extra / row["guided_steps"]
            row["added_fraction"] = extra / base["seconds_per_frame"]
        reference = same_size.get(uncached(row["variant"]))
        if reference is not None and reference is not row:
            row["speedup_vs_uncached"] = reference["seconds_per_frame"] / row["seconds_per_frame"]
    return rows


def compare_frames(rows: list[dict], frames: dict) -> None:
    """Each cached variant's frame against its uncached variant's (same size), in 8-bit levels: max and mean over
    pixels and channels. ``frames``: (size, variant) -> (H, W, 3) uint8."""
    for row in rows:
        reference = frames.get((row["size"], uncached(row["variant"])))
        frame = frames.get((row["size"], row["variant"]))
        if reference is not None and frame is not None and uncached(row["variant"]) != row["variant"]:
            levels = np.abs(frame.astype(np.int16) - reference.astype(np.int16))
            row["levels_vs_uncached_max"], row["levels_vs_uncached_mean"] = int(levels.max()), float(levels.mean())


def markdown(report: dict) -> str:
    lines = [f"{report['device']}, torch {report['torch']}, diffusers {report['diffusers']}, {report['date']}, "
             f"model={report['model']}" + (f" ({RANDOM_WEIGHTS})" if report["model"] == "random_full" else "")
             + (f"; {report['tiny_decoder']}" if report.get("tiny_decoder") else ""), "",
             "| size | steps | variant | s/frame | vs plain | vs 2509 plain | prompt s | transformer s/step | decode s "
             "| peak GiB | s per guided step | steps in full | x vs uncached | levels vs uncached (max / mean) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        def f(key, fmt="{:.3f}"):
            return fmt.format(r[key]) if r.get(key) is not None else "-"
        lines.append(f"| {r['size']}² | {r['steps']} | {r['variant']} | {f('seconds_per_frame', '{:.2f}')} | "
                     f"{f('ratio_to_plain')} | {f('ratio_to_2509_plain')} | {f('prompt_encoding_s')} | "
                     f"{f('transformer_s_per_step')} | "
                     f"{f('decode_s')} | {f('peak_gib', '{:.1f}')} | {f('added_s_per_guided_step')} | "
                     f"{f('steps_in_full', '{}')} | {f('speedup_vs_uncached', '{:.2f}')} | "
                     f"{f('levels_vs_uncached_max', '{}')} / {f('levels_vs_uncached_mean', '{:.2f}')} |")
    return "\n".join(lines) + "\n"


def write_report(rows: list[dict], model: str, device: torch.device, out: Path) -> dict:
    import diffusers

    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "CPU", "torch": torch.__version__,
              "diffusers": diffusers.__version__, "date": time.strftime("%Y-%m-%d"), "model": model,
              "rows": summarise(rows)}
    if model == "random_full":
        report["note"] = RANDOM_WEIGHTS
    if any("_tiny" in r["variant"] or r["variant"].startswith("fastest") for r in rows):
        report["tiny_decoder"] = "ttlg.tiny_decoder=random: the tiny decoder's cost, not its images"
    write_text_atomic(out / "bench.json", json.dumps(report, indent=2))  # a full or read-only disk: one line
    write_text_atomic(out / "bench.md", markdown(report))
    return report
