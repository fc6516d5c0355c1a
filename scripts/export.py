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
both is measured. The exit code is 1 when an output is outside the tolerances printed with it.
"""

import argparse
import os
import statistics
import sys
import time

import cv2
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from segtools.atomic_io import atomic_write_json
from segtools.batch_norm import fold_batch_norms
from segtools.config import get_project_cfg
from segtools.data.synthetic_ore import render_synthetic_ore_image
from segtools.export import (
    EXPORT_FORMATS,
    compare_outputs,
    export_model,
    exported_file,
    load_exported,
    output_names,
    reference_outputs,
)

# Exported outputs must equal PyTorch's within these: box corners (pixels) and scores by the
# largest absolute difference, classes and mask pixels by the fraction of differing elements.
# Folding the BatchNorms and the runtime's kernels reorder float sums: boxes move by thousandths
# of a pixel and a few mask pixels whose probability is 0.5 may flip.
TOLERANCES = {
    "pred_boxes": 0.05,
    "scores": 1e-3,
    "pred_classes": 0.0,
    "pred_masks": 1e-3,
    "image_size": 0.0,
}
LATENCY_RUNS = 5


def sample_inputs(paths, size, input_format) -> list:
    """(3, H, W) float32 tensors resized to `size` = (H, W), in the model's channel order."""
    if paths:
        images = []
        for path in paths:
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is None:
                raise OSError(f"cannot read sample image {path}")
            images.append(image)
    else:
        images = [render_synthetic_ore_image(seed=7, index=k).image for k in range(3)]
    tensors = []
    for image in images:
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        if input_format == "RGB":
            image = image[:, :, ::-1]
        tensors.append(torch.as_tensor(image.transpose(2, 0, 1).astype("float32")))
    return tensors


def median_latency_ms(run, image) -> float:
    run(image)  # warm-up
    times = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        run(image)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def within_tolerance(report: dict) -> bool:
    return all(
        entry["shape_equal"]
        and entry.get("max_abs_diff", entry.get("mismatch_fraction", 0.0)) <= TOLERANCES[name]
        for name, entry in report.items()
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--format", choices=sorted(EXPORT_FORMATS), required=True)
    parser.add_argument("--output", required=True, help="output folder (new or empty)")
    parser.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"))
    parser.add_argument(
        "--sample-image", action="append", help="an image for the parity check (repeatable)"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    args = parser.parse_args(argv)
    for path in (args.config_file, args.weights, *(args.sample_image or [])):
        if not os.path.isfile(path):
            parser.error(f"no such file: {path}")
    if os.path.exists(args.output) and (not os.path.isdir(args.output) or os.listdir(args.output)):
        parser.error(f"--output: {args.output} exists and is not an empty folder")

    cfg = get_project_cfg(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"
    size = args.input_size or [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST]
    if min(size) < 32:
        parser.error(f"--input-size must be at least 32 x 32, got {size}")
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(args.weights)
    folded = fold_batch_norms(model)
    images = sample_inputs(args.sample_image, size, cfg.INPUT.FORMAT)

    os.makedirs(args.output, exist_ok=True)
    path = exported_file(args.output, args.format)
    export_model(folded, images[0], args.format, path)
    exported = load_exported(path)
    names = output_names(model, images[0])

    reports = [
        compare_outputs(names, reference_outputs(model, image), exported(image)) for image in images
    ]
    latency = {
        "pytorch_ms": median_latency_ms(lambda image: reference_outputs(model, image), images[0]),
        "pytorch_folded_ms": median_latency_ms(
            lambda image: reference_outputs(folded, image), images[0]
        ),
        f"{args.format}_ms": median_latency_ms(exported, images[0]),
        "threads": torch.get_num_threads(),
    }
    passed = all(within_tolerance(report) for report in reports)
    atomic_write_json(
        os.path.join(args.output, "export.json"),
        {
            "format": args.format,
            "config_file": args.config_file,
            "weights": args.weights,
            "input_size": size,
            "input_format": cfg.INPUT.FORMAT,
            "outputs": names,
        },
        indent=2,
    )
    atomic_write_json(
        os.path.join(args.output, "parity.json"),
        {"tolerances": TOLERANCES, "passed": passed, "images": reports, "latency": latency},
        indent=2,
    )
    for index, report in enumerate(reports):
        print(f"sample {index}: " + ", ".join(f"{n} {v}" for n, v in report.items()))
    print(
        f"parity {'PASSED' if passed else 'FAILED'} (tolerances {TOLERANCES}); median latency: "
        + ", ".join(f"{k} {v:.1f}" for k, v in latency.items() if k.endswith("_ms"))
        + f" ({latency['threads']} threads); wrote {path}"
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
