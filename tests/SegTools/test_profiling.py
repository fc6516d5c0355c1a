"""segtools.profiling and scripts/profile_training.py on a tiny LosNet."""

import pytest

from segtools.cli import run_tool
from segtools.config import get_project_cfg
from segtools.profiling import STAGES, profile_training

from helpers import REPO_ROOT, load_script, register_four_synthetic_images

CONFIG = str(REPO_ROOT / "configs/LosNet/losnet_MV3S_ore_synthetic.yaml")
TINY = "test_profiling_synthetic_ore"
SMALL = [
    "DATASETS.TRAIN", f"('{TINY}',)",
    "SOLVER.IMS_PER_BATCH", "2",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "64",
    "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module", autouse=True)
def tiny_set(tmp_path_factory):
    register_four_synthetic_images(tmp_path_factory.mktemp("profiling"), TINY)


def test_profile_times_every_stage_region_and_operator():
    result = profile_training(get_project_cfg(CONFIG, SMALL), iterations=2, warmup=1, top=5)
    assert set(result.stage_ms) == set(STAGES)
    assert all(len(times) == 2 and min(times) > 0 for times in result.stage_ms.values())
    # LosNet's labelled regions, each inside the forward pass.
    regions = {"backbone", "head", "mask_branch", "label_anchors", "detection_losses",
               "mask_losses"}  # fmt: skip
    assert set(result.regions) == regions
    assert sum(result.regions.values()) <= sum(result.stage_ms["forward"]) / 2 * 1.05
    assert len(result.operators) == 5
    assert [row[1] for row in result.operators] == sorted((row[1] for row in result.operators),
                                                          reverse=True)  # fmt: skip


def test_script_prints_the_three_tables(capsys):
    script = load_script("profile_training")
    argv = ["--config-file", CONFIG, "--iterations", "1", "--warmup", "0", "--threads", "1",
            "--", *SMALL]  # fmt: skip
    assert run_tool(script.main, argv) == 0
    out = capsys.readouterr().out
    for header in ("| stage", "| region (forward)", "| operator"):
        assert header in out
    assert "| mask_losses" in out and "| total" in out
