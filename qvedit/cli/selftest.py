"""``python -m qvedit.selftest``: checks that the guidance losses work here, without any diffusion model.

Each check is a row of ``check | result | detail``; the exit code is 0 when every required check
passes and 1 otherwise. The VGG16 ImageNet weights row is informational: Gram guidance
(``ttlg.gram_scale > 0``) and the default metrics (gram_loss, LPIPS) need them; tests, the demo and
``metrics=none`` runs without Gram guidance do not.
"""

from __future__ import annotations

import sys
from typing import Callable

import torch

from qvedit.core.tool_parser import OneLineParser, emit
from qvedit.guidance.losses import VGGStyle, edge_loss, gram_loss, vgg16_weights_path

Check = tuple[str, bool, str, bool]


def _grad_ok(grad: torch.Tensor | None) -> tuple[bool, str]:
    if grad is None:
        return False, "no gradient reached the image"
    if not torch.isfinite(grad).all():
        return False, "gradient has non-finite values"
    if not grad.abs().sum() > 0:
        return False, "gradient is all zero"
    return True, f"finite, mean abs grad {grad.abs().mean().item():.2e}"


def check_edge_backward(op: str) -> tuple[bool, str]:
    """edge_loss of a random (1,3,64,64) image against a random target back-propagates."""
    gen = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 64, 64, generator=gen, requires_grad=True)
    target = torch.rand(1, 1, 64, 64, generator=gen)
    edge_loss(img, target, op=op).backward()
    return _grad_ok(img.grad)


def check_gram_backward() -> tuple[bool, str]:
    """gram_loss through a random-weight VGGStyle back-propagates to the image."""
    gen = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 64, 64, generator=gen, requires_grad=True)
    ref = torch.rand(1, 3, 64, 64, generator=gen)
    vgg = VGGStyle(weights="random")
    with torch.no_grad():
        ref_grams = vgg.grams(ref)
    gram_loss(vgg.grams(img), ref_grams).backward()
    return _grad_ok(img.grad)


def check_torchvision() -> tuple[bool, str]:
    try:
        import torchvision
    except ImportError:
        return False, "not installed: pip install torchvision (or set ttlg.gram_scale=0)"
    return True, f"version {torchvision.__version__}"


def check_vgg_weights() -> tuple[bool, str]:
    path = vgg16_weights_path()
    if path.is_file():
        return True, f"present: {path}"
    return False, (f"missing: {path} (needed offline by Gram guidance, ttlg.gram_scale>0, and by the default "
                   "metrics; metrics=none and metrics.vgg_weights=random / ttlg.vgg_weights=random run without it)")


def _run(fn: Callable[[], tuple[bool, str]]) -> tuple[bool, str]:
    try:
        return fn()
    except Exception as exc:  # a crashing check is a failed row, not a crashed selftest
        return False, f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def run_checks() -> list[Check]:
    """Every check as (name, ok, detail, required)."""
    checks = [
        ("sobel backward", lambda: check_edge_backward("sobel"), True),
        ("laplacian backward", lambda: check_edge_backward("laplacian"), True),
        ("gram backward", check_gram_backward, True),
        ("torchvision", check_torchvision, True),
        ("vgg16 imagenet weights", check_vgg_weights, False),
    ]
    return [(name, *_run(fn), required) for name, fn, required in checks]


def format_table(rows: list[Check]) -> str:
    """The rows as an aligned ``check | result | detail`` table."""
    cells = [("check", "result", "detail")]
    for name, ok, detail, required in rows:
        cells.append((name, "ok" if ok else ("FAIL" if required else "warn"), detail))
    name_width = max(len(c[0]) for c in cells)
    result_width = max(len(c[1]) for c in cells)
    return "\n".join(f"{n:<{name_width}} | {r:<{result_width}} | {d}" for n, r, d in cells)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="python -m qvedit.selftest",
        description="Check the guidance losses (edges, Gram, autograd) without loading a diffusion model.",
        epilog="Exit code: 0 every required check passed, 1 one failed, 2 bad arguments.",
    )
    parser.parse_args(argv)
    rows = run_checks()
    emit(format_table(rows))  # a reader that stops early (| head) ends the output quietly
    failed = [name for name, ok, _, required in rows if required and not ok]
    if failed:
        emit(f"selftest failed: {', '.join(failed)}")
        return 1
    emit("selftest passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
