"""
Distributed training runs for the tests: `train_net.py` under Detectron2's launcher on CPUs
(gloo), on a project's smoke config made small; for the shared DDP tests and each paper's
variants.
"""

import json
import math
import os
import socket
import subprocess
import sys

import torch
from detectron2.modeling import build_model

from segtools.config import get_project_cfg

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(project, datasets_root, output_dir, *flags, opts=("DATASETS.TEST", "()")):
    """
    Start `train_net.py` on `project`'s smoke config made SMALL, with launcher `flags` (e.g.
    --num-gpus 2) and config `opts`, reading datasets from `datasets_root`.
    """
    command = [
        sys.executable, str(REPO_ROOT / "train_net.py"),
        "--config-file", str(REPO_ROOT / project.smoke_config), *flags,
        *project.smoke_opts, *SMALL, *opts, "OUTPUT_DIR", str(output_dir),
    ]  # fmt: skip
    # One torch thread per process: the runs' processes share the machine's cores, and with
    # more threads than cores small convolutions wait on each other.
    env = {**os.environ, "DETECTRON2_DATASETS": str(datasets_root), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(process) -> str:
    """Wait for a started run; its output, after checking that it succeeded."""
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-4000:]
    return output


def check_training(project, output_dir, opts=()):
    """
    Finite losses were logged, and model_final.pth loads strictly into a single process (a model
    built from the smoke config with `opts`).
    """
    with open(output_dir / "metrics.json") as f:
        records = [r for r in map(json.loads, f) if "total_loss" in r]
    assert [r["iteration"] for r in records] == [2]
    losses = {k: v for k, v in records[0].items() if k.startswith("loss") or k == "total_loss"}
    assert len(losses) >= 2 and all(math.isfinite(v) for v in losses.values()), losses

    config = str(REPO_ROOT / project.smoke_config)
    cfg = get_project_cfg(config, [*project.smoke_opts, *SMALL, *opts])
    model = build_model(cfg)
    state = torch.load(output_dir / "model_final.pth", map_location="cpu")["model"]
    model.load_state_dict(state, strict=True)  # no "module." prefixes, nothing missing
    assert state.keys() == model.state_dict().keys()
