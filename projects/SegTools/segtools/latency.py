"""The one latency timer of the benchmark and the export parity check."""

import time
from collections.abc import Callable

import torch

__all__ = ["measure_latency_ms"]


def measure_latency_ms(run: Callable, runs: int, warmup: int = 1, device: str = "cpu") -> list:
    """
    Wall-clock milliseconds of `runs` calls of `run()` after `warmup` untimed ones, in inference
    mode; CUDA work is synchronised before each clock reading.
    """

    def synchronize():
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()

    latencies = []
    with torch.inference_mode():
        for index in range(warmup + runs):
            synchronize()
            start = time.perf_counter()
            run()
            synchronize()
            if index >= warmup:
                latencies.append((time.perf_counter() - start) * 1000)
    return latencies
