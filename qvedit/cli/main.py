"""``python -m qvedit``: the command line. The overrides checked before Hydra composes, the Hydra entry point
(``qvedit.run.job.run`` makes the clip), and what stopped the run said in one line.

The run's modules (torch, diffusers, pandas: about 3 s to import on 2 cores) are not imported here: Hydra's
callbacks and ``hydra_main`` import them once a run starts, so an override ``main`` refuses (a misspelt key, a
bad value) is answered in under a second."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import warnings
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from qvedit.cli.launcher_checks import register_plugins
from qvedit.cli.override_keys import (argument_problems, merging_dict_overrides, overrides_last, register_help,
                                      unknown_config_keys, unknown_overrides)
from qvedit.cli.override_values import hydra_error_line, override_problems
from qvedit.core import stopping
from qvedit.core.config_trust import command_line_problems
from qvedit.core.cpu_threads import use_cpu_threads
from qvedit.core.errors import QveditError
from qvedit.core.tool_parser import quiet_stdout
from qvedit.core.torchrun_ranks import follower_overrides, torchrun_rank
from qvedit.io.layout import discard_if_empty, file_in_the_way, record_job_error
from qvedit.settings.schema import CONF_DIR, register_schemas

log = logging.getLogger("qvedit")
register_schemas()
register_help()
# conf/hydra/launcher/ray.yaml shares its name with hydra-ray-launcher's schema on purpose (the
# command is hydra/launcher=ray); Hydra 1.3 merges the two as wanted but warns about the name.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/ray' is validated against ConfigStore schema")


def stop_message(signum: int) -> str:
    """What a stopped run says: how it stopped, what it kept, and the command that goes on from there
    (rank 0's to say under torchrun)."""
    if torchrun_rank():
        return ""
    how = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    return f"qvedit: {how}; {stopping.kept_text()}. Resume with: {stopping.resume_command(HydraConfig.get())}"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> Optional[tuple]:
    stopping.install(message=stop_message)
    try:
        for problem in unknown_config_keys(cfg):
            raise QveditError(problem)
        from qvedit.run.job import in_sweep, run, trial_objectives
        from qvedit.core.cpu_threads import describe

        if str(cfg.get("device", "")).startswith("cpu"):
            log.info(describe())

        result = run(cfg, Path(HydraConfig.get().runtime.output_dir))
        if in_sweep():  # a search trial returns its objectives to the sweeper (None otherwise)
            return trial_objectives(result, Path(HydraConfig.get().sweep.dir))
    except QveditError as err:
        rank = torchrun_rank()
        print(f"qvedit: error{f' (rank {rank})' if rank else ''}: {err}", file=sys.stderr)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # One bad job must not end the sweep: the report lists it with this message.
            record_job_error(run_dir, str(err))
            return
        if not rank:
            discard_if_empty(run_dir)  # twenty typos must not leave twenty empty run folders
        sys.exit(2)
    except BrokenPipeError:  # the summary's reader left (| head): the run is done and written, say nothing more
        quiet_stdout()
    except (KeyboardInterrupt, stopping.Terminated) as stop:
        signum = getattr(stop, "signum", signal.SIGINT)
        if torchrun_rank() == 0:
            print(stop_message(signum), file=sys.stderr)
        sys.exit(stopping.EXIT_CODES.get(signum, 128 + signum))


def raised_by_hydra(err: BaseException) -> bool:
    """Whether the innermost frame of ``err`` outside the standard library's file code is Hydra's."""
    frames, tb = [], err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    inner = [name for name in frames if Path(name).name not in ("pathlib.py", "os.py", "shutil.py")]
    return bool(inner) and f"{os.sep}hydra{os.sep}" in inner[-1]


def main() -> None:
    """``python -m qvedit`` / ``qvedit``. Under torchrun, ranks other than 0 run in a scratch folder
    that is removed at exit: the run folder, its logs and its frames are rank 0's alone."""
    # one line per misspelt key; else the first key of a config from elsewhere that would run code
    # then the values no group or key takes (all in one line), before Hydra says it in many
    use_cpu_threads()  # before torch is imported
    argv = sys.argv[1:] = merging_dict_overrides(overrides_last(sys.argv[1:]))
    problems = argument_problems(argv) or unknown_overrides(argv) or ["; ".join(override_problems(argv))] or []
    problems = [p for p in problems if p] or command_line_problems(argv, Path(__file__))[:1]
    for problem in problems:
        print(f"qvedit: error: {problem}", file=sys.stderr)
    if problems:
        sys.exit(2)
    logging.raiseExceptions = False  # a log line a full disk cannot take must not print a traceback
    register_plugins()  # hparams_search=ttlg_optuna from any folder, not only the repository root
    overrides, scratch = follower_overrides()
    sys.argv += overrides
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises what it would print in several lines; qvedit says it in one
    try:
        hydra_main()
    except (HydraException, OmegaConfBaseException) as err:
        if full_error == "1":  # the user asked for Hydra's stack trace
            raise
        print(f"qvedit: error: {hydra_error_line(err)}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # --help (or --cfg job) into a reader that stopped early (| head): nothing more to say
        quiet_stdout()
    except OSError as err:  # Hydra making the run or sweep folder where a file (or no permission) is in the way
        if full_error == "1" or not err.filename or not raised_by_hydra(err):
            raise
        blocked = file_in_the_way(Path(err.filename))
        print(f"qvedit: error: cannot create {err.filename}: {err.strerror}"
              f"{f' ({blocked} is a file)' if blocked else ''}: choose another hydra.run.dir (hydra.sweep.dir for a "
              "sweep)", file=sys.stderr)
        sys.exit(2)
    finally:
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
