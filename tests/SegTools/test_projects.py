"""The project registry: what each project registers, and config nodes that cannot collide."""

import os

import pytest
import torch
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from segtools.batch_norm import BATCH_NORMS, calibrate_batch_norms, fold_batch_norms
from segtools.config import (
    ConfigCollisionError,
    add_project_configs,
    get_project_cfg,
    set_detections_per_image,
    set_test_score_threshold,
)
from segtools.projects import DETECTRON2, InferenceKeys, Project, registered_projects

from helpers import REPO_ROOT

PROJECTS = registered_projects()


def test_registry_holds_detectron2_and_losnet_once():
    names = [p.name for p in PROJECTS]
    assert names[0] == "Detectron2" and "LosNet" in names and len(set(names)) == len(names)
    losnet = next(p for p in PROJECTS if p.name == "LosNet")
    assert losnet.inference_keys == {"LosNet": InferenceKeys("MODEL.LOSNET.SCORE_THRESH_TEST")}


@pytest.mark.parametrize("project", PROJECTS, ids=lambda p: p.name)
def test_every_project_has_a_smoke_config(project):
    assert os.path.isfile(REPO_ROOT / project.smoke_config), project.smoke_config


@pytest.mark.parametrize(
    "config, key",
    [
        ("configs/LosNet/Base-LosNet.yaml", "MODEL.LOSNET.SCORE_THRESH_TEST"),
        ("configs/Baselines/Base-RCNN-FPN.yaml", "MODEL.ROI_HEADS.SCORE_THRESH_TEST"),
    ],
)
def test_test_keys_are_set_by_meta_architecture(config, key):
    cfg = get_project_cfg(str(REPO_ROOT / config))
    assert set_test_score_threshold(cfg, 0.37) == key
    assert cfg.MODEL[key.split(".")[1]].SCORE_THRESH_TEST == 0.37
    assert set_detections_per_image(cfg, 7) == "TEST.DETECTIONS_PER_IMAGE"
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 7


def test_unregistered_meta_architecture_is_named():
    cfg = get_project_cfg(str(REPO_ROOT / "configs/Baselines/Base-RCNN-FPN.yaml"))
    cfg.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
    before = cfg.dump()
    with pytest.raises(KeyError, match="'SemanticSegmentor'.*registered: .*'LosNet'"):
        set_test_score_threshold(cfg, 0.5)
    assert cfg.dump() == before


def _project(name, *nodes):
    """A project whose add_config adds KEY = 1 under each dotted node in `nodes`."""

    def add_config(cfg):
        for node in nodes:
            *parents, leaf = node.split(".")
            parent = cfg
            for part in parents:
                parent = parent[part]
            parent[leaf] = CN({"KEY": 1})

    return Project(name=name, add_config=add_config)


def _leaves(node, prefix=""):
    for name, value in node.items():
        if isinstance(value, CN):
            yield from _leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def test_all_registered_projects_merge_without_collision():
    merged = dict(_leaves(add_project_configs(get_cfg())))
    expected = dict(_leaves(get_cfg()))
    for project in PROJECTS:
        if project.add_config is not None:
            alone = get_cfg()
            project.add_config(alone)
            expected.update(_leaves(alone))
    assert merged == expected


def test_two_projects_adding_the_same_node_collide():
    projects = [DETECTRON2, _project("A", "MODEL.SHARED"), _project("B", "MODEL.SHARED")]
    with pytest.raises(ConfigCollisionError, match="'A' and 'B' both add the config node MODEL"):
        add_project_configs(get_cfg(), projects)


def test_a_project_may_not_touch_detectron2s_nodes():
    def changes_default(cfg):
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3

    def extends_default(cfg):
        cfg.MODEL.ROI_HEADS.EXTRA = 3

    with pytest.raises(
        ConfigCollisionError, match=r"changes or removes .*MODEL.ROI_HEADS.NUM_CLASSES"
    ):
        add_project_configs(get_cfg(), [Project("C", changes_default)])
    with pytest.raises(
        ConfigCollisionError, match="adds MODEL.ROI_HEADS.EXTRA to Detectron2's node"
    ):
        add_project_configs(get_cfg(), [Project("D", extends_default)])
    # A project that replaces a Detectron2 node removes its keys.
    with pytest.raises(ConfigCollisionError, match="MODEL.RPN"):
        add_project_configs(get_cfg(), [_project("E", "MODEL.RPN")])


@pytest.mark.parametrize("project", PROJECTS, ids=lambda p: p.name)
def test_folded_batch_norms_give_equal_outputs(project):
    cfg = get_project_cfg(str(REPO_ROOT / project.smoke_config), project.smoke_opts)
    cfg.MODEL.DEVICE = "cpu"
    set_test_score_threshold(cfg, 0.0)
    set_detections_per_image(cfg, 20)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    generator = torch.Generator().manual_seed(0)
    inputs = [{"image": torch.rand(3, 96, 128, generator=generator) * 255}]
    calibrate_batch_norms(model, inputs)
    folded = fold_batch_norms(model)
    assert any(isinstance(m, BATCH_NORMS) for m in model.modules())
    assert not any(isinstance(m, BATCH_NORMS) for m in folded.modules())
    with torch.no_grad():
        expected, actual = model(inputs)[0]["instances"], folded(inputs)[0]["instances"]
    assert len(expected) == len(actual) == 20
    torch.testing.assert_close(actual.scores, expected.scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(
        actual.pred_boxes.tensor, expected.pred_boxes.tensor, atol=1e-2, rtol=0
    )
    assert (actual.pred_masks != expected.pred_masks).float().mean() < 1e-3
