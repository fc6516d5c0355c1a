"""
SBR-CNN with two head pairs trains under 2-process DDP (Detectron2's, without
find_unused_parameters): every pair's parameters take part in every iteration. The smoke model,
SBR-CNN with one pair ("a"), is trained so by tests/SegTools/test_distributed.py; the other
variants' gradients reach every parameter in test_sbrcnn_model.py.
"""

import os

from segtools.projects import registered_projects

from distributed_training import check_training, finish, free_port, start

SBRCNN = next(p for p in registered_projects() if p.name == "SBRCNN")

# Two head pairs, the second in the last loop only, each loop's internal mask loop reading the
# mask heads of the loops before it; FCC, Mask IoU and GRoIE as in the smoke model.
VARIANT = ["MODEL.SBRCNN.ALTERNATION", "aab", "DATASETS.TEST", "()"]


def test_two_processes_train_two_head_pairs(tmp_path):
    # The session's datasets root: the synthetic ore set is generated once for the session.
    port = free_port()
    finish(
        start(SBRCNN, os.environ["DETECTRON2_DATASETS"], tmp_path, "--num-gpus", "2",
              "--dist-url", f"tcp://127.0.0.1:{port}", opts=VARIANT)
    )  # fmt: skip
    check_training(SBRCNN, tmp_path, VARIANT)
