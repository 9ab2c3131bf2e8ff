"""One writer per folder: a run holds an OS lock on each folder it writes frames into.

The lock is ``flock`` on ``<folder>/.qvedit-lock``: the kernel releases it when the process ends,
however it ends, so a killed run leaves no lock behind (only its file, which the next run takes). A
second process that wants the folder is refused with the process (and host) that holds it, which
the holder writes into the lock file. The lock file is written in place, not through
``qvedit.core.files.atomic_path``: ``flock`` belongs to the file's inode, which a rename would replace.
Within one process a folder may be taken again (a sweep, or a test, running one job after
another); ``release_all`` ends a run, and removes the lock files it held.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
from pathlib import Path

from qvedit.core.errors import QveditError

log = logging.getLogger(__name__)

LOCK_FILE = ".qvedit-lock"

_held: dict[Path, int] = {}  # folder -> the open lock file this process holds
_delegated: set[Path] = set()  # folders another process of this run holds (a Ray worker's driver)


def _is_at(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is the file at ``path`` now (not one removed or replaced since it was opened)."""
    try:
        opened, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (opened.st_dev, opened.st_ino) == (there.st_dev, there.st_ino)


def _still_held(folder: Path) -> bool:
    """Whether this process's lock on ``folder`` is on the lock file that is there now."""
    fd = _held.get(folder)
    return fd is not None and _is_at(fd, folder / LOCK_FILE)


def hold(folder: Path) -> None:
    """Take ``folder`` for this process, or raise a QveditError naming the process that has it."""
    folder = Path(folder).resolve()
    if _still_held(folder):
        return
    release(folder)
    path = folder / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise QveditError(f"{folder} is in use by {holder}, another qvedit run writing frames there: let it "
                              "finish or stop it, or write to a new folder (another hydra.run.dir or "
                              "io.out_frames_dir)") from None
        except OSError as err:  # a filesystem without locks (some NFS or Lustre mounts)
            os.close(fd)
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            log.warning("cannot lock %s (%s): a second run into this folder would not be stopped", folder,
                        err.strerror)
            return
        # The holder before us removes the file while it still holds the lock (``release``). If it did so between
        # our open and our flock, the lock we have is on a file no longer at ``path``: a third process may already
        # have made and locked a new one there. Only a lock on the file that is at the path counts: else, again.
        if _is_at(fd, path):
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode())
    except OSError:  # a full disk: the lock holds all the same, its holder is just not named
        pass
    _held[folder] = fd


def delegate(folder: Path) -> None:
    """``folder`` is held by this run's driver (``schedule.workers >= 2``): this worker process writes there under
    the driver's lock, neither taking it nor clearing what other workers are writing (``delegated``)."""
    _delegated.add(Path(folder).resolve())


def delegated(folder: Path) -> bool:
    return Path(folder).resolve() in _delegated


def release(folder: Path) -> None:
    """Give ``folder`` back and remove its lock file. The file is removed while the lock is still held: no other
    process can hold a lock on it then, and one that opened it before and locks it after sees that it is no longer
    at the path (``hold`` checks) and takes the path's new file instead; so two writers never hold the folder at
    once. (Unlocking first and removing after would let a second process lock the file in between, and a third
    make a new one beside its lock.)"""
    folder = Path(folder).resolve()
    fd = _held.pop(folder, None)
    if fd is None:
        return
    with contextlib.suppress(OSError):  # (a read-only folder, say: the file stays, which is harmless)
        if _is_at(fd, folder / LOCK_FILE):
            (folder / LOCK_FILE).unlink()
    os.close(fd)


def release_all() -> None:
    """Give back every folder this process holds (the end of a run)."""
    for folder in list(_held):
        release(folder)
