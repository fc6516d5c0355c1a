"""Every config of the repository loads, names a registered model and registered datasets."""

import glob
import os

import pytest
from detectron2.data import DatasetCatalog

import segtools  # noqa: F401  (registers the datasets)
from segtools.config import get_project_cfg
from segtools.projects import DETECTRON2, inference_keys, registered_projects

from helpers import REPO_ROOT

CONFIGS = sorted(glob.glob(str(REPO_ROOT / "configs/**/*.yaml"), recursive=True))


def test_config_folders_are_the_registered_projects():
    folders = {os.path.relpath(p, REPO_ROOT / "configs").split(os.sep)[0] for p in CONFIGS}
    projects = {p.name for p in registered_projects() if p is not DETECTRON2}
    assert folders == projects | {"Baselines"}
    for project in registered_projects():
        assert str(REPO_ROOT / project.smoke_config) in CONFIGS


@pytest.mark.parametrize("config_file", CONFIGS, ids=lambda p: p.split("configs/")[-1])
def test_config_loads_with_a_registered_model_and_datasets(config_file):
    cfg = get_project_cfg(config_file)
    inference_keys(cfg.MODEL.META_ARCHITECTURE)  # raises for an unregistered one
    registered = set(DatasetCatalog.list())
    assert set(cfg.DATASETS.TRAIN) | set(cfg.DATASETS.TEST) <= registered
