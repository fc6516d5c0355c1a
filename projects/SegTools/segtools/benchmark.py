"""
Size, compute and latency of models built from configs, and of exported models, on one input.

Every model does the same work: its score threshold is 0 and its detections per image `top_k`
(the keys come from the project registry), so each returns `top_k` instances. Random-weight
models first take their BatchNorm statistics from the benchmark image.
"""

import csv
import errno
import os
import platform
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from detectron2.modeling import build_model
from detectron2.utils.analysis import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from tabulate import tabulate

from .batch_norm import calibrate_batch_norms, fold_batch_norms
from .cli import UsageError
from .config import get_project_cfg, set_detections_per_image, set_test_score_threshold
from .export import exported_file, load_exported, read_export_metadata
from .latency import measure_latency_ms

__all__ = [
    "PAPER_COLUMNS",
    "BenchmarkSettings",
    "benchmark_config",
    "benchmark_exported",
    "count_gflops",
    "format_table",
    "read_paper_figures",
    "run_benchmark",
]

PAPER_COLUMNS = ("model", "paper_row", "paper_infer_ms", "paper_size_MB")


@dataclass(frozen=True)
class BenchmarkSettings:
    input_size: tuple  # (H, W)
    device: str = "cpu"
    runs: int = 10
    warmup: int = 2
    top_k: int = 100
    fold_bn: bool = False
    count_flops: bool = True

    def __post_init__(self):
        if min(self.input_size) < 1:
            raise ValueError(f"input size must be at least 1 x 1, got {list(self.input_size)}")
        if self.runs < 1 or self.warmup < 0 or self.top_k < 1:
            raise ValueError(
                f"runs and top-k must be >= 1 and warm-up >= 0, got runs={self.runs}, "
                f"top_k={self.top_k}, warmup={self.warmup}"
            )


def _batched_matmul_flops(inputs, outputs) -> int:
    """Multiply-adds of aten::baddbmm(input, batch1 (B, N, K), batch2 (B, K, M), ...)."""
    batch, rows, inner = get_shape(inputs[1])
    return batch * rows * inner * get_shape(inputs[2])[-1]


def count_gflops(model: torch.nn.Module, inputs) -> tuple[float, dict]:
    """
    fvcore's FLOP count (one multiply-add is one flop), with the batched matrix products of
    dynamic heads counted.

    Returns:
        (GFLOPs, {operator: number of calls} of the operators that were not counted).
    """
    with torch.no_grad():
        flops = FlopCountAnalysis(model, inputs)
        flops.set_op_handle("aten::baddbmm", _batched_matmul_flops)
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return flops.total() / 1e9, dict(flops.unsupported_ops())


def _benchmark_image(settings: BenchmarkSettings) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(3, *settings.input_size, generator=generator) * 255).to(settings.device)


def benchmark_config(config_file: str, settings: BenchmarkSettings) -> dict:
    """One table row for a model built from `config_file` with random weights."""
    cfg = get_project_cfg(config_file)
    cfg.MODEL.DEVICE = settings.device
    cfg.MODEL.WEIGHTS = ""
    set_test_score_threshold(cfg, 0.0)
    set_detections_per_image(cfg, settings.top_k)
    image = _benchmark_image(settings)
    inputs = [{"image": image, "height": image.shape[1], "width": image.shape[2]}]
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    calibrate_batch_norms(model, inputs)
    if settings.fold_bn:
        model = fold_batch_norms(model)
    gflops, uncounted = count_gflops(model, inputs) if settings.count_flops else (None, {})
    instances = []
    latencies = measure_latency_ms(
        lambda: instances.append(len(model(inputs)[0]["instances"])),
        settings.runs,
        settings.warmup,
        settings.device,
    )
    return _row(
        Path(config_file).stem,
        config_file,
        latencies,
        instances[-1],
        params_M=sum(p.numel() for p in model.parameters()) / 1e6,
        fp32_MB=sum(t.numel() * 4 for t in (*model.parameters(), *model.buffers())) / 1e6,
        GFLOPs=gflops,
        uncounted_ops=uncounted,
    )


def _export_metadata(folder: str, settings: BenchmarkSettings) -> dict:
    """
    The export.json of `folder`, checked against `settings`.

    Raises:
        UsageError: naming the folder, if it is not an export of the benchmark's input size, or
            if the benchmark's device is not the CPU (exported models run on the CPU).
        FileNotFoundError: if its model file is missing.
    """
    if settings.device != "cpu":
        raise UsageError(
            f"--exported {folder}: exported models run on the CPU; benchmark them with "
            f"--device cpu, not {settings.device}"
        )
    meta = read_export_metadata(folder)
    if list(meta["input_size"]) != list(settings.input_size):
        raise UsageError(
            f"{folder} takes {meta['input_size']} inputs: benchmark it with --input-size "
            f"{meta['input_size'][0]} {meta['input_size'][1]}"
        )
    path = exported_file(folder, meta["format"])
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, "the export's model file is missing", path)
    return meta


def benchmark_exported(folder: str, settings: BenchmarkSettings) -> dict:
    """One table row for a model written by scripts/export.py; its size is the file's."""
    meta = _export_metadata(folder, settings)
    path = exported_file(folder, meta["format"])
    run = load_exported(path)
    image = _benchmark_image(settings)
    scores = meta["outputs"].index("scores")
    instances = []
    latencies = measure_latency_ms(
        lambda: instances.append(run(image)[scores].shape[0]),
        settings.runs,
        settings.warmup,
        settings.device,
    )
    return _row(
        f"{Path(meta['config_file']).stem} ({meta['format']})",
        meta["config_file"],
        latencies,
        instances[-1],
        fp32_MB=os.path.getsize(path) / 1e6,
    )


def _row(model, config, latencies, instances, **columns) -> dict:
    row = {"model": model, "config": config, "params_M": None, "GFLOPs": None}
    row.update(columns)
    row.update(
        median_ms=statistics.median(latencies),
        min_ms=min(latencies),
        max_ms=max(latencies),
        instances=instances,
        uncounted_ops=columns.get("uncounted_ops", {}),
    )
    return row


def read_paper_figures(path: str) -> dict:
    """
    {model name: {"paper_row": str, "paper_infer_ms": float, "paper_size_MB": float}} from a
    CSV with the columns of PAPER_COLUMNS.

    Raises:
        UsageError: naming the file and the missing column or the value that is not a number.
    """
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = sorted(set(PAPER_COLUMNS) - set(reader.fieldnames or ()))
        if missing:
            raise UsageError(f"{path}: missing column(s) {missing}")
        figures = {}
        for line, row in enumerate(reader, start=2):
            try:
                figures[row["model"]] = {
                    "paper_row": row["paper_row"],
                    "paper_infer_ms": float(row["paper_infer_ms"]),
                    "paper_size_MB": float(row["paper_size_MB"]),
                }
            except (TypeError, ValueError) as e:
                raise UsageError(
                    f"{path}, line {line}: a latency or size is not a number ({e})"
                ) from None
    return figures


def _add_ratios(rows: list, paper: dict) -> None:
    """Latency ratios to the first row, measured and (where given) the paper's."""
    for row in rows:
        row["ratio"] = row["median_ms"] / rows[0]["median_ms"]
    if not paper:
        return
    first_paper_ms = paper.get(rows[0]["model"], {}).get("paper_infer_ms")
    for row in rows:
        row.update(paper.get(row["model"], dict.fromkeys(PAPER_COLUMNS[1:])))
        known = row["paper_infer_ms"] is not None and first_paper_ms
        row["paper_ratio"] = row["paper_infer_ms"] / first_paper_ms if known else None


def run_benchmark(
    config_files, exported_folders, settings: BenchmarkSettings, paper: dict | None = None
) -> tuple[list, dict]:
    """
    Benchmark each config, then each exported model folder (whose export.json is checked first,
    so that a wrong folder stops the run before the configs are measured).

    Returns:
        (rows, run settings): rows with latency ratios to the first row and, with `paper`
        (from :func:`read_paper_figures`), the paper's figures beside the measured ones.
    """
    for folder in exported_folders:
        _export_metadata(folder, settings)
    rows = [benchmark_config(config_file, settings) for config_file in config_files]
    rows += [benchmark_exported(folder, settings) for folder in exported_folders]
    _add_ratios(rows, paper or {})
    run_settings = asdict(settings) | {
        "input_size": list(settings.input_size),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    return rows, run_settings


def _or_dash(value, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def format_table(rows: list, run_settings: dict, paper_file: str | None = None) -> str:
    """The printed report: a settings line, a Markdown table, and the operators not counted."""
    height, width = run_settings["input_size"]
    title = (
        f"input {height}x{width}, {run_settings['device']}, {run_settings['threads']} threads, "
        f"{run_settings['runs']} runs after {run_settings['warmup']} warm-up, "
        f"top-k {run_settings['top_k']}"
        + (", BN folded" if run_settings["fold_bn"] else "")
        + (f"; paper figures from {paper_file}" if paper_file else "")
    )
    headers = ["model", "params (M)", "fp32 MB", "GFLOPs", "median ms", "min ms", "max ms"]
    headers += ["ratio", "instances"]
    if paper_file:
        headers += ["paper row", "paper ms", "paper ratio", "paper MB"]
    table = []
    for r in rows:
        line = [
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
        if paper_file:
            line += [
                r["paper_row"] or "-",
                _or_dash(r["paper_infer_ms"], "{:.1f}"),
                _or_dash(r["paper_ratio"], "{:.2f}x"),
                _or_dash(r["paper_size_MB"], "{:.0f}"),
            ]
        table.append(line)
    notes = [
        f"GFLOPs of {r['model']} leave out: "
        + ", ".join(f"{op} ({calls}x)" for op, calls in sorted(r["uncounted_ops"].items()))
        for r in rows
        if r["uncounted_ops"]
    ]
    return "\n".join([title, tabulate(table, headers=headers, tablefmt="pipe"), *notes])
