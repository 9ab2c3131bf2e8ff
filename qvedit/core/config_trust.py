"""Configs from elsewhere are data, not code.

A run folder someone sent can be re-run (``--config-path RUN/.hydra --config-name config``), and Hydra
imports and calls whatever a ``_target_`` in its YAML names, some of it (callbacks, the launcher)
before qvedit's code runs. So before Hydra reads a config folder given on the command line, every
YAML file in it is checked, and ``build`` checks each group's node again before instantiating it:

- a ``_target_`` may only name one of qvedit's settings classes (``qvedit.settings.*``; a run folder
  written before they moved there names them by their old modules, ``qvedit.<package>.settings``, which
  are read as the new ones), one of its Hydra callbacks, or a launcher or sweeper of Hydra itself, of
  the two launcher plugins or of qvedit's Optuna sweeper plugin;
- logging configs (``hydra.job_logging``, ``hydra.hydra_logging``) may only name ``logging`` classes
  (``class``, ``()``) and write to ``ext://sys.stdout`` or ``ext://sys.stderr``;
- ``hydra.searchpath`` may not add config folders, which would bring in YAML unchecked.

Anything else is refused in one line naming the file and the key. ``--experimental-rerun``, which
unpickles a run's config (a pickle can run any code), is refused outright. Weights are read only
from safetensors files or with ``torch.load(weights_only=True)`` (``tests/test_bad_inputs.py``).
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml

PLUGIN_PACKAGES = ("hydra._internal.core_plugins.", "hydra_plugins.hydra_submitit_launcher.",
                   "hydra_plugins.hydra_ray_launcher.", "hydra_plugins.qvedit_optuna.")  # the last: qvedit's own
LOGGING_KEYS = ("job_logging", "hydra_logging")
LOG_STREAMS = ("ext://sys.stdout", "ext://sys.stderr")
# where qvedit's settings classes were before they moved to qvedit.settings (run folders of earlier versions)
MOVED_SETTINGS = {f"qvedit.{package}.settings.": f"qvedit.settings.{module}." for package, module in (
    ("models", "model"), ("io", "io"), ("guidance", "guidance"), ("anchor", "anchor"), ("report", "report"))}


# classes a run folder's YAML may name that moved when the folders became the layers (2026-12-05)
MOVED_CLASSES = {"qvedit.settings.io.FirstFrameSettings": "qvedit.settings.first_frame.FirstFrameSettings",
                 "qvedit.launchers.LauncherCheck": "qvedit.cli.launcher_checks.LauncherCheck",
                 "qvedit.io.layout.InputsApart": "qvedit.cli.inputs_apart.InputsApart"}


def current_target(target: Any) -> Any:
    """``target`` with a class's old name replaced by the one it has now (run folders of earlier versions)."""
    if not isinstance(target, str):
        return target
    for old, new in MOVED_SETTINGS.items():  # the older move first: a class may have moved twice
        if target.startswith(old):
            target = new + target.removeprefix(old)
            break
    return MOVED_CLASSES.get(target, target)


def _locate(target: str) -> Any:
    """The object a dotted name points at (module attribute path), or None."""
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            found = getattr(found, name, None)
        return found
    return None


def target_problem(target: Any) -> Optional[str]:
    """Why ``target`` may not be instantiated, or None when it is one of those listed above.

    Only modules of qvedit and of the plugin packages are imported to tell: nothing a config names
    elsewhere is ever imported.
    """
    from hydra.experimental.callback import Callback
    from hydra.plugins.launcher import Launcher
    from hydra.plugins.sweeper import Sweeper

    if not isinstance(target, str):
        return "is not a class name"
    if target.startswith("qvedit."):
        found = _locate(current_target(target))
        settings = (isinstance(found, type) and dataclasses.is_dataclass(found)
                    and found.__module__.startswith("qvedit.settings."))
        own = isinstance(found, type) and issubclass(found, (Callback, Launcher)) and found.__module__.startswith("qvedit.")
        return None if settings or own else "is not one of qvedit's settings classes or Hydra callbacks"
    if target.startswith(PLUGIN_PACKAGES):
        found = _locate(target)
        return None if isinstance(found, type) and issubclass(found, (Launcher, Sweeper)) else \
            "is not a launcher or sweeper class of Hydra or its launcher plugins"
    return "is not qvedit's (only qvedit's settings and callbacks and the launcher plugins are instantiated)"


def build(node, **kwargs):
    """``hydra.utils.instantiate`` of a config group's node, only when its ``_target_`` is one of qvedit's own
    (``target_problem``); a QveditError raised while building comes through as itself, not wrapped by Hydra.

    Args:
        node: a group's node of a composed config (``cfg.ttlg``) or of a run folder's YAML.
        kwargs: passed on to ``instantiate``.

    Returns:
        The settings object (``TTLGSettings`` ...).
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from qvedit.core.errors import QveditError

    target = node.get("_target_")
    problem = target_problem(target)
    if problem:
        raise QveditError(f"{node._get_full_key(None)}._target_={target!r} {problem}: use qvedit's own config groups")
    if current_target(target) != target:  # a run folder of an earlier version: the class has moved since
        kwargs["_target_"] = current_target(target)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, QveditError):
            raise err.__cause__ from None
        raise


def _walk(node: Any, key: str = "", logging_config: bool = False) -> Iterator[tuple[str, str]]:
    """(dotted key, problem) for every value of a plain YAML tree that would run code not allowed above."""
    if isinstance(node, dict):
        for name, value in node.items():
            dotted = f"{key}.{name}" if key else str(name)
            inside_logging = logging_config or name in LOGGING_KEYS
            if name == "_target_":
                problem = target_problem(value)
                if problem:
                    yield dotted, f"{dotted}={value!r} {problem}"
            elif inside_logging and name in ("class", "()") and not str(value).startswith("logging."):
                yield dotted, f"{dotted}={value!r} is not a class of Python's logging module"
            elif inside_logging and isinstance(value, str) and value.startswith("ext://") and value not in LOG_STREAMS:
                yield dotted, f"{dotted}={value!r}: a log may only go to {' or '.join(LOG_STREAMS)}"
            elif name == "searchpath" and key.endswith("hydra") and value:
                yield dotted, f"{dotted} adds config folders ({value}); remove it and pass them with --config-dir"
            else:
                yield from _walk(value, dotted, inside_logging)
    elif isinstance(node, list):
        for position, value in enumerate(node):
            yield from _walk(value, f"{key}[{position}]", logging_config)


def config_file_problems(path: Path) -> list[str]:
    """One message per key of the YAML file ``path`` that would run code qvedit does not allow."""
    try:
        documents = list(yaml.safe_load_all(path.read_text()))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as err:
        return [f"{path} cannot be read as YAML ({type(err).__name__}): fix or remove it"]
    return [f"{path}: {problem}: remove that key or use qvedit's own config ({path.name} came from elsewhere?)"
            for document in documents for _, problem in _walk(document)]


def config_folders(argv: list[str], main_file: Path) -> list[Path]:
    """The config folders a command line gives Hydra (``--config-path``, ``--config-dir``); a relative
    ``--config-path`` is relative to ``main_file``'s folder, as Hydra takes it."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    folders = []
    if args.config_path and not str(args.config_path).startswith("pkg://"):
        path = Path(str(args.config_path).removeprefix("file://"))
        folders.append(path if path.is_absolute() else main_file.parent / path)
    if args.config_dir:
        folders.append(Path(args.config_dir))
    return folders


def command_line_problems(argv: list[str], main_file: Path) -> list[str]:
    """What would make Hydra run code from a config given on this command line, one message each."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    if args.experimental_rerun:
        return [f"--experimental-rerun unpickles {args.experimental_rerun}, and a pickle can run any code: re-run "
                "from the run's YAML instead (--config-path RUN/.hydra --config-name config)"]
    problems = []
    for folder in config_folders(argv, main_file):
        for path in sorted(folder.rglob("*.y*ml")) if folder.is_dir() else []:
            problems += config_file_problems(path)
    return problems
