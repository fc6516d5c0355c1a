#!/usr/bin/env python3
"""
Profile a few training iterations of any model of this repository: milliseconds per iteration
in data loading and mapping, forward (with the losses), backward and the optimizer step, the
model's labelled regions, and the operators that take the most time.

    python scripts/profile_training.py \\
        --config-file configs/LosNet/losnet_MV3S_ore_synthetic.yaml \\
        [--iterations 5] [--warmup 2] [--threads 2] [-- KEY VALUE ...]

Data is mapped in the training process (DATALOADER.NUM_WORKERS 0 unless overridden), so that
its cost shows; with workers it overlaps the model's work on machines with spare cores.
"""

import argparse
import sys

import torch
from tabulate import tabulate

from segtools.cli import bounded_int, run_tool, split_overrides
from segtools.config import get_project_cfg
from segtools.data import prepare_dataset
from segtools.profiling import STAGES, profile_training


def main(argv=None) -> int:
    own, opts = split_overrides(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--iterations", type=bounded_int(1), default=5)
    parser.add_argument("--warmup", type=bounded_int(0), default=2)
    parser.add_argument("--threads", type=bounded_int(1), default=torch.get_num_threads())
    args = parser.parse_args(own)
    torch.set_num_threads(args.threads)
    cfg = get_project_cfg(args.config_file, ["DATALOADER.NUM_WORKERS", "0", *opts])
    for name in cfg.DATASETS.TRAIN:
        prepare_dataset(name)
    result = profile_training(cfg, args.iterations, args.warmup)
    medians = result.medians()
    total = sum(medians.values())
    rows = [
        [stage, f"{medians[stage]:.0f}", f"{100 * medians[stage] / total:.0f}%"] for stage in STAGES
    ]
    print(tabulate(rows + [["total", f"{total:.0f}", ""]], ["stage", "median ms", "share"], "pipe"))
    regions = [
        [name, f"{ms:.0f}"] for name, ms in sorted(result.regions.items(), key=lambda r: -r[1])
    ]
    print(tabulate(regions, ["region (forward)", "ms / iteration"], "pipe"))
    operators = [[name, f"{ms:.0f}", f"{calls:.0f}"] for name, ms, calls in result.operators]
    print(tabulate(operators, ["operator", "self ms / iteration", "calls / iteration"], "pipe"))
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
