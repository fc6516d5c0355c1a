"""Configs that know every registered project's keys."""

from detectron2.config import CfgNode, get_cfg

from .projects import Project, inference_keys, registered_projects

__all__ = [
    "ConfigCollisionError",
    "add_project_configs",
    "get_project_cfg",
    "set_detections_per_image",
    "set_test_score_threshold",
]


class ConfigCollisionError(ValueError):
    """A project's add_*_config replaces or extends a node that is not its own."""


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
    """A config with every project's keys, merged from `config_file` and KEY VALUE `opts`."""
    cfg = add_project_configs(get_cfg())
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


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


def set_detections_per_image(cfg: CfgNode, value: int) -> str:
    """Like :func:`set_test_score_threshold`, for the number of detections per image."""
    key = inference_keys(cfg.MODEL.META_ARCHITECTURE).detections_per_image
    _set(cfg, key, int(value))
    return key
