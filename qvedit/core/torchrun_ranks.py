"""Which torchrun process this is, read from the environment without torch: the command line asks before
it imports anything heavy (``qvedit.models.parallel`` runs the ranks)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional


def torchrun_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def follower_overrides() -> tuple[list[str], Optional[Path]]:
    """Hydra overrides for ranks > 0: a private scratch run folder and no log files, so only rank 0's
    run folder appears. Returns (overrides, scratch folder to remove at exit)."""
    rank = torchrun_rank()
    if rank == 0:
        return [], None
    scratch = Path(tempfile.mkdtemp(prefix=f"qvedit-rank{rank}-"))
    return [f"hydra.run.dir={scratch}", "hydra.output_subdir=null", "hydra/job_logging=disabled",
            "hydra/hydra_logging=disabled"], scratch
