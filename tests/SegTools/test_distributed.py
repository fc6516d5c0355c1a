"""
train_net.py under Detectron2's launcher on CPUs (gloo): two processes, and two "machines" on
this host, for every registered project; the checkpoints load into a single process.
"""

import json
import os

import pytest
import torch

from segtools.calibration import calibration_path, read_calibration
from segtools.projects import registered_projects

from distributed_training import check_training, finish, free_port, start

LOSNET = next(p for p in registered_projects() if p.name == "LosNet")

# Config options a project's two-process run adds to its smoke config, for a variant whose
# parameters could go unused under DDP (Detectron2's, without find_unused_parameters).
VARIANTS = {
    # SBR-CNN with two head pairs, the second in the last loop only, each loop's internal mask
    # loop reading the mask heads of the loops before it; FCC, Mask IoU and GRoIE as in the smoke
    # model, whose one pair ("a") is the first of these. Every pair's parameters take part in
    # every iteration; the other variants' gradients reach every parameter in
    # tests/SBRCNN/test_sbrcnn_model.py.
    "SBRCNN": ("MODEL.SBRCNN.ALTERNATION", "aab"),
}


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    """An empty datasets root: the first run generates the synthetic ore set there."""
    return tmp_path_factory.mktemp("distributed_datasets")


def test_two_processes_train_and_evaluate_losnet(datasets_root, tmp_path):
    # The synthetic sets are generated here, by the first process only, while the other waits.
    # An untrained model scores below the default threshold: report every detection. With the
    # weights averaged, which the evaluation and the calibration must both see.
    keys = LOSNET.inference_keys["LosNet"]
    evaluate = ["DATASETS.TEST", "('ore_synthetic_val',)", keys.score_thresh, "0.0",
                keys.detections_per_image, "20",
                "SEGTOOLS.COUNT_CALIBRATION.DATASET", "ore_synthetic_val",
                "SEGTOOLS.SOLVER.EMA_DECAY", "0.9"]  # fmt: skip
    port = free_port()
    output = finish(
        start(
            LOSNET, datasets_root, tmp_path, "--num-gpus", "2",
            "--dist-url", f"tcp://127.0.0.1:{port}", opts=evaluate,
        )
    )  # fmt: skip
    for num_images in (256, 64):
        assert output.count(f"synthetic ore:   0%|          | 0/{num_images}") == 1, output
    assert sorted(os.listdir(datasets_root / "ore_synthetic")) == ["train", "val"]
    check_training(LOSNET, tmp_path)
    final = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["weight_average"]["updates"] == 3
    with open(tmp_path / "evaluation_results.json") as f:
        assert set(json.load(f)) == {"bbox", "segm"}  # evaluated on both processes
    # Calibrated on both processes: the scores of every image, each once, as the evaluation's.
    weights = str(tmp_path / "model_final.pth")
    calibration = read_calibration(calibration_path(weights), weights)
    with open(tmp_path / "inference/ore_synthetic_val/coco_instances_results.json") as f:
        scores = [r["score"] for r in json.load(f)]
    assert calibration.images == 64
    assert calibration.count_at_threshold == sum(s >= calibration.score_threshold for s in scores)


@pytest.mark.parametrize(
    "project", [p for p in registered_projects() if p is not LOSNET], ids=lambda p: p.name
)
def test_two_processes_train_every_other_project(project, datasets_root, tmp_path):
    variant = VARIANTS.get(project.name, ())
    port = free_port()
    finish(
        start(project, datasets_root, tmp_path, "--num-gpus", "2",
              "--dist-url", f"tcp://127.0.0.1:{port}", opts=(*variant, "DATASETS.TEST", "()"))
    )  # fmt: skip
    check_training(project, tmp_path, variant)


def test_two_machines_on_this_host_train_losnet(datasets_root, tmp_path):
    port = free_port()
    machines = [
        start(
            LOSNET, datasets_root, tmp_path, "--num-gpus", "1", "--num-machines", "2",
            "--machine-rank", str(rank), "--dist-url", f"tcp://127.0.0.1:{port}",
        )
        for rank in (0, 1)
    ]  # fmt: skip
    for machine in machines:
        finish(machine)
    check_training(LOSNET, tmp_path)
    assert os.path.isfile(tmp_path / "log.txt.rank1")  # the second machine's process trained
