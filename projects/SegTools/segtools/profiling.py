"""
Where a training iteration's time goes: data loading and mapping, forward (with the loss), backward
and the optimizer step, measured over a few iterations of any registered model, and the
operators that take the most time (PyTorch's profiler).
"""

import time
from dataclasses import dataclass

import numpy as np
from detectron2.config import CfgNode
from detectron2.utils.events import EventStorage
from torch.profiler import ProfilerActivity, profile, record_function

from .engine import Trainer

__all__ = ["STAGES", "TrainingProfile", "profile_training"]

STAGES = ("data", "forward", "backward", "optimizer")


@dataclass(frozen=True)
class TrainingProfile:
    """
    Attributes:
        stage_ms: {stage: (iterations,) milliseconds} for each of :data:`STAGES`.
        operators: rows (name, self CPU ms per iteration, calls per iteration), most costly
            first, over the profiled iterations.
        regions: {region name: CPU ms per iteration} of the model's labelled regions
            (`torch.profiler.record_function`), e.g. its loss terms.
    """

    stage_ms: dict
    operators: list
    regions: dict

    def medians(self) -> dict:
        return {stage: float(np.median(times)) for stage, times in self.stage_ms.items()}


def _timed(stage_ms: dict, stage: str, function, *args):
    start = time.perf_counter()
    with record_function(f"stage:{stage}"):
        result = function(*args)
    stage_ms[stage].append(1000 * (time.perf_counter() - start))
    return result


def profile_training(
    cfg: CfgNode, iterations: int = 5, warmup: int = 2, top: int = 15
) -> TrainingProfile:
    """
    Run `warmup` + `iterations` training iterations of the model of `cfg` (its data loader,
    optimizer and batch) and profile the last `iterations`.
    """
    model = Trainer.build_model(cfg)
    model.train()
    optimizer = Trainer.build_optimizer(cfg, model)
    batches = iter(Trainer.build_train_loader(cfg))

    def step(stage_ms):
        batch = _timed(stage_ms, "data", next, batches)
        losses = _timed(stage_ms, "forward", model, batch)
        total = sum(losses.values())
        optimizer.zero_grad()
        _timed(stage_ms, "backward", total.backward)
        _timed(stage_ms, "optimizer", optimizer.step)

    stage_ms = {stage: [] for stage in STAGES}
    # Models log training statistics to the trainer's event storage.
    with EventStorage():
        for _ in range(warmup):
            step({stage: [] for stage in STAGES})
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            for _ in range(iterations):
                step(stage_ms)
    events = profiler.key_averages()
    operators = sorted(
        (e for e in events if not e.key.startswith(("stage:", "region:", "ProfilerStep"))),
        key=lambda e: e.self_cpu_time_total,
        reverse=True,
    )[:top]
    rows = [
        (e.key, e.self_cpu_time_total / 1000 / iterations, e.count / iterations) for e in operators
    ]
    regions = {
        e.key.removeprefix("region:"): e.cpu_time_total / 1000 / iterations
        for e in events
        if e.key.startswith("region:")
    }
    return TrainingProfile(stage_ms, rows, regions)
