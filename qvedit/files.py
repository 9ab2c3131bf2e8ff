"""Files that appear whole or not at all, and qvedit's cache folder.

Every file qvedit writes (frames, metrics, manifests, previews, videos, reports) is written under a
temporary name beside its final path and renamed over it when complete, so a killed process never
leaves a half-written file under a real name. The temporary name is ``.<stem>.<pid>.partial<suffix>``:
hidden, private to the writing process (two processes may replace the same report at once), and it
keeps the suffix, which ffmpeg needs to choose the container.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

PARTIAL_GLOB = ".*.partial*"  # what a killed writer may leave behind


def cache_dir() -> Path:
    """``$QVEDIT_CACHE``, default ``~/.cache/qvedit``: the tiny model and the demo clip are built here."""
    return Path(os.path.expanduser(os.environ.get("QVEDIT_CACHE", "~/.cache/qvedit")))


def partial_path(final: Path) -> Path:
    """The temporary name ``final`` is written under by this process."""
    return final.with_name(f".{final.stem}.{os.getpid()}.partial{final.suffix}")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path to write; renames it to ``final`` if the block ends without an error,
    removes it otherwise. The parent folder is created if needed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(final)
    try:
        yield partial
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)


def write_text_atomic(final: str | os.PathLike, text: str) -> Path:
    with atomic_path(final) as partial:
        partial.write_text(text)
    return Path(final)


def remove_partials(folder: Path) -> None:
    """Delete what a killed writer left in ``folder`` (files never renamed to their final name)."""
    for stale in folder.glob(PARTIAL_GLOB):
        if stale.is_file():
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(final: Path, complete: str) -> Iterator[Path]:
    """Yields an empty staging folder beside ``final``; renames it to ``final`` when the block ends.

    If another process finished ``final`` first (its file ``complete`` exists) that one is kept and
    this staging folder is dropped; the staging folder is always removed on an error.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    staging.chmod(0o755)
    try:
        yield staging
        try:
            staging.rename(final)
        except OSError:
            if not (final / complete).is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
