r"""Timing and peak-memory helpers shared by every benchmark.

* :func:`sync` waits for queued device work (CUDA) so that a wall-clock interval covers it;
* :func:`timed` runs a callable once and returns its result and its wall time;
* :func:`repeat_ms` warms a callable up and times ``reps`` further calls (ms);
* :func:`measure_peak_bytes` gives the peak of allocated bytes of one call above the bytes live
  when it starts: on CUDA ``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats``; on the CPU the torch profiler's allocator events
  (``profile_memory=True``: every allocation and free of the CPU allocator, kernels' scratch
  included), summed in time order;
* :func:`loadavg` is the 1-minute load average, recorded next to timings on a shared machine.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = ["loadavg", "measure_peak_bytes", "quiet_fd2", "repeat_ms", "sync", "timed"]

T = TypeVar("T")


def sync(device: Any) -> None:
    """Wait for the work queued on ``device`` (a ``torch.device``; no-op off CUDA or for None)."""
    if device is not None and getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: Any = None) -> tuple[T, float]:
    """``fn()`` and its wall time in seconds (``device`` synchronised before and after)."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def repeat_ms(fn: Callable[[], Any], reps: int, *, device: Any = None) -> list[float]:
    """One warm-up call, then the wall times (ms) of ``reps`` calls of ``fn``."""
    fn()
    return [timed(fn, device)[1] * 1e3 for _ in range(reps)]


def loadavg() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def quiet_fd2() -> Iterator[None]:
    """Silence file descriptor 2 (the profiler's C++ start/stop lines) inside the block."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (e.g. captured stderr)
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def measure_peak_bytes(fn: Callable[[], Any], device: Any) -> tuple[float, str]:
    """Peak allocated bytes of ``fn()`` above the bytes live when it starts, and the method."""
    import torch

    gc.collect()
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - base), "cuda_max_memory_allocated"
    from torch.profiler import ProfilerActivity, profile

    with quiet_fd2(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        e
        for e in prof.profiler.kineto_results.events()  # type: ignore[union-attr]
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return float(peak), "torch_profiler_cpu_allocator"
