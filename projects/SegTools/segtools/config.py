"""Configs that know every registered project's keys, with their values checked."""

import math
import os

import torch
import yaml
from detectron2.config import CfgNode, get_cfg

from .projects import Project, inference_keys, registered_projects
from .solver import OPTIMIZERS

__all__ = [
    "ConfigCollisionError",
    "ConfigValueError",
    "add_project_configs",
    "check_config_values",
    "check_device",
    "get_project_cfg",
    "set_detections_per_image",
    "set_test_score_threshold",
    "test_score_threshold",
]


class ConfigCollisionError(ValueError):
    """A project's add_*_config replaces or extends a node that is not its own."""


class ConfigValueError(ValueError):
    """A config value out of its range; the message names the key and the value."""


def _flatten(node: CfgNode, prefix: str = "") -> dict:
    """{"MODEL.LOSNET.NUM_CLASSES": value, ...} of every leaf key of `node`."""
    keys = {}
    for name, value in node.items():
        key = f"{prefix}{name}"
        if isinstance(value, CfgNode):
            keys.update(_flatten(value, key + "."))
        else:
            keys[key] = value
    return keys


def _new_nodes(project: Project, defaults: dict) -> dict:
    """
    {leaf key: owning node} of the keys `project` adds, checking that it adds them only under
    nodes of its own and leaves Detectron2's keys as they are.
    """
    cfg = get_cfg()
    project.add_config(cfg)
    added = _flatten(cfg)
    changed = sorted(k for k in defaults if k not in added or added[k] != defaults[k])
    if changed:
        raise ConfigCollisionError(
            f"{project.name}'s add_config changes or removes Detectron2's keys {changed}: a "
            "project may only add keys, under a node of its own"
        )
    default_nodes = {
        key.rsplit(".", depth)[0] for key in defaults for depth in range(1, key.count(".") + 1)
    }
    owners = {}
    for key in added.keys() - defaults.keys():
        # A new key belongs to its outermost node that Detectron2 does not have.
        parts = key.split(".")
        prefixes = (".".join(parts[:depth]) for depth in range(1, len(parts) + 1))
        node = next(prefix for prefix in prefixes if prefix not in default_nodes)
        if node == key:
            raise ConfigCollisionError(
                f"{project.name}'s add_config adds {key} to Detectron2's node "
                f"{key.rsplit('.', 1)[0]}: put it under a node of the project's own"
            )
        owners[key] = node
    return owners


def add_project_configs(cfg: CfgNode, projects=None) -> CfgNode:
    """
    Add every project's config keys to `cfg` (Detectron2's defaults), after checking that each
    project adds its keys under nodes of its own that no other project adds to.

    Args:
        projects: the projects; default: the registered ones.

    Raises:
        ConfigCollisionError: naming both projects and the shared node, or the Detectron2 key
            that a project changes.
    """
    projects = registered_projects() if projects is None else projects
    defaults = _flatten(get_cfg())
    node_owner = {}
    for project in projects:
        if project.add_config is None:
            continue
        for node in set(_new_nodes(project, defaults).values()):
            if node in node_owner:
                raise ConfigCollisionError(
                    f"Projects {node_owner[node]!r} and {project.name!r} both add the config "
                    f"node {node}: give each project a node of its own"
                )
            node_owner[node] = project.name
        project.add_config(cfg)
    return cfg


def get_project_cfg(config_file: str, opts=()) -> CfgNode:
    """
    A config with every project's keys, merged from `config_file` and KEY VALUE `opts`, its
    values checked by :func:`check_config_values`.

    Raises:
        FileNotFoundError: if `config_file` does not exist.
        ConfigValueError: naming the file or the overrides, for an unknown key, a value of the
            wrong type or out of its range, or an odd number of overrides.
    """
    cfg = add_project_configs(get_cfg())
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file not found: {config_file}")
    # yacs reports an unknown key, a value of another type or an odd override list with an
    # AssertionError, KeyError or ValueError; they are the user's, not bugs.
    try:
        cfg.merge_from_file(config_file)
    except (AssertionError, KeyError, ValueError, yaml.YAMLError) as e:
        raise ConfigValueError(f"{config_file}: {_yacs_message(e)}") from None
    try:
        cfg.merge_from_list(list(opts))
    except (AssertionError, KeyError, ValueError) as e:
        raise ConfigValueError(f"config overrides: {_yacs_message(e)}") from None
    check_config_values(cfg)
    return cfg


def _yacs_message(error: Exception) -> str:
    # A KeyError's str() quotes its message; a YAML error's first argument is only its context.
    text = str(error) if isinstance(error, yaml.YAMLError) else str(error.args[0])
    return " ".join(text.split())


def _get(cfg: CfgNode, key: str):
    node = cfg
    for name in key.split("."):
        node = node[name]
    return node


def _check(cfg: CfgNode, key: str, is_valid, expected: str) -> None:
    values = _get(cfg, key)
    for value in values if isinstance(values, (list, tuple)) else [values]:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not is_valid(value):
            raise ConfigValueError(f"{key} = {values!r}: expected {expected}")


def check_config_values(cfg: CfgNode) -> None:
    """
    Check the values that Detectron2 would only trip over deep in a transform or a loop: input
    sizes, batch, schedule, and the test keys the meta-architecture's project registered.

    Raises:
        ConfigValueError: naming the key and its value.
    """
    for key in ("INPUT.MIN_SIZE_TRAIN", "INPUT.MAX_SIZE_TRAIN", "INPUT.MAX_SIZE_TEST"):
        _check(cfg, key, lambda v: v >= 1, "sizes of at least 1 pixel")
    _check(cfg, "INPUT.MIN_SIZE_TEST", lambda v: v >= 0, "a size >= 0 (0: no resizing)")
    _check(cfg, "SOLVER.IMS_PER_BATCH", lambda v: v >= 1, "an integer >= 1")
    _check(cfg, "SOLVER.MAX_ITER", lambda v: v >= 0, "an integer >= 0")
    _check(cfg, "SOLVER.BASE_LR", lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
    _check(cfg, "DATALOADER.NUM_WORKERS", lambda v: v >= 0, "an integer >= 0")
    _check(
        cfg,
        "SEGTOOLS.COUNT_CALIBRATION.SIZE_BINS",
        lambda v: v >= 0,
        "an integer >= 0 (0: no size correction)",
    )
    optimizer = cfg.SEGTOOLS.SOLVER.OPTIMIZER
    if optimizer not in OPTIMIZERS:
        raise ConfigValueError(
            f"SEGTOOLS.SOLVER.OPTIMIZER = {optimizer!r}: expected one of {list(OPTIMIZERS)}"
        )
    betas = cfg.SEGTOOLS.SOLVER.ADAMW_BETAS
    if len(betas) != 2:
        raise ConfigValueError(f"SEGTOOLS.SOLVER.ADAMW_BETAS = {betas!r}: expected two numbers")
    _check(cfg, "SEGTOOLS.SOLVER.ADAMW_BETAS", lambda v: 0 <= v < 1, "two numbers in [0, 1)")
    _check(cfg, "SEGTOOLS.SOLVER.EMA_DECAY", lambda v: 0 <= v < 1, "a number in [0, 1) (0: off)")
    try:
        keys = inference_keys(cfg.MODEL.META_ARCHITECTURE)
    except KeyError:
        return  # a meta-architecture no project registered: nothing more is known of it
    _check(cfg, keys.score_thresh, lambda v: 0 <= v <= 1, "a score in [0, 1]")
    _check(cfg, keys.detections_per_image, lambda v: v >= 1, "an integer >= 1")


def check_device(cfg: CfgNode) -> None:
    """Refuse a MODEL.DEVICE that this machine does not have, before a model is built on it."""
    device = str(cfg.MODEL.DEVICE)
    kind, _, index = device.partition(":")
    if device != "cpu" and not (kind == "cuda" and (not index or index.isdigit())):
        raise ConfigValueError(f"MODEL.DEVICE = {device!r}: expected cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigValueError(
            f"MODEL.DEVICE = {device!r}, but this machine has no CUDA GPU that PyTorch can use: "
            "use cpu (--device cpu, or MODEL.DEVICE cpu)"
        )
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise ConfigValueError(
            f"MODEL.DEVICE = {device!r}, but this machine has {torch.cuda.device_count()} CUDA "
            "GPU(s), numbered from 0"
        )


def _set(cfg: CfgNode, key: str, value) -> None:
    *parents, leaf = key.split(".")
    node = cfg
    for name in parents:
        node = node[name]
    node[leaf] = value


def set_test_score_threshold(cfg: CfgNode, value: float) -> str:
    """
    Set the test score threshold of the config's meta-architecture to `value`.

    Returns:
        The key that was set.

    Raises:
        KeyError: if no project registered the meta-architecture's keys.
    """
    key = inference_keys(cfg.MODEL.META_ARCHITECTURE).score_thresh
    _set(cfg, key, float(value))
    return key


def test_score_threshold(cfg: CfgNode) -> tuple:
    """(key, value) of the test score threshold of the config's meta-architecture."""
    key = inference_keys(cfg.MODEL.META_ARCHITECTURE).score_thresh
    return key, _get(cfg, key)


def set_detections_per_image(cfg: CfgNode, value: int) -> str:
    """Like :func:`set_test_score_threshold`, for the number of detections per image."""
    key = inference_keys(cfg.MODEL.META_ARCHITECTURE).detections_per_image
    _set(cfg, key, int(value))
    return key
