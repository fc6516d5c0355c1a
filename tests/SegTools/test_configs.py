"""Every config of the repository loads."""

import glob

import pytest

from segtools.config import get_project_cfg

from helpers import REPO_ROOT

CONFIGS = sorted(glob.glob(str(REPO_ROOT / "configs/**/*.yaml"), recursive=True))


def test_there_are_configs():
    assert len(CONFIGS) >= 30


@pytest.mark.parametrize("config_file", CONFIGS, ids=lambda p: p.split("configs/")[-1])
def test_config_loads(config_file):
    cfg = get_project_cfg(config_file)
    assert cfg.MODEL.META_ARCHITECTURE in ("GeneralizedRCNN", "LosNet")
