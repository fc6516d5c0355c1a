#!/usr/bin/env python3
"""
Accuracy against training time: evaluate every checkpoint of one or more training runs on a
dataset and plot a metric against the minutes of training each checkpoint took.

    python scripts/plot_training_curve.py \\
        --run "new schedule=output/losnet_MV3S_ore_synthetic" [--run LABEL=RUN_DIR ...] \\
        --dataset ore_synthetic_val [--metric segm/AP50] [--target 70] [--budget-minutes 8] \\
        --output curve.png

A run folder is a train_net.py OUTPUT_DIR: its config.yaml, log.txt (whose timestamps date the
iterations) and model_*.pth checkpoints (SOLVER.CHECKPOINT_PERIOD sets how many). Writes the
PNG and, beside it, a CSV of every point (run, iteration, minutes, metric); prints the table.
"""

import argparse
import os
import sys
import tempfile

from detectron2.data import DatasetCatalog
from tabulate import tabulate

from segtools.analysis.report import csv_text
from segtools.atomic_io import atomic_write_image, atomic_write_text
from segtools.cli import UsageError, run_tool
from segtools.config import get_project_cfg
from segtools.data import prepare_dataset
from segtools.training_curve import curve_rows, evaluate_checkpoints, render_curves


def _labelled_run(text: str) -> tuple[str, str]:
    label, separator, run_dir = text.partition("=")
    if not separator or not label or not run_dir:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL=RUN_DIR")
    return label, run_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=_labelled_run, action="append", required=True)
    parser.add_argument("--dataset", required=True, help="a registered dataset")
    parser.add_argument("--metric", default="segm/AP50", help="TASK/NAME of the evaluator")
    parser.add_argument("--target", type=float, help="drawn as a horizontal line")
    parser.add_argument("--budget-minutes", type=float, help="drawn as a vertical line")
    parser.add_argument("--output", required=True, help="the PNG to write")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.output.lower().endswith(".png"):
        raise UsageError(f"--output {args.output}: expected a .png file")
    if args.dataset not in DatasetCatalog:
        raise UsageError(f"--dataset {args.dataset!r} is not a registered dataset")
    for _, run_dir in args.run:
        if not os.path.isfile(os.path.join(run_dir, "config.yaml")):
            raise UsageError(f"--run {run_dir}: no config.yaml; expected a train_net.py OUTPUT_DIR")
    prepare_dataset(args.dataset)
    curves = {}
    with tempfile.TemporaryDirectory() as evaluations:
        for index, (label, run_dir) in enumerate(args.run):
            cfg = get_project_cfg(os.path.join(run_dir, "config.yaml"))
            output_dir = os.path.join(evaluations, str(index))
            curves[label] = evaluate_checkpoints(cfg, run_dir, args.dataset, output_dir)
    header, rows = curve_rows(curves, args.metric)
    atomic_write_image(
        args.output, render_curves(curves, args.metric, args.target, args.budget_minutes)
    )
    atomic_write_text(os.path.splitext(args.output)[0] + ".csv", csv_text(header, rows))
    print(tabulate(rows, headers=header, tablefmt="pipe"))
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
