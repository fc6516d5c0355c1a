"""
train_net.py under Detectron2's launcher on CPUs (gloo): two processes, and two "machines" on
this host, for every registered project; the checkpoints load into a single process.
"""

import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch
from detectron2.modeling import build_model

from segtools.config import get_project_cfg
from segtools.projects import registered_projects

from helpers import REPO_ROOT

# A few small iterations; two images per process.
SMALL = [
    "MODEL.DEVICE", "cpu",
    "SOLVER.IMS_PER_BATCH", "4",
    "SOLVER.MAX_ITER", "3",
    "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.CHECKPOINT_PERIOD", "100",
    "INPUT.MIN_SIZE_TRAIN", "(128,)",
    "INPUT.MAX_SIZE_TRAIN", "160",
    "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "160",
    "DATALOADER.NUM_WORKERS", "0",
    "DATASETS.TRAIN", "('ore_synthetic_train',)",
]  # fmt: skip
LOSNET = next(p for p in registered_projects() if p.name == "LosNet")


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    """An empty datasets root: the first run generates the synthetic ore set there."""
    return tmp_path_factory.mktemp("distributed_datasets")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(project, datasets_root, output_dir, *flags, opts=("DATASETS.TEST", "()")):
    command = [
        sys.executable, str(REPO_ROOT / "train_net.py"),
        "--config-file", str(REPO_ROOT / project.smoke_config), *flags,
        *project.smoke_opts, *SMALL, *opts, "OUTPUT_DIR", str(output_dir),
    ]  # fmt: skip
    env = {**os.environ, "DETECTRON2_DATASETS": str(datasets_root)}
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(process) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-4000:]
    return output


def check_training(project, output_dir):
    """Finite losses were logged, and model_final.pth loads strictly into a single process."""
    with open(output_dir / "metrics.json") as f:
        records = [r for r in map(json.loads, f) if "total_loss" in r]
    assert [r["iteration"] for r in records] == [2]
    losses = {k: v for k, v in records[0].items() if k.startswith("loss") or k == "total_loss"}
    assert len(losses) >= 2 and all(math.isfinite(v) for v in losses.values()), losses

    cfg = get_project_cfg(str(REPO_ROOT / project.smoke_config), [*project.smoke_opts, *SMALL])
    model = build_model(cfg)
    state = torch.load(output_dir / "model_final.pth", map_location="cpu")["model"]
    model.load_state_dict(state, strict=True)  # no "module." prefixes, nothing missing
    assert state.keys() == model.state_dict().keys()


def test_two_processes_train_and_evaluate_losnet(datasets_root, tmp_path):
    # The synthetic sets are generated here, by the first process only, while the other waits.
    # An untrained model scores below the default threshold: report every detection.
    keys = LOSNET.inference_keys["LosNet"]
    evaluate = ["DATASETS.TEST", "('ore_synthetic_val',)", keys.score_thresh, "0.0",
                keys.detections_per_image, "20"]  # fmt: skip
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
    with open(tmp_path / "evaluation_results.json") as f:
        assert set(json.load(f)) == {"bbox", "segm"}  # evaluated on both processes


@pytest.mark.parametrize(
    "project", [p for p in registered_projects() if p is not LOSNET], ids=lambda p: p.name
)
def test_two_processes_train_every_other_project(project, datasets_root, tmp_path):
    port = free_port()
    finish(
        start(project, datasets_root, tmp_path, "--num-gpus", "2",
              "--dist-url", f"tcp://127.0.0.1:{port}")
    )  # fmt: skip
    check_training(project, tmp_path)


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
