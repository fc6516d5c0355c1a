"""A tiny BRefine overfits four synthetic ore images on a CPU (box and mask AP50 on them)."""

import pytest
from detectron2.engine import default_argument_parser

from segtools import engine
from segtools.projects import registered_projects

from helpers import REPO_ROOT, register_four_synthetic_images

DATASET = "test_brefine_overfit_synthetic_ore"
PROJECT = next(p for p in registered_projects() if p.name == "BRefine")

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def test_brefine_overfits_four_synthetic_images(tmp_path):
    register_four_synthetic_images(tmp_path / "ore", DATASET)
    args = default_argument_parser().parse_args(
        [
            "--config-file", str(REPO_ROOT / PROJECT.smoke_config),
            *PROJECT.smoke_opts,
            "SEED", "0",
            "DATASETS.TRAIN", f"('{DATASET}',)",
            "DATASETS.TEST", f"('{DATASET}',)",
            "SOLVER.IMS_PER_BATCH", "4",
            # From scratch, this narrow model diverges at 0.01.
            "SOLVER.BASE_LR", "0.005",
            "SOLVER.WARMUP_ITERS", "10",
            "SOLVER.MAX_ITER", "70",
            "SOLVER.STEPS", "(56,)",
            "SOLVER.CHECKPOINT_PERIOD", "100000",
            "INPUT.MIN_SIZE_TRAIN", "(80,)",
            "INPUT.MAX_SIZE_TRAIN", "80",
            "INPUT.MIN_SIZE_TEST", "80",
            "INPUT.MAX_SIZE_TEST", "80",
            "INPUT.RANDOM_FLIP", "none",
            # As many proposals at test time as in training.
            "MODEL.RPN.POST_NMS_TOPK_TEST", "64",
            "TEST.DETECTIONS_PER_IMAGE", "100",
            "DATALOADER.NUM_WORKERS", "0",
            "OUTPUT_DIR", str(tmp_path / "output"),
        ]
    )  # fmt: skip
    results = engine.main(args)
    assert results["bbox"]["AP50"] >= 60.0, results
    assert results["segm"]["AP50"] >= 45.0, results
    assert results["boundary"]["AP50"] > 0, results  # the smoke config turns Boundary AP on
