"""
The registry of the projects (papers) of this repository.

A project registers once, in pyproject.toml, with an entry point in the ``segtools.projects``
group that names its :class:`Project`::

    [project.entry-points."segtools.projects"]
    losnet = "losnet:PROJECT"

Loading the registry imports each project's package, which registers its models in Detectron2's
registries. The shared layer (config, training, prediction, export, benchmark) asks the registry
for what it needs to know of a model and never names a project itself.
"""

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from detectron2.config import CfgNode as CN
from torch import nn

__all__ = [
    "DETECTRON2",
    "ENTRY_POINT_GROUP",
    "InferenceKeys",
    "Project",
    "add_segtools_config",
    "inference_keys",
    "registered_projects",
]

ENTRY_POINT_GROUP = "segtools.projects"


@dataclass(frozen=True)
class InferenceKeys:
    """Config keys of a meta-architecture's test-time settings."""

    # Minimum score of a reported detection.
    score_thresh: str
    # Maximum number of detections per image.
    detections_per_image: str = "TEST.DETECTIONS_PER_IMAGE"


@dataclass(frozen=True)
class Project:
    """
    What the shared layer knows of one project.

    Attributes:
        name: the project's name, as its folder under projects/ spells it.
        add_config: adds the project's config keys, each under a node of its own (see
            :func:`segtools.config.add_project_configs`); None if it adds none.
        inference_keys: {META_ARCHITECTURE: InferenceKeys} for each meta-architecture the project
            registers (a project that only adds heads to Detectron2's GeneralizedRCNN has none).
        fold_batch_norms: a hook for modules of the project in which a batch norm does not
            directly follow the conv it folds into; called on every module by
            :func:`segtools.batch_norm.fold_batch_norms`, it folds that module in place and
            returns True, or returns False for a module it does not handle.
        smoke_config: a config of the project (path from the repository root) and
            `smoke_opts`, KEY VALUE pairs that make it a tiny model which trains in seconds on a
            CPU, on a one-class ore dataset: the shared tests train it under DDP, fold it and
            load its checkpoints.
    """

    name: str
    add_config: Callable | None = None
    inference_keys: Mapping[str, InferenceKeys] = field(default_factory=dict)
    fold_batch_norms: Callable[[nn.Module], bool] | None = None
    smoke_config: str = ""
    smoke_opts: tuple[str, ...] = ()


def add_segtools_config(cfg) -> None:
    """Add the config keys of the shared layer (segtools), under its own node SEGTOOLS."""
    cfg.SEGTOOLS = CN()
    # Evaluation options that any config may turn on, whatever its model.
    cfg.SEGTOOLS.EVAL = CN()
    # Boundary AP (Cheng et al., CVPR 2021) beside mask AP, for COCO-style datasets.
    cfg.SEGTOOLS.EVAL.BOUNDARY_AP = False
    # After training, the score threshold at which the model counts as many instances as this
    # registered dataset holds is written beside model_final.pth, and predict.py uses it
    # (segtools.calibration). "": no calibration.
    cfg.SEGTOOLS.COUNT_CALIBRATION = CN()
    cfg.SEGTOOLS.COUNT_CALIBRATION.DATASET = ""
    # With masks, the size correction stored with it has at most this many size bins (0: none;
    # segtools.analysis.size_correction).
    cfg.SEGTOOLS.COUNT_CALIBRATION.SIZE_BINS = 8
    # The optimizer (segtools.solver): Detectron2's "SGD" (SOLVER.MOMENTUM, SOLVER.NESTEROV) or
    # "AdamW", which trains small models from scratch in fewer iterations.
    cfg.SEGTOOLS.SOLVER = CN()
    cfg.SEGTOOLS.SOLVER.OPTIMIZER = "SGD"
    cfg.SEGTOOLS.SOLVER.ADAMW_BETAS = (0.9, 0.999)
    # Checkpoints, evaluations and the final model hold an exponential moving average of the
    # training weights with this decay per step (segtools.weight_average); 0: the weights as
    # trained.
    cfg.SEGTOOLS.SOLVER.EMA_DECAY = 0.0


# Detectron2's own meta-architectures that this repository's configs use, and the config keys
# of the shared layer.
DETECTRON2 = Project(
    name="Detectron2",
    add_config=add_segtools_config,
    inference_keys={
        "GeneralizedRCNN": InferenceKeys("MODEL.ROI_HEADS.SCORE_THRESH_TEST"),
        "PanopticFPN": InferenceKeys("MODEL.ROI_HEADS.SCORE_THRESH_TEST"),
        "RetinaNet": InferenceKeys("MODEL.RETINANET.SCORE_THRESH_TEST"),
    },
    smoke_config="configs/Baselines/mask_rcnn_R_18_FPN_ore_synthetic_cpu.yaml",
    smoke_opts=(
        "MODEL.FPN.OUT_CHANNELS",
        "64",
        "MODEL.ROI_BOX_HEAD.FC_DIM",
        "64",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN",
        "64",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
        "32",
    ),  # fmt: skip
)


@functools.cache
def registered_projects() -> tuple[Project, ...]:
    """
    Every registered project, in the order of their entry-point names (Detectron2's first).

    Raises:
        RuntimeError: if an entry point does not name a :class:`Project`, or two share a name
            or claim the same meta-architecture.
    """
    projects = []
    for entry_point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        project = entry_point.load()
        if not isinstance(project, Project):
            raise RuntimeError(
                f"Entry point {entry_point.name} = {entry_point.value} in group "
                f"{ENTRY_POINT_GROUP!r} is a {type(project).__name__}, not a segtools Project"
            )
        projects.append(project)
    if not any(p is DETECTRON2 for p in projects):
        raise RuntimeError(
            f"No project is registered in the entry-point group {ENTRY_POINT_GROUP!r}: "
            "install this repository (pip install -e .) so that its projects are found"
        )
    projects.sort(key=lambda p: p is not DETECTRON2)
    _check_unique(projects)
    return tuple(projects)


def _check_unique(projects: list) -> None:
    names, owners = set(), {}
    for project in projects:
        if project.name in names:
            raise RuntimeError(f"Two registered projects are named {project.name!r}")
        names.add(project.name)
        for architecture in project.inference_keys:
            if architecture in owners:
                raise RuntimeError(
                    f"Projects {owners[architecture]!r} and {project.name!r} both register "
                    f"the meta-architecture {architecture!r}"
                )
            owners[architecture] = project.name


def inference_keys(meta_architecture: str) -> InferenceKeys:
    """
    The test-time config keys of a meta-architecture.

    Raises:
        KeyError: naming the meta-architecture and the registered ones, if no project
            registered it.
    """
    for project in registered_projects():
        if meta_architecture in project.inference_keys:
            return project.inference_keys[meta_architecture]
    known = sorted(a for p in registered_projects() for a in p.inference_keys)
    raise KeyError(
        f"MODEL.META_ARCHITECTURE {meta_architecture!r} has no registered test keys (score "
        f"threshold, detections per image); registered: {known}. Its project declares them in "
        "its segtools.projects.Project(inference_keys=...)"
    )
