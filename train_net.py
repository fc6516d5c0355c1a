#!/usr/bin/env python3
"""
Train and evaluate every model of this repository with Detectron2's training loop.

    python train_net.py --config-file configs/LosNet/losnet_MV3S_ore_synthetic.yaml
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file CONFIG --num-gpus 8 [--resume] [KEY VALUE ...]
    python train_net.py --config-file CONFIG --num-machines 2 --machine-rank 0 \\
        --dist-url tcp://HOST0:PORT   # and --machine-rank 1 on the second machine

The evaluator follows the test dataset's metadata (COCO, LVIS or Cityscapes); every evaluation
also writes its results to OUTPUT_DIR/evaluation_results.json. The work is done by
segtools.engine; every registered project's config keys are known.
"""

from segtools.engine import launch_from_command_line

if __name__ == "__main__":
    launch_from_command_line()
