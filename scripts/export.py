#!/usr/bin/env python3
"""
Export a trained model to TorchScript or ONNX for edge devices, BatchNorms folded, and check it.

    python scripts/export.py --config-file configs/LosNet/losnet_MV3S_ore_synthetic.yaml \\
        --weights output/losnet_MV3S_ore_synthetic/model_final.pth \\
        --format torchscript --output exported/ [--input-size 448 448] \\
        [--sample-image a.png --sample-image b.png] [KEY VALUE ...]

The model is traced through Detectron2's TracingAdapter at a fixed input size (default: the
config's MIN_SIZE_TEST x MAX_SIZE_TEST); the exported graph takes one (3, H, W) float32 image in
the config's channel order (INPUT.FORMAT, 0-255) and returns the detections' fields. The output
folder (new or empty) receives model.ts or model.onnx, export.json (input size, channel order,
output names) and parity.json: on the sample images (three synthetic ore images by default) the
exported model's outputs are compared with the unfolded PyTorch model's, and the median latency of
both is measured. The exit code is 1 when an output is outside the tolerances printed with it, 2
after a mistake in the input (one line on stderr; nothing is left in the output folder).
`--allow-partial-weights` exports a checkpoint whose parameters do not all match the model's.
"""

import argparse
import os
import sys

from segtools.cli import bounded_int, run_tool
from segtools.export import (
    EXPORT_FORMATS,
    MIN_INPUT_SIZE,
    TOLERANCES,
    export_from_config,
    exported_file,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--format", choices=sorted(EXPORT_FORMATS), required=True)
    parser.add_argument("--output", required=True, help="output folder (new or empty)")
    parser.add_argument(
        "--input-size", nargs=2, type=bounded_int(MIN_INPUT_SIZE), metavar=("H", "W")
    )
    parser.add_argument(
        "--sample-image", action="append", help="an image for the parity check (repeatable)"
    )
    parser.add_argument(
        "--allow-partial-weights",
        action="store_true",
        help="load the weights that match the model instead of refusing a checkpoint of "
        "another model",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not os.path.isfile(args.config_file):
        parser.error(f"--config-file {args.config_file}: no such file")
    parity = export_from_config(
        args.config_file,
        args.weights,
        args.format,
        args.output,
        args.input_size,
        args.sample_image or (),
        args.opts,
        args.allow_partial_weights,
    )
    for index, report in enumerate(parity["images"]):
        print(f"sample {index}: " + ", ".join(f"{n} {v}" for n, v in report.items()))
    latency = parity["latency"]
    print(
        f"parity {'PASSED' if parity['passed'] else 'FAILED'} (tolerances {TOLERANCES}); median "
        "latency: "
        + ", ".join(f"{k} {v:.1f}" for k, v in latency.items() if k.endswith("_ms"))
        + f" ({latency['threads']} threads); wrote {exported_file(args.output, args.format)}"
    )
    return 0 if parity["passed"] else 1


if __name__ == "__main__":
    sys.exit(run_tool(main))
