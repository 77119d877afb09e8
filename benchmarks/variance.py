r"""Benchmark: exact design variance of the HT total on a (64 x 32768) batch with 16-dim y.

Target: ``design_variance`` of a Prefix or a Poisson design in <= 50 ms on CPU, with no
O(N^2) memory on any fast path.  Systematic sampling is timed too (O(N log N), a sort per row).

Run from the repository root::

    python benchmarks/variance.py [--backend numpy|torch] [--dtype float32|float64] [--reps 7]

Prints the median (and min) wall time of several repetitions for each design, the machine's load
average (timings on a shared machine vary with it; the min is the least disturbed figure) and,
with ``--memory``, the peak extra memory of one call (numpy: tracemalloc) next to the size of
``y``: a small constant multiple of it, never O(N^2).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

import nat_estimators as nat

if __package__ in (None, ""):  # run as a script: import the benchmarks package from the root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.timing import repeat_ms

TARGET_MS = 50.0
B, N, Q = 64, 32768, 16


def _designs(xp_name: str, dtype: str) -> tuple[Any, dict[str, Any]]:
    rng = np.random.default_rng(0)
    lengths = rng.integers(N // 2, N + 1, size=B)
    mask = np.arange(N)[None, :] < lengths[:, None]
    mask[:, ::97] &= False  # a few non-contiguous ineligible tokens (tool tokens)
    y = rng.standard_normal((B, N, Q)).astype(dtype)
    pi_pois = np.where(mask, rng.uniform(0.05, 1.0, size=(B, N)), 0.0).astype(dtype)
    pi_sys = np.where(mask, rng.uniform(0.05, 1.0, size=(B, N)), 0.0).astype(dtype)
    if xp_name == "torch":
        import torch

        conv: Callable[[Any], Any] = torch.from_numpy
    else:
        conv = np.asarray
    m = conv(mask)
    designs = {
        "Prefix.from_fraction(0.5)": nat.Prefix.from_fraction(
            0.5, mask=m, full_keep=0.05, dtype=conv(y[:1, :1, 0]).dtype
        ),
        "Poisson(pi)": nat.Poisson(conv(pi_pois), mask=m),
        "Systematic(pi)": nat.Systematic(conv(pi_sys), mask=m),
    }
    return conv(y), designs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=["numpy", "torch"], default="numpy")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--memory", action="store_true", help="measure peak memory (numpy only)")
    ap.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads")
    args = ap.parse_args()
    if args.torch_threads is not None:
        import torch

        torch.set_num_threads(args.torch_threads)
    y, designs = _designs(args.backend, args.dtype)
    ybytes = B * N * Q * np.dtype(args.dtype).itemsize
    print(f"design_variance, y: ({B}, {N}, {Q}) {args.dtype}, axis=1, backend={args.backend}, "
          f"y = {ybytes / 2**20:.0f} MiB; target <= {TARGET_MS:.0f} ms (Prefix, Poisson); "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    for name, d in designs.items():
        times = repeat_ms(lambda d=d: nat.design_variance(y, d, axis=1), args.reps)
        med = statistics.median(times)
        flag = ""
        if not name.startswith("Systematic"):
            flag = "OK" if med <= TARGET_MS else "MISS"
        line = f"  {name:26s} median {med:8.1f} ms  min {min(times):8.1f} ms  {flag}"
        if args.memory and args.backend == "numpy":
            tracemalloc.start()
            nat.design_variance(y, d, axis=1)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            line += f"  peak extra memory {peak / 2**20:7.0f} MiB ({peak / ybytes:.1f} x y)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
