#!/usr/bin/env python3
"""
Train and evaluate every model of this repository with Detectron2's training loop.

    python train_net.py --config-file configs/LosNet/losnet_MV3S_ore_synthetic.yaml
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file CONFIG --num-gpus 8 [--resume] [KEY VALUE ...]
    python train_net.py --config-file CONFIG --num-machines 2 --machine-rank 0 \\
        --dist-url tcp://HOST0:PORT   # and --machine-rank 1 on the second machine

The evaluator follows the test dataset's metadata (COCO, LVIS or Cityscapes); every evaluation
also writes its results to OUTPUT_DIR/evaluation_results.json. `--eval-only` refuses weights that
are not a checkpoint of the config's model unless `--allow-partial-weights`; training starts from
the weights of MODEL.WEIGHTS that match (see segtools.engine). The work is done by
segtools.engine; every registered project's config keys are known. A mistake in the input exits
with code 2 and one line on stderr.
"""

import sys

from segtools.engine import launch_from_command_line

if __name__ == "__main__":
    sys.exit(launch_from_command_line())
