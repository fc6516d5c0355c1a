"""A tiny LosNet overfits four synthetic ore images (mask AP50 >= 0.9 on them) on a CPU."""

import pytest
from detectron2.engine import default_argument_parser

from segtools import engine
from segtools.calibration import calibration_path, read_calibration

from helpers import REPO_ROOT, register_four_synthetic_images

DATASET = "test_overfit_synthetic_ore"

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def test_losnet_overfits_four_synthetic_images(tmp_path):
    register_four_synthetic_images(tmp_path / "ore", DATASET)
    args = default_argument_parser().parse_args(
        [
            "--config-file", str(REPO_ROOT / "configs/LosNet/losnet_MV3S_ore_synthetic.yaml"),
            "SEED", "0",
            "DATASETS.TRAIN", f"('{DATASET}',)",
            "DATASETS.TEST", f"('{DATASET}',)",
            "SOLVER.IMS_PER_BATCH", "4",
            # SGD with step decay, as this test was sized with (the main job's AdamW at a
            # constant rate is sized for 256 images, not 4).
            "SEGTOOLS.SOLVER.OPTIMIZER", "SGD",
            "SOLVER.WEIGHT_DECAY", "0.0001",
            "SOLVER.BASE_LR", "0.01",
            "SOLVER.WARMUP_ITERS", "10",
            "SOLVER.MAX_ITER", "100",
            "SOLVER.STEPS", "(80,)",
            "SOLVER.CHECKPOINT_PERIOD", "100000",
            # Shown at twice their size: the slivers of hidden particles are then large enough
            # for a stride-2 mask.
            "INPUT.MIN_SIZE_TRAIN", "(128,)",
            "INPUT.MAX_SIZE_TRAIN", "128",
            "INPUT.MIN_SIZE_TEST", "128",
            "INPUT.MAX_SIZE_TEST", "128",
            "INPUT.RANDOM_FLIP", "none",
            "DATALOADER.NUM_WORKERS", "0",
            "OUTPUT_DIR", str(tmp_path / "output"),
            "SEGTOOLS.COUNT_CALIBRATION.DATASET", DATASET,
        ]
    )  # fmt: skip
    results = engine.main(args)
    assert results["segm"]["AP50"] >= 90.0, results
    assert results["bbox"]["AP50"] >= 90.0, results
    # Calibrated on the images it learned: it counts them right.
    weights = str(tmp_path / "output" / "model_final.pth")
    calibration = read_calibration(calibration_path(weights), weights)
    assert calibration.count_at_threshold == calibration.true_count == 30
