r"""Run all benchmarks; write ``{"machine", "ratios", "records"}`` as JSON and a results page.

Every figure is a ratio of two configurations measured side by side in the same run
(interleaved repetitions, medians); absolute times and bytes are kept in the records only so the
ratios can be checked.  Sections:

* **NAT step** (:mod:`benchmarks.nat_step`): time and peak memory of NAT GRPO steps (prefix
  cutting ``rpc_*``, uniform Poisson ``urs_*`` at keep 0.25 / 0.5 / 0.75) against the full-token
  step of the same model, rollouts and micro-batching; LM-head memory; micro-batch counts;
  token accounting; the cost model evaluated on the measured selections.
* **Cost-model projection** (:mod:`benchmarks.projection`): Qwen3-8B at 8k–32k response tokens,
  beside the paper's 0.71 / 0.82.
* **Samplers** (:mod:`benchmarks.samplers`): batch draws on numpy and torch, speed-ups against R's
  ``sampling`` package.
* **RL selection at batch scale** (:mod:`benchmarks.rl_selection`): every ``select_tokens``
  design and ``pack_rows`` against the uniform Poisson design, 4096 x 8192 (``--quick``:
  256 x 8192).
* ``benchmarks/variance.py`` exposes no function returning ratios; the full run calls it as a
  subprocess and keeps its output in a record, ``--quick`` skips it with a note.

Usage (from the repository root)::

    python benchmarks/run.py --quick --json benchmarks/results/latest.json \
        --report benchmarks/results.md          # regenerates the results page (about 4 min)
    python benchmarks/run.py --json full.json   # full sizes (tens of minutes on 2 cores)
    python benchmarks/run.py --quick --device cuda

On CPU the NAT step section runs with one intra-op thread and times steps by process CPU time
(``--threads``, ``--clock``): on a shared 2-core machine two threads and the wall clock were
3x noisier.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine_block(device: str, threads: int | None, clock: str) -> dict[str, Any]:
    """The ``machine`` block: the samplers' ``machine_info()`` when available, plus ours."""
    import torch

    try:
        from benchmarks.samplers import machine_info

        info = dict(machine_info())
    except Exception as exc:  # pragma: no cover - samplers under construction
        info = {"note": f"benchmarks.samplers.machine_info unavailable: {exc!r}"}
        info.update(
            {
                "cpu": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
        )
    info.update(
        {
            "platform": platform.platform(),
            "nat_step_device": device,
            "nat_step_torch_threads": threads,
            "nat_step_clock": clock,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        }
    )
    try:
        info["loadavg_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def run_variance_subprocess() -> dict[str, Any]:
    """``benchmarks/variance.py`` has no function API: run it and keep its output."""
    cmd = [sys.executable, str(HERE / "variance.py"), "--reps", "5"]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
        return {
            "name": "variance/subprocess",
            "section": "variance",
            "command": " ".join(cmd[1:]),
            "returncode": p.returncode,
            "stdout": p.stdout,
            "stderr_tail": p.stderr[-2000:],
            "wall_s": time.perf_counter() - t0,
            "note": "absolute times against an absolute target, not a ratio",
        }
    except Exception as exc:  # pragma: no cover
        return {
            "name": "variance/subprocess",
            "section": "variance",
            "skipped": True,
            "note": f"benchmarks/variance.py failed to run: {exc!r}",
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small sizes (about 4 minutes on 2 cores)")
    p.add_argument("--json", metavar="FILE", help="write {machine, ratios, records} to FILE")
    p.add_argument(
        "--report",
        metavar="FILE",
        help="write the results page (markdown) to FILE; "
        "plots go to <FILE's folder>/results/ unless --plots-dir",
    )
    p.add_argument("--plots-dir", metavar="DIR", help="folder of the report's PNG plots")
    p.add_argument("--device", default="cpu", help="device of the NAT step section (cpu, cuda)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads for the NAT step section (default: 1 on CPU, "
        "torch's own on CUDA)",
    )
    p.add_argument(
        "--clock",
        choices=["auto", "cpu", "wall"],
        default="auto",
        help="NAT step timing: process CPU time or wall clock (auto: cpu on CPU)",
    )
    p.add_argument("--skip-nat", action="store_true", help="skip the NAT step section")
    p.add_argument("--skip-samplers", action="store_true", help="skip the sampler section")
    p.add_argument("--no-r", action="store_true", help="skip the comparisons with R")
    p.add_argument(
        "--skip-rl-selection", action="store_true",
        help="skip select_tokens / pack_rows at batch scale (4096 x 8192: ~4 GiB, minutes)",
    )
    args = p.parse_args(argv)

    import torch

    from benchmarks.projection import qwen_projection

    t0 = time.perf_counter()
    ratios: dict[str, float] = {}
    records: list[dict[str, Any]] = []
    dev = torch.device(args.device)
    threads = args.threads if args.threads is not None else (1 if dev.type == "cpu" else None)
    clock = args.clock if args.clock != "auto" else ("wall" if dev.type == "cuda" else "cpu")
    machine = machine_block(str(dev), threads, clock)

    if not args.skip_nat:
        from benchmarks.nat_step import run_nat_step_benchmarks

        _log(f"[nat_step] quick={args.quick} device={dev} threads={threads} clock={clock}")
        old = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            res = run_nat_step_benchmarks(args.quick, device=dev, clock=clock)
        finally:
            torch.set_num_threads(old)
        ratios.update(res["ratios"])
        records.extend(res["records"])
        machine["nat_step_memory_method"] = next(
            (r["memory_method"] for r in res["records"] if r["name"] == "nat_step/meta"), None
        )

    _log("[projection] cost model, Qwen3-8B")
    records.extend(qwen_projection())

    if not args.skip_samplers:
        try:
            from benchmarks.samplers import run_sampler_benchmarks
        except Exception as exc:  # pragma: no cover - samplers under construction
            records.append(
                {
                    "name": "samplers/skipped",
                    "section": "samplers",
                    "skipped": True,
                    "note": f"benchmarks.samplers not importable: {exc!r}",
                }
            )
        else:
            _log(f"[samplers] quick={args.quick}")
            s = run_sampler_benchmarks(
                args.quick,
                with_r=not args.no_r,
                torch_device=str(dev) if dev.type == "cuda" else "cpu",
            )
            ratios.update(s["ratios"])
            for rec in s["records"]:
                rec = dict(rec)
                rec.setdefault("section", "samplers")
                if rec.get("name") == "meta":
                    rec["name"] = "samplers/meta"
                if rec.get("name") == "R/version":
                    machine["R_sampling"] = rec.get("R")
                records.append(rec)

    if not args.skip_rl_selection:
        from benchmarks.rl_selection import run_rl_selection_benchmarks

        _log(f"[rl_selection] quick={args.quick}")
        rl = run_rl_selection_benchmarks(
            args.quick, device=str(dev), clock="wall" if dev.type == "cuda" else "cpu"
        )
        ratios.update(rl["ratios"])
        records.extend(rl["records"])

    if args.quick:
        records.append(
            {
                "name": "variance/skipped",
                "section": "variance",
                "skipped": True,
                "note": "benchmarks/variance.py (absolute-time target, no "
                "function API) runs only in the full run, as a subprocess",
            }
        )
    else:
        _log("[variance] subprocess")
        records.append(run_variance_subprocess())

    try:
        machine["loadavg_at_end"] = list(os.getloadavg())
    except OSError:
        pass
    machine["wall_s"] = time.perf_counter() - t0
    machine["quick"] = args.quick
    machine["command"] = " ".join(
        ["python", "benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]
    )
    out = {"machine": machine, "ratios": ratios, "records": records}
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1, default=str)
            f.write("\n")
        _log(f"wrote {path}")
    if args.report:
        from benchmarks.report import write_report

        rp = Path(args.report)
        plots = Path(args.plots_dir) if args.plots_dir else rp.parent / "results"
        write_report(out, rp, plots)
        _log(f"wrote {rp} and plots in {plots}")
    from benchmarks.report import format_summary

    print(format_summary(out))
    _log(f"total wall time {machine['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
