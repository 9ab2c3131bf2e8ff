"""Files that appear whole or not at all, and qvedit's cache folder.

Every file qvedit writes (frames, metrics, manifests, previews, videos, reports) is written under a
temporary name beside its final path and renamed over it when complete, so a killed process never
leaves a half-written file under a real name. The temporary name is ``.<stem>.<pid>.partial<suffix>``:
hidden, private to the writing process (two processes may replace the same report at once), and it
keeps the suffix, which ffmpeg needs to choose the container. ``metrics.csv`` rows are appended whole
or not at all. A full, read-only or failing disk is one line naming the folder and its free space.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from qvedit.core.errors import QveditError

PARTIAL_GLOB = ".*.partial*"  # what a killed writer may leave behind


def cache_dir() -> Path:
    """``$QVEDIT_CACHE``, default ``~/.cache/qvedit``: the tiny model and the demo clip are built here."""
    return Path(os.path.expanduser(os.environ.get("QVEDIT_CACHE", "~/.cache/qvedit")))


def partial_path(final: Path) -> Path:
    """The temporary name ``final`` is written under by this process."""
    return final.with_name(f".{final.stem}.{os.getpid()}.partial{final.suffix}")


# What a full, read-only, failing or over-quota disk raises on writing; each becomes one line.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM}


def size_text(count: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return ""


def write_error(err: OSError, path: Path) -> QveditError:
    """A failed write as one line: the file, the folder, what the OS said and the space left there."""
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = f"{size_text(shutil.disk_usage(folder).free)} free there"
    except OSError:
        free = "free space unknown"
    return QveditError(f"cannot write {Path(path).name} in {folder}: {err.strerror or err} ({free}); free space or "
                       "make the folder writable, then run the same command again: it keeps what is finished and goes "
                       "on from there")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, rename: bool = True) -> Iterator[Path]:
    """Yields a temporary path to write; renames it to ``final`` if the block ends without an error,
    removes it otherwise. The parent folder is created if needed. A write error of the disk (full,
    read-only, failing) becomes a QveditError naming the folder and its free space.

    ``rename=False`` keeps the finished temporary file for ``commit_partial(final)`` to rename later,
    so a file can appear in the same instant as something else (a frame and its metrics row).
    """
    final = Path(final)
    partial = partial_path(final)
    finished = False
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        yield partial
        if rename:
            os.replace(partial, final)
        else:
            _staged.add(partial)
        finished = True
    except OSError as err:
        if err.errno in WRITE_ERRNOS:
            raise write_error(err, final) from None
        in_the_way = in_the_way_error(err, final)
        if in_the_way is not None:
            raise in_the_way from None
        raise
    finally:
        if rename or not finished:
            with contextlib.suppress(OSError):  # (none to remove below a file in the way)
                partial.unlink(missing_ok=True)


def in_the_way_error(err: OSError, final: Path) -> QveditError | None:
    """A write that failed because a folder has the file's name, or a file stands where a folder must be, as one
    line; None for any other failure."""
    if err.errno == errno.EISDIR and final.is_dir():
        return QveditError(f"cannot write {final}: a folder of that name is there; move it away (qvedit writes a "
                           "file there), then run the same command again")
    if err.errno in (errno.ENOTDIR, errno.EEXIST):
        blocked = next((part for part in final.parents if part.exists() and not part.is_dir()), None)
        if blocked is not None:
            return QveditError(f"cannot write {final}: {blocked} is a file where qvedit needs a folder; move it away, "
                               "then run the same command again")
    return None


_staged: set[Path] = set()  # written with rename=False, not yet committed


def commit_partial(final: str | os.PathLike, partial: str | os.PathLike | None = None) -> Path:
    """Rename what ``atomic_path(final, rename=False)`` wrote to ``final`` (or ``partial``, a temporary file another
    process wrote: a segment schedule's worker)."""
    final = Path(final)
    partial = Path(partial) if partial is not None else partial_path(final)
    _staged.discard(partial)
    try:
        os.replace(partial, final)
    except OSError as err:
        partial.unlink(missing_ok=True)
        if err.errno in WRITE_ERRNOS:
            raise write_error(err, final) from None
        raise
    return final


def track_staged(partial: str | os.PathLike) -> None:
    """``partial`` was written (by this process, under a name of its own) for ``commit_partial`` to rename: a run
    that stops first removes it (``drop_staged``)."""
    _staged.add(Path(partial))


def drop_staged() -> None:
    """Remove what was written with ``rename=False`` and never committed (a run that stopped in between)."""
    while _staged:
        _staged.pop().unlink(missing_ok=True)


def append_whole(path: str | os.PathLike, text: str) -> None:
    """Append ``text`` to ``path`` whole or not at all: after a failed write the file is cut back to
    its length before (a half-written line would look like a finished one)."""
    path = Path(path)
    size = path.stat().st_size if path.exists() else 0
    try:
        with open(path, "a", newline="") as handle:
            handle.write(text)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.truncate(path, size)
        if err.errno in WRITE_ERRNOS:
            raise write_error(err, path) from None
        raise


def write_text_atomic(final: str | os.PathLike, text: str) -> Path:
    with atomic_path(final) as partial:
        partial.write_text(text)
    return Path(final)


def write_figure_png(figure, final: str | os.PathLike, lay_out: bool = True) -> Path:
    """A matplotlib ``figure`` laid out (unless the caller did: ``lay_out=False``) and written as a PNG that
    appears whole or not at all; closed after."""
    if lay_out:
        figure.tight_layout()
    with atomic_path(final) as partial:
        figure.savefig(partial, dpi=100, format="png")
    import matplotlib.pyplot as plt  # here, not at the top: most users of this module draw nothing

    plt.close(figure)
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
