"""
Accuracy against training time: every checkpoint of a training run evaluated on a dataset, at the
wall time its iteration was reached.

The time of an iteration comes from the run's log.txt: Detectron2 logs "Starting training from
iteration N" and then, every 20 iterations, a line with the iteration number; both carry the
wall-clock time. A checkpoint's time is interpolated between the logged iterations around it.
"""

import datetime
import glob
import os
import re
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .checkpoint import load_weights
from .data import CheckedDatasetMapper
from .evaluation import build_evaluator

__all__ = [
    "CurvePoint",
    "TrainingCurveError",
    "curve_rows",
    "evaluate_checkpoints",
    "iteration_times",
    "metric_value",
    "render_curves",
    "run_checkpoints",
]

# "[12/03 02:42:07 d2.utils.events]:" (stdout) or "[12/03 02:42:07] d2.utils.events INFO:" (file).
_STAMP = r"\[(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d)\]?"
_START = re.compile(_STAMP + r".*Starting training from iteration (\d+)")
_EVENTS = re.compile(_STAMP + r".*\biter: (\d+)\b")


class TrainingCurveError(ValueError):
    """A run folder without the log or checkpoints a training curve needs, or an unknown metric."""


@dataclass(frozen=True)
class CurvePoint:
    """A checkpoint: its iteration (0-based, as in its file name), training minutes, metrics."""

    iteration: int
    minutes: float
    metrics: dict


def _stamp(match: re.Match) -> datetime.datetime:
    month, day, hour, minute, second = (int(x) for x in match.groups()[:5])
    # The log has no year; 2000 is a leap year, so 02/29 parses.
    return datetime.datetime(2000, month, day, hour, minute, second)


def iteration_times(log_path: str) -> tuple[np.ndarray, np.ndarray]:
    """
    (iterations, seconds since training started) of a Detectron2 log, from its last "Starting
    training" on (a resumed run's log holds several; the curve is that of the last one), with
    the start itself as the point (start iteration - 1, 0).
    """
    try:
        with open(log_path, encoding="utf-8", errors="replace") as file:
            lines = file.read().splitlines()
    except FileNotFoundError:
        raise TrainingCurveError(
            f"{log_path}: no such file; is it a training run's folder?"
        ) from None
    starts = [i for i, line in enumerate(lines) if _START.search(line)]
    if not starts:
        raise TrainingCurveError(f"{log_path}: no 'Starting training from iteration' line")
    start = _START.search(lines[starts[-1]])
    origin = _stamp(start)
    iterations, seconds = [int(start.group(6)) - 1], [0.0]
    for line in lines[starts[-1] + 1 :]:
        match = _EVENTS.search(line)
        if match and int(match.group(6)) > iterations[-1]:
            stamp = _stamp(match)
            if stamp < origin:  # a run that crossed New Year's Eve
                stamp = stamp.replace(year=2001)
            iterations.append(int(match.group(6)))
            seconds.append((stamp - origin).total_seconds())
    return np.array(iterations), np.array(seconds)


def run_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """(iteration, path) of the run's model_NNNNNNN.pth and model_final.pth, by iteration."""
    checkpoints = {}
    # Sorted: of a periodic checkpoint and model_final of the same iteration, the first is kept.
    for path in sorted(glob.glob(os.path.join(run_dir, "model_*.pth"))):
        name = os.path.basename(path)
        if name == "model_final.pth":
            iteration = torch.load(path, map_location="cpu", weights_only=False).get("iteration")
            if iteration is None:
                raise TrainingCurveError(f"{path}: holds no 'iteration'")
        elif re.fullmatch(r"model_\d{7}\.pth", name):
            iteration = int(name[6:13])
        else:
            continue
        checkpoints.setdefault(int(iteration), path)
    if not checkpoints:
        raise TrainingCurveError(f"{run_dir}: no model_*.pth checkpoints")
    return sorted(checkpoints.items())


def evaluate_checkpoints(
    cfg: CfgNode, run_dir: str, dataset_name: str, output_dir: str
) -> list[CurvePoint]:
    """
    Evaluate every checkpoint of the training run in `run_dir` (trained with `cfg`) on
    `dataset_name`, its evaluator writing under `output_dir`. Checkpoints after the log's last
    logged iteration are dated by extrapolating at the log's mean speed.
    """
    iterations, seconds = iteration_times(os.path.join(run_dir, "log.txt"))
    if len(iterations) < 2:
        raise TrainingCurveError(f"{run_dir}/log.txt: no iteration was logged after the start")
    speed = seconds[-1] / (iterations[-1] - iterations[0])
    # One model and loader for every checkpoint: only the weights change.
    model = build_model(cfg)
    loader = build_detection_test_loader(
        cfg, dataset_name, mapper=CheckedDatasetMapper(cfg, is_train=False)
    )
    points = []
    for iteration, path in run_checkpoints(run_dir):
        if iteration <= iterations[-1]:
            elapsed = float(np.interp(iteration, iterations, seconds))
        else:
            elapsed = seconds[-1] + (iteration - iterations[-1]) * speed
        load_weights(model, path)
        model.eval()
        evaluator = build_evaluator(
            cfg, dataset_name, os.path.join(output_dir, f"iter_{iteration}")
        )
        with torch.no_grad():
            metrics = inference_on_dataset(model, loader, evaluator)
        points.append(CurvePoint(iteration, elapsed / 60, metrics))
    return points


def metric_value(metrics: dict, metric: str) -> float:
    """metrics["segm"]["AP50"] for metric "segm/AP50"; TrainingCurveError naming what exists."""
    task, _, name = metric.partition("/")
    if task not in metrics or name not in metrics[task]:
        available = sorted(f"{t}/{k}" for t, values in metrics.items() for k in values)
        raise TrainingCurveError(f"--metric {metric!r} is not among the results: {available}")
    return float(metrics[task][name])


def curve_rows(curves: dict, metric: str) -> tuple[list[str], list[list]]:
    """(header, rows) of every point of `curves`: run, iteration, minutes, `metric`."""
    rows = [
        [label, p.iteration, round(p.minutes, 2), round(metric_value(p.metrics, metric), 2)]
        for label, points in curves.items()
        for p in points
    ]
    return ["run", "iteration", "minutes", metric], rows


def render_curves(
    curves: dict,
    metric: str,
    target: float | None = None,
    budget_minutes: float | None = None,
) -> np.ndarray:
    """
    `metric` against minutes of training, one line per run, starting at (0, 0).

    Args:
        curves: {label: [CurvePoint, ...]}.
        target, budget_minutes: drawn as a horizontal and a vertical dashed line.

    Returns:
        (H, W, 3) BGR uint8 image.
    """
    figure = Figure(figsize=(7, 4.2), dpi=110)
    canvas = FigureCanvasAgg(figure)
    axes = figure.subplots()
    for label, points in curves.items():
        minutes = [0.0] + [p.minutes for p in points]
        values = [0.0] + [metric_value(p.metrics, metric) for p in points]
        axes.plot(minutes, values, marker="o", markersize=4, label=label)
    if target is not None:
        axes.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:g}")
    if budget_minutes is not None:
        axes.axvline(budget_minutes, color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="training wall time (minutes)", ylabel=metric)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    canvas.draw()
    return cv2.cvtColor(np.asarray(canvas.buffer_rgba()), cv2.COLOR_RGBA2BGR)
