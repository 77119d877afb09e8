r"""RL selection at verl batch sizes: every design of ``select_tokens`` and ``pack_rows``, timed
side by side against the uniform designs.

A ragged batch of ``B x T`` positions (the full run: 4096 x 8192, a realistic verl step; quick:
256 x 8192), row lengths uniform on ``T/4 .. T``, the first ``T/8`` positions of a row its prompt
and the rest its response (the response mask).  Cases, interleaved in rotating rounds after a
warm-up, with the garbage collector off while timing:

* ``select/<design>``: :func:`nat_estimators.rl.select_tokens` at keep 0.5 for every name in
  :data:`nat_estimators.rl.DESIGNS`; the designs that take sizes (size-proportional, optimal) get
  heavy-tailed sizes
  (log-normal, :math:`\sigma = 1.5`, as token entropies: the capping at 1 is active in every row)
  and, as ``select/<design>/light``, light-tailed ones (uniform on 0.05 .. 1.05: no capping);
* ``pack/crop``: :func:`~nat_estimators.rl.pack_rows` of the prefix crop
  (``crop_mask(attention_mask, crop_lengths)``, ``max_tokens = 8 T``), and ``pack/full``: of the
  whole attention mask, the same budget; ``pack/crop+scatter`` adds :meth:`PackPlan.scatter
  <nat_estimators.rl.PackPlan.scatter>` of one value per packed slot (information, no target).

Ratios (``<case>_vs_poisson@BxT``) divide a case's median by the median of the uniform Poisson
design (``select/poisson``, the paper's URS) timed in the same rounds; ``..._vs_fastest_uniform``
divides by the fastest of the four uniform designs.  The target is ``<= 2`` against Poisson for
the proportional designs and for ``pack_rows``.  Times are process CPU time by default (one torch
thread: steadier than the wall clock on a shared machine; ``--clock wall`` for the wall clock).

Usage::

    python benchmarks/rl_selection.py --quick
    python benchmarks/rl_selection.py --rows 4096 --tokens 8192 --json rl_selection.json
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import timing  # noqa: E402

__all__ = ["TARGET", "run_rl_selection_benchmarks"]

#: Keep fraction of every design.
KEEP = 0.5
#: Bound on ``<case>_vs_poisson`` for the proportional designs and ``pack_rows``.
TARGET = 2.0
#: Batch shape of the full run (a realistic verl step) and of ``--quick``.
FULL_SHAPE, QUICK_SHAPE = (4096, 8192), (256, 8192)
UNIFORM = ("poisson", "simple_random", "systematic", "prefix")


def _batch(rows: int, tokens: int, device: Any) -> dict[str, Any]:
    import torch

    g = torch.Generator(device=device).manual_seed(20261202)
    lengths = torch.randint(tokens // 4, tokens + 1, (rows,), generator=g, device=device)
    pos = torch.arange(tokens, device=device)
    attention = pos[None, :] < lengths[:, None]
    response = attention & (pos[None, :] >= tokens // 8)
    heavy = torch.exp(1.5 * torch.randn(rows, tokens, generator=g, device=device)).float()
    light = (torch.rand(rows, tokens, generator=g, device=device) + 0.05).float()
    return {"attention": attention, "response": response, "heavy": heavy, "light": light}


def _cases(b: dict[str, Any], device: Any) -> dict[str, Callable[[], Any]]:
    import torch

    from nat_estimators.rl import DESIGNS, crop_mask, needs_sizes, pack_rows, select_tokens

    g = torch.Generator(device=device).manual_seed(7)
    rm, am = b["response"], b["attention"]
    cases: dict[str, Callable[[], Any]] = {}
    for name in DESIGNS:
        if needs_sizes(name):  # size-proportional and variance-optimal designs
            for tail, sizes in (("", b["heavy"]), ("/light", b["light"])):
                cases[f"select/{name}{tail}"] = (
                    lambda n=name, s=sizes: select_tokens(rm, n, KEEP, sizes=s, generator=g)
                )
        else:
            cases[f"select/{name}"] = lambda n=name: select_tokens(rm, n, KEEP, generator=g)
    crop = crop_mask(am, select_tokens(rm, "prefix", KEEP, generator=g).crop_lengths)
    width = int(am.shape[1])
    cases["pack/crop"] = lambda: pack_rows(crop, max_tokens=8 * width)
    cases["pack/full"] = lambda: pack_rows(am, max_tokens=8 * width)

    def round_trip() -> Any:  # pack, then scatter one value per packed slot back to (B, T)
        plan = pack_rows(crop, max_tokens=8 * width)
        return plan.scatter([mb.valid.float() for mb in plan])

    cases["pack/crop+scatter"] = round_trip
    return cases


def _interleave(
    cases: dict[str, Callable[[], Any]], reps: int, budget_s: float, clock: Callable[[], float],
    sync: Callable[[], None], log: Callable[[str], None],
) -> dict[str, list[float]]:
    names = list(cases)
    for n in names:  # warm-up
        cases[n]()
    sync()
    out: dict[str, list[float]] = {n: [] for n in names}
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    start = time.perf_counter()
    try:
        for r in range(reps):
            if r >= 3 and time.perf_counter() - start > budget_s:
                break
            k = r % len(names)
            for n in names[k:] + names[:k]:
                t0 = clock()
                res = cases[n]()
                sync()
                out[n].append(clock() - t0)
                del res
            gc.collect()
            log(f"  round {r + 1}: " + ", ".join(f"{n} {out[n][-1]:.2f}s" for n in names))
    finally:
        if was:
            gc.enable()
    return out


def run_rl_selection_benchmarks(
    quick: bool = False,
    *,
    shape: tuple[int, int] | None = None,
    device: str = "cpu",
    clock: str = "cpu",
    threads: int = 1,
    verbose: bool = True,
) -> dict[str, Any]:
    """Time every ``select_tokens`` design and ``pack_rows``; return ``{"ratios", "records"}``.

    Parameters
    ----------
    quick : bool
        256 x 8192 and at most 5 rounds instead of 4096 x 8192 and 5 rounds of a larger budget.
    shape : (int, int), optional
        Override the batch shape ``(B, T)``.
    device : str
        Torch device (``"cuda"`` synchronises around each call and uses the wall clock).
    clock : {"cpu", "wall"}
        Process CPU time (default on CPU) or wall clock.
    threads : int
        ``torch.set_num_threads`` during the run (restored after); 0 keeps torch's setting.
    """
    import torch

    def log(msg: str) -> None:
        if verbose:
            print(msg, file=sys.stderr, flush=True)

    rows, tokens = shape or (QUICK_SHAPE if quick else FULL_SHAPE)
    dev = torch.device(device)
    if dev.type == "cuda":
        clock = "wall"
    tick = time.process_time if clock == "cpu" else time.perf_counter
    sync = partial(timing.sync, dev)
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    load0 = timing.loadavg()
    t0 = time.perf_counter()
    try:
        log(f"[rl_selection] {rows} x {tokens} on {dev}, clock {clock}, "
            f"torch threads {torch.get_num_threads()}")
        b = _batch(rows, tokens, dev)
        cases = _cases(b, dev)
        reps, budget = (5, 60.0) if quick else (5, 600.0)
        times = _interleave(cases, reps, budget, tick, sync, log)
    finally:
        torch.set_num_threads(before)
    tag = f"{rows}x{tokens}"
    mtok = rows * tokens / 1e6
    med = {n: statistics.median(ts) for n, ts in times.items()}
    base = med["select/poisson"]
    fastest = min(med[f"select/{u}"] for u in UNIFORM if f"select/{u}" in med)
    ratios: dict[str, float] = {}
    records: list[dict[str, Any]] = []
    for n, ts in times.items():
        key = n.replace("/", "_")
        ratios[f"{key}_vs_poisson@{tag}"] = med[n] / base
        rec: dict[str, Any] = {
            "name": f"rl_selection/{n}",
            "section": "rl_selection",
            "shape": [rows, tokens],
            "keep": KEEP,
            "median_s": med[n],
            "s_per_million_tokens": med[n] / mtok,
            "min_s": min(ts),
            "reps": len(ts),
            "ratio_vs_poisson": med[n] / base,
            "ratio_vs_fastest_uniform": med[n] / fastest,
        }
        if "_proportional" in n or n in ("pack/crop", "pack/full"):
            rec["target"] = f"ratio_vs_poisson <= {TARGET:g}"
            rec["met"] = bool(med[n] / base <= TARGET)
        records.append(rec)
    records.append({
        "name": "rl_selection/meta",
        "section": "rl_selection",
        "shape": [rows, tokens],
        "device": str(dev),
        "clock": clock,
        "threads": threads,
        "wall_s": time.perf_counter() - t0,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "loadavg_1min_start": load0,
        "loadavg_1min_end": timing.loadavg(),
    })
    return {"ratios": ratios, "records": records}


def format_table(result: dict[str, Any]) -> str:
    """Human-readable table of a :func:`run_rl_selection_benchmarks` result."""
    recs = [r for r in result["records"] if r.get("section") == "rl_selection"]
    meta = next((r for r in recs if r["name"] == "rl_selection/meta"), {})
    shape = "x".join(str(v) for v in meta.get("shape", ["?"]))
    lines = [
        f"select_tokens / pack_rows at {shape} (keep {KEEP:g}); median over interleaved rounds "
        f"({meta.get('clock', '?')} clock); ratio = vs select_tokens('poisson') in the same rounds",
    ]
    hdr = f"{'case':40s} {'median s':>9s} {'s/Mtok':>7s} {'vs poisson':>10s} {'vs fastest':>10s}"
    lines += [hdr, "-" * len(hdr)]
    for r in recs:
        if "median_s" not in r:
            continue
        tgt = "" if "met" not in r else ("  met" if r["met"] else "  MISSED")
        lines.append(
            f"{r['name'].removeprefix('rl_selection/'):40s} {r['median_s']:9.3f} "
            f"{r['s_per_million_tokens']:7.3f} {r['ratio_vs_poisson']:10.2f} "
            f"{r['ratio_vs_fastest_uniform']:10.2f}{tgt}"
        )
    if meta:
        lines.append(
            f"(wall {meta['wall_s']:.0f} s, peak RSS {meta['peak_rss_gib']:.1f} GiB, 1-min load "
            f"{meta.get('loadavg_1min_start')} -> {meta.get('loadavg_1min_end')})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="256 x 8192 (about a minute)")
    p.add_argument("--rows", type=int, help="batch rows B (default 4096, quick 256)")
    p.add_argument("--tokens", type=int, help="positions per row T (default 8192)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", metavar="FILE", help="write {machine, ratios, records} to FILE")
    args = p.parse_args(argv)
    shape = None
    if args.rows or args.tokens:
        d = QUICK_SHAPE if args.quick else FULL_SHAPE
        shape = (args.rows or d[0], args.tokens or d[1])
    res = run_rl_selection_benchmarks(
        args.quick, shape=shape, device=args.device, clock=args.clock, threads=args.threads
    )
    print(format_table(res))
    if args.json:
        from benchmarks.samplers import machine_info

        machine = machine_info()
        machine["command"] = " ".join(["python", "benchmarks/rl_selection.py",
                                       *(argv if argv is not None else sys.argv[1:])])
        out = {"machine": machine, **res}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
            f.write("\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
