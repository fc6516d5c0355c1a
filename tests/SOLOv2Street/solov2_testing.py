"""Shared by the SOLOv2Street tests: tiny models of the project's configs, and batches."""

import torch
from detectron2.modeling import build_model

from segtools.config import get_project_cfg
from solov2_street import PROJECT

from helpers import REPO_ROOT, rectangle_instances

STREET_CONFIG = str(REPO_ROOT / PROJECT.smoke_config)
BASELINE_CONFIG = str(REPO_ROOT / "configs/SOLOv2Street/solov2_R_50_FPN_ore_synthetic.yaml")
# The smoke model's widths with Detectron2's smallest ResNet, R18, for CSPAM.
TINY_BASELINE = ("MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64") + tuple(
    item
    for key, value in zip(PROJECT.smoke_opts[::2], PROJECT.smoke_opts[1::2], strict=True)
    if not key.startswith("MODEL.CSPAM.")
    for item in (key, value)
)


def tiny_cfg(street: bool, *opts):
    """The CPU ore config of the street model or the baseline at smoke size, with `opts`."""
    config, tiny = (
        (STREET_CONFIG, PROJECT.smoke_opts) if street else (BASELINE_CONFIG, TINY_BASELINE)
    )
    cfg = get_project_cfg(config, [*tiny, *opts])
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def tiny_model(street: bool, *opts, seed=0):
    torch.manual_seed(seed)
    return build_model(tiny_cfg(street, *opts))


def hard_batch():
    """
    Two images: one with two objects whose centres share a grid cell, an object smaller than a
    cell, one a pixel wide, a large one; one without objects.
    """
    generator = torch.Generator().manual_seed(0)
    boxes = [(10, 8, 50, 40), (12, 10, 48, 41), (70, 20, 72, 22), (5, 70, 6, 90), (60, 30, 124, 94)]
    return [
        {
            "image": torch.rand(3, 96, 128, generator=generator) * 255,
            "instances": rectangle_instances(96, 128, boxes),
        },
        {
            "image": torch.rand(3, 64, 80, generator=generator) * 255,
            "instances": rectangle_instances(64, 80, []),
        },
    ]
