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
first takes its statistics from its input on that image, once (segtools.calibrate_batch_norms).
Random weights also make the number of detections, and with it the time, vary; so every model
is made to return the same number of instances: score thresholds are set to 0 and
TEST.DETECTIONS_PER_IMAGE to `--top-k`. The table
gives parameters, fp32 size (MB = 10^6 bytes), GFLOPs (fvcore's count: one multiply-add is one
flop), median / min / max latency, the latency as a ratio to the first config, and the number of
instances each model returned.

`--exported DIR` adds a row for a model written by scripts/export.py (TorchScript or ONNX Runtime),
run on an input of the export size; its size is the file's. For equal work, export it with
`MODEL.LOSNET.SCORE_THRESH_TEST 0.0 TEST.DETECTIONS_PER_IMAGE 100`.

`--paper CSV` prints a paper's published figures beside the measured ones, matched by model name
(columns model, paper_row, paper_infer_ms, paper_size_MB; e.g. projects/LosNet/paper_table8.csv,
LosNet's Table 8, measured on an NVIDIA 2080 Ti). The paper's ratio is to the first row's paper
latency, so the two ratio columns compare like with like.
"""

import argparse
import csv
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from detectron2.modeling import build_model
from detectron2.utils.analysis import FlopCountAnalysis
from tabulate import tabulate

from segtools.atomic_io import atomic_write_json
from segtools.batch_norm import calibrate_batch_norms, fold_batch_norms
from segtools.config import get_project_cfg, set_test_score_threshold
from segtools.export import exported_file, load_exported


def equal_work_cfg(config_file: str, device: str, top_k: int):
    cfg = get_project_cfg(config_file)
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = ""
    cfg.TEST.DETECTIONS_PER_IMAGE = top_k
    set_test_score_threshold(cfg, 0.0)
    return cfg


def benchmark(predict, runs: int, warmup: int, device: str):
    """
    Args:
        predict: runs the model once on the benchmark input; returns its number of instances.

    Returns:
        (latencies in ms of the timed runs, number of instances of the last run).
    """

    def synchronize():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    latencies = []
    with torch.inference_mode():
        for index in range(warmup + runs):
            synchronize()
            start = time.perf_counter()
            instances = predict()
            synchronize()
            if index >= warmup:
                latencies.append((time.perf_counter() - start) * 1000)
    return latencies, instances


def read_export(folder: str, parser) -> dict:
    """The export.json of a scripts/export.py output folder."""
    try:
        with open(os.path.join(folder, "export.json")) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        parser.error(f"--exported {folder}: no readable export.json ({e})")


PAPER_COLUMNS = ("model", "paper_row", "paper_infer_ms", "paper_size_MB")


def read_paper_figures(path: str, parser) -> dict:
    """{model name: {"paper_row": str, "paper_infer_ms": float, "paper_size_MB": float}}."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = set(PAPER_COLUMNS) - set(reader.fieldnames or ())
            if missing:
                parser.error(f"--paper {path}: missing column(s) {sorted(missing)}")
            return {
                row["model"]: {
                    "paper_row": row["paper_row"],
                    "paper_infer_ms": float(row["paper_infer_ms"]),
                    "paper_size_MB": float(row["paper_size_MB"]),
                }
                for row in reader
            }
    except OSError as e:
        parser.error(f"--paper {path}: {e}")
    except ValueError as e:
        parser.error(f"--paper {path}: a latency or size is not a number ({e})")


def count_gflops(model, inputs) -> float:
    with torch.no_grad():
        flops = FlopCountAnalysis(model, inputs)
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return flops.total() / 1e9


def _or_dash(value, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", nargs="+", required=True, help="configs, first = 1.00x")
    parser.add_argument("--input-size", nargs=2, type=int, default=[800, 1216], metavar=("H", "W"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--top-k", type=int, default=100, help="instances every model returns")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--fold-bn", action="store_true", help="fold BatchNorms into convs first")
    parser.add_argument("--no-flops", action="store_true", help="skip the GFLOPs count")
    parser.add_argument("--exported", action="append", default=[], help="scripts/export.py folder")
    parser.add_argument("--paper", help="CSV of published figures to print beside the measured")
    parser.add_argument("--json", help="also write the table and the settings to this file")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.top_k < 1 or args.threads < 1:
        parser.error("--runs, --top-k and --threads must be >= 1 and --warmup >= 0")
    for config_file in args.config_file:
        if not os.path.isfile(config_file):
            parser.error(f"config file not found: {config_file}")
    exported = [read_export(folder, parser) for folder in args.exported]
    paper = read_paper_figures(args.paper, parser) if args.paper else {}

    torch.set_num_threads(args.threads)
    height, width = args.input_size
    generator = torch.Generator().manual_seed(0)
    image = (torch.rand(3, height, width, generator=generator) * 255).to(args.device)
    inputs = [{"image": image, "height": height, "width": width}]

    rows = []
    for config_file in args.config_file:
        torch.manual_seed(0)
        model = build_model(equal_work_cfg(config_file, args.device, args.top_k)).eval()
        calibrate_batch_norms(model, inputs)
        if args.fold_bn:
            model = fold_batch_norms(model)
        params = sum(p.numel() for p in model.parameters())
        size_bytes = sum(t.numel() * 4 for t in (*model.parameters(), *model.buffers()))
        gflops = None if args.no_flops else count_gflops(model, inputs)
        latencies, instances = benchmark(
            lambda model=model: len(model(inputs)[0]["instances"]),
            args.runs,
            args.warmup,
            args.device,
        )
        rows.append(
            {
                "model": Path(config_file).stem,
                "config": config_file,
                "params_M": params / 1e6,
                "fp32_MB": size_bytes / 1e6,
                "GFLOPs": gflops,
                "median_ms": statistics.median(latencies),
                "min_ms": min(latencies),
                "max_ms": max(latencies),
                "instances": instances,
            }
        )
    for folder, meta in zip(args.exported, exported, strict=True):
        if meta["input_size"] != [height, width]:
            parser.error(f"{folder} takes {meta['input_size']} inputs; pass --input-size to match")
        path = exported_file(folder, meta["format"])
        run = load_exported(path)
        scores = meta["outputs"].index("scores")
        latencies, instances = benchmark(
            lambda run=run, scores=scores: run(image)[scores].shape[0],
            args.runs,
            args.warmup,
            args.device,
        )
        rows.append(
            {
                "model": f"{Path(meta['config_file']).stem} ({meta['format']})",
                "config": meta["config_file"],
                "params_M": None,
                "fp32_MB": os.path.getsize(path) / 1e6,
                "GFLOPs": None,
                "median_ms": statistics.median(latencies),
                "min_ms": min(latencies),
                "max_ms": max(latencies),
                "instances": instances,
            }
        )
    for row in rows:
        row["ratio"] = row["median_ms"] / rows[0]["median_ms"]
    if paper:
        first_paper_ms = paper.get(rows[0]["model"], {}).get("paper_infer_ms")
        for row in rows:
            figures = paper.get(row["model"], dict.fromkeys(PAPER_COLUMNS[1:]))
            row.update(figures)
            row["paper_ratio"] = (
                figures["paper_infer_ms"] / first_paper_ms
                if figures["paper_infer_ms"] is not None and first_paper_ms
                else None
            )

    settings = {
        "input_size": [height, width],
        "device": args.device,
        "threads": torch.get_num_threads(),
        "runs": args.runs,
        "warmup": args.warmup,
        "top_k": args.top_k,
        "fold_bn": args.fold_bn,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    headers = ["model", "params (M)", "fp32 MB", "GFLOPs", "median ms", "min ms", "max ms"]
    headers += ["ratio", "instances"]
    table = [
        [
            r["model"],
            _or_dash(r["params_M"], "{:.2f}"),
            f"{r['fp32_MB']:.1f}",
            _or_dash(r["GFLOPs"], "{:.1f}"),
            f"{r['median_ms']:.1f}",
            f"{r['min_ms']:.1f}",
            f"{r['max_ms']:.1f}",
            f"{r['ratio']:.2f}x",
            r["instances"],
        ]
        for r in rows
    ]
    if paper:
        headers += ["paper row", "paper ms", "paper ratio", "paper MB"]
        for line, r in zip(table, rows, strict=True):
            line += [
                r["paper_row"] or "-",
                _or_dash(r["paper_infer_ms"], "{:.1f}"),
                _or_dash(r["paper_ratio"], "{:.2f}x"),
                _or_dash(r["paper_size_MB"], "{:.0f}"),
            ]
    print(
        f"input {height}x{width}, {args.device}, {settings['threads']} threads, "
        f"{args.runs} runs after {args.warmup} warm-up, top-k {args.top_k}"
        + (", BN folded" if args.fold_bn else "")
        + (f"; paper figures from {args.paper}" if args.paper else "")
    )
    print(tabulate(table, headers=headers, tablefmt="pipe"))
    if args.json:
        atomic_write_json(args.json, {"settings": settings, "rows": rows}, indent=2)
    return rows


if __name__ == "__main__":
    main()
