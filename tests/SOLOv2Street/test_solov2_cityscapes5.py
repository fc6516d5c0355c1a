"""The Cityscapes-5 evaluation end to end: train_net's --eval-only of the street model's config."""

import math

import torch
from detectron2.modeling import build_model

from segtools import engine
from segtools.config import get_project_cfg
from solov2_street import PROJECT

from helpers import REPO_ROOT

CONFIG = str(REPO_ROOT / "configs/SOLOv2Street/solov2_street_CSPAM_50_TWFPN_cityscapes5.yaml")
# The smoke model's size, every candidate reported, the tiny 96 x 64 frames at their own size.
OPTS = [
    *PROJECT.smoke_opts,
    "MODEL.DEVICE", "cpu",
    "MODEL.SOLOV2.SCORE_THRESH_TEST", "0.0",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "96",
    "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip


def test_street_model_is_evaluated_on_the_5_cityscapes_classes(builtin_datasets_root, tmp_path):
    torch.manual_seed(0)
    model = build_model(get_project_cfg(CONFIG, OPTS))
    weights = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    args = engine.argument_parser().parse_args(
        ["--config-file", CONFIG, "--eval-only", *OPTS,
         "MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(tmp_path / "output")]
    )  # fmt: skip
    results = engine.main(args)
    assert set(results) == {"segm_cityscapes", "bbox", "segm"}
    cityscapes = results["segm_cityscapes"]
    # The generated frames hold a car, a person and a rider (and a bicycle, not one of the 5).
    for name in ("car", "person", "rider"):
        assert 0 <= cityscapes[f"AP-{name}"] <= 100, cityscapes
    assert math.isnan(cityscapes["AP-truck"]) and math.isnan(cityscapes["AP-bus"])
    assert 0 <= cityscapes["AP"] <= 100 and 0 <= results["segm"]["AP"] <= 100
