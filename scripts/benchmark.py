#!/usr/bin/env python3
"""
Compare models by size, compute and inference latency on one input.

    python scripts/benchmark.py \\
        --config-file configs/Baselines/mask_rcnn_R_50_FPN_1x_coco.yaml \\
                      configs/LosNet/losnet_MV3S_ore.yaml \\
        --input-size 640 800 --device cpu --runs 10 --json output/benchmark.json

Each model is built from its config with random weights and runs `--warmup` then `--runs` timed
forward passes in inference mode on the same random image. Untrained networks normalise with
made-up statistics (a random FrozenBN ResNet pushes every box off the image), so every batch norm
first takes its statistics from its input on that image, once. Random weights also make the
number of detections, and with it the time, vary; so every model is made to return the same
number of instances: its score threshold is set to 0 and its detections per image to `--top-k`
(the keys its project registered). The table gives parameters, fp32 size (MB = 10^6 bytes),
GFLOPs (fvcore's count, one multiply-add is one flop, batched matrix products of dynamic heads
included; the operators left out are listed under the table), median / min / max latency, the
latency as a ratio to the first config, and the number of instances each model returned.

`--exported DIR` adds a row for a model written by scripts/export.py (TorchScript or ONNX Runtime,
on the CPU: `--device cpu`), run on an input of the export size; its size is the file's. For equal
work, export it with a score threshold of 0 and `TEST.DETECTIONS_PER_IMAGE` equal to `--top-k`.

`--paper CSV` prints a paper's published figures beside the measured ones, matched by model name
(columns model, paper_row, paper_infer_ms, paper_size_MB; e.g. projects/LosNet/paper_table8.csv,
LosNet's Table 8, measured on an NVIDIA 2080 Ti). The paper's ratio is to the first row's paper
latency, so the two ratio columns compare like with like.

Argument values are checked when parsed (sizes of at least 32, counts in range, a device this
machine has); a mistake in the input exits with code 2 and one line on stderr.
"""

import argparse
import os
import sys

import torch
from detectron2.config import CfgNode

from segtools.atomic_io import atomic_write_json
from segtools.benchmark import BenchmarkSettings, format_table, read_paper_figures, run_benchmark
from segtools.cli import bounded_int, run_tool
from segtools.config import ConfigValueError, check_device
from segtools.export import MIN_INPUT_SIZE


def device(text: str) -> str:
    """An argparse type: cpu, cuda or cuda:N that this machine has (checked as MODEL.DEVICE is)."""
    try:
        check_device(CfgNode({"MODEL": CfgNode({"DEVICE": text})}))
    except ConfigValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    positive = bounded_int(1)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", nargs="+", required=True, help="configs, first = 1.00x")
    parser.add_argument(
        "--input-size",
        nargs=2,
        type=bounded_int(MIN_INPUT_SIZE),
        default=[800, 1216],
        metavar=("H", "W"),
    )
    parser.add_argument("--device", type=device, default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--runs", type=positive, default=10)
    parser.add_argument("--warmup", type=bounded_int(0), default=2)
    parser.add_argument("--top-k", type=positive, default=100, help="instances every model returns")
    parser.add_argument("--threads", type=positive, default=os.cpu_count(), help="CPU threads")
    parser.add_argument("--fold-bn", action="store_true", help="fold BatchNorms into convs first")
    parser.add_argument("--no-flops", action="store_true", help="skip the GFLOPs count")
    parser.add_argument("--exported", action="append", default=[], help="scripts/export.py folder")
    parser.add_argument("--paper", help="CSV of published figures to print beside the measured")
    parser.add_argument("--json", help="also write the table and the settings to this file")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for config_file in args.config_file:
        if not os.path.isfile(config_file):
            parser.error(f"--config-file {config_file}: no such file")
    settings = BenchmarkSettings(
        input_size=tuple(args.input_size),
        device=args.device,
        runs=args.runs,
        warmup=args.warmup,
        top_k=args.top_k,
        fold_bn=args.fold_bn,
        count_flops=not args.no_flops,
    )
    paper = read_paper_figures(args.paper) if args.paper else {}
    torch.set_num_threads(args.threads)
    rows, run_settings = run_benchmark(args.config_file, args.exported, settings, paper)
    print(format_table(rows, run_settings, args.paper))
    if args.json:
        atomic_write_json(args.json, {"settings": run_settings, "rows": rows}, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
