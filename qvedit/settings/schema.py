"""The schema every config in ``conf/`` is checked against, and the key lists derived from its tags.

Each config group's schema is its settings dataclass (``qvedit/settings/*.py``) plus a ``_target_`` naming
it, so ``hydra.utils.instantiate`` gives that dataclass back. A misspelt key (``ttlg.edge_scal=1``) or a
wrong type (``seed=abc``) fails at compose time with Hydra's message naming the key, and a value out of
its field's range or choices fails in ``qvedit.run.config_values.check_values``, before anything is built.

The lists of keys other parts need are derived here from the fields' tags (``qvedit.settings.field_tags``):
the keys of the resume manifest and of a run's inputs (read from a config by ``qvedit.run.config_values``), the
keys the acceptance report does not pair jobs by (``output_path_keys``) and the keys left out of sweep folder names
(``folder_name_excluded_keys``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from qvedit.core.files import cache_dir
from qvedit.settings.anchor import AnchorSettings
from qvedit.settings.field_tags import tags_of, walk
from qvedit.settings.first_frame import FirstFrameSettings
from qvedit.settings.guidance import FlowSettings, TTLGSettings
from qvedit.settings.io import IO_OPTIONS, FramesIO, LongDemoIO, ShapesIO, VideoIO
from qvedit.settings.model import RELEASES, ModelSettings, ParallelSettings, PerfSettings
from qvedit.settings.report import LoggerSettings, MetricsSettings, Thresholds, TuningSettings
from qvedit.settings.run import RunSettings
from qvedit.settings.schedule import ScheduleSettings
from qvedit.settings.start import StartSettings

# conf/ sits beside the package (the repository layout; install with `pip install -e .`)
CONF_DIR = Path(__file__).resolve().parent.parent.parent / "conf"


def schema(settings: type) -> type:
    """The structured-config node of a group: ``settings`` plus a ``_target_`` that instantiates it."""
    node = make_dataclass(
        f"{settings.__name__}Schema",
        [("_target_", str, field(default=f"{settings.__module__}.{settings.__qualname__}"))],
        bases=(settings,),
    )
    # a module attribute under its own name, so a pickled config (a submitit job's) finds it again
    node.__module__ = __name__
    globals()[node.__name__] = node
    return node


ModelSchema, TTLGSchema, MetricsSchema = schema(ModelSettings), schema(TTLGSettings), schema(MetricsSettings)
ThresholdsSchema, PerfSchema, ParallelSchema = schema(Thresholds), schema(PerfSettings), schema(ParallelSettings)
FlowSchema, LoggerSchema, TuningSchema = schema(FlowSettings), schema(LoggerSettings), schema(TuningSettings)
AnchorSchema, FirstFrameSchema = schema(AnchorSettings), schema(FirstFrameSettings)
StartSchema = schema(StartSettings)
ScheduleSchema = schema(ScheduleSettings)
IO_SCHEMAS = {"schema_frames": schema(FramesIO), "schema_video": schema(VideoIO),  # each io/*.yaml picks one
              "schema_demo_long": schema(LongDemoIO), "schema_shapes": schema(ShapesIO)}


@dataclass
class QveditConfig(RunSettings):
    """The whole run: the top-level keys and one node per config group."""

    model: ModelSchema = field(default_factory=ModelSchema)
    io: Any = MISSING  # one of IO_SCHEMAS, chosen by the io/*.yaml file
    ttlg: TTLGSchema = field(default_factory=TTLGSchema)
    flow: FlowSchema = field(default_factory=FlowSchema)
    anchor: AnchorSchema = field(default_factory=AnchorSchema)
    start: StartSchema = field(default_factory=StartSchema)
    metrics: MetricsSchema = field(default_factory=MetricsSchema)
    acceptance: ThresholdsSchema = field(default_factory=ThresholdsSchema)
    perf: PerfSchema = field(default_factory=PerfSchema)
    parallel: ParallelSchema = field(default_factory=ParallelSchema)
    logger: LoggerSchema = field(default_factory=LoggerSchema)
    tuning: TuningSchema = field(default_factory=TuningSchema)
    first_frame: FirstFrameSchema = field(default_factory=FirstFrameSchema)
    schedule: ScheduleSchema = field(default_factory=ScheduleSchema)


# -- key lists derived from the tags ----------------------------------------------------------------

def schema_fields() -> dict[str, dataclasses.Field]:
    """{dotted key: field} of the whole schema, every io option included."""
    found = dict(walk(QveditConfig))
    found.pop("io", None)  # a placeholder: the io options below hold its keys
    for option in IO_OPTIONS:
        for key, f in walk(option, "io."):
            found.setdefault(key, f)
    return found


def schema_keys(wanted) -> list[str]:
    """Keys of the whole schema whose tags satisfy ``wanted``."""
    return [key for key, f in schema_fields().items() if wanted(tags_of(f))]


def output_path_keys() -> list[str]:
    """Keys that say where a run writes (``io.out_frames_dir``, ``metrics.path`` ...)."""
    return schema_keys(lambda tags: tags.path == "output")


def folder_name_excluded_keys() -> list[str]:
    """Overrides left out of sweep job folder names: every path, and what is not a setting."""
    return ["experiment", "hydra.run.dir", "hydra.sweep.dir", *schema_keys(lambda tags: tags.path is not None)]


JOB_FOLDER_MAX = 96  # bytes of a sweep job's folder name; file systems take 255, and a path should stay readable


def job_folder_name(num: int, override_dirname: str) -> str:
    """A sweep job's folder name: ``<num>_<its overrides>`` (``conf/hydra/default.yaml``), bounded.

    A name over ``JOB_FOLDER_MAX`` bytes (twenty overrides, long floats from a search) keeps the shortest
    overrides that fit (``seed=1`` rather than one long float), in their order, and ends in ``~`` and a hash of
    them all, so two jobs never share a folder; every override is in the job's ``.hydra/overrides.yaml``.
    """
    name = f"{num}_{override_dirname}" if override_dirname else str(num)
    if len(name.encode()) <= JOB_FOLDER_MAX:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    items = override_dirname.split(",")
    budget, kept = JOB_FOLDER_MAX - len(f"{num}_,~{digest}".encode()), set()
    for position in sorted(range(len(items)), key=lambda i: len(items[i].encode())):
        cost = len(items[position].encode()) + 1
        if cost > budget:
            break
        kept.add(position)
        budget -= cost
    return f"{num}_{''.join(items[i] + ',' for i in sorted(kept))}~{digest}"


def scale_keys() -> list[str]:
    """``ttlg.<loss>_scale``: a run is guided when one of them is above 0."""
    return [f"ttlg.{name}" for name in TTLGSettings.scales()]


def frame_setting_defaults() -> dict[str, object]:
    """The schema default of every frame-affecting key (what a key added since an old manifest meant)."""
    defaults = {}
    for key, f in schema_fields().items():
        if tags_of(f).frames and f.default is not dataclasses.MISSING:
            defaults[key] = f.default
        elif tags_of(f).frames and f.default_factory is not dataclasses.MISSING:  # a list such as perf.fp8_keep_bf16
            defaults[key] = f.default_factory()
    return defaults


def lightning(release: Any, steps: Any = None) -> str:
    """``${qvedit.lightning_file:${model.release},8}``: the Lightning LoRA file of ``steps`` steps distilled from the
    release (its hub repo when ``steps`` is None); "" where none is published."""
    about = RELEASES.get(str(release))
    if about is None:
        return ""
    return about.lightning_repo if steps is None else about.lightning_file(int(steps))


def register_schemas() -> None:
    """Make the schemas available to ``conf/``, and the resolvers its files use (idempotent)."""
    store = ConfigStore.instance()
    store.store(name="qvedit_schema", node=QveditConfig)
    for name, node in IO_SCHEMAS.items():
        store.store(group="io", name=name, node=node)
    # ${qvedit.cache:demo-clip} -> <cache folder>/demo-clip; the cache folder is $QVEDIT_CACHE or ~/.cache/qvedit
    OmegaConf.register_new_resolver("qvedit.cache", lambda sub="": str(cache_dir() / sub), replace=True)
    # experiment=lightning's LoRA: the hub repo and file distilled from the model (model.release), "" for none
    OmegaConf.register_new_resolver("qvedit.lightning_repo", lambda release: lightning(release, None), replace=True)
    OmegaConf.register_new_resolver("qvedit.lightning_file", lightning, replace=True)
    # ${qvedit.package:toy/weights} -> the folder of that name inside the installed qvedit package
    OmegaConf.register_new_resolver("qvedit.package", lambda sub="": str(Path(__file__).resolve().parent.parent / sub),
                                    replace=True)
    # the overrides that sweep folder names leave out (conf/hydra/default.yaml)
    OmegaConf.register_new_resolver("qvedit.folder_name_excluded_keys", folder_name_excluded_keys, replace=True)
    # a sweep job's folder: its number and overrides, bounded in length (job_folder_name)
    OmegaConf.register_new_resolver("qvedit.job_folder", job_folder_name, replace=True)
